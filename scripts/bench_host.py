#!/usr/bin/env python3
"""Host-path benchmark: everything `vbatch run` does except generation.

A NullEngine answers instantly, so the figure is vbatch's own cost per request: read,
validate, render the chat template, tokenize, plan, build responses, write. Run with a real
tokenizer of a real vocabulary size (default: the GPU kit's 32k BPE in .gpukit/tok, else
pass --tokenizer DIR).

  python scripts/bench_host.py throughput --shape short --requests 50000
  python scripts/bench_host.py throughput --shape w1 --requests 5000
  python scripts/bench_host.py memory --requests 10000 1000000

`memory` runs each size in a fresh process and reports its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    # ~100 prompt tokens: a shared 60-token system prompt (20 variants) + a short question.
    "short": dict(prefixes=20, sys_words=60, user_words=30, max_tokens=16),
    # W1 of the GPU kit: 20 prefixes of ~1000 tokens + ~200 unique tokens, 128 output tokens.
    "w1": dict(prefixes=20, sys_words=1000, user_words=200, max_tokens=128),
}


def single_token_words(tokenizer) -> list[str]:
    words = sorted(
        t[1:]
        for t in tokenizer.get_vocab()
        if t.startswith("\u0120") and len(t) >= 4 and t[1:].isascii() and t[1:].isalpha()
    )
    if len(words) < 200:
        raise SystemExit("tokenizer has too few word tokens; pass --tokenizer with a real vocabulary")
    return words


def write_input(path: Path, tokenizer, shape: str, requests: int, seed: int = 1234) -> None:
    spec = SHAPES[shape]
    words = single_token_words(tokenizer)
    rng = random.Random(seed)
    systems = [" ".join(rng.choices(words, k=spec["sys_words"])) for _ in range(spec["prefixes"])]
    with path.open("w") as f:
        for i in range(requests):
            user = f"Request {i}: " + " ".join(rng.choices(words, k=spec["user_words"]))
            f.write(
                json.dumps(
                    {
                        "custom_id": f"r{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "messages": [
                                {"role": "system", "content": systems[i % spec["prefixes"]]},
                                {"role": "user", "content": user},
                            ],
                            "max_tokens": spec["max_tokens"],
                            "temperature": 0,
                            "ignore_eos": True,
                        },
                    }
                )
                + "\n"
            )


def run_once(input_path: Path, tokenizer_dir: str) -> dict:
    from vbatch.config.profiles import Profile
    from vbatch.engines.null import NullEngine
    from vbatch.services.run import Reporter, RunSpec, run_batch

    engine = NullEngine.from_model_dir(tokenizer_dir, max_model_len=4096)
    out = input_path.with_suffix(".results.jsonl")
    profile = Profile(name="bench", model=tokenizer_dir, source="bench_host.py")
    spec = RunSpec(
        input=str(input_path), output=out, errors=input_path.with_suffix(".errors.jsonl"), profile=profile, restart=True
    )
    started = time.perf_counter()
    summary = run_batch(spec, Reporter(), load=lambda _: engine).to_dict()
    seconds = time.perf_counter() - started
    requests = summary["requests"]["ok"]
    return {
        "requests": requests,
        "failed": summary["requests"]["failed"],
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 1),
        "prompt_tokens_per_request": round(summary["tokens"]["prompt"] / max(requests, 1), 1),
        "planned_prefix_share": summary["planned_prefix_share"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def default_tokenizer() -> str:
    kit = Path(__file__).resolve().parent.parent / ".gpukit" / "tok"
    return str(kit) if kit.exists() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    thr = sub.add_parser("throughput")
    thr.add_argument("--shape", choices=SHAPES, default="short")
    thr.add_argument("--requests", type=int, default=50_000)
    mem = sub.add_parser("memory")
    mem.add_argument("--requests", type=int, nargs="+", default=[10_000, 1_000_000])
    mem.add_argument("--shape", choices=SHAPES, default="short")
    one = sub.add_parser("one", help=argparse.SUPPRESS)  # a single measured run, used by `memory`
    one.add_argument("input")
    for p in (thr, mem, one):
        p.add_argument("--tokenizer", default=default_tokenizer(), help="tokenizer directory")
    args = parser.parse_args()
    if not args.tokenizer:
        raise SystemExit("pass --tokenizer DIR (run the GPU kit's prepare to get .gpukit/tok)")

    from transformers import AutoTokenizer

    if args.mode == "one":
        print(json.dumps(run_once(Path(args.input), args.tokenizer)))
        return
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with tempfile.TemporaryDirectory(prefix="vbatch-bench-") as tmp:
        sizes = [args.requests] if args.mode == "throughput" else args.requests
        rows = []
        for n in sizes:
            path = Path(tmp) / f"{args.shape}-{n}.jsonl"
            write_input(path, tokenizer, args.shape, n)
            if args.mode == "throughput":
                row = run_once(path, args.tokenizer)
            else:
                proc = subprocess.run(
                    [sys.executable, __file__, "one", str(path), "--tokenizer", args.tokenizer],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            row.update(shape=args.shape, input_mb=round(path.stat().st_size / 2**20, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
            path.unlink()
        if args.mode == "memory" and len(rows) > 1:
            print(
                f"peak RSS growth {rows[0]['requests']} -> {rows[-1]['requests']} requests: "
                f"{rows[-1]['peak_rss_mb'] - rows[0]['peak_rss_mb']:.1f} MB"
            )


if __name__ == "__main__":
    main()
