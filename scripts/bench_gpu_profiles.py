#!/usr/bin/env python3
"""The three 16 GB profiles on one GPU with a 16 GB card's memory (issue 17).

Each profile (configs/profiles/NAME.toml) runs unchanged except for two lines: `model` is a
fabricated checkpoint in the real checkpoint's format (scripts/make_quant_model.py), and
`gpu_memory_utilization` is scaled so that vLLM's budget on this GPU is what the profile gives
an RTX 4080: profile value x 16,376 MiB (the card's memory as nvidia-smi reports it) / this GPU's
memory. Then, per profile:
  run    `vbatch run` of W1_PROFILES lines of W1 (the kit's 20 system prompts of ~1,000 tokens,
         ~200-token questions, 128 output tokens): load seconds, output tok/s, and vLLM's own
         numbers from its log: weights, KV cache memory and tokens, maximum concurrency at the
         profile's max_model_len, CUDA graph memory;
  serve  `vbatch serve`: ready seconds, the GPU memory it holds (nvidia-smi) against the
         budget, one chat answer (with reasoning_effort for gpt-oss), and the same lines through
         the Batches API with the official openai client.

  python3 scripts/bench_gpu_profiles.py run [NAME...]      (on the device; $OUT/results.jsonl)
  python3 scripts/bench_gpu_profiles.py table results.jsonl (here: the table for docs/gpu.md)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_gpu_batch_server import Server, record, vbatch_run  # noqa: E402
from bench_gpu_vs_llamacpp import WORK as W1_WORK  # noqa: E402
from bench_gpu_vs_llamacpp import batches_api, gpu_memory_mib, w1_file  # noqa: E402

CARD_MIB = 16_376  # an RTX 4080 (16 GB) as nvidia-smi reports it
WORK = Path("/var/tmp/profiles-16gb")
W1_PROFILES = int(os.environ.get("W1_PROFILES", "1000"))
# The fabricated checkpoint of each profile's real one (scripts/make_quant_model.py).
MODELS = {
    "mistral-7b": Path("/var/tmp/models/mistral-7b-awq"),
    "gemma3-12b": Path("/var/tmp/models/gemma3-12b-w4a16"),
    "gpt-oss-20b": Path("/var/tmp/models/gpt-oss-20b-mxfp4"),
}
# vLLM's INFO lines that say where the memory went, and what they become in a row.
VLLM_LINES = {
    "weights": re.compile(r"Model loading took ([\d.]+) GiB(?: memory)? and ([\d.]+) seconds"),
    "kv_gib": re.compile(r"Available KV cache memory: ([\d.]+) GiB"),
    "kv_tokens": re.compile(r"GPU KV cache size: ([\d,]+) tokens"),
    "concurrency": re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x"),
    "graphs": re.compile(r"Graph capturing finished in (\d+) secs, took ([\d.-]+) GiB"),
    "engine_init_s": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
}
BACKEND_LINE = re.compile(r"(Using \S+ backend|backend for|MoE backend|Mxfp4|Marlin|Machete)", re.IGNORECASE)


def vllm_numbers(log: str) -> dict:
    """What vLLM's log says about memory; backend choices kept verbatim (a few lines)."""
    found: dict = {}
    for key, pattern in VLLM_LINES.items():
        match = pattern.search(log)
        if not match:
            continue
        if key == "weights":
            found.update(weights_gib=float(match[1]), weights_load_s=round(float(match[2]), 1))
        elif key == "kv_tokens":
            found["kv_tokens"] = int(match[1].replace(",", ""))
        elif key == "concurrency":
            found.update(concurrency_at=int(match[1].replace(",", "")), max_concurrency=float(match[2]))
        elif key == "graphs":
            found.update(graph_s=int(match[1]), graph_gib=float(match[2]))
        else:
            found[key] = float(match[1])
    backends = sorted({line.split("] ", 1)[-1][:160] for line in log.splitlines() if BACKEND_LINE.search(line)})
    found["backend_lines"] = backends[:8]
    return found


def profile_16gb(name: str, total_mib: int, port: int) -> tuple[Path, dict]:
    """The profile with the fabricated model and a 16 GB card's share of this GPU."""
    text = (ROOT / "configs" / "profiles" / f"{name}.toml").read_text()
    utilization = float(re.search(r"^gpu_memory_utilization = ([\d.]+)", text, re.MULTILINE)[1])
    scaled = round(utilization * CARD_MIB / total_mib, 4)
    text = re.sub(r'^model = ".*"$', f'model = "{MODELS[name]}"', text, count=1, flags=re.MULTILINE)
    text = re.sub(r"^gpu_memory_utilization = .*$", f"gpu_memory_utilization = {scaled}", text, flags=re.MULTILINE)
    text = re.sub(r"^port = .*$", f"port = {port}", text, flags=re.MULTILINE)
    path = WORK / f"{name}-16gb.toml"
    path.write_text(text)
    served = re.search(r'^served_model_name = "(.*)"$', text, re.MULTILINE)[1]
    budget_mib = round(utilization * CARD_MIB)
    return path, dict(
        profile=name,
        model=str(MODELS[name]),
        served=served,
        utilization=utilization,
        utilization_here=scaled,
        budget_mib=budget_mib,
        gpu_total_mib=total_mib,
    )


def chat_check(server: Server, model: str, gpt_oss: bool) -> dict:
    """One chat request through the server: the answer's shape, as a user would see it."""
    from openai import OpenAI

    client = OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=1)
    extra = dict(reasoning_effort="low") if gpt_oss else {}
    answer = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Name three rivers."}], max_tokens=64, **extra
    )
    message = answer.choices[0].message
    return dict(
        finish_reason=answer.choices[0].finish_reason,
        completion_tokens=answer.usage.completion_tokens,
        content_chars=len(message.content or ""),
        # vLLM's field for the reasoning; older releases call it reasoning_content.
        reasoning_chars=len(getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None) or ""),
    )


def first_answer(results: Path) -> dict:
    """What the first result line of `vbatch run` carries: for gpt-oss, the answer and the
    reasoning apart (random weights rarely write harmony's channels, so lengths, not text)."""
    with results.open() as lines:
        line = next(lines, None)
    if line is None:
        return {}  # no request succeeded: the row's ok/failed counts say so
    body = json.loads(line)["response"]["body"]
    message = body["choices"][0]["message"]
    details = body["usage"].get("completion_tokens_details") or {}
    return dict(
        answer_keys=sorted(message),
        content_chars=len(message.get("content") or ""),
        reasoning_chars=len(message.get("reasoning_content") or ""),
        reasoning_tokens=details.get("reasoning_tokens"),
        finish_reason=body["choices"][0]["finish_reason"],
    )


def run_profiles(args) -> None:
    if unknown := set(args.names) - set(MODELS):
        raise SystemExit(f"no fabricated checkpoint for {sorted(unknown)}; profiles: {', '.join(MODELS)}")
    WORK.mkdir(parents=True, exist_ok=True)
    W1_WORK.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    total_mib = gpu_memory_mib("memory.total")
    os.environ["VLLM_LOGGING_LEVEL"] = "INFO"  # the lines vllm_numbers reads, in the run's and the server's log
    env = dict(os.environ)
    for name in args.names:
        profile, common = profile_16gb(name, total_mib, args.port)
        batch = w1_file(common["served"], W1_PROFILES)
        try:
            run_env = dict(env, XDG_STATE_HOME=str(WORK / f"state-run-{name}"))
            result = vbatch_run(args, batch, profile, "local", WORK / f"{name}-run.jsonl", env=run_env)
            # vLLM's log: vbatch run writes it to the state directory's logs/ (quiet by default).
            logs = sorted((WORK / f"state-run-{name}" / "vbatch" / "logs").glob("run-*.log"))
            log = logs[-1].read_text() if logs else (WORK / f"{name}-run.log").read_text()
            result["first_answer"] = first_answer(WORK / f"{name}-run.jsonl")
            record(args.out, dict(common, row="run", **result, **vllm_numbers(log)))
        except BaseException as error:  # one profile's failure must not cost the others their run
            record(args.out, dict(common, row="run", error=str(error)[-2000:]))
        server = None
        try:
            started = time.perf_counter()
            server = Server(profile, args.port, WORK, name)
            ready_s = server.wait_ready()
            row = dict(common, row="serve", ready_s=round(ready_s, 1), gpu_mib=gpu_memory_mib())
            row["chat"] = chat_check(server, common["served"], name.startswith("gpt-oss"))
            row["w1_batches_api"] = batches_api(server, batch)
            row["wall_s"] = round(time.perf_counter() - started, 1)
            engine_log = WORK / f"state-{name}" / "vbatch" / f"serve-{args.port}.log"  # vbatch serve's vLLM log
            record(args.out, dict(row, **vllm_numbers(engine_log.read_text())))
        except BaseException as error:
            record(args.out, dict(common, row="serve", error=str(error)[-2000:]))
        finally:
            if server:
                server.stop()


def table(args) -> None:
    """Markdown rows for docs/gpu.md, one per profile, from the device's results.jsonl."""
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    print(
        "| profile | budget MiB | weights GiB | KV GiB | KV tokens | max concurrency | graphs GiB "
        "| held MiB (serve) | load s (run / serve) | run out tok/s | serve Batches API out tok/s |"
    )
    print("| --- " * 11 + "|")
    for name in dict.fromkeys(r["profile"] for r in rows):
        run = next((r for r in rows if r["profile"] == name and r["row"] == "run"), {})
        serve = next((r for r in rows if r["profile"] == name and r["row"] == "serve"), {})
        api = serve.get("w1_batches_api", {})
        cells = [
            name,
            run.get("budget_mib") or serve.get("budget_mib"),
            run.get("weights_gib"),
            run.get("kv_gib"),
            f"{run['kv_tokens']:,}" if "kv_tokens" in run else None,
            f"{run['max_concurrency']}x at {run['concurrency_at']:,}" if "max_concurrency" in run else None,
            run.get("graph_gib"),
            serve.get("gpu_mib"),
            f"{run.get('load_s')} / {serve.get('ready_s')}",
            run.get("out_tok_s") or ("error" if "error" in run else None),
            api.get("out_tok_s") or ("error" if "error" in serve else None),
        ]
        print("| " + " | ".join("–" if cell is None else str(cell) for cell in cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    parser.add_argument("--port", type=int, default=8041)
    steps = parser.add_subparsers(dest="step", required=True)
    step = steps.add_parser("run")
    step.add_argument("names", nargs="*", default=list(MODELS), help=f"profiles (default: {', '.join(MODELS)})")
    step.set_defaults(func=run_profiles)
    step = steps.add_parser("table")
    step.add_argument("results", type=Path)
    step.set_defaults(func=table)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
