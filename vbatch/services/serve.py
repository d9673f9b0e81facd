"""`vbatch serve`: run vLLM's OpenAI-compatible server for a profile, safely.

The profile's [engine] table becomes vLLM server flags, checked by vLLM's own `serve` argument
parser before anything starts, so a bad profile fails in seconds with the flag named instead of
after minutes of loading. The API key travels in the server's environment (VLLM_API_KEY), never on
its command line where `ps` shows it; vLLM checks it on /v1 only, so vbatch's middleware
(vbatch.services.server_auth, loaded with --middleware) requires it on every route but /health. The server
binds loopback unless told otherwise, and a non-loopback address needs an API key (or an explicit
--insecure).

vLLM is imported lazily (only to build the parser), and every vLLM difference is feature-detected.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict, Field

from vbatch.config.profiles import Profile, resolve_model
from vbatch.config.server import (
    VLLM_API_KEY_ENV,
    api_key_for,
    local_url,
    needs_key,
    url_host,
)
from vbatch.engines.vllm.compat import SERVER_MODULE, checked_engine_flags
from vbatch.engines.vllm.failures import failure_hint
from vbatch.errors import UsageError
from vbatch.paths import state_dir
from vbatch.services import server_auth
from vbatch.services.batch_server.settings import MIDDLEWARE as BATCH_MIDDLEWARE
from vbatch.services.batch_server.settings import BatchServerSettings, batch_dir
from vbatch.services.launch import ManagedServer

#: Loaded into the server with --middleware whenever a key is set.
AUTH_MIDDLEWARE = f"{server_auth.__name__}.{server_auth.ApiKeyMiddleware.__name__}"
#: Loading a large model (or downloading it) can take many minutes; a crash is noticed at once.
READY_TIMEOUT_S = 3600.0


def fresh_log_path(port: int) -> Path:
    """Where the server on `port` logs: one file per port in vbatch's state directory (writable
    in the systemd unit's sandbox), the previous start's log kept beside it as .1."""
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    path = state / f"serve-{port}.log"
    if path.exists():
        path.replace(path.with_name(path.name + ".1"))
    return path


class ServeSpec(BaseModel):
    """What `vbatch serve` was asked to do; None means "the profile's setting"."""

    model_config = ConfigDict(extra="forbid")

    profile: Profile
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    api_key_file: Path | None = None
    #: Allow a non-loopback address without an API key.
    insecure: bool = False


@dataclass(frozen=True)
class ServerPlan:
    """The resolved command: what to run, with which secret environment, where it will answer."""

    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    served_model_name: str
    #: Where the API key came from ("VBATCH_API_KEY", a file path), None without a key.
    api_key_source: str | None

    @property
    def base_url(self) -> str:
        return f"http://{url_host(self.host)}:{self.port}"

    @property
    def local_url(self) -> str:
        """Where this machine reaches the server (a wildcard bind is reached via loopback)."""
        return local_url(self.host, self.port)

    def command_line(self) -> str:
        return shlex.join(self.argv)


# --------------------------------------------------------------------------------------------
# Planning (no process started)
# --------------------------------------------------------------------------------------------


def plan_server(spec: ServeSpec, environ: dict[str, str] | None = None) -> ServerPlan:
    """Resolve host, port, API key and the full vLLM command line, validated by vLLM's parser."""
    environ = dict(os.environ if environ is None else environ)
    profile = spec.profile
    host = spec.host or profile.serve.host
    port = spec.port or profile.serve.port
    api_key, key_source = resolve_api_key(spec, environ)
    if needs_key(host, bool(api_key), spec.insecure):
        raise UsageError(
            f"refusing to listen on {host} without an API key: anyone who can reach this machine could use the model",
            hint=f"set {profile.serve.api_key_env} (or pass --api-key-file FILE) so clients must "
            "send a key; use --host 127.0.0.1 for this machine only; or pass --insecure on a "
            "network you trust",
        )
    served_name = profile.served_name
    server_args = [
        "--model",
        resolve_model(profile.model),
        "--served-model-name",
        *(profile.served_names or [served_name]),
        "--host",
        host,
        "--port",
        str(port),
    ]
    if profile.tokenizer:
        server_args += ["--tokenizer", resolve_model(profile.tokenizer)]
    env: dict[str, str] = {}
    if profile.serve.batches:
        # The Batches API's requests go in behind interactive ones: lower priority runs later.
        server_args += ["--middleware", BATCH_MIDDLEWARE]
        if "scheduling_policy" not in profile.engine:
            server_args += ["--scheduling-policy", "priority"]
        env.update(BatchServerSettings(batch_dir(served_name), profile).to_env())
    if api_key:
        # Last, so it wraps everything, the batch routes included.
        server_args += ["--middleware", AUTH_MIDDLEWARE]
        env[VLLM_API_KEY_ENV] = api_key
    server_args += checked_engine_flags(profile, server_args)
    return ServerPlan(
        argv=[sys.executable, "-m", SERVER_MODULE, *server_args],
        env=env,
        host=host,
        port=port,
        served_model_name=served_name,
        api_key_source=key_source,
    )


def resolve_api_key(spec: ServeSpec, environ: dict[str, str]) -> tuple[str | None, str | None]:
    """The key clients must send to this server, and where it came from (config.server.api_key_for)."""
    return api_key_for(spec.profile.serve, spec.api_key_file, environ)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def diagnose_start_failure(profile: Profile, plan: ServerPlan) -> Callable[[str, int | None], str | None]:
    """The fix for a server that died while starting, from the one table of vLLM's failures
    (engines.vllm.failures), naming this profile and port; launch.generic_cause is the fallback."""

    def diagnose(log: str, status: int | None) -> str | None:
        return failure_hint(log, profile_name=profile.name, port=plan.port)

    return diagnose


@dataclass(frozen=True)
class ServeOutcome:
    #: Shell exit status: the server's own, or 128+N when signal N killed it.
    status: int
    #: The signal (SIGTERM, SIGINT) that asked vbatch to stop; None when the server exited by itself.
    stop_signal: int | None
    log_path: Path | None


def serve(
    spec: ServeSpec,
    *,
    on_ready: Callable[[ServerPlan, ManagedServer], None] = lambda plan, server: None,
    log_echo: TextIO | None = None,
) -> ServeOutcome:
    """Start the server, wait until it answers /health, then run until it exits or we are signalled.

    SIGTERM and SIGINT stop the server: SIGTERM to its process group, SIGKILL after a grace
    period (a short one while it is still starting: vLLM can ignore SIGTERM then).
    `log_echo` receives the server's log as it is written (the log file is kept either way).
    """
    stop_signal = None
    with _signals_raise_stop():
        try:
            plan = plan_server(spec)  # seconds: vLLM's parser checks the settings in a child process
        except _StopRequested as stop:  # the child is killed; no server was started
            return ServeOutcome(status=128 + stop.signum, stop_signal=stop.signum, log_path=None)
        server = ManagedServer(
            plan.argv,
            base_url=plan.local_url,
            env=plan.env,
            log_path=fresh_log_path(plan.port),
            ready_timeout=READY_TIMEOUT_S,
            diagnose=diagnose_start_failure(spec.profile, plan),
        )
        echo = _LogEcho(server, log_echo) if log_echo is not None else None
        try:
            if echo:
                echo.start()
            server.start()
            on_ready(plan, server)
            server.wait()
        except _StopRequested as stop:
            stop_signal = stop.signum
        finally:
            _ignore_signals()
            status = server.stop()
            if echo:
                echo.stop()
    exit_status = 128 - status if status is not None and status < 0 else (status or 0)
    return ServeOutcome(status=exit_status, stop_signal=stop_signal, log_path=server.log_path)


class _StopRequested(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT, so start() and wait() unwind into stop()."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _signals_raise_stop:
    def __enter__(self) -> None:
        self._saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        for sig in self._saved:
            signal.signal(sig, self._raise)

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        _ignore_signals()  # a second Ctrl-C must not cut the shutdown short
        raise _StopRequested(signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def _ignore_signals() -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class _LogEcho:
    """Copies the server's log file to a stream as it grows (terminal, or journald under systemd)."""

    def __init__(self, server: ManagedServer, stream: TextIO):
        self._server = server
        self._stream = stream
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="vbatch-serve-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _follow(self) -> None:
        while self._server.log_path is None or not self._server.log_path.exists():
            if self._done.wait(0.05):
                return
        with open(self._server.log_path, encoding="utf-8", errors="replace") as log:
            while True:
                chunk = log.read()
                if chunk:
                    self._stream.write(chunk)
                    self._stream.flush()
                elif self._done.wait(0.2):
                    self._stream.write(log.read())  # what the server wrote while stopping
                    self._stream.flush()
                    return
