"""What a benchmark ran on: CPU, memory, GPUs, versions; and a model folder's quantization.

Recorded in every report because the numbers mean nothing without them. Read from /proc and
nvidia-smi where present; anything unreadable is left out rather than guessed.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

from vbatch import __version__
from vbatch.config.profiles import installed_vllm_version
from vbatch.services.bench.report import Environment


def environment() -> Environment:
    return Environment(
        cpu=_cpu_model(),
        cpu_cores=os.cpu_count() or 0,
        memory_gib=_memory_gib(),
        gpus=_gpus(),
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        vbatch_version=__version__,
        vllm_version=installed_vllm_version(),
        load_average=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpus() -> list[str]:
    """NVIDIA GPUs as "name (memory)", from nvidia-smi; [] where there is none."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [
        f"{name.strip()} ({memory.strip()})"
        for name, _, memory in (line.partition(",") for line in out.splitlines() if line.strip())
    ]


def model_dir_quantization(model: str) -> str | None:
    """The quantization a local Hugging Face model folder declares (config.json
    quantization_config.quant_method), "none" when it declares none; None when not a local folder.
    (The dtype it runs in is the server's choice, not the checkpoint's: not reported here.)"""
    config = Path(model) / "config.json"
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    method = (data.get("quantization_config") or {}).get("quant_method")
    return str(method) if method else "none"
