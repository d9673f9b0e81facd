"""Start, health-check and stop an HTTP model server as a child process.

Used by `vbatch serve`, by the server engine and by tests. Modelled on vLLM's test helper
(RemoteOpenAIServer): spawn in its own process group, poll a health URL, SIGTERM then SIGKILL.
Stdlib only (urllib), so importing it costs nothing; why a server failed to start comes from the
one table of failures (engines/vllm/failures.py, stdlib only too): `generic_cause` reads the causes
any server shares, and `vbatch serve` passes a `diagnose` with vLLM's fixes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from vbatch.engines.vllm.failures import generic_cause
from vbatch.errors import EngineError

#: Grace period between SIGTERM and SIGKILL for a server stopped before it became ready.
STARTING_STOP_TIMEOUT_S = 5.0

#: (log text, exit status or None if still running) -> a sentence naming the likely cause, or None.
#: Without one, or when it has none, `generic_cause` (the causes any server shares) names it.
Diagnose = Callable[[str, int | None], str | None]


class ServerStartError(EngineError):
    """The server exited or never answered its health check; the message carries its log tail."""


class ManagedServer:
    """A server child process that is only considered started once its health URL answers 200.

    The child runs in its own session (process group), so `stop` also reaches the workers it
    spawns and Ctrl-C in the parent's terminal does not hit it twice.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        base_url: str,
        health_path: str = "/health",
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        ready_timeout: float = 600.0,
        diagnose: Diagnose | None = None,
    ):
        self.argv = list(argv)
        self.base_url = base_url.rstrip("/")
        self.health_url = self.base_url + health_path
        self.env = env
        self.log_path = log_path
        self.ready_timeout = ready_timeout
        self.diagnose = diagnose
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = None
        # Health checks must go straight to the server, never through an http_proxy from the env.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("server not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def start(self) -> ManagedServer:
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="vbatch-server-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - the child writes it until stop()
        child_env = None if self.env is None else {**os.environ, **self.env}
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=child_env,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise ServerStartError(
                f"could not start the server {self.argv[0]!r}: {exc.strerror or exc}",
                hint="Check that the program is installed and on PATH.",
            ) from exc
        try:
            self._wait_until_healthy()
        except BaseException:
            # It never served a request, so there is nothing to drain; and vLLM, for one, can
            # ignore SIGTERM while its engine starts.
            self.stop(timeout=STARTING_STOP_TIMEOUT_S)
            raise
        return self

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        delay = 0.1
        while True:
            status = self._proc.poll()
            if status is not None:
                self._raise_start_failure(f"the server exited with status {status} before it was ready")
            if self.is_healthy():
                return
            if time.monotonic() >= deadline:
                self._raise_start_failure(
                    f"the server did not answer {self.health_url} within {self.ready_timeout:g} s"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def is_healthy(self) -> bool:
        try:
            with self._opener.open(self.health_url, timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _raise_start_failure(self, what: str) -> None:
        status = self._proc.poll()
        tail = self.log_tail()
        text = self.log_tail(lines=400)
        cause = (self.diagnose and self.diagnose(text, status)) or generic_cause(text, status)
        message = f"{what}.\nLast lines of {self.log_path}:\n{tail}" if tail else f"{what} (its log is empty)."
        raise ServerStartError(message, hint=cause or f"Read the full log: {self.log_path}")

    def wait(self, timeout: float | None = None) -> int:
        """Block until the server exits; returns its exit status (negative: killed by that signal)."""
        return self._proc.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the whole process group, wait up to `timeout`, then SIGKILL what is left."""
        if self._proc is None:
            return None
        pgid = self._proc.pid  # start_new_session: the child leads its own group
        if self._proc.poll() is None:
            _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        try:
            self._proc.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            pass
        # Workers the server spawned may outlive it briefly; give them the rest of the grace period.
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal_group(pgid, signal.SIGKILL)
        status = self._proc.wait()
        self._close_log()
        return status

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            return "".join(deque(log, maxlen=lines)).rstrip("\n")

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
