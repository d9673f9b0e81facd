#!/usr/bin/env python3
"""Time to the first result of `vbatch run` on a W1-like file, with the real CPU engine.

Writes a W1-like file for the built-in tiny model (profile cpu-chat): 20 shared system prompts
and a unique user part per request, in round-robin file order (the GPU kit's W1 is ~1,000 +
~200 tokens; the tiny model's context is 1,024 tokens, so the default here is 700 + 150 of its
single-token words, the same shared share of the prompt). Then runs, each time in a fresh
process,

  python -m vbatch run FILE --profile PROFILE --json -q -o OUT --restart

and prints one JSON line per run: first_result_seconds - load_seconds (the time from the
loaded model to the first result written), and the summary's prefix shares.

  python scripts/bench_first_result.py --requests 2000 --repeat 3
  python scripts/bench_first_result.py --window 4096          # cpu-chat with the GPU profiles' window

--window writes a copy of the profile with another [batch].window. --host-delay-ms N makes the
read/render/tokenize thread N ms slower per request (10 ms: the ~100 requests/s of the GPU
machine's host path in issue 16, where this machine's is ten times faster). Set PYTHONPATH to
compare two source trees with the same file (--keep-input reuses it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path


def single_token_words(tokenizer) -> list[str]:
    return sorted(
        t[1:]
        for t in tokenizer.get_vocab()
        if t.startswith("\u0120") and len(t) >= 3 and t[1:].isascii() and t[1:].isalpha()
    )


def write_input(path: Path, requests: int, sys_words: int, user_words: int, max_tokens: int, seed: int = 1234) -> None:
    from transformers import AutoTokenizer

    from vbatch.config.tinymodel import cached_tiny_llama

    words = single_token_words(AutoTokenizer.from_pretrained(cached_tiny_llama()))
    rng = random.Random(seed)
    systems = [" ".join(rng.choices(words, k=sys_words)) for _ in range(20)]
    with path.open("w") as f:
        for i in range(requests):
            user = f"Request {i}: " + " ".join(rng.choices(words, k=user_words))
            body = {
                "messages": [{"role": "system", "content": systems[i % 20]}, {"role": "user", "content": user}],
                "max_tokens": max_tokens,
                "temperature": 0,
                "ignore_eos": True,
            }
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
            f.write(json.dumps(line) + "\n")


def profile_with_window(profile: str, window: int, folder: Path) -> str:
    from vbatch.config.profiles import builtin_profiles_dir

    text = (builtin_profiles_dir() / f"{profile}.toml").read_text()
    text, count = re.subn(r"(?m)^window = \d+", f"window = {window}", text)
    if count != 1:
        raise SystemExit(f"profile {profile} has no single [batch].window line to change")
    path = folder / f"{profile}-window{window}.toml"
    path.write_text(text)
    return str(path)


def run_once(input_path: Path, profile: str, out: Path, host_delay_ms: float = 0.0) -> dict:
    vbatch = [sys.executable, "-m", "vbatch"]
    if host_delay_ms:
        vbatch = [sys.executable, __file__, "--child-delay-ms", str(host_delay_ms), "--"]
    command = vbatch + ["run", str(input_path), "--profile", profile, "--json", "-q", "-o", str(out), "--restart"]
    proc = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise SystemExit(f"vbatch run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    return {
        "first_result_after_load_s": round(summary["first_result_seconds"] - summary["load_seconds"], 3),
        "first_result_seconds": summary["first_result_seconds"],
        "load_seconds": summary["load_seconds"],
        "wall_seconds": summary["wall_seconds"],
        "processing_seconds": summary["processing_seconds"],
        "ok": summary["requests"]["ok"],
        "planned_prefix_share": summary["planned_prefix_share"],
        "file_order_prefix_share": summary["file_order_prefix_share"],
        "prefix_cache_hit_share": summary["prefix_cache_hit_share"],
    }


def slowed_vbatch(delay_ms: float, argv: list[str]) -> None:
    """`vbatch ARGV` with every rendered request made `delay_ms` later (in the producer thread)."""
    import time

    import vbatch.services.run as run_module
    from vbatch.cli import main as vbatch_main

    render_all = run_module.render_all

    def slow_render_all(*args, **kwargs):
        for item in render_all(*args, **kwargs):
            time.sleep(delay_ms / 1000)
            yield item

    run_module.render_all = slow_render_all  # type: ignore[assignment]
    sys.argv = ["vbatch", *argv]
    vbatch_main()


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--child-delay-ms" and sys.argv[3] == "--":
        slowed_vbatch(float(sys.argv[2]), sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--sys-words", type=int, default=700)
    parser.add_argument("--user-words", type=int, default=150)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--profile", default="cpu-chat")
    parser.add_argument("--window", type=int, help="run a copy of the profile with this [batch].window")
    parser.add_argument("--host-delay-ms", type=float, default=0.0, help="slow the host path by this much per request")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--keep-input", type=Path, help="write the input here once and reuse it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vbatch-first-") as tmp:
        folder = Path(tmp)
        path = args.keep_input or folder / "w1.jsonl"
        if not path.exists():
            write_input(path, args.requests, args.sys_words, args.user_words, args.max_tokens)
        profile = profile_with_window(args.profile, args.window, folder) if args.window else args.profile
        for _ in range(args.repeat):
            row = run_once(path, profile, folder / "out.results.jsonl", args.host_delay_ms)
            row.update(
                profile=args.profile, window=args.window, requests=args.requests, host_delay_ms=args.host_delay_ms
            )
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
