#!/usr/bin/env python3
"""Dedup of identical deterministic requests, side by side: the same file with dedup on and off.

The file is the kit's W1 (chat, temperature 0, ignore_eos, 128 output tokens), shuffled, where
--repeat of the lines (default 5 %) repeat another line's body under their own custom_id, as
files built from templates or retried pipelines do. Each row is `vbatch run FILE --profile P`
with P's `[batch].dedup` true or false, alternating, same engine settings (bench_gpu_batch_server's
capped profile: a 16 GB card's KV budget). Reported per row: requests the engine ran, processing
seconds (model load excluded), and at the end off/on: the engine work saved.

  python3 scripts/bench_dedup.py --model /var/tmp/models/mistral-7b --out $OUT [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_gpu_batch_server import KV_CAP_BYTES, PROFILE, record  # noqa: E402  # one profile for both benches


def with_copies(path: Path, fraction: float, seed: int = 7) -> int:
    """Rewrite the batch file so `fraction` of its lines repeat an earlier line's body."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    rng = random.Random(seed)
    copies = rng.sample(range(1, len(lines)), int(round(fraction * len(lines))))
    for index in copies:
        lines[index] = {**lines[index], "body": lines[rng.randrange(index)]["body"]}
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return len(copies)


def run(batch: Path, profile: Path, out: Path) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "vbatch", "run", str(batch), "--profile", str(profile), "--engine", "local"]
        + ["-o", str(out), "--restart", "--json", "-q"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"vbatch run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    requests = summary["requests"]
    return dict(
        wall_s=round(time.perf_counter() - started, 1),
        processing_s=summary["processing_seconds"],
        ok=requests["ok"],
        deduplicated=requests["deduplicated"],
        engine_requests=requests["ok"] + requests["failed"] - requests["deduplicated"],
        output_tokens_engine=summary["tokens"]["completion"],
        cached_share=summary["prefix_cache_hit_share"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="/var/tmp/models/small")
    parser.add_argument("--kit-bin", default=str(ROOT / ".gpukit" / "bin"))
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    parser.add_argument("--work", default="/var/tmp/bench-dedup")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--repeat", type=float, default=0.05, help="share of lines that repeat another line")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="on/off pairs, alternating")
    args = parser.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, args.kit_bin)
    import w1  # the kit's workload
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    records = w1.order(w1.build(tokenizer, n_prompts=args.n, n_prefixes=20), "shuffled")
    batch = work / "w1-copies.jsonl"
    w1.write_batch_jsonl(str(batch), records, "small", max_tokens=args.max_tokens)
    copies = with_copies(batch, args.repeat)
    profiles = {}
    for dedup in ("true", "false"):
        profile = work / f"dedup-{dedup}.toml"
        text = PROFILE.format(model=args.model, kv_bytes=KV_CAP_BYTES, port=8000, one_stream="true")
        profile.write_text(text.replace("[serve]", f"[batch]\ndedup = {dedup}\n[serve]"))
        profiles[dedup] = profile
    common = dict(workload="w1+copies", n=args.n, copies=copies, kv_cache_memory_bytes=KV_CAP_BYTES)
    seconds: dict[str, list[float]] = {"true": [], "false": []}
    for round_ in range(args.rounds):
        for dedup in ("true", "false") if round_ % 2 == 0 else ("false", "true"):
            row = run(batch, profiles[dedup], work / f"out-{dedup}.jsonl")
            seconds[dedup].append(row["processing_s"])
            record(out, dict(common, row=f"dedup-{'on' if dedup == 'true' else 'off'}", round=round_, **row))
    on, off = statistics.mean(seconds["true"]), statistics.mean(seconds["false"])
    print(
        f"{copies} of {args.n} lines repeat another ({copies / args.n:.1%}); processing: dedup on {on:.1f} s, "
        f"off {off:.1f} s; off/on {off / on:.3f}x (expected from the copies alone: {args.n / (args.n - copies):.3f}x)"
    )


if __name__ == "__main__":
    main()
