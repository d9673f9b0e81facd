"""Stopping `vbatch run` and `vbatch drain`: SIGTERM and SIGINT end them cleanly (exit 143 / 130,
a message, the lock released, the engine stopped), and no engine process outlives a run, even
one killed with kill -9. The real CLI runs as a user's would: vLLM's engine in its own process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cli import user_env
from support.jsonl import chat_line, read_jsonl, write_batch
from support.net import free_port
from support.procs import alive, boot_id, cmdline, start_time, tree

from vbatch.storage.journal import OutputLock

RESUME = "run the same command again to resume"
LINES = 400


def survivors(processes: dict[int, int], within: float) -> list[str]:
    """The processes still running after `within` seconds (pid and command line), or []."""
    deadline = time.monotonic() + within
    while True:
        left = [pid for pid, start in processes.items() if alive(pid, start)]
        if not left or time.monotonic() > deadline:
            return [f"{pid} {cmdline(pid)!r}" for pid in left]
        time.sleep(0.1)


class Started:
    """`python -m vbatch ARGS` as a user starts it, in its own process group (as a shell job)."""

    def __init__(self, args: list[str], stderr_path: Path):
        self.stderr_path = stderr_path
        with open(stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vbatch", *args],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=user_env(),
                start_new_session=True,
            )

    def engine_running(self, results: Path, lines: int = 16) -> dict[int, int]:
        """Wait until `results` has `lines` lines; then every process below vbatch (the engine)."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            if results.exists() and len(results.read_bytes().splitlines()) >= lines:
                break
            time.sleep(0.05)
        assert self.proc.poll() is None, f"vbatch ended before it was stopped: {self.stderr()}"
        processes = tree(self.proc.pid)
        engine = [pid for pid in processes if b"vbatch.processes" not in cmdline(pid)]
        assert engine, f"no engine process below vbatch: {[cmdline(pid) for pid in processes]}"
        return processes

    def wait(self) -> int:
        return self.proc.wait(timeout=120)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


@pytest.mark.engine
def test_sigterm_and_ctrl_c_stop_the_run_and_its_engine_and_the_rerun_completes(tmp_path: Path, tiny_profile: Path):
    """SIGTERM (kill, systemd), then a group SIGINT on the resumed run (Ctrl-C: the engine gets
    it too), stop the run cleanly: the documented exit code and message, not an engine crash;
    the lock released; no engine process left. A rerun then writes every line exactly once."""
    src = tmp_path / "big.jsonl"
    src.write_text("".join(json.dumps(chat_line(i, max_tokens=32)) + "\n" for i in range(LINES)))
    out = tmp_path / "big.results.jsonl"
    args = ["run", str(src), "--profile", str(tiny_profile), "-q"]

    terminated = Started(args, tmp_path / "terminated.txt")
    processes = terminated.engine_running(out)
    os.kill(terminated.proc.pid, signal.SIGTERM)
    assert terminated.wait() == 143, terminated.stderr()
    assert f"terminated (SIGTERM): {RESUME}" in terminated.stderr()
    assert not (tmp_path / "big.lock").exists()
    assert survivors(processes, within=5) == []
    written = len(read_jsonl(out))  # whole lines only
    assert 0 < written < LINES

    interrupted = Started(args, tmp_path / "interrupted.txt")
    processes = interrupted.engine_running(out, lines=written + 16)
    os.killpg(interrupted.proc.pid, signal.SIGINT)
    assert interrupted.wait() == 130, interrupted.stderr()
    assert f"interrupted (SIGINT): {RESUME}" in interrupted.stderr()
    assert "engine crashed" not in interrupted.stderr() and "out of memory" not in interrupted.stderr()
    assert not (tmp_path / "big.lock").exists()
    assert survivors(processes, within=5) == []

    rerun = subprocess.run(
        [sys.executable, "-m", "vbatch", *args, "--json"], capture_output=True, text=True, check=False, timeout=300
    )  # the engine in this process (conftest): quicker
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["requests"]["resumed"] > written
    ids = [record["custom_id"] for record in read_jsonl(out)]
    assert sorted(ids) == sorted(f"c{i}" for i in range(LINES))


@pytest.mark.engine
def test_kill_minus_nine_leaves_no_engine_process(tmp_path: Path, tiny_profile: Path):
    """kill -9 of vbatch alone (its engine not signalled, as the OOM killer does): the reaper it
    started stops the engine within seconds, then leaves."""
    src = tmp_path / "big.jsonl"
    src.write_text("".join(json.dumps(chat_line(i, max_tokens=32)) + "\n" for i in range(LINES)))
    run = Started(["run", str(src), "--profile", str(tiny_profile), "-q"], tmp_path / "stderr.txt")
    processes = run.engine_running(tmp_path / "big.results.jsonl")
    os.kill(run.proc.pid, signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    assert survivors(processes, within=10) == []
    assert "stopped its engine processes" in run.stderr()


@pytest.mark.engine
def test_sigterm_stops_a_drain_and_its_engine_and_leaves_the_job_to_resume(tmp_path: Path, tiny_profile: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_batch(inbox / "big.jsonl", [chat_line(i, max_tokens=32) for i in range(LINES)], 100)
    args = ["drain", str(inbox), "--profile", str(tiny_profile), "--engine", "local", "-q"]
    drain = Started(args, tmp_path / "stderr.txt")
    processes = drain.engine_running(inbox / "done" / "big" / "big.results.jsonl")
    os.kill(drain.proc.pid, signal.SIGTERM)

    assert drain.wait() == 143, drain.stderr()
    assert f"terminated (SIGTERM): {RESUME}" in drain.stderr()
    assert survivors(processes, within=5) == []
    assert sorted(os.listdir(inbox)) == ["done"]  # the inbox lock released
    meta = json.loads((inbox / "done" / "big" / "big.meta.json").read_text())
    assert meta["status"] == "running" and meta["error"] is None  # the next drain resumes it


# --- The lock file's record: the next run stops what a dead run left -------------------------


def fabricated_lock(
    path: Path, engine: tuple[int, int], holder: tuple[int, int] | None = None, host: str | None = None
) -> None:
    """The lock file of a run that died (a finished process, unless `holder` is given)."""
    if holder is None:
        gone = subprocess.Popen(["true"])
        gone.wait()
        holder = (gone.pid, 1)
    path.write_text(
        json.dumps(
            {
                "pid": holder[0],
                "start": holder[1],
                "host": host or socket.gethostname(),
                "boot": boot_id(),
                "started": "2026-01-01T00:00:00+00:00",
                "command": "vbatch ...",
                "engine": [list(engine)],
            }
        )
        + "\n"
    )


def sleeper() -> tuple[subprocess.Popen, int]:
    """A stand-in for an engine process that outlived its run."""
    proc = subprocess.Popen(["sleep", "300"])
    start = start_time(proc.pid)
    assert start is not None
    return proc, start


def test_the_next_drain_stops_the_engine_a_dead_drain_left_and_nothing_else(tmp_path: Path):
    """An empty inbox: nothing loads, the lock is taken (and the check made) all the same."""
    engine, start = sleeper()
    lock = tmp_path / ".vbatch-drain.lock"

    def drain() -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "vbatch", "drain", str(tmp_path), "--profile", "cpu"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert not lock.exists()
        return proc.stderr

    try:
        fabricated_lock(lock, (engine.pid, start), holder=(os.getpid(), start_time(os.getpid())))
        drain()  # its run is alive (a lock file removed and re-created by hand?): never touched
        fabricated_lock(lock, (engine.pid, start + 1))
        drain()  # the pid names another process now
        fabricated_lock(lock, (engine.pid, start), host="another-host")
        drain()
        assert engine.poll() is None

        fabricated_lock(lock, (engine.pid, start))
        stderr = drain()
        assert engine.wait(timeout=10) == -signal.SIGTERM
        assert "left running by an earlier vbatch" in stderr and f"pids {engine.pid}" in stderr
    finally:
        engine.kill()
        engine.wait()


def test_the_next_run_stops_the_engine_a_dead_run_left_before_its_engine_starts(tmp_path: Path):
    """The run then fails to reach its (absent) server: what matters is that the check came first."""
    engine, start = sleeper()
    try:
        src = tmp_path / "a.jsonl"
        src.write_text(json.dumps(chat_line(1)) + "\n")
        fabricated_lock(tmp_path / "a.lock", (engine.pid, start))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "vbatch",
                "run",
                str(src),
                "--profile",
                "cpu",
                "--engine",
                f"server=http://127.0.0.1:{free_port()}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert proc.returncode == 5, proc.stderr
        assert engine.wait(timeout=10) == -signal.SIGTERM
        assert proc.stderr.index("left running by an earlier vbatch") < proc.stderr.index("no server answers")
        assert not (tmp_path / "a.lock").exists()
    finally:
        engine.kill()
        engine.wait()


def test_a_forked_child_does_not_keep_the_output_locked(tmp_path: Path):
    """vLLM forks its engine (by default): should the engine outlive a killed run, the next run
    must still get the lock, to stop that engine."""
    script = (
        "import os, sys, time\n"
        "from vbatch.storage.journal import OutputLock\n"
        f"OutputLock('out', {str(tmp_path / 'out.lock')!r}).acquire()\n"
        "child = os.fork()\n"
        "if child == 0:\n"
        "    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the test reads the parent's output to its end\n"
        "    os.dup2(1, 2)\n"
        "    time.sleep(300)\n"
        "print(child, flush=True)\n"
        "os._exit(0)  # dies holding the lock, as on kill -9\n"
    )
    holder = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60)
    child = int(holder.stdout)
    try:
        assert start_time(child) is not None
        with OutputLock("out", str(tmp_path / "out.lock")):
            pass
    finally:
        os.kill(child, signal.SIGKILL)
