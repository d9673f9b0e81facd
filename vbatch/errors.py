"""Typed errors and the one table that maps them to exit codes.

Commands raise these; `vbatch.cli.main` turns them into one message and one exit code.
Per-request failures are never raised: they become records in the errors file.
"""

from __future__ import annotations

import errno
import os
import shutil
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    #: The run finished, but some requests ended as records in the errors file.
    SOME_REQUESTS_FAILED = 1
    USAGE = 2
    PROFILE = 3
    INPUT = 4
    ENGINE = 5
    #: The output belongs to another run: a lock held, or a changed input/profile on resume.
    STATE = 6
    #: A disk filled up while writing; what reached the disk is whole and the run resumes.
    DISK_FULL = 7
    #: Ctrl-C / SIGINT (128 + 2, what a shell reports for it).
    INTERRUPTED = 130
    #: SIGTERM (128 + 15): a service manager or `kill` stopped the run.
    TERMINATED = 143


class VbatchError(Exception):
    """Base of every error vbatch reports to the user.

    `hint` says what to do about it; the CLI prints it under the message.
    """

    exit_code: ExitCode = ExitCode.USAGE

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(VbatchError):
    exit_code = ExitCode.USAGE


class ProfileError(VbatchError):
    exit_code = ExitCode.PROFILE


class InputError(VbatchError):
    exit_code = ExitCode.INPUT


class EngineError(VbatchError):
    exit_code = ExitCode.ENGINE


class ServerError(VbatchError):
    """A batch API (`vbatch serve`, OpenAI, any compatible one) did not answer, refused the key,
    or failed a request: the model is out of reach, like a failed engine (exit 5)."""

    exit_code = ExitCode.ENGINE


class DiskFullError(VbatchError):
    """No space left while writing a file; the file was cut back to its last whole record."""

    exit_code = ExitCode.DISK_FULL

    @classmethod
    def writing(cls, path: str) -> DiskFullError:
        """The error for a write to `path` that found no room, with the free space left there."""
        directory = os.path.dirname(os.path.abspath(path))
        try:
            free = f"{shutil.disk_usage(directory).free / 1e6:,.1f} MB free"
        except OSError:
            free = "free space unknown"
        return cls(
            f"no space left on the disk writing {path} ({free} in {directory}); everything written before stays whole",
            hint="free some space on that disk, then run the same command again to resume",
        )


def is_no_space(exc: BaseException) -> bool:
    """A full file system or an exhausted quota (pyarrow's errors carry no errno: their text)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, OSError) and "No space left on device" in str(exc)


class StateError(VbatchError):
    """The output files belong to another run (lock held) or to other inputs (resume refused)."""

    exit_code = ExitCode.STATE


EXIT_CODE_HELP = """Exit codes:
  0    every request succeeded
  1    the run finished, but some requests failed (see the errors file)
  2    usage error (bad option or argument)
  3    profile error (unknown profile, invalid key, engine argument vLLM does not know)
  4    input error (file missing or unreadable, --fail-fast hit a bad line)
  5    engine error (model failed to load, engine crashed; finished results are kept), or
       a batch server that does not answer or refuses the API key
  6    state error (another run holds the output lock, or the input/profile changed since the
       interrupted run: pass --restart to start over)
  7    disk full (no space left writing results); free space, then run the same command
       again to resume
  130  interrupted (Ctrl-C / SIGINT); run the same command again to resume
  143  terminated (SIGTERM); run the same command again to resume"""


class StoppedError(VbatchError):
    """SIGINT or SIGTERM stopped the run after it unwound: finished results are whole and kept,
    and the same command resumes it. Its exit code depends on the signal (130 or 143)."""

    def __init__(self, message: str, exit_code: ExitCode):
        super().__init__(message)
        self.exit_code = exit_code
