"""`vbatch profiles check`: a profile checked against the installed vLLM without loading weights,
and whether its model fits the GPU (config/memory_fit) from files already on this machine."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from vbatch.config.checkpoint import read_checkpoint
from vbatch.config.memory_fit import MemoryFit, check_fit, context_length, is_quantized, kv_cost
from vbatch.config.profiles import (
    PACKAGE_PREFIX,
    TINY_PREFIX,
    Profile,
    installed_vllm_version,
    load_profile,
    resolve_model,
)
from vbatch.engines.vllm.compat import check_engine_args

#: Seconds nvidia-smi may take; it answers in well under one unless the driver is stuck.
NVIDIA_SMI_TIMEOUT = 10
#: The [engine] keys the fit is worked out from.
NUMERIC_ENGINE_KEYS = (
    "max_model_len",
    "gpu_memory_utilization",
    "kv_cache_memory_bytes",
    "tensor_parallel_size",
    "pipeline_parallel_size",
)


@dataclass(frozen=True)
class GpuMemory:
    """The card profiles are checked against: its memory, or (`total_bytes` None) why there is none."""

    total_bytes: int | None
    #: Where the number comes from ("nvidia-smi, GPU 0", "given"), or why there is none.
    source: str


@dataclass(frozen=True)
class ProfileCheck:
    profile: Profile
    #: Where the model (and a separate tokenizer) resolved to: a directory, or a hub id.
    model: str
    tokenizer: str | None
    vllm_version: str | None
    gpu: GpuMemory
    #: How the model fits `gpu`; None when that could not be worked out (`fit_skipped` says why).
    fit: MemoryFit | None
    fit_skipped: str | None


def find_gpu(given_bytes: int | None = None) -> GpuMemory:
    """The card to check against: `given_bytes` (planning for another machine), else the first
    GPU nvidia-smi lists (vLLM's device 0 when CUDA_VISIBLE_DEVICES does not reorder them)."""
    if given_bytes is not None:
        return GpuMemory(given_bytes, "given")
    command = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT)
    except FileNotFoundError:
        return GpuMemory(None, "no NVIDIA GPU found (nvidia-smi is not installed)")
    except OSError as err:
        return GpuMemory(None, f"no NVIDIA GPU found (nvidia-smi does not run: {err.strerror or err})")
    except subprocess.TimeoutExpired:
        return GpuMemory(None, f"nvidia-smi did not answer within {NVIDIA_SMI_TIMEOUT} s")
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        return GpuMemory(None, f"no NVIDIA GPU found (nvidia-smi: {said[0] if said else 'no GPU listed'})")
    first = next(iter(done.stdout.split()), "")
    if not first.isdigit():
        return GpuMemory(None, f"nvidia-smi gives no memory size for GPU 0 ({first!r})")
    return GpuMemory(int(first) * 2**20, "nvidia-smi, GPU 0")  # nvidia-smi counts MiB


def check_profile(ref: str, gpu: GpuMemory) -> ProfileCheck:
    """Parse the profile, check its [engine] keys with the installed vLLM (imports it: seconds),
    resolve its model, and work out how it fits `gpu`; raises ProfileError naming what is wrong.
    A fit that cannot be worked out is no error: `fit_skipped` says why."""
    profile = load_profile(ref)
    check_engine_args(profile)
    model = resolve_model(profile.model)
    tokenizer = resolve_model(profile.tokenizer) if profile.tokenizer else None
    fit, skipped = _memory_fit(profile, model, gpu)
    return ProfileCheck(profile, model, tokenizer, installed_vllm_version(), gpu, fit, skipped)


def _memory_fit(profile: Profile, model: str, gpu: GpuMemory) -> tuple[MemoryFit | None, str | None]:
    """The fit of `model` (resolved) on `gpu`, or None and why it was not worked out."""
    if profile.model.startswith((PACKAGE_PREFIX, TINY_PREFIX)):
        # the cpu and cpu-chat profiles' models: bundled or built by vbatch to run without a GPU
        return None, "the model is one vbatch bundles for the CPU: no GPU memory to check"
    engine = profile.engine
    for key in NUMERIC_ENGINE_KEYS:
        if key in engine and (isinstance(engine[key], bool) or not isinstance(engine[key], (int, float))):
            return None, f"[engine].{key} = {engine[key]!r} is not a number"
    spread = max(int(engine.get(key) or 1) for key in ("tensor_parallel_size", "pipeline_parallel_size"))
    if spread > 1:
        return None, f"the model is spread over {spread} GPUs; the check covers one"
    if gpu.total_bytes is None:
        return None, gpu.source
    files = read_checkpoint(model, engine.get("revision"))
    if isinstance(files, str):
        return None, files
    config, weight_bytes = files
    kv = kv_cost(
        config, kv_cache_dtype=str(engine.get("kv_cache_dtype") or "auto"), dtype=str(engine.get("dtype") or "auto")
    )
    if kv is None:
        return None, "config.json does not give the attention's shape (num_hidden_layers, num_attention_heads)"
    max_model_len = engine.get("max_model_len") or context_length(config)
    if not max_model_len:
        return None, "neither the profile's max_model_len nor config.json's max_position_embeddings is set"
    fit = check_fit(
        weight_bytes=weight_bytes,
        gpu_total_bytes=gpu.total_bytes,
        kv=kv,
        max_model_len=int(max_model_len),
        gpu_memory_utilization=engine.get("gpu_memory_utilization"),
        kv_cache_memory_bytes=int(engine["kv_cache_memory_bytes"]) if "kv_cache_memory_bytes" in engine else None,
        quantized=is_quantized(config),
    )
    return fit, None
