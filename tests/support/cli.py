"""Running `vbatch` as a user would: a real subprocess of the real entry point."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def vbatch(*args: str, cwd: Path | None = None, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    """`python -m vbatch ARGS`, output captured as text; `popen` passes env, input, ..."""
    return subprocess.run(
        [sys.executable, "-m", "vbatch", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, **popen
    )


def user_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give vbatch: no test-only engine settings, no key."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VLLM_ENABLE_V1_MULTIPROCESSING", "VBATCH_API_KEY", "VLLM_API_KEY")
    }
    return {**env, **extra}


def kill_midway(args: list[str], out: Path, lines: int = 40) -> None:
    """Start `vbatch ARGS` and SIGKILL its whole process group (as an OOM kill or power loss
    would) once `out` has `lines` results."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vbatch", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.stat().st_size > 0 and len(out.read_bytes().splitlines()) >= lines:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed; make the input bigger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
