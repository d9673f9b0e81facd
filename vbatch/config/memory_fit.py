"""Whether a profile's model fits its GPU before anything loads: weights, an allowance for
activations and the KV cache, against gpu_memory_utilization x the card's memory.

Pure arithmetic on numbers and on a model's config.json (stdlib only), so it can be tested with
real models' numbers and no GPU; `services/profile_check` finds the numbers (the checkpoint's
size, the card's memory) and `vbatch profiles check` shows the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GIB = 2**30
#: What vLLM uses besides the checkpoint's bytes and the KV cache: a prefill chunk's activations,
#: captured CUDA graphs, the CUDA context, weights repacked for the kernels. Measured on a first
#: start (cold torch.compile cache, which peaks higher) at a 16 GB card's budget, vLLM 0.26
#: (docs/gpu.md): 1.3 GiB for Mistral-7B AWQ, 2.1 GiB for gpt-oss-20b MXFP4, 3.0 GiB for
#: Gemma 3 12B W4A16. 2 GiB is the least that warns for the profile that did not start (gpt-oss-20b
#: at 0.92 x 16 GiB with 8k context) and passes those that did.
ACTIVATION_ALLOWANCE_BYTES = 2 * GIB
#: vLLM's gpu_memory_utilization when a profile sets neither it nor kv_cache_memory_bytes.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
#: The most a fix raises gpu_memory_utilization to: the CUDA context and the desktop need the rest.
HIGHEST_SUGGESTED_UTILIZATION = 0.95
#: A suggested max_model_len is rounded down to whole steps of this many tokens.
MAX_MODEL_LEN_STEP = 256
#: Defaults of transformers' config classes that a config.json may leave out: google/gemma-3-*
#: names neither head_dim (hidden_size / heads would be wrong) nor the sliding-window layout.
_CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "gemma3_text": {"head_dim": 256, "sliding_window": 4096, "sliding_window_pattern": 6},
}


@dataclass(frozen=True)
class KvCost:
    """What the KV cache of one model costs.

    Full-attention layers keep every token of a sequence; sliding-window layers (Gemma 3's
    sliding_window_pattern or layer_types, gpt-oss's "sliding_attention" layers) keep at most the
    last `sliding_window` tokens, as vLLM's hybrid KV cache does. So a sequence of n tokens holds
    full_layers x n + sliding_layers x min(n, window) token-layers. This is the simple model:
    vLLM's rounding to blocks and the way it pages layer groups are left out.
    """

    #: K and V of one token in one layer: KV heads x head_dim x 2 x the KV dtype's bytes.
    bytes_per_token_layer: int
    full_layers: int
    sliding_layers: int = 0
    sliding_window: int = 0

    @property
    def bytes_per_token(self) -> int:
        """One token in every layer: what each token of a sequence within the window costs."""
        return self.bytes_per_token_layer * (self.full_layers + self.sliding_layers)

    def sequence_bytes(self, tokens: int) -> int:
        """The KV cache one sequence of `tokens` tokens holds."""
        kept = self.full_layers * tokens + self.sliding_layers * min(tokens, self.sliding_window)
        return kept * self.bytes_per_token_layer

    def longest_sequence(self, kv_bytes: int) -> int:
        """The most tokens one sequence may have for its KV cache to fit in `kv_bytes`."""
        within_window = max(kv_bytes, 0) // self.bytes_per_token
        if within_window < self.sliding_window or not self.full_layers:
            return within_window
        windows = self.sliding_layers * self.sliding_window * self.bytes_per_token_layer
        return (kv_bytes - windows) // (self.full_layers * self.bytes_per_token_layer)


def kv_cost(config: Mapping[str, Any], *, kv_cache_dtype: str = "auto", dtype: str = "auto") -> KvCost | None:
    """The KV cost of the model a config.json describes (its text_config when it has one, as
    Gemma 3's does); None when it does not give the attention's shape.

    K and V take 2 bytes a value (float16/bfloat16), 1 with an fp8 KV cache, 4 when the engine
    runs in float32. A sliding_window without per-layer types (Mistral v0.1, Qwen2) counts as full
    attention: the check errs towards warning.
    """
    text = text_config(config)
    layers = _positive_int(text.get("num_hidden_layers"))
    heads = _positive_int(text.get("num_attention_heads"))
    if not layers or not heads:
        return None
    kv_heads = _positive_int(text.get("num_key_value_heads")) or heads
    head_dim = _positive_int(text.get("head_dim")) or (_positive_int(text.get("hidden_size")) or 0) // heads
    if not head_dim:
        return None
    window = _positive_int(text.get("sliding_window")) or 0
    sliding = min(_sliding_layer_count(text, layers), layers) if window else 0
    value_bytes = 1 if kv_cache_dtype.startswith("fp8") else 4 if dtype in ("float32", "float") else 2
    return KvCost(kv_heads * head_dim * 2 * value_bytes, layers - sliding, sliding, window if sliding else 0)


def context_length(config: Mapping[str, Any]) -> int | None:
    """The model's own context (max_position_embeddings): vLLM's max_model_len when a profile sets none."""
    return _positive_int(text_config(config).get("max_position_embeddings"))


def is_quantized(config: Mapping[str, Any]) -> bool:
    """Whether the checkpoint is already quantized (AWQ, GPTQ, MXFP4, ...: a quantization_config)."""
    return "quantization_config" in config or "quantization_config" in text_config(config)


def text_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The language model's part of a config.json, with the defaults its config class implies."""
    nested = config.get("text_config")
    text = nested if isinstance(nested, Mapping) else config
    defaults = _CONFIG_DEFAULTS.get(str(text.get("model_type")), {})
    return {**defaults, **{key: value for key, value in text.items() if value is not None}}


def _sliding_layer_count(text: Mapping[str, Any], layers: int) -> int:
    layer_types = text.get("layer_types")
    if isinstance(layer_types, list):
        return sum(1 for kind in layer_types if kind == "sliding_attention")
    pattern = _positive_int(text.get("sliding_window_pattern"))
    # every pattern-th layer is full attention, the others slide (Gemma 3: 5 of every 6)
    return layers - layers // pattern if pattern else 0


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


@dataclass(frozen=True)
class MemoryFit:
    """How a profile's model fits one GPU, and how to make it fit when it does not."""

    weight_bytes: int
    gpu_total_bytes: int
    #: What vLLM may use: gpu_memory_utilization x the card's memory (all of it when
    #: kv_cache_memory_bytes sets the KV cache's size: vLLM then ignores the utilization).
    budget_bytes: int
    allowance_bytes: int
    #: The KV cache: what the budget leaves after weights and allowance (0 when nothing is
    #: left), or kv_cache_memory_bytes when `fixed_kv`.
    kv_bytes: int
    fixed_kv: bool
    max_model_len: int
    kv: KvCost
    #: The checkpoint is already quantized, so a 4-bit one is not the fix to suggest.
    quantized: bool

    @property
    def sequence_bytes(self) -> int:
        """The KV cache one sequence of max_model_len tokens needs."""
        return self.kv.sequence_bytes(self.max_model_len)

    @property
    def kv_tokens(self) -> int:
        """Tokens the KV cache holds when every sequence is max_model_len long."""
        return self.kv_bytes * self.max_model_len // self.sequence_bytes

    @property
    def max_concurrency(self) -> float:
        """Sequences of max_model_len tokens the KV cache holds at once (vLLM's "maximum concurrency")."""
        return self.kv_bytes / self.sequence_bytes

    @property
    def weights_fit(self) -> bool:
        """The weights, the allowance and a KV cache of some size fit in the budget."""
        return self.kv_bytes > 0 and self.weight_bytes + self.allowance_bytes + self.kv_bytes <= self.budget_bytes

    @property
    def fits(self) -> bool:
        """... and the KV cache holds one sequence of max_model_len tokens: vLLM can start."""
        return self.weights_fit and self.kv_bytes >= self.sequence_bytes

    @property
    def explanation(self) -> str:
        """One line: the numbers, and what is wrong when it does not fit."""
        weights, allowance, budget = gib(self.weight_bytes), gib(self.allowance_bytes), gib(self.budget_bytes)
        if self.fixed_kv and not self.weights_fit:
            return (
                f"weights {weights} + {allowance} of activations + kv_cache_memory_bytes {gib(self.kv_bytes)} "
                f"need more than the GPU's {gib(self.gpu_total_bytes)}"
            )
        if self.weight_bytes > self.budget_bytes:
            return f"the weights alone ({weights}) exceed the budget of {budget}"
        if not self.weights_fit:
            return (
                f"weights {weights} + {allowance} of activations leave no room for a KV cache in the budget of {budget}"
            )
        if not self.fits:
            return (
                f"the {gib(self.kv_bytes)} KV cache cannot hold one sequence of max_model_len "
                f"{self.max_model_len:,} tokens (it needs {gib(self.sequence_bytes)})"
            )
        source = "kv_cache_memory_bytes" if self.fixed_kv else f"what weights and activations leave of {budget}"
        return (
            f"{gib(self.kv_bytes)} of KV cache ({source}) holds {self.kv_tokens:,} tokens: "
            f"{self.max_concurrency:.1f} sequences of {self.max_model_len:,} tokens at once"
        )

    @property
    def fix(self) -> str | None:
        """What to change when it does not fit (the least disruptive first); None when it fits."""
        if self.fits:
            return None
        fixes: list[str] = []
        if self.weights_fit:
            longest = self.kv.longest_sequence(self.kv_bytes) // MAX_MODEL_LEN_STEP * MAX_MODEL_LEN_STEP
            if longest:
                fixes.append(f"lower max_model_len to {longest}")
        needed = self.weight_bytes + self.allowance_bytes + self.sequence_bytes
        if not self.fixed_kv:
            utilization = math.ceil(needed / self.gpu_total_bytes * 100) / 100
            if utilization <= HIGHEST_SUGGESTED_UTILIZATION:
                fixes.append(f"raise gpu_memory_utilization to {utilization:.2f}")
        elif needed <= self.gpu_total_bytes:
            room = self.gpu_total_bytes - self.weight_bytes - self.allowance_bytes  # all the card leaves
            fixes.append(f"set kv_cache_memory_bytes to {room}")
        if not fixes or not self.weights_fit:
            fixes.append("use a GPU with more memory" if self.quantized else "use a 4-bit checkpoint (AWQ, GPTQ)")
        return "; or ".join(fixes)


def check_fit(
    *,
    weight_bytes: int,
    gpu_total_bytes: int,
    kv: KvCost,
    max_model_len: int,
    gpu_memory_utilization: float | None = None,
    kv_cache_memory_bytes: int | None = None,
    allowance_bytes: int = ACTIVATION_ALLOWANCE_BYTES,
    quantized: bool = False,
) -> MemoryFit:
    """How weights, the allowance and sequences of max_model_len tokens fit the GPU, sized as vLLM
    sizes them: the KV cache is what gpu_memory_utilization x the card leaves after weights and
    activations, unless kv_cache_memory_bytes fixes its size. `quantized`: the checkpoint is
    already 4-bit or so."""
    if kv_cache_memory_bytes is not None:
        budget, kv_bytes = gpu_total_bytes, kv_cache_memory_bytes
    else:
        budget = int((gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION) * gpu_total_bytes)
        kv_bytes = max(budget - weight_bytes - allowance_bytes, 0)
    return MemoryFit(
        weight_bytes=weight_bytes,
        gpu_total_bytes=gpu_total_bytes,
        budget_bytes=budget,
        allowance_bytes=allowance_bytes,
        kv_bytes=kv_bytes,
        fixed_kv=kv_cache_memory_bytes is not None,
        max_model_len=max_model_len,
        kv=kv,
        quantized=quantized,
    )


def gib(size: int) -> str:
    """Bytes as GiB with one decimal, the unit of the profiles' budget comments."""
    return f"{size / GIB:.1f} GiB"
