#!/usr/bin/env python3
"""Fabricate an AWQ 4-bit checkpoint with random weights and a real architecture (issue 15).

The GPU kit fabricates bf16 models (make_model.py); the mistral-7b profile runs a 4-bit AWQ
checkpoint (AutoAWQ GEMM, group 128), which vLLM runs on its Marlin kernels. For a fair 4-bit
comparison with llama.cpp's Q4_K_M, vLLM gets a checkpoint of the same form: every linear layer of
the transformer blocks as AutoAWQ writes it (qweight int32 [in, out/8], qzeros int32
[in/128, out/8], scales float16 [in/128, out]), embeddings, norms and lm_head in float16, and
AutoAWQ's quantization_config. Packed values are random, scales are chosen so that the weights
have the bf16 model's spread (std 0.02); text is garbage, but bytes moved and kernels run are
those of the real checkpoint.

  python3 scripts/make_awq_model.py mistral-7b --out /var/tmp/models/mistral-7b-awq
  python3 scripts/make_awq_model.py --config config.json --out DIR    (any config the kit knows)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUP = 128
PACK = 8  # int4 values per int32
# AutoAWQ's quantization_config, as in solidrust/Mistral-7B-Instruct-v0.3-AWQ's config.json.
QUANTIZATION = {"quant_method": "awq", "bits": 4, "group_size": GROUP, "zero_point": True, "version": "gemm"}
# Uniform int4 weight and zero, independent: (w - z) has std sqrt(2 * 255 / 12) = 6.52.
SCALE = 0.02 / 6.52
FLOAT_KEEP = ("model.embed_tokens.weight", "lm_head.weight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", default="mistral-7b", help="a config of the kit's make_model.py")
    parser.add_argument("--config", help="a config.json to use instead of the kit's")
    parser.add_argument("--out", required=True)
    parser.add_argument("--kit-bin", default=str(ROOT / ".gpukit" / "bin"))
    parser.add_argument("--tok", default=str(ROOT / ".gpukit" / "tok"))
    parser.add_argument("--shard-gb", type=float, default=4.0)
    args = parser.parse_args()

    sys.path.insert(0, args.kit_bin)
    import make_model  # the kit's fabricator: its configs and tensor names
    import torch
    from safetensors.torch import save_file

    config = json.loads(Path(args.config).read_text()) if args.config else dict(make_model.CONFIGS[args.name])
    config.update(torch_dtype="float16", quantization_config=QUANTIZATION)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def random_int32(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, device=device, generator=generator).cpu()

    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]

    def add(name: str, tensor: torch.Tensor) -> None:
        if sizes[-1] and sizes[-1] + tensor.nbytes > args.shard_gb * 1e9:
            shards.append({})
            sizes.append(0)
        shards[-1][name] = tensor
        sizes[-1] += tensor.nbytes

    for name, shape, kind in make_model.tensors(config):
        if kind == "norm":
            add(name, torch.ones(shape, dtype=torch.float16))
        elif kind == "bias" or name in FLOAT_KEEP:
            weight = torch.empty(shape, dtype=torch.float16, device=device).normal_(0.0, 0.02, generator=generator)
            add(name, weight.cpu())
        else:
            out_features, in_features = shape
            if in_features % GROUP or out_features % PACK:
                raise SystemExit(f"make_awq_model: {name} {shape} does not split into groups of {GROUP}")
            stem = name.removesuffix(".weight")
            add(stem + ".qweight", random_int32((in_features, out_features // PACK)))
            add(stem + ".qzeros", random_int32((in_features // GROUP, out_features // PACK)))
            add(stem + ".scales", torch.full((in_features // GROUP, out_features), SCALE, dtype=torch.float16))

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
    print(
        f"make_awq_model: {sum(sizes) / 1e9:.2f} GB in {len(shards)} shard(s) -> {out} in {time.time() - started:.1f} s"
    )


if __name__ == "__main__":
    main()
