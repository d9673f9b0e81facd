"""Why vLLM failed to load or its server failed to start: one table of causes and their fixes.

Both failures read the same table. `vbatch run` loads vLLM in process and has one exception's
message (`load_failure_hint`); `vbatch serve` has its server's log (`failure_hint` over the log).
`generic_cause` names the causes any HTTP server shares (a taken port, memory, a missing model or
module) for servers that are not vLLM (llama.cpp in the benchmarks), from the same rows.

A row matches on lower-case phrases of vLLM's own messages. A whole log also holds vLLM's settings
(`dtype=torch.bfloat16`, `trust_remote_code=False`, `'max_model_len': 4096`), so looser words that
are safe in one exception's message only (`message_needles`) are never looked for in a log.

Stdlib only: importing it costs nothing, and it never imports vLLM.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

#: A phrase, or phrases that must all be present.
Needle = str | tuple[str, ...]


@dataclass(frozen=True)
class Cause:
    """One reason a load or start fails, and what to do about it."""

    name: str
    #: Lower-case phrases that name this cause in a whole server log as in an exception's message.
    needles: tuple[Needle, ...]
    #: The fix, for vLLM. `{profile}` becomes "profile NAME (e.g. EXAMPLE)" or "the profile";
    #: `{port}` the server's port (a hint naming it applies only where the port is known).
    #: None: no vLLM-specific advice (only `generic`).
    hint: str | None
    #: `-E` overrides that would help, shown after the profile's name when there is one.
    example: str = ""
    #: Looser phrases, looked for in one exception's message only, never in a whole log.
    message_needles: tuple[Needle, ...] = ()
    #: The cause in words any server fits (not only vLLM); None: vLLM's alone.
    generic: str | None = None


#: Ordered: the first row that matches wins.
CAUSES: tuple[Cause, ...] = (
    Cause(
        "port in use",
        needles=("address already in use", "errno 98", "error while attempting to bind"),
        hint=(
            "port {port} is already in use (another `vbatch serve`?): pass --port with a free port, "
            "or stop the other server"
        ),
        generic="The port is already in use: choose another port (--port) or stop the process holding it.",
    ),
    Cause(
        "no RAM for the KV cache",
        needles=("on kv cache allocation is less than requested",),
        hint="not enough free RAM for the KV cache: lower kv_cache_memory_bytes in {profile} or free memory",
        example="-E kv_cache_memory_bytes=536870912",
    ),
    Cause(
        "context longer than the model's",
        needles=("than the derived max_model_len",),
        message_needles=(("max_model_len", "derived"), ("max_model_len", "max_position_embeddings")),
        hint="max_model_len is longer than the model's context: lower max_model_len in {profile}",
    ),
    Cause(
        "KV cache too small",
        needles=("larger than the available kv cache memory",),
        message_needles=("max_model_len", "max model len", "maximum number of tokens"),
        hint=(
            "the KV cache cannot hold max_model_len tokens: lower max_model_len in {profile} or give "
            "the KV cache more memory (gpu_memory_utilization if nothing else uses the GPU, or "
            "kv_cache_memory_bytes on CPU)"
        ),
        example="-E max_model_len=4096",
    ),
    Cause(
        "GPU memory held by another process",
        needles=("less than desired gpu memory utilization", "free memory on device"),
        hint=(
            "another process holds GPU memory (is a `vllm serve` running?): stop it, or lower "
            "gpu_memory_utilization in {profile}"
        ),
        example="-E gpu_memory_utilization=0.5",
    ),
    Cause(
        "out of memory",
        needles=(
            "out of memory",
            "outofmemory",
            "no available memory",
            "insufficient memory",
            "not enough memory",
            "cannot allocate memory",
        ),
        hint=(
            "out of memory: lower gpu_memory_utilization, max_model_len or max_num_seqs in {profile}, "
            "free the GPU (stop other processes), or use a smaller / quantized model"
        ),
        example="-E max_model_len=4096 -E max_num_seqs=64",
        generic=(
            "The server ran out of memory while loading the model: lower the memory it asks for "
            "(context length, number of sequences, GPU memory fraction)."
        ),
    ),
    Cause(
        "model code not trusted",
        needles=("`trust_remote_code=true`",),
        message_needles=("trust_remote_code",),
        hint="the model ships its own code: set trust_remote_code = true in {profile} if you trust it",
        example="-E trust_remote_code=true",
    ),
    Cause(
        "no accelerator",
        needles=("failed to infer device type",),
        message_needles=("no cuda gpus", "cuda driver"),
        hint=(
            "no usable accelerator: install the vLLM build for this hardware "
            "(vbatch[vllm] for CUDA, vbatch[cpu] for CPU)"
        ),
    ),
    Cause(
        "no bfloat16",
        needles=("bfloat16 is only supported on gpus",),
        message_needles=("compute capability", "bfloat16"),
        hint='this GPU lacks bfloat16: set dtype = "half" in {profile}',
        example="-E dtype=half",
    ),
    Cause(
        "model not found",
        needles=(
            "no such file or directory",
            "does not appear to have a file",
            "is not a valid model",
            "repository not found",
            "not a local folder",
            "invalid repository id or local directory",
            "repo id must be in the form",
            "localentrynotfound",
        ),
        message_needles=(
            "config.json",
            "repo id",
            "not a valid model",
            "does not appear to have",
            "no such file",
            "offline",
            "can't load",
            "cannot find",
        ),
        hint=(
            "the model name or path was not found: check --model or `model` in {profile}; offline "
            "runs need a local folder or the model already in the Hugging Face cache"
        ),
        generic="The model path or name could not be found: check --model.",
    ),
    Cause(
        "architecture not supported",
        needles=("are not supported for now",),
        message_needles=(("architecture", "support"),),
        hint="the installed vLLM does not support this model's architecture: upgrade vLLM",
    ),
    Cause(
        "missing Python module",
        needles=("modulenotfounderror", "no module named"),
        hint=None,
        generic="A Python module the server needs is not installed in this environment.",
    ),
)

#: The in-process load's answer when no row matches (vLLM logged the details above it).
LOAD_FALLBACK_HINT = "see vLLM's log; check the profile's engine arguments (dtype, max_model_len, ...)"


def _found(needle: Needle, lowered: str) -> bool:
    if isinstance(needle, str):
        return needle in lowered
    return all(part in lowered for part in needle)


def _matches(cause: Cause, lowered: str, *, message: bool) -> bool:
    needles = cause.needles + cause.message_needles if message else cause.needles
    return any(_found(needle, lowered) for needle in needles)


def failure_cause(
    text: str, *, profile_name: str | None = None, port: int | None = None, message: bool = False
) -> tuple[Cause, str] | None:
    """The first cause in `text` that has a hint for vLLM here, with that hint filled in.

    `text` is a server's log, or with `message` one exception as "Type: message". A hint that
    names the port is passed over without one (an in-process load binds no server port)."""
    lowered = text.lower()
    for cause in CAUSES:
        if cause.hint is None or ("{port}" in cause.hint and port is None):
            continue
        if _matches(cause, lowered, message=message):
            where = f"profile {profile_name}" if profile_name else "the profile"
            if profile_name and cause.example:
                where += f" (e.g. {cause.example})"
            return cause, cause.hint.format(profile=where, port=port)
    return None


def failure_hint(
    text: str, *, profile_name: str | None = None, port: int | None = None, message: bool = False
) -> str | None:
    """The fix for the first known cause in a vLLM server's log (or, with `message`, one
    exception's text), naming the profile and the port where given; None if none is known."""
    found = failure_cause(text, profile_name=profile_name, port=port, message=message)
    return found[1] if found else None


def load_failure_hint(exc: BaseException, *, profile_name: str | None = None) -> str:
    """The likely fix for an exception raised while building `vllm.LLM(...)` in this process."""
    text = f"{type(exc).__name__}: {exc}"
    return failure_hint(text, profile_name=profile_name, message=True) or LOAD_FALLBACK_HINT


def generic_cause(log_text: str, status: int | None) -> str | None:
    """The most likely reason any server (vLLM or not) failed to start, from its log and exit status."""
    lowered = log_text.lower()
    for cause in CAUSES:
        if cause.generic is not None and _matches(cause, lowered, message=False):
            return cause.generic
    if status == -signal.SIGKILL:
        return "The server was killed (SIGKILL), often by the kernel's out-of-memory killer."
    return None
