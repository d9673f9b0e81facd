"""Typed errors and the one table that maps them to exit codes.

Commands raise these; `vbatch.cli.main` turns them into one message and one exit code.
Per-request failures are never raised: they become records in the errors file.
"""

from __future__ import annotations

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
    INTERRUPTED = 130


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


class StateError(VbatchError):
    """The output files belong to another run (lock held) or to other inputs (resume refused)."""

    exit_code = ExitCode.STATE


EXIT_CODE_HELP = """Exit codes:
  0    every request succeeded
  1    the run finished, but some requests failed (see the errors file)
  2    usage error (bad option or argument)
  3    profile error (unknown profile, invalid key, engine argument vLLM does not know)
  4    input error (file missing or unreadable, --fail-fast hit a bad line)
  5    engine error (model failed to load, engine crashed; finished results are kept)
  6    state error (another run holds the output lock, or the input/profile changed since the
       interrupted run: pass --restart to start over)
  130  interrupted (Ctrl-C); run the same command again to resume"""
