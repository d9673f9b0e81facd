"""`vbatch systemd install|uninstall` and `vbatch cron-line` through the real CLI.

Every unit vbatch writes must pass `systemd-analyze verify` (Debian's systemd 252 here) with no
complaint at all: verify exits 0 on an unknown key and only prints a warning, so its output is
checked too. The tests never enable anything: they print, or write into a temporary unit
directory with --files-only; HOME points into tmp_path so no cache directory of the real account
is touched.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import vbatch as run_vbatch

from vbatch.config.profiles import builtin_profiles_dir, default_profile_name
from vbatch.services.systemd import HostPaths, ServeRequest, drain_unit_stem, serve_units

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
#: Settings of the environment that would change the paths or the profile the units get.
ISOLATED_VARS = (
    "HF_HOME",
    "VLLM_CACHE_ROOT",
    "TRITON_CACHE_DIR",
    "CUDA_CACHE_PATH",
    "XDG_CACHE_HOME",
    "XDG_STATE_HOME",
    "XDG_CONFIG_HOME",
    "VBATCH_SYSTEMD_DIR",
    "VBATCH_PROFILE",
    "VBATCH_PROFILES_DIR",
    "SUDO_USER",
)
SANDBOX = ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=read-only", "PrivateTmp=yes")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in ISOLATED_VARS}
    return {**clean, "HOME": str(home)}


def vbatch(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return run_vbatch(*args, env=env, cwd=cwd, timeout=120)


def verify(paths: list[Path], scope: str, tmp_path: Path) -> None:
    """Fail on any complaint of `systemd-analyze verify` about our units."""
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    # --user looks up the user manager's runtime directory; a container has no /run/user/UID.
    proc = subprocess.run(
        [ANALYZE, *(["--user"] if scope == "user" else []), "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
    )
    # verify also loads the machine's own units ours name (network-online.target,
    # multi-user.target, timers.target); a complaint about one of those files is not about ours.
    ours = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and not re.match(r"^(/usr)?/lib/systemd/|^/etc/systemd/", line)
    ]
    assert proc.returncode == 0 and ours == [], f"systemd-analyze verify: rc={proc.returncode}\n" + "\n".join(ours)


def printed_units(stdout: str) -> dict[str, str]:
    """`--print` output split into {file name: text}; each unit starts with a `# /dir/NAME` line."""
    units: dict[str, str] = {}
    for chunk in re.split(r"^(?=# /)", stdout, flags=re.M):
        if chunk.strip():
            header, _, _ = chunk.partition("\n")
            units[Path(header[2:].strip()).name] = chunk
    return units


def write_units(units: dict[str, str], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in units.items():
        (directory / name).write_text(text)
    return [directory / name for name in units]


def all_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*"))


# --------------------------------------------------------------------------------------------
# The server unit
# --------------------------------------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize("scope", ["user", "system"])
def test_print_shows_a_serve_unit_that_verifies_and_writes_nothing(scope: str, env, tmp_path: Path):
    unit_dir = tmp_path / "units"
    # The "done": `vbatch systemd install serve --user --print` (default profile).
    result = vbatch(
        {**env, "VBATCH_SYSTEMD_DIR": str(unit_dir)}, "systemd", "install", "serve", f"--{scope}", "--print"
    )
    assert result.returncode == 0, result.stderr
    assert not unit_dir.exists() and all_files(Path(env["HOME"])) == []
    units = printed_units(result.stdout)
    assert list(units) == ["vbatch-serve.service"]
    text = units["vbatch-serve.service"]
    assert result.stdout.startswith(f"# {unit_dir}/vbatch-serve.service\n")
    home = env["HOME"]
    assert f"ExecStart={sys.executable} -m vbatch serve --profile {default_profile_name()}\n" in text
    assert f"Environment=HF_HOME={home}/.cache/huggingface\n" in text
    for path in (f"{home}/.cache/huggingface", f"{home}/.cache/vllm", f"{home}/.local/state/vbatch"):
        assert f"ReadWritePaths={path}\n" in text
    assert all(f"{line}\n" in text for line in SANDBOX)
    assert "Restart=on-failure\n" in text and "Wants=network-online.target\n" in text
    assert "PrivateDevices" not in text and "DeviceAllow" not in text  # the GPU lives in /dev/nvidia*
    target = "default.target" if scope == "user" else "multi-user.target"
    assert f"WantedBy={target}\n" in text
    assert ("User=" in text) == (scope == "system")
    verify(write_units(units, tmp_path / "check"), scope, tmp_path)


@needs_analyze
def test_install_writes_the_printed_unit_and_its_writable_dirs_uninstall_removes_it(env, tmp_path: Path):
    unit_dir = tmp_path / "units"
    key = tmp_path / "api key"
    key.write_text("secret\n")
    args = [
        "--profile",
        "cpu",
        "--host",
        "0.0.0.0",
        "--port",
        "8123",
        "--api-key-file",
        str(key),
        "--unit-dir",
        str(unit_dir),
    ]
    printed = vbatch(env, "systemd", "install", "serve", *args, "--print")
    installed = vbatch(env, "systemd", "install", "serve", *args, "--files-only")
    assert installed.returncode == 0, installed.stderr
    unit = unit_dir / "vbatch-serve.service"
    assert f"# {unit}\n{unit.read_text()}" == printed.stdout
    assert f'--host 0.0.0.0 --port 8123 --api-key-file "{key}"\n' in unit.read_text()
    home = Path(env["HOME"])
    for made in (
        home / ".cache/huggingface",
        home / ".cache/vllm",
        home / ".triton/cache",
        home / ".local/state/vbatch",
    ):
        assert made.is_dir()
    assert f"wrote {unit}" in installed.stdout
    assert "systemctl --user enable --now vbatch-serve.service" in installed.stdout
    assert "loginctl enable-linger" in installed.stdout  # no lingering for this account here
    verify([unit], "user", tmp_path)

    removed = vbatch(env, "systemd", "uninstall", "serve", "--unit-dir", str(unit_dir), "--files-only")
    assert removed.returncode == 0, removed.stderr
    assert not unit.exists()
    again = vbatch(env, "systemd", "uninstall", "serve", "--unit-dir", str(unit_dir), "--files-only")
    assert again.returncode == 2 and "not installed" in again.stderr


def test_public_address_without_a_key_file_is_refused(env, tmp_path: Path):
    result = vbatch(
        env,
        "systemd",
        "install",
        "serve",
        "--profile",
        "cpu",
        "--host",
        "0.0.0.0",
        "--unit-dir",
        str(tmp_path / "units"),
        "--files-only",
    )
    assert result.returncode == 2
    assert "without an API key" in result.stderr and "--api-key-file" in result.stderr
    assert not (tmp_path / "units").exists()


def test_missing_key_file_and_unknown_profile_are_refused(env, tmp_path: Path):
    missing = vbatch(
        env, "systemd", "install", "serve", "--profile", "cpu", "--api-key-file", str(tmp_path / "nope"), "--print"
    )
    assert missing.returncode == 2 and "API key file not found" in missing.stderr
    unknown = vbatch(env, "systemd", "install", "serve", "--profile", "no-such-profile", "--print")
    assert unknown.returncode == 3 and "unknown profile" in unknown.stderr


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here: the install would really enable")
def test_without_a_running_systemd_install_says_what_to_do_and_writes_nothing(env, tmp_path: Path):
    unit_dir = tmp_path / "units"
    result = vbatch(env, "systemd", "install", "serve", "--profile", "cpu", "--unit-dir", str(unit_dir))
    assert result.returncode == 2
    assert "systemd is not running" in result.stderr or "systemctl not found" in result.stderr
    assert "--print" in result.stderr and "vbatch cron-line" in result.stderr
    assert not unit_dir.exists() and all_files(Path(env["HOME"])) == []


@needs_analyze
def test_a_system_unit_loads_nvidia_uvm_with_privilege_before_the_sandbox(tmp_path: Path):
    host = HostPaths(
        python=sys.executable,
        run_as="root",
        caches={"HF_HOME": "/var/cache/hf"},
        state_dir="/var/lib/vbatch",
        nvidia_modprobe="/bin/true",
    )
    plan = serve_units(ServeRequest(scope="system", profile="cpu"), host)
    text = plan.units[0].text
    assert "ExecStartPre=-+/bin/true -u -c=0\n" in text
    verify(write_units({"vbatch-serve.service": text}, tmp_path / "units"), "system", tmp_path)
    user_text = serve_units(ServeRequest(scope="user", profile="cpu"), host).units[0].text
    assert "ExecStartPre" not in user_text  # a user manager cannot run a privileged command


# --------------------------------------------------------------------------------------------
# The drain timer
# --------------------------------------------------------------------------------------------


@needs_analyze
@pytest.mark.parametrize("scope", ["user", "system"])
def test_timer_install_writes_a_verified_service_and_timer_pair_and_uninstall_removes_both(scope, env, tmp_path: Path):
    inbox = tmp_path / "my inbox"  # a space: quoting in ExecStart= and ReadWritePaths=
    inbox.mkdir()
    outbox = tmp_path / "outbox"
    unit_dir = tmp_path / "units"
    common = [f"--{scope}", "--unit-dir", str(unit_dir)]
    result = vbatch(
        env,
        "systemd",
        "install",
        "timer",
        "--inbox",
        str(inbox),
        "--outbox",
        str(outbox),
        "--schedule",
        "Mon..Fri 22:30",
        "--profile",
        "cpu",
        *common,
        "--files-only",
    )
    assert result.returncode == 0, result.stderr
    stem = drain_unit_stem(str(inbox))
    service, timer = unit_dir / f"{stem}.service", unit_dir / f"{stem}.timer"
    assert sorted(unit_dir.iterdir()) == [service, timer]
    assert outbox.is_dir()
    service_text, timer_text = service.read_text(), timer.read_text()
    assert "Type=oneshot\n" in service_text
    assert f'ExecStart={sys.executable} -m vbatch drain "{inbox}" --profile cpu --outbox {outbox}\n' in service_text
    assert f'ReadWritePaths="{inbox}"\n' in service_text and f"ReadWritePaths={outbox}\n" in service_text
    assert "[Install]" not in service_text  # started by its timer only
    assert "OnCalendar=Mon..Fri 22:30\n" in timer_text and "Persistent=true\n" in timer_text
    assert "WantedBy=timers.target\n" in timer_text
    verify([service, timer], scope, tmp_path)

    removed = vbatch(env, "systemd", "uninstall", "timer", "--inbox", str(inbox), *common, "--files-only")
    assert removed.returncode == 0, removed.stderr
    assert list(unit_dir.iterdir()) == []


@needs_analyze
def test_default_timer_print_makes_relative_paths_absolute_verifies_and_writes_nothing(env, tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(builtin_profiles_dir() / "cpu.toml", tmp_path / "mine.toml")
    result = vbatch(
        env, "systemd", "install", "timer", "--inbox", "inbox", "--profile", "mine.toml", "--print", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    units = printed_units(result.stdout)
    stem = drain_unit_stem(str(inbox))
    assert list(units) == [f"{stem}.service", f"{stem}.timer"]
    assert f"-m vbatch drain {inbox} --profile {tmp_path / 'mine.toml'}\n" in units[f"{stem}.service"]
    assert "OnCalendar=*-*-* 02:00\n" in units[f"{stem}.timer"]
    assert all_files(Path(env["HOME"])) == [] and all_files(inbox) == []
    verify(write_units(units, tmp_path / "check"), "user", tmp_path)


def test_a_scheduled_drain_writes_its_metrics_where_the_timer_and_cron_line_say(env, tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    textfile = tmp_path / "textfile" / "vbatch.prom"
    timer = vbatch(
        env, "systemd", "install", "timer", "--inbox", "inbox", "--profile", "cpu", "--print",
        "--metrics-textfile", "textfile/vbatch.prom", cwd=tmp_path,
    )  # fmt: skip
    assert timer.returncode == 0, timer.stderr
    service = printed_units(timer.stdout)[f"{drain_unit_stem(str(inbox))}.service"]
    assert f" --metrics-textfile {textfile}\n" in service  # made absolute
    assert f"ReadWritePaths={textfile.parent}" in service.splitlines()
    verify(write_units(printed_units(timer.stdout), tmp_path / "check"), "user", tmp_path)
    cron = vbatch(env, "cron-line", "--inbox", str(inbox), "--profile", "cpu", "--metrics-textfile", str(textfile))
    assert cron.returncode == 0, cron.stderr
    assert ["--metrics-textfile", str(textfile)] == shlex.split(cron.stdout)[-5:-3]


@pytest.mark.parametrize("schedule", ["bogus 99", "*-*-* 25:00", "2020-01-01"])
def test_a_bad_schedule_is_refused(schedule: str, env, tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    unit_dir = tmp_path / "units"
    result = vbatch(
        env,
        "systemd",
        "install",
        "timer",
        "--inbox",
        str(inbox),
        "--schedule",
        schedule,
        "--profile",
        "cpu",
        "--unit-dir",
        str(unit_dir),
        "--files-only",
    )
    assert result.returncode == 2
    assert f"schedule {schedule!r}" in result.stderr and "systemd-analyze calendar" in result.stderr
    assert not unit_dir.exists()


def test_each_inbox_gets_its_own_unit_names(tmp_path: Path):
    first, second = tmp_path / "a" / "inbox", tmp_path / "b" / "inbox"
    assert drain_unit_stem(str(first)) != drain_unit_stem(str(second))
    assert drain_unit_stem(str(first)) == drain_unit_stem(str(first))
    assert re.fullmatch(r"vbatch-drain-inbox-[0-9a-f]{8}", drain_unit_stem(str(first)))
    assert re.fullmatch(r"vbatch-drain-my-inbox-[0-9a-f]{8}", drain_unit_stem("/srv/my inbox%$"))


def test_missing_inbox_is_refused(env, tmp_path: Path):
    result = vbatch(
        env, "systemd", "install", "timer", "--inbox", str(tmp_path / "nope"), "--profile", "cpu", "--print"
    )
    assert result.returncode == 2 and "inbox is not a directory" in result.stderr and "mkdir -p" in result.stderr


# --------------------------------------------------------------------------------------------
# cron
# --------------------------------------------------------------------------------------------

CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")


def test_cron_line_is_five_fields_absolute_paths_and_runs_as_cron_would(env, tmp_path: Path):
    inbox = tmp_path / "in box 100%"  # a space and a % (cron turns a bare % into a newline)
    inbox.mkdir()
    result = vbatch(env, "cron-line", "--inbox", str(inbox), "--schedule", "30 1 * * 1-5", "--profile", "cpu")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert "\n" not in line
    fields, command = line.split()[:5], line.split(None, 5)[5]
    assert fields == ["30", "1", "*", "*", "1-5"] and all(CRON_FIELD.match(f) for f in fields)
    assert "%" not in command.replace("\\%", "")
    words = shlex.split(command.replace("\\%", "%"))
    env_words = [w for w in words if re.match(r"^[A-Z_]+=", w)]
    assert [w.split("=")[0] for w in env_words] == ["PATH", "HF_HOME"]
    program = words[len(env_words) :]
    assert program[:3] == [sys.executable, "-m", "vbatch"] and Path(program[0]).is_absolute()
    assert program[3:7] == ["drain", str(inbox), "--profile", "cpu"]
    assert program[-3:-1] == [
        ">>",
        str(Path(env["HOME"]) / ".local/state/vbatch" / f"{drain_unit_stem(str(inbox))}.log"),
    ]
    assert program[-1] == "2>&1"

    # Run the command the way cron does: /bin/sh, a bare environment, % unescaped by cron.
    ran = subprocess.run(
        ["/bin/sh", "-c", command.replace("\\%", "%")],
        env={"HOME": env["HOME"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    log = Path(program[-2]).read_text()
    assert "nothing to do" in log and str(inbox) in log


@pytest.mark.parametrize("schedule", ["0 2 * *", "0 24 * * *", "*/0 * * * *", "5-1 * * * *", "@daily"])
def test_a_bad_cron_schedule_is_refused(schedule: str, env, tmp_path: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    result = vbatch(env, "cron-line", "--inbox", str(inbox), "--schedule", schedule, "--profile", "cpu")
    assert result.returncode == 2 and "bad cron schedule" in result.stderr
    assert "minute hour day-of-month month day-of-week" in result.stderr
    assert result.stdout == ""
