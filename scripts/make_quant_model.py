#!/usr/bin/env python3
"""Fabricate a 4-bit checkpoint in a profile's real format, with random weights (issues 15 and 17).

The GPU kit fabricates bf16 models (make_model.py). The 16 GB profiles run quantized checkpoints,
and what fits a 16 GB card depends on their exact layout, so each format is written as the tool
that makes the real checkpoint writes it, with its quantization_config:

  awq    AutoAWQ GEMM, group 128 (solidrust/Mistral-7B-Instruct-v0.3-AWQ, the mistral-7b
         profile): every linear layer of the blocks as qweight int32 [in, out/8], qzeros int32
         [in/128, out/8], scales float16 [in/128, out]; embeddings, norms, lm_head float16.
  w4a16  compressed-tensors pack-quantized, symmetric int4, group 128, as llm-compressor writes
         it (RedHatAI/gemma-3-12b-it-quantized.w4a16, the gemma3-12b profile): weight_packed
         int32 [out, in/8], weight_scale bf16 [out, in/128], weight_shape int64 [2]; embeddings
         and norms bf16. Only the text model: the real checkpoint also has a 0.4 B-parameter
         SigLIP vision tower (0.8 GB bf16), which the profile never feeds.
  mxfp4  gpt-oss (openai/gpt-oss-20b, the gpt-oss-20b profile): the MoE experts as MXFP4
         blocks uint8 [E, out, in/32, 16] (two e2m1 values a byte) with E8M0 scales uint8
         [E, out, in/32] and bf16 biases; attention, sinks, router, embeddings bf16.

Packed values are random and scales give the weights the bf16 model's spread (std ~0.02): text
is garbage, but bytes moved, memory taken and kernels run are those of the real checkpoint.

  python3 scripts/make_quant_model.py mistral-7b awq --out /var/tmp/models/mistral-7b-awq
  python3 scripts/make_quant_model.py gemma3-12b w4a16 --out /var/tmp/models/gemma3-12b-w4a16
  python3 scripts/make_quant_model.py gpt-oss-20b mxfp4 --out /var/tmp/models/gpt-oss-20b
  python3 scripts/make_quant_model.py --config config.json FORMAT --out DIR   (small test models)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GROUP = 128
PACK = 8  # int4 values per int32
MX_BLOCK = 32  # values per E8M0 scale in MXFP4
# Uniform int4 weight and zero, independent: (w - z) has std sqrt(2 * 255 / 12) = 6.52.
AWQ_SCALE = 0.02 / 6.52
# Uniform symmetric int4 in [-8, 7]: std sqrt(255 / 12) = 4.61.
SYMMETRIC_SCALE = 0.02 / 4.61
# Uniform e2m1 nibbles have std ~2.9; 2^(120 - 127) = 1/128 gives weights of std ~0.023.
MX_SCALE_EXPONENT = 120

# openai/gpt-oss-20b's config.json (public numbers).
GPT_OSS_20B: dict[str, Any] = {
    "architectures": ["GptOssForCausalLM"],
    "model_type": "gpt_oss",
    "attention_bias": True,
    "attention_dropout": 0.0,
    "experts_per_token": 4,
    "num_experts_per_tok": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072,
    "num_attention_heads": 64,
    "num_hidden_layers": 24,
    "num_key_value_heads": 8,
    "num_local_experts": 32,
    "output_router_logits": False,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "original_max_position_embeddings": 4096,
        "rope_type": "yarn",
        "truncate": False,
    },
    "rope_theta": 150000,
    "router_aux_loss_coef": 0.9,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "vocab_size": 201088,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "torch_dtype": "bfloat16",
    "use_cache": True,
}

QUANTIZATION: dict[str, dict[str, Any]] = {
    # As in solidrust/Mistral-7B-Instruct-v0.3-AWQ's config.json.
    "awq": {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm"},
    # As llm-compressor writes a GPTQ W4A16 scheme.
    "w4a16": {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {
                    "num_bits": 4,
                    "type": "int",
                    "symmetric": True,
                    "strategy": "group",
                    "group_size": GROUP,
                    "dynamic": False,
                    "actorder": None,
                    "observer": "minmax",
                },
                "input_activations": None,
                "output_activations": None,
            }
        },
        "ignore": ["lm_head"],
        "kv_cache_scheme": None,
    },
    # As in openai/gpt-oss-20b's config.json.
    "mxfp4": {
        "quant_method": "mxfp4",
        "modules_to_not_convert": [
            "model.layers.*.self_attn",
            "model.layers.*.mlp.router",
            "model.embed_tokens",
            "lm_head",
        ],
    },
}
#: gpt-oss's harmony tokens at their o200k_harmony ids: vLLM's harmony renderer and parser look
#: them up in the tokenizer, which is the kit's small one here (its other ids decode to nothing).
HARMONY_TOKENS = {
    "<|startoftext|>": 199998,
    "<|endoftext|>": 199999,
    "<|return|>": 200002,
    "<|constrain|>": 200003,
    "<|channel|>": 200005,
    "<|start|>": 200006,
    "<|end|>": 200007,
    "<|message|>": 200008,
    "<|call|>": 200012,
}
# The dtype of the unquantized tensors in each format's real checkpoint.
FLOAT_DTYPE = {"awq": "float16", "w4a16": "bfloat16", "mxfp4": "bfloat16"}


def gpt_oss_tensors(config: dict[str, Any]) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(name, shape, kind) of a gpt-oss checkpoint in Hugging Face naming."""
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    heads, kv_heads, head_dim = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    experts = config["num_local_experts"]
    yield "model.embed_tokens.weight", (vocab, hidden), "w"
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        for proj, rows in (
            ("q_proj", heads * head_dim),
            ("k_proj", kv_heads * head_dim),
            ("v_proj", kv_heads * head_dim),
        ):
            yield p + f"self_attn.{proj}.weight", (rows, hidden), "w"
            yield p + f"self_attn.{proj}.bias", (rows,), "bias"
        yield p + "self_attn.o_proj.weight", (hidden, heads * head_dim), "w"
        yield p + "self_attn.o_proj.bias", (hidden,), "bias"
        yield p + "self_attn.sinks", (heads,), "bias"
        yield p + "mlp.router.weight", (experts, hidden), "w"
        yield p + "mlp.router.bias", (experts,), "bias"
        yield p + "mlp.experts.gate_up_proj", (experts, 2 * inter, hidden), "experts"
        yield p + "mlp.experts.gate_up_proj_bias", (experts, 2 * inter), "bias"
        yield p + "mlp.experts.down_proj", (experts, hidden, inter), "experts"
        yield p + "mlp.experts.down_proj_bias", (experts, hidden), "bias"
        yield p + "input_layernorm.weight", (hidden,), "norm"
        yield p + "post_attention_layernorm.weight", (hidden,), "norm"
    yield "model.norm.weight", (hidden,), "norm"
    yield "lm_head.weight", (vocab, hidden), "w"


def add_harmony_tokens(path: Path) -> None:
    """Give the kit's tokenizer gpt-oss's harmony tokens at their o200k_harmony ids. The tokenizers
    library numbers added tokens after the vocabulary, so the ids up to the first one are filled
    with tokens no text produces, and the gaps between them with o200k's reserved names."""
    tokenizer = json.loads(path.read_text())
    vocab = tokenizer["model"]["vocab"]
    taken = len(vocab) + sum(1 for token in tokenizer["added_tokens"] if token["content"] not in vocab)
    first, last = min(HARMONY_TOKENS.values()), max(HARMONY_TOKENS.values())
    vocab.update({f"<|filler_{i}|>": i for i in range(taken, first)})
    names = {i: token for token, i in HARMONY_TOKENS.items()}
    tokenizer["added_tokens"] += [
        dict(id=i, content=names.get(i, f"<|reserved_{i}|>"), single_word=False, lstrip=False, rstrip=False)
        | dict(normalized=False, special=True)
        for i in range(first, last + 1)
    ]
    path.write_text(json.dumps(tokenizer))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", help="gpt-oss-20b, or a config of the kit's make_model.py")
    parser.add_argument("format", choices=sorted(QUANTIZATION))
    parser.add_argument("--config", help="a config.json to use instead of a named one")
    parser.add_argument("--out", required=True)
    parser.add_argument("--kit-bin", default=str(ROOT / ".gpukit" / "bin"))
    parser.add_argument("--tok", default=str(ROOT / ".gpukit" / "tok"))
    parser.add_argument("--shard-gb", type=float, default=4.0)
    args = parser.parse_args()

    sys.path.insert(0, args.kit_bin)
    import make_model  # the kit's fabricator: its configs and tensor names
    import torch
    from safetensors.torch import save_file

    if args.config:
        config = json.loads(Path(args.config).read_text())
    elif args.name == "gpt-oss-20b":
        config = dict(GPT_OSS_20B)
    else:
        config = dict(make_model.CONFIGS[args.name])
    fmt = args.format
    config.update(torch_dtype=FLOAT_DTYPE[fmt], quantization_config=QUANTIZATION[fmt])
    float_dtype = getattr(torch, FLOAT_DTYPE[fmt])
    gpt_oss = config["model_type"] == "gpt_oss"
    if gpt_oss != (fmt == "mxfp4"):
        raise SystemExit("make_quant_model: mxfp4 is gpt-oss's format, and gpt-oss only comes in mxfp4")
    gemma = config["model_type"].startswith("gemma")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def random_ints(shape: tuple[int, ...], dtype: torch.dtype, low: int, high: int) -> torch.Tensor:
        return torch.randint(low, high, shape, dtype=dtype, device=device, generator=generator).cpu()

    def random_int32(shape: tuple[int, ...]) -> torch.Tensor:
        return random_ints(shape, torch.int32, -(2**31), 2**31 - 1)

    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]

    def add(name: str, tensor: torch.Tensor) -> None:
        if sizes[-1] and sizes[-1] + tensor.nbytes > args.shard_gb * 1e9:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = tensor.contiguous()
        sizes[-1] += tensor.nbytes

    def check_divides(name: str, size: int, by: int) -> None:
        if size % by:
            raise SystemExit(f"make_quant_model: {name}: {size} does not split into groups of {by}")

    def awq(stem: str, out_features: int, in_features: int) -> None:
        add(stem + ".qweight", random_int32((in_features, out_features // PACK)))
        add(stem + ".qzeros", random_int32((in_features // GROUP, out_features // PACK)))
        add(stem + ".scales", torch.full((in_features // GROUP, out_features), AWQ_SCALE, dtype=float_dtype))

    def w4a16(stem: str, out_features: int, in_features: int) -> None:
        add(stem + ".weight_packed", random_int32((out_features, in_features // PACK)))
        add(
            stem + ".weight_scale", torch.full((out_features, in_features // GROUP), SYMMETRIC_SCALE, dtype=float_dtype)
        )
        add(stem + ".weight_shape", torch.tensor([out_features, in_features], dtype=torch.int64))

    def mxfp4(stem: str, experts: int, out_features: int, in_features: int) -> None:
        blocks = in_features // MX_BLOCK
        add(stem + "_blocks", random_ints((experts, out_features, blocks, MX_BLOCK // 2), torch.uint8, 0, 256))
        add(stem + "_scales", torch.full((experts, out_features, blocks), MX_SCALE_EXPONENT, dtype=torch.uint8))

    linear: dict[str, Callable[[str, int, int], None]] = {"awq": awq, "w4a16": w4a16}
    keep_float = {"model.embed_tokens.weight", "lm_head.weight"}
    tensors = gpt_oss_tensors(config) if gpt_oss else make_model.tensors(config)
    for name, shape, kind in tensors:
        if kind == "norm":
            add(name, (torch.zeros if gemma else torch.ones)(shape, dtype=float_dtype))
        elif kind == "experts":
            check_divides(name, shape[2], MX_BLOCK)
            mxfp4(name, *shape)
        elif kind == "bias" or gpt_oss or name in keep_float:
            weight = torch.empty(shape, dtype=float_dtype, device=device).normal_(0.0, 0.02, generator=generator)
            add(name, weight.cpu())
        else:
            out_features, in_features = shape
            check_divides(name, in_features, GROUP)
            check_divides(name, out_features, PACK)
            linear[fmt](name.removesuffix(".weight"), out_features, in_features)

    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(args.tok, file), out / file)
    if gpt_oss:
        add_harmony_tokens(out / "tokenizer.json")
    print(
        f"make_quant_model: {fmt} {sum(sizes) / 1e9:.2f} GB in {len(shards)} shard(s) -> {out} "
        f"in {time.time() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
