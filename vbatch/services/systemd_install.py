"""The I/O around vbatch.services.systemd: find the paths, check the inputs, write/enable/remove units.

`serve_units_for_host`, `drain_units_for_host` and `cron` read the machine (accounts, environment, the profile,
`systemd-analyze`) and hand plain values to the pure renderers; `apply_plan` and
`remove_units` touch files and call `systemctl`.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vbatch.config.profiles import load_profile
from vbatch.config.server import needs_key
from vbatch.errors import UsageError
from vbatch.paths import cache_dir, cache_home, state_dir
from vbatch.services.systemd import (
    DrainRequest,
    HostPaths,
    InstallPlan,
    Scope,
    ServeRequest,
    cron_line,
    drain_unit_stem,
    drain_units,
    next_steps,
    serve_units,
)
from vbatch.storage.writers import write_atomically

SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
LINGER_DIR = Path("/var/lib/systemd/linger")
NO_SYSTEMD_HINT = (
    "see the unit with --print and install it by hand, write the files without enabling them "
    "with --files-only, or schedule drains with cron: `vbatch cron-line --inbox DIR`"
)
CALENDAR_HINT = (
    "use systemd's calendar syntax (man systemd.time), e.g. '*-*-* 02:00' (daily at 02:00), "
    "'Mon..Fri 22:30' or 'hourly'; try one with `systemd-analyze calendar 'EXPR'`"
)


# --------------------------------------------------------------------------------------------
# Gathering the facts
# --------------------------------------------------------------------------------------------


def discover_host(scope: Scope, *, run_as: str | None = None, hf_home: str | None = None) -> HostPaths:
    """Paths for the account the job runs as: its caches, state, this interpreter.

    The installing shell's HOME, HF_HOME, XDG_* and cache variables count only when the job runs
    as the same account (not under `sudo ... --system`, where they describe root).
    """
    current = pwd.getpwuid(os.geteuid()).pw_name
    if scope == "user" and run_as not in (None, current):
        raise UsageError(
            "--run-as works with --system only",
            hint=f"a user unit runs as the user whose systemd manager runs it: install it as {run_as}",
        )
    account = run_as or (os.environ.get("SUDO_USER") if scope == "system" else None) or current
    try:
        home = Path(pwd.getpwnam(account).pw_dir)
    except KeyError:
        raise UsageError(f"no user account {account!r}", hint="pass an existing account to --run-as") from None
    env = dict(os.environ) if account == current else {}
    home = Path(env.get("HOME") or home)
    caches_under = cache_home(env, home)
    caches = {
        "HF_HOME": hf_home or env.get("HF_HOME") or caches_under / "huggingface",
        "VLLM_CACHE_ROOT": env.get("VLLM_CACHE_ROOT") or caches_under / "vllm",
        "TRITON_CACHE_DIR": env.get("TRITON_CACHE_DIR") or home / ".triton" / "cache",
        "CUDA_CACHE_PATH": env.get("CUDA_CACHE_PATH") or home / ".nv" / "ComputeCache",
        # Models vbatch builds itself (the cpu-chat profile's tiny:llama).
        "VBATCH_CACHE_DIR": cache_dir(env, home),
    }
    profiles_dir = os.environ.get("VBATCH_PROFILES_DIR")
    return HostPaths(
        python=os.path.abspath(sys.executable),
        run_as=account,
        caches={key: _absolute(value) for key, value in caches.items()},
        state_dir=_absolute(state_dir(env, home)),
        profiles_dir=os.pathsep.join(_absolute(d) for d in profiles_dir.split(os.pathsep) if d)
        if profiles_dir
        else None,
        nvidia_modprobe=shutil.which("nvidia-modprobe"),
    )


def default_unit_dir(scope: Scope) -> Path:
    if scope == "system":
        return SYSTEM_UNIT_DIR
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "systemd" / "user"


def serve_units_for_host(
    request: ServeRequest, *, run_as: str | None = None, hf_home: str | None = None
) -> InstallPlan:
    """Check the request as `vbatch serve` would at boot, with absolute paths, and plan the unit."""
    profile = load_profile(request.profile)
    key_file = request.api_key_file and _absolute(request.api_key_file)
    if key_file and not Path(key_file).is_file():
        raise UsageError(
            f"API key file not found: {key_file}",
            hint="put the key on its first line, e.g. `openssl rand -hex 32 > FILE && chmod 600 FILE`",
        )
    listen = request.host or profile.serve.host
    if needs_key(listen, bool(key_file or profile.serve.api_key_file), request.insecure):
        raise UsageError(
            f"the server would listen on {listen} without an API key: `vbatch serve` refuses that",
            hint="pass --api-key-file FILE (a unit does not see $VBATCH_API_KEY, and a key written into "
            "the unit would be readable by every user); or --host 127.0.0.1; or --insecure on a network you trust",
        )
    model = request.model
    if model and Path(model).expanduser().exists():
        model = _absolute(model)
    normalized = request.model_copy(
        update={"profile": _profile_ref(request.profile), "model": model, "api_key_file": key_file}
    )
    return serve_units(normalized, discover_host(request.scope, run_as=run_as, hf_home=hf_home))


def drain_units_for_host(
    request: DrainRequest, *, run_as: str | None = None, hf_home: str | None = None
) -> InstallPlan:
    check_calendar(request.schedule)
    return drain_units(_drain_request(request), discover_host(request.scope, run_as=run_as, hf_home=hf_home))


def cron(request: DrainRequest, log_file: str | None = None) -> str:
    """The crontab line for a drain; makes the log's directory, since cron cannot report that."""
    normalized = _drain_request(request)
    host = discover_host("user")
    log = Path(_absolute(log_file) if log_file else Path(host.state_dir) / f"{drain_unit_stem(normalized.inbox)}.log")
    line = cron_line(normalized, host, str(log))
    log.parent.mkdir(parents=True, exist_ok=True)
    return line


def check_calendar(schedule: str) -> None:
    """Refuse a schedule systemd cannot parse, or one that never comes again."""
    if not schedule.strip() or "\n" in schedule:
        raise UsageError(f"bad schedule {schedule!r}", hint=CALENDAR_HINT)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # systemd will say so when the timer is enabled
    proc = subprocess.run([analyze, "calendar", "--", schedule], capture_output=True, text=True)
    if proc.returncode != 0:
        reason = proc.stderr.strip().splitlines()[-1:] or ["systemd cannot parse it"]
        raise UsageError(f"bad schedule {schedule!r}: {reason[0]}", hint=CALENDAR_HINT)
    if "Next elapse: never" in proc.stdout:
        raise UsageError(f"schedule {schedule!r} never comes again, so the timer would never fire", hint=CALENDAR_HINT)


def _profile_ref(ref: str) -> str:
    """A profile file as an absolute path (a unit runs in /); a profile name as it is."""
    return _absolute(ref) if "/" in ref or ref.endswith(".toml") else ref


def _drain_request(request: DrainRequest) -> DrainRequest:
    load_profile(request.profile)
    inbox = Path(request.inbox).expanduser()
    if not inbox.is_dir():
        raise UsageError(
            f"inbox is not a directory: {request.inbox}", hint=f"create it first: mkdir -p {shlex.quote(request.inbox)}"
        )
    return request.model_copy(
        update={
            "inbox": str(inbox.resolve()),
            "outbox": request.outbox and str(Path(request.outbox).expanduser().resolve()),
            "profile": _profile_ref(request.profile),
        }
    )


def _absolute(path: str | Path) -> str:
    return os.path.abspath(os.path.expanduser(str(path)))


def lingering(user: str) -> bool:
    """Whether `loginctl enable-linger` was run for `user` (its manager starts at boot)."""
    return (LINGER_DIR / user).exists()


# --------------------------------------------------------------------------------------------
# Writing, enabling, removing
# --------------------------------------------------------------------------------------------


@dataclass
class InstallReport:
    written: list[Path]
    created_dirs: list[Path]
    enabled: bool
    steps: list[str]


def apply_plan(plan: InstallPlan, unit_dir: Path, *, files_only: bool) -> InstallReport:
    """Make the sandbox's writable directories, write the units, then (unless files_only)
    daemon-reload and `enable --now`. systemd's absence is found before anything is written."""
    if not files_only:
        require_systemd()
    created = _make_dirs([Path(p) for p in plan.make_dirs], plan.run_as)
    written = []
    for unit in plan.units:
        target = unit_dir / unit.name
        with _permission_to(target, _unit_dir_hint(plan.scope)):
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(target, unit.text.encode(), mode=0o644)
        written.append(target)
    if not files_only:
        systemctl(plan.scope, "daemon-reload")
        systemctl(plan.scope, "enable", "--now", plan.enable)
    steps = next_steps(plan, enabled=not files_only, lingering=lingering(plan.run_as))
    return InstallReport(written=written, created_dirs=created, enabled=not files_only, steps=steps)


def remove_units(scope: Scope, unit_dir: Path, names: list[str], *, files_only: bool) -> list[Path]:
    """Disable (stopping) and delete units written by `apply_plan`; the first name is the one
    that was enabled."""
    present = [unit_dir / name for name in names if (unit_dir / name).exists()]
    if not present:
        other = "--system" if scope == "user" else "--user"
        raise UsageError(
            f"{names[0]} is not installed in {unit_dir}",
            hint=f"installed as a {other.lstrip('-')} unit? pass {other}; "
            "or the --unit-dir / $VBATCH_SYSTEMD_DIR it was installed with",
        )
    if not files_only:
        require_systemd()
        systemctl(scope, "disable", "--now", names[0])
    for path in present:
        with _permission_to(path, _unit_dir_hint(scope)):
            path.unlink()
    if not files_only:
        systemctl(scope, "daemon-reload")
    return present


def require_systemd() -> None:
    if shutil.which("systemctl") is None:
        raise UsageError("systemctl not found: this machine does not use systemd", hint=NO_SYSTEMD_HINT)
    if not Path("/run/systemd/system").is_dir():
        raise UsageError("systemd is not running here (a container, or another init system)", hint=NO_SYSTEMD_HINT)


def systemctl(scope: Scope, *args: str) -> None:
    argv = ["systemctl", *(["--user"] if scope == "user" else []), *args]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode == 0:
        return
    hint = NO_SYSTEMD_HINT
    if scope == "user" and "bus" in proc.stderr.lower():
        hint = (
            "no systemd user manager for this session (after su/sudo, or a non-login shell?): "
            "log in as that user directly, or install a system unit with sudo and --system"
        )
    raise UsageError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or f'exit status {proc.returncode}'}", hint=hint)


def _make_dirs(paths: list[Path], owner: str) -> list[Path]:
    """Create missing directories; under sudo, hand the new ones to the account the job runs as."""
    created: list[Path] = []
    for path in paths:
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for directory in reversed(missing):
            with _permission_to(
                directory,
                f"create {path} yourself, writable by {owner}, or choose "
                "another place (--hf-home, --outbox, or the variable that points there)",
            ):
                directory.mkdir()
            created.append(directory)
    account = pwd.getpwnam(owner)
    if os.geteuid() == 0 and account.pw_uid != 0:
        for directory in created:
            os.chown(directory, account.pw_uid, account.pw_gid)
    return created


@contextmanager
def _permission_to(path: Path, hint: str) -> Iterator[None]:
    try:
        yield
    except PermissionError:
        raise UsageError(f"cannot write {path}: permission denied", hint=hint) from None


def _unit_dir_hint(scope: Scope) -> str:
    if scope == "system":
        return "system units need root: run the same command with sudo, e.g. `sudo $(command -v vbatch) ...`"
    return "choose a writable directory with --unit-dir or $VBATCH_SYSTEMD_DIR"
