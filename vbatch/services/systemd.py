"""Start-on-boot and schedules: systemd units and crontab lines for `vbatch serve` / `vbatch drain`.

Pure: typed specs in, unit-file text out; no file, process or environment access. The facts
about the machine (interpreter, home, cache directories) arrive as a `HostPaths` gathered by
`vbatch.services.systemd_install`, which also writes, enables and removes the files.

Every unit runs `<python> -m vbatch ...` with the interpreter that ran the install, so a venv
keeps working without being activated. Units are sandboxed (read-only system and home, private
/tmp, no privilege gain) with exactly the cache and state directories the job writes made
writable, and passed in the environment so the tools write where the sandbox allows. The GPU
stays reachable: nothing restricts devices (CUDA opens /dev/nvidia*).

Unit names: `vbatch-serve.service`; per inbox `vbatch-drain-<inbox name>-<hash>.service` +
`.timer`, so several inboxes each get their own schedule, and the same inbox always maps to the
same names (the hash is of its absolute path).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from vbatch.errors import UsageError

Scope = Literal["user", "system"]

SERVE_UNIT = "vbatch-serve.service"
DRAIN_PREFIX = "vbatch-drain-"
#: PATH a unit or cron job gets after the interpreter's own bin directory (a venv's scripts).
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


class HostPaths(BaseModel):
    """Where things are for the account the job runs as (see systemd_install.discover_host)."""

    model_config = ConfigDict(extra="forbid")

    #: Absolute interpreter that runs `-m vbatch` (a venv's python stays unresolved on purpose).
    python: str
    #: Account the job runs as (User= of a system unit; the owner of a user unit's manager).
    run_as: str
    #: Cache directories the job writes, by the environment variable that points the tool at
    #: them: HF_HOME, VLLM_CACHE_ROOT, TRITON_CACHE_DIR, CUDA_CACHE_PATH.
    caches: dict[str, str]
    #: vbatch's own state directory ($XDG_STATE_HOME/vbatch): logs of scheduled runs.
    state_dir: str
    #: $VBATCH_PROFILES_DIR of the installing shell, so a unit finds the same profiles.
    profiles_dir: str | None = None
    #: nvidia-modprobe, for a system unit to load nvidia-uvm at boot (None: not installed).
    nvidia_modprobe: str | None = None

    @property
    def path_env(self) -> str:
        bin_dir = str(PurePosixPath(self.python).parent)
        return ":".join(dict.fromkeys((bin_dir, *SYSTEM_PATH)))


class ServeRequest(BaseModel):
    """`vbatch systemd install serve`: what the unit's `vbatch serve` gets (None: profile's)."""

    model_config = ConfigDict(extra="forbid")

    scope: Scope = "user"
    profile: str
    model: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    api_key_file: str | None = None
    insecure: bool = False


class DrainRequest(BaseModel):
    """`vbatch systemd install timer` and `vbatch cron-line`: which inbox, when, how."""

    model_config = ConfigDict(extra="forbid")

    scope: Scope = "user"
    inbox: str
    outbox: str | None = None
    profile: str
    #: systemd calendar expression (timer) or five cron fields (cron-line).
    schedule: str
    #: The drain's --metrics-textfile (an absolute path), for node_exporter's textfile collector.
    metrics_textfile: str | None = None


class ServiceSpec(BaseModel):
    """One .service file."""

    model_config = ConfigDict(extra="forbid")

    description: str
    scope: Scope
    command: list[str]
    environment: dict[str, str]
    writable_paths: list[str]
    #: User= of a system unit; a user unit always runs as its manager's owner.
    run_as: str | None = None
    #: A job a timer starts and that ends (Type=oneshot), rather than a server kept running.
    oneshot: bool = False
    #: Run with full privileges before the sandboxed start, failure ignored (nvidia-modprobe).
    privileged_pre_start: list[str] | None = None
    #: Comment lines at the top: who wrote the file and how to change it.
    header: list[str] = Field(default_factory=list)


class TimerSpec(BaseModel):
    """One .timer file; it starts the .service of the same name."""

    model_config = ConfigDict(extra="forbid")

    description: str
    on_calendar: str
    header: list[str] = Field(default_factory=list)


class UnitFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    text: str


class InstallPlan(BaseModel):
    """What an install writes, which directories must exist first, and what gets enabled."""

    model_config = ConfigDict(extra="forbid")

    scope: Scope
    run_as: str
    units: list[UnitFile]
    #: The unit `systemctl enable --now` gets: the server, or the drain's timer.
    enable: str
    #: The service whose journal holds the job's output.
    service: str
    #: Writable paths of the sandbox: a path missing at start fails the unit, so they are made.
    make_dirs: list[str]


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------


def serve_units(request: ServeRequest, host: HostPaths) -> InstallPlan:
    """The server unit: `vbatch serve` at boot, restarted when it fails."""
    command = [host.python, "-m", "vbatch", "serve", "--profile", request.profile]
    for flag, value in (
        ("--model", request.model),
        ("--host", request.host),
        ("--port", request.port),
        ("--api-key-file", request.api_key_file),
    ):
        if value is not None:
            command += [flag, str(value)]
    if request.insecure:
        command.append("--insecure")
    writable = [*host.caches.values(), host.state_dir]
    service = ServiceSpec(
        description=f"vbatch OpenAI-compatible server (profile {request.profile})",
        scope=request.scope,
        command=command,
        environment=unit_environment(host),
        writable_paths=writable,
        run_as=host.run_as if request.scope == "system" else None,
        privileged_pre_start=_nvidia_pre_start(request.scope, host),
        header=_header("serve", request.scope),
    )
    return InstallPlan(
        scope=request.scope,
        run_as=host.run_as,
        units=[UnitFile(name=SERVE_UNIT, text=render_service(service))],
        enable=SERVE_UNIT,
        service=SERVE_UNIT,
        make_dirs=writable,
    )


def drain_units(request: DrainRequest, host: HostPaths) -> InstallPlan:
    """A oneshot `vbatch drain INBOX` service and the timer that starts it on `schedule`."""
    stem = drain_unit_stem(request.inbox)
    writable = [*host.caches.values(), host.state_dir, request.inbox]
    if request.outbox:
        writable.append(request.outbox)
    if request.metrics_textfile:  # written beside itself, then renamed: its folder must be writable
        writable.append(os.path.dirname(request.metrics_textfile))
    header = _header("timer", request.scope, f" --inbox {shlex.quote(request.inbox)}")
    service = ServiceSpec(
        description=f"vbatch: run the batch files waiting in {request.inbox}",
        scope=request.scope,
        command=drain_command(request, host),
        environment=unit_environment(host),
        writable_paths=writable,
        run_as=host.run_as if request.scope == "system" else None,
        oneshot=True,
        privileged_pre_start=_nvidia_pre_start(request.scope, host),
        header=header,
    )
    timer = TimerSpec(
        description=f"vbatch: drain {request.inbox} on schedule {request.schedule}",
        on_calendar=request.schedule,
        header=header,
    )
    return InstallPlan(
        scope=request.scope,
        run_as=host.run_as,
        units=[
            UnitFile(name=f"{stem}.service", text=render_service(service)),
            UnitFile(name=f"{stem}.timer", text=render_timer(timer)),
        ],
        enable=f"{stem}.timer",
        service=f"{stem}.service",
        make_dirs=writable,
    )


def drain_command(request: DrainRequest, host: HostPaths) -> list[str]:
    command = [host.python, "-m", "vbatch", "drain", request.inbox, "--profile", request.profile]
    if request.outbox:
        command += ["--outbox", request.outbox]
    if request.metrics_textfile:
        command += ["--metrics-textfile", request.metrics_textfile]
    return command


def drain_unit_stem(inbox: str) -> str:
    """`vbatch-drain-<inbox name>-<8 hex of the absolute path>`: readable, shell-safe, unique.

    (systemd-escape's `\\x2d` style would be unique too, but needs quoting in every shell command.)
    """
    name = re.sub(r"[^A-Za-z0-9_.]+", "-", PurePosixPath(inbox).name).strip("-.")[:40] or "root"
    digest = hashlib.sha256(inbox.encode()).hexdigest()[:8]
    return f"{DRAIN_PREFIX}{name}-{digest}"


def unit_environment(host: HostPaths) -> dict[str, str]:
    """Environment of a unit: the cache locations the sandbox makes writable, said explicitly."""
    return {**job_environment(host), **host.caches, "PYTHONUNBUFFERED": "1"}


def job_environment(host: HostPaths) -> dict[str, str]:
    """What a job started outside a login shell needs: PATH with the venv, the HF cache."""
    env = {"PATH": host.path_env, "HF_HOME": host.caches["HF_HOME"]}
    if host.profiles_dir:
        env["VBATCH_PROFILES_DIR"] = host.profiles_dir
    return env


def _nvidia_pre_start(scope: Scope, host: HostPaths) -> list[str] | None:
    # CUDA loads nvidia-uvm on first use through the setuid nvidia-modprobe, which
    # NoNewPrivileges= forbids; early at boot nothing may have loaded it yet. Only a system
    # manager can run a privileged pre-start.
    if scope != "system" or host.nvidia_modprobe is None:
        return None
    return [host.nvidia_modprobe, "-u", "-c=0"]


def _header(what: str, scope: Scope, selector: str = "") -> list[str]:
    flag = "" if scope == "user" else " --system"
    return [
        f"Written by `vbatch systemd install {what}`: run that again to change this unit,",
        f"`vbatch systemd uninstall {what}{flag}{selector}` to remove it.",
    ]


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

#: Sandbox settings that keep the GPU usable. Deliberately absent: PrivateDevices= and
#: DevicePolicy=/DeviceAllow= (CUDA opens /dev/nvidia*), ProtectClock= (implies a device
#: allow-list), MemoryDenyWriteExecute= (Triton, CUDA and torch JIT-compile code), and a
#: SystemCallFilter= (CUDA's system calls are not an allow-list we can vouch for).
_SANDBOX_FILES = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=read-only")
_SANDBOX_REST = (
    "PrivateTmp=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectControlGroups=yes",
    "ProtectHostname=yes",
    "RestrictSUIDSGID=yes",
    "RestrictRealtime=yes",
    "RestrictNamespaces=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    # AF_NETLINK: interface discovery (getifaddrs) by NCCL and torch.distributed.
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "UMask=0027",
)


def render_service(spec: ServiceSpec) -> str:
    lines = [
        *(f"# {line}" for line in spec.header),
        "[Unit]",
        f"Description={_plain(spec.description)}",
        "Wants=network-online.target",
        "After=network-online.target",
    ]
    if not spec.oneshot:
        # A server that keeps crashing (bad profile, out of memory) stops after 5 tries in 10 min.
        lines += ["StartLimitIntervalSec=600", "StartLimitBurst=5"]
    lines += ["", "[Service]"]
    # exec: a missing interpreter fails the start; oneshot: "done" is when the drain ends.
    lines.append("Type=oneshot" if spec.oneshot else "Type=exec")
    if spec.run_as:
        lines.append(f"User={spec.run_as}")
    if spec.privileged_pre_start:
        lines.append("ExecStartPre=-+" + _command_line(spec.privileged_pre_start))
    lines.append("ExecStart=" + _command_line(spec.command))
    if spec.oneshot:
        # `vbatch drain` exits 1 when it finished but some requests failed: that is data in the
        # errors files (see `vbatch status`), not a failed service.
        lines.append("SuccessExitStatus=1")
    else:
        lines += ["Restart=on-failure", "RestartSec=10s"]
    lines += [f"Environment={_quote(f'{key}={value}', dollar=False)}" for key, value in spec.environment.items()]
    lines.append("# Sandbox: the system and home are read-only except the paths this job writes.")
    lines += _SANDBOX_FILES
    lines += [f"ReadWritePaths={_quote(path, dollar=False)}" for path in dict.fromkeys(spec.writable_paths)]
    lines += _SANDBOX_REST
    if spec.scope == "system":
        # The job needs no capabilities (a user unit has none anyway) nor sight of others' processes.
        lines += ["CapabilityBoundingSet=", "ProtectProc=invisible"]
    if not spec.oneshot:
        target = "default.target" if spec.scope == "user" else "multi-user.target"
        lines += ["", "[Install]", f"WantedBy={target}"]
    return "\n".join(lines) + "\n"


def render_timer(spec: TimerSpec) -> str:
    lines = [
        *(f"# {line}" for line in spec.header),
        "[Unit]",
        f"Description={_plain(spec.description)}",
        "",
        "[Timer]",
        f"OnCalendar={_plain(spec.on_calendar)}",
        # A run missed while the machine was off happens at the next boot.
        "Persistent=true",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]
    return "\n".join(lines) + "\n"


def plan_text(plan: InstallPlan, unit_dir: str) -> str:
    """Every unit of a plan, each under a comment naming its file (so one unit redirects cleanly)."""
    return "\n".join(f"# {PurePosixPath(unit_dir, unit.name)}\n{unit.text}" for unit in plan.units)


_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def _quote(word: str, *, dollar: bool) -> str:
    """One word as systemd reads it back: quoted when needed, % (specifiers) and, on command
    lines, $ (variable expansion) doubled."""
    if not _SAFE_WORD.match(word):
        escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        word = f'"{escaped}"'
    word = word.replace("%", "%%")
    return word.replace("$", "$$") if dollar else word


def _command_line(argv: list[str]) -> str:
    return " ".join(_quote(word, dollar=True) for word in argv)


def _plain(text: str) -> str:
    """A free-text value (Description=, OnCalendar=): one line, specifiers escaped."""
    return " ".join(text.split()).replace("%", "%%")


# --------------------------------------------------------------------------------------------
# Hints
# --------------------------------------------------------------------------------------------


def next_steps(plan: InstallPlan, *, enabled: bool, lingering: bool) -> list[str]:
    """What to run next: status, logs, and what a user unit needs to start at boot."""
    user = plan.scope == "user"
    ctl = "systemctl --user" if user else "systemctl"
    journal = "journalctl --user" if user else "journalctl"
    steps = []
    if not enabled:
        steps.append(f"enable it: {ctl} daemon-reload && {ctl} enable --now {plan.enable}")
    steps.append(f"status: {ctl} status {plan.enable}")
    if plan.enable.endswith(".timer"):
        steps.append(f"next run: {ctl} list-timers {plan.enable}; run now: {ctl} start {plan.service}")
    steps.append(f"logs: {journal} -u {plan.service} -f")
    if user and not lingering:
        steps.append(
            f"a user unit starts when {plan.run_as} logs in; to start it at boot without a login, "
            f"run once: sudo loginctl enable-linger {plan.run_as}"
        )
    return steps


# --------------------------------------------------------------------------------------------
# Cron
# --------------------------------------------------------------------------------------------

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
#: (name, lowest, highest, names of values from lowest on) per field, in crontab order.
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _DAYS),
)
_CRON_ITEM = re.compile(r"^(?P<range>\*|\d+(?:-\d+)?)(?:/(?P<step>\d+))?$")
CRON_HINT = (
    "five fields: minute hour day-of-month month day-of-week, e.g. '0 2 * * *' (daily at 02:00) "
    "or '30 */6 * * 1-5' (every 6 hours on weekdays)"
)


def check_cron_schedule(schedule: str) -> list[str]:
    """The five fields of a crontab schedule, or a UsageError naming the field that is wrong."""
    fields = schedule.split()
    if len(fields) != len(_CRON_FIELDS):
        raise UsageError(f"bad cron schedule {schedule!r}: {len(fields)} fields, cron wants 5", hint=CRON_HINT)
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS):
        problem = _cron_field_problem(text, low, high, names)
        if problem:
            raise UsageError(f"bad cron schedule {schedule!r}: {name} {text!r}: {problem}", hint=CRON_HINT)
    return fields


def _cron_field_problem(text: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    if names and text.lower() in names:
        return None  # crontab(5): a name stands alone, never in a range or list
    for item in text.split(","):
        match = _CRON_ITEM.match(item)
        if not match:
            return f"{item!r} is not *, N, N-M or one of those /STEP"
        if match["step"] is not None and int(match["step"]) == 0:
            return "a step of 0"
        if match["range"] != "*":
            start, _, end = match["range"].partition("-")
            bounds = [int(start), int(end or start)]
            if not all(low <= value <= high for value in bounds):
                return f"values go from {low} to {high}"
            if bounds[0] > bounds[1]:
                return f"range {match['range']} runs backwards"
    return None


def cron_line(request: DrainRequest, host: HostPaths, log_file: str) -> str:
    """A crontab line running `vbatch drain` with absolute paths, its output appended to a log.

    No flock: drain takes the inbox's own lock, so an overlapping run leaves at once.
    """
    fields = check_cron_schedule(request.schedule)
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in job_environment(host).items())
    command = " ".join(shlex.quote(word) for word in drain_command(request, host))
    line = f"{' '.join(fields)} {env} {command} >> {shlex.quote(log_file)} 2>&1"
    # cron turns an unescaped % in the command into a newline.
    return line.replace("%", "\\%")
