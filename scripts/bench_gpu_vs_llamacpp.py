#!/usr/bin/env python3
"""vbatch (vLLM) against llama.cpp, Ollama's engine, on one GPU: the vs-Ollama figures (issue 15).

Same model files for both engines: the GPU kit's fabricated Mistral-7B (bf16) and a fabricated AWQ
4-bit checkpoint of it (scripts/make_quant_model.py) for vLLM; the bf16 one converted to GGUF F16
and quantized to Q4_K_M (Ollama's default) for llama.cpp. The same requests for every target:
`vbatch bench` on chat-short and shared-prefix at concurrency 1/4/16/64, and W1 (the kit's
2,000-request batch file, 20 shared system prompts) through `vbatch run`, through `vbatch serve`'s
Batches API and, the way Ollama users send a file, as a client loop with N requests in flight.

"16 GB": what an RTX 4080 holds besides 4-bit weights: 65,536 KV tokens for both engines (8 GiB
of fp16 KV; the mistral-7b profile's budget), vLLM's kv_cache_memory_bytes and llama.cpp's -c.
"full": the H200's memory (vLLM gpu_memory_utilization 0.9; llama.cpp 4,096 tokens per slot).

Steps, on the device (each writes $OUT/results.jsonl rows and $OUT/reports/*.json):
  models                      GGUF F16 and Q4_K_M from /var/tmp/models/mistral-7b
  llamacpp SETTING...         llama-server per setting (see LLAMACPP), benchmarked
  vllm SETTING [--offline]    `vbatch serve` per setting (see VLLM), benchmarked; --offline adds
                              `vbatch run` of W1, --offline-only does only that
Here:
  merge DIR...                the device's reports into docs/bench-results/ (one report per
                              workload, all targets, plots) and the table for docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_gpu_batch_server import HttpServer, Server, record, reset_prefix_cache, vbatch_run  # noqa: E402

LLAMA = Path("/var/tmp/llamacpp")
BIN = LLAMA / "build" / "bin"
BF16 = Path("/var/tmp/models/mistral-7b")
AWQ = Path("/var/tmp/models/mistral-7b-awq")
GGUF = {"f16": Path("/var/tmp/gguf/mistral-7b-f16.gguf"), "q4_k_m": Path("/var/tmp/gguf/mistral-7b-q4_k_m.gguf")}
WORK = Path("/var/tmp/vs-llamacpp")
KV_TOKENS_16GB = 65_536
KV_BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # Mistral-7B: layers x KV heads x head_dim x (K, V) x fp16
WORKLOADS = ("chat-short", "shared-prefix")
# W1's size; a smoke test of this script on a CPU sets VS_LLAMACPP_W1=40.
W1_REQUESTS = int(os.environ.get("VS_LLAMACPP_W1", "2000"))
LEVELS = "1,4,16,64"

# llama-server settings. ollama: Ollama's defaults (OLLAMA_NUM_PARALLEL=1, num_ctx 4096, flash
# attention off); npN: tuned, N slots with continuous batching and flash attention, the context
# split among them (-c is the total). A slot must hold a whole W1 request (1,343 tokens): at
# 16 GB that allows 48 slots. w1: how many W1 lines, and how many in flight (the slots).
LLAMACPP = {
    "llamacpp-q4-ollama": dict(gguf="q4_k_m", slots=1, ctx=4096, fa="off", levels="1,4,16", n=32, w1=100),
    # ... without llama-server's host-RAM prompt cache, which Ollama's runner does not have: with one
    # slot it saves the slot's KV there before each request whose prompt shares nothing (~0.33 s).
    "llamacpp-q4-ollama-nocache": dict(
        gguf="q4_k_m", slots=1, ctx=4096, fa="off", levels="1,4,16", n=32, extra=("--cache-ram", "0")
    ),
    "llamacpp-q4-np16": dict(gguf="q4_k_m", slots=16, ctx=KV_TOKENS_16GB, fa="on"),
    "llamacpp-q4-np64": dict(gguf="q4_k_m", slots=64, ctx=KV_TOKENS_16GB, fa="on"),
    "llamacpp-q4-np48": dict(gguf="q4_k_m", slots=48, ctx=KV_TOKENS_16GB, fa="on", workloads=(), w1=2000),
    "llamacpp-f16-np64-full": dict(gguf="f16", slots=64, ctx=64 * 4096, fa="on"),
}
VLLM = {
    "vllm-awq-16gb": dict(model=AWQ, memory=f"kv_cache_memory_bytes = {KV_TOKENS_16GB * KV_BYTES_PER_TOKEN}"),
    "vllm-bf16-full": dict(model=BF16, memory="gpu_memory_utilization = 0.9"),
}
# The mistral-7b profile's engine settings (configs/profiles/mistral-7b.toml), its memory aside.
PROFILE = """\
model = "{model}"
served_model_name = "{name}"
[engine]
max_model_len = 8192
max_num_seqs = 256
max_num_batched_tokens = 8192
enable_prefix_caching = true
seed = 0
{memory}
[serve]
port = {port}
"""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+ " + " ".join(command), flush=True)
    return subprocess.run(command, check=True, **kwargs)


def gpu_memory_mib(field: str = "memory.used") -> int | None:
    """GPU memory in use (the server under test holds it all), or another of nvidia-smi's memory
    fields, on the first GPU this process may use; None without nvidia-smi."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
    try:
        out = subprocess.run(
            ["nvidia-smi", "-i", gpu, f"--query-gpu={field}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
        )
    except FileNotFoundError:
        return None
    return int(out.stdout.split()[0]) if out.returncode == 0 else None


def llamacpp_version() -> str:
    out = subprocess.run([str(BIN / "llama-server"), "--version"], capture_output=True, text=True)
    return " ".join(line for line in (out.stdout + out.stderr).splitlines() if line.startswith("version"))


def w1_file(model_name: str, limit: int | None = None) -> Path:
    """W1 (the kit's 2,000 prompts, shuffled as in every W1 row) as an OpenAI batch file."""
    sys.path.insert(0, str(ROOT / ".gpukit" / "bin"))
    import w1
    from transformers import AutoTokenizer

    path = WORK / f"w1-{model_name}-{limit or 'all'}.jsonl"
    if not path.exists():
        tokenizer = AutoTokenizer.from_pretrained(str(BF16))
        records = w1.order(w1.build(tokenizer, n_prompts=W1_REQUESTS, n_prefixes=20), "shuffled")
        w1.write_batch_jsonl(str(path), records[:limit] if limit else records, model_name)
    return path


def bench(target: str, workload: str, levels: str, n: int | None, out: Path, label: str, limit_s: int = 150) -> dict:
    """One `vbatch bench` run; its report lands in $OUT/reports/LABEL--WORKLOAD.json.

    limit_s per concurrency level keeps a slow target inside a device call: what is unfinished by
    then counts as errors, and the row's throughput is that of the finished requests.
    """
    report = out / "reports" / f"{label}--{Path(workload).stem}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "vbatch", "bench", "-t", target, "-w", workload, "-c", levels, "-o", str(report)]
    command += ["-q", "--request-timeout", str(limit_s), "--time-limit", str(limit_s)] + (["-n", str(n)] if n else [])
    subprocess.run(command, check=False)
    rows = json.loads(report.read_text())["rows"]
    if not any(r["ok"] for r in rows):  # a broken setting: stop before it spends the device's time
        raise SystemExit(f"{label}: every request of {workload} failed: {rows[0]['error_samples'][:2]}")
    print(
        f"{label} {Path(workload).stem}: "
        + ", ".join(f"c{r['concurrency']} {r['output_tokens_per_s']:,.0f}" for r in rows)
    )
    return {str(r["concurrency"]): r["output_tokens_per_s"] for r in rows}


def wait_for(path: Path, what: str, limit_s: float = 600) -> None:
    """Wait for a step's marker file; its .failed twin (the step broke) ends the wait at once."""
    started = time.monotonic()
    while not path.exists():
        if path.with_suffix(".failed").exists() or time.monotonic() - started > limit_s:
            raise SystemExit(f"{what}: failed or not done after {time.monotonic() - started:.0f} s ({path})")
        time.sleep(2)


def models(args) -> None:
    """F16 GGUF from the bf16 checkpoint (llama.cpp's converter), then Q4_K_M (llama-quantize)."""
    done = GGUF["q4_k_m"].with_suffix(".done")
    if done.exists():
        return
    try:
        convert_and_quantize(args)
    except BaseException:
        done.with_suffix(".failed").touch()  # what the other steps' wait_for sees
        raise
    done.touch()


def convert_and_quantize(args) -> None:
    GGUF["f16"].parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run(
        [sys.executable, str(HERE / "gguf_convert.py"), str(LLAMA / "llama.cpp"), str(BF16)]
        + ["--outfile", str(GGUF["f16"]), "--outtype", "f16"],
        stdout=subprocess.DEVNULL,
    )
    converted = time.monotonic() - started
    wait_for(BIN / "build.done", "llama.cpp build")
    with open(WORK / "quantize.log", "w") as log:
        run(
            [str(BIN / "llama-quantize"), str(GGUF["f16"]), str(GGUF["q4_k_m"]), "Q4_K_M", str(os.cpu_count())],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    sizes = {kind: round(path.stat().st_size / 2**30, 2) for kind, path in GGUF.items()}
    record(
        args.out,
        dict(
            row="gguf",
            convert_s=round(converted, 1),
            total_s=round(time.monotonic() - started, 1),
            gib=sizes,
            llamacpp=llamacpp_version(),
        ),
    )


class LlamaServer(HttpServer):
    """llama-server with one setting, on the GPU, until stopped."""

    start_limit_s = 300  # loading a GGUF takes seconds

    def __init__(self, name: str, setting: dict, port: int):
        command = [str(BIN / "llama-server"), "-m", str(GGUF[setting["gguf"]]), "-a", name, "--port", str(port)]
        command += ["-ngl", "99", "-np", str(setting["slots"]), "-c", str(setting["ctx"])]
        command += ["-fa", setting["fa"], "--jinja", "--no-webui", "--no-kv-unified", *setting.get("extra", ())]
        super().__init__(command, port, WORK / f"{name}.log")


def llamacpp(args) -> None:
    wait_for(GGUF["q4_k_m"].with_suffix(".done"), "GGUF models")
    for name in args.settings:
        setting = LLAMACPP[name]
        server = LlamaServer(name, setting, args.port)
        try:
            ready_s = server.wait_ready()
            target = f"openai:{server.base}/v1:{name}"
            row = dict(row="llamacpp", target=name, **{k: v for k, v in setting.items() if k != "workloads"})
            row.update(ready_s=round(ready_s, 1), command=" ".join(server.command), llamacpp=llamacpp_version())
            for workload in setting.get("workloads", WORKLOADS):
                row[workload] = bench(target, workload, setting.get("levels", LEVELS), setting.get("n"), args.out, name)
            if setting.get("w1"):
                w1 = w1_file(name, setting["w1"] if setting["w1"] < W1_REQUESTS else None)
                row["w1"] = bench(target, str(w1), str(setting["slots"]), None, args.out, name, limit_s=560)
            row["gpu_mib"] = gpu_memory_mib()
            record(args.out, row)
        finally:
            server.stop()


def batches_api(server: Server, batch: Path) -> dict:
    """W1 through the Batches API with the official client: upload, create, poll until done."""
    from openai import OpenAI

    client = OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=2)
    reset_prefix_cache(server.base)
    with open(batch, "rb") as data:
        uploaded = client.files.create(file=data, purpose="batch")
    started = time.perf_counter()
    created = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    while (state := client.batches.retrieve(created.id)).status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    usage = state.usage
    return dict(
        status=state.status,
        seconds=round(seconds, 2),
        output_tokens=usage.output_tokens,
        out_tok_s=round(usage.output_tokens / seconds, 1),
        cached_share=round(usage.input_tokens_details.cached_tokens / max(usage.input_tokens, 1), 4),
        ok=state.request_counts.completed,
        failed=state.request_counts.failed,
    )


def vllm(args) -> None:
    for name in args.settings:
        setting = VLLM[name]
        profile = WORK / f"{name}.toml"
        profile.write_text(PROFILE.format(model=setting["model"], name=name, memory=setting["memory"], port=args.port))
        common = dict(row="vllm", target=name, memory=setting["memory"], model=str(setting["model"]))
        if not args.offline_only:
            server = Server(profile, args.port, WORK, name)
            try:
                row = dict(common, ready_s=round(server.wait_ready(), 1))
                if args.after:
                    wait_for(Path(args.after), args.after)  # nothing else may use the CPUs while timed
                target = f"openai:{server.base}/v1:{name}"
                for workload in WORKLOADS:
                    reset_prefix_cache(server.base)
                    row[workload] = bench(target, workload, LEVELS, None, args.out, name)
                if args.batches:
                    row["w1_batches_api"] = batches_api(server, w1_file(name))
                row["gpu_mib"] = gpu_memory_mib()
                record(args.out, row)
            finally:
                server.stop()
        if args.offline or args.offline_only:
            result = vbatch_run(args, w1_file(name), profile, "local", WORK / f"{name}-run.jsonl")
            record(args.out, dict(common, row="vllm-run", **result))


def merge(args) -> None:
    """All targets of one workload into one report (and plot) in docs/bench-results/."""
    from vbatch.services.bench.plot import write_plot
    from vbatch.services.bench.report import BenchReport

    reports: dict[str, list[BenchReport]] = {}
    for folder in args.dirs:
        for path in sorted(Path(folder).glob("reports/*.json")):
            workload = path.stem.split("--")[1]
            workload = "w1" if workload.startswith("w1-") else workload  # one W1 report, all its targets
            reports.setdefault(workload, []).append(BenchReport.model_validate_json(path.read_text()))
    target_dir = ROOT / "docs" / "bench-results"
    for workload, parts in reports.items():
        merged = parts[0].model_copy(deep=True)
        merged.targets = [t for part in parts for t in part.targets]
        merged.rows = [r for part in parts for r in part.rows]
        merged.concurrency = sorted({c for part in parts for c in part.concurrency})
        merged.command = " ; ".join(part.command for part in parts)
        counts = sorted({row.requests for row in merged.rows})
        merged.workload.notes.append(f"merged from {len(parts)} runs, one per target; requests per level: {counts}")
        stem = f"h200-vs-llamacpp-{workload}"
        (target_dir / f"{stem}.json").write_text(merged.model_dump_json(indent=1))
        if workload != "w1":
            write_plot(merged, target_dir / f"{stem}.png")
        print(f"{stem}: {len(merged.targets)} targets, {len(merged.rows)} rows")
    rows = [path.read_text() for folder in args.dirs for path in sorted(Path(folder).glob("*.jsonl"))]
    (target_dir / "h200-vs-llamacpp.jsonl").write_text("".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    parser.add_argument("--port", type=int, default=8031)
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("models").set_defaults(func=models)
    step = steps.add_parser("llamacpp")
    step.add_argument("settings", nargs="+", choices=sorted(LLAMACPP))
    step.set_defaults(func=llamacpp)
    step = steps.add_parser("vllm")
    step.add_argument("settings", nargs="+", choices=sorted(VLLM))
    step.add_argument("--batches", action="store_true", help="also W1 through the Batches API")
    step.add_argument("--offline", action="store_true", help="also `vbatch run` of W1")
    step.add_argument("--offline-only", action="store_true", help="only `vbatch run` of W1")
    step.add_argument("--after", help="a file to wait for before timing (the models step's marker)")
    step.set_defaults(func=vllm)
    step = steps.add_parser("merge")
    step.add_argument("dirs", nargs="+")
    step.set_defaults(func=merge)
    args = parser.parse_args()
    if args.step != "merge":
        args.out.mkdir(parents=True, exist_ok=True)
        WORK.mkdir(parents=True, exist_ok=True)
    args.func(args)


if __name__ == "__main__":
    main()
