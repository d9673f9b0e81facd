#!/usr/bin/env python3
"""The batch server against `vbatch run`, side by side on one GPU: W1 at a 16 GB card's KV budget.

Rows, in one call, same model files, same profile (engine settings of bench_gpu_w1.py's
`capped`: 12,288 KV tokens, max_num_seqs 256, max_num_batched_tokens 8192):
  run       `vbatch run W1 --engine local`: the in-process engine; output tok/s over its
            processing time (model load excluded).
  api       `vbatch serve`, then the official openai client uploads W1, creates the batch and
            polls it; output tok/s from batches.create until status completed (validation and
            finalizing included).
  server    (--server-engine) `vbatch run W1 --engine server=URL` through the same server: the
            path the issue measured at 0.78x.
  ttft      time to first token of streamed single chat requests at 1 request/s, on the idle
            server and while the batch runs.
  staggered (--staggered K) W1 split into K batches (each with all 20 prefixes), created
            --gap seconds apart, on a server with `[serve].one_stream = true` (the batches plan
            one stream) and on a fresh one with false (each batch its own prefix order): output
            tok/s from the first create to the last completion, and the cached share.

  python3 scripts/bench_gpu_batch_server.py --model /var/tmp/models/small --out $OUT [--server-engine]
  python3 scripts/bench_gpu_batch_server.py --model /var/tmp/models/mistral-7b --out $OUT --staggered 4 --skip-run --skip-api
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROFILE = """\
model = "{model}"
served_model_name = "small"
[engine]
dtype = "bfloat16"
enable_prefix_caching = true
max_model_len = 4096
seed = 0
max_num_seqs = 256
max_num_batched_tokens = 8192
kv_cache_memory_bytes = {kv_bytes}
[serve]
port = {port}
one_stream = {one_stream}
"""
KV_CAP_BYTES = int(1.5 * 2**30)


def record(out: Path, row: dict) -> None:
    print("RESULT " + json.dumps(row), flush=True)
    with (out / "results.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


def vbatch_run(args, batch: Path, profile: Path, engine: str, out: Path, env: dict[str, str] | None = None) -> dict:
    """`vbatch run` of one file; its stderr (vLLM's log when env asks for it) lands beside OUT as .log."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "vbatch", "run", str(batch), "--profile", str(profile), "--engine", engine]
        + ["-o", str(out), "--restart", "--json", "-q"],
        capture_output=True,
        text=True,
        env=env,
    )
    out.with_suffix(".log").write_text(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"vbatch run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    tokens = summary["tokens"]
    return dict(
        wall_s=round(time.perf_counter() - started, 1),
        seconds=summary["processing_seconds"],
        output_tokens=tokens["completion"],
        out_tok_s=round(tokens["completion"] / summary["processing_seconds"], 1),
        cached_share=round(tokens["cached"] / tokens["prompt"], 4),
        ok=summary["requests"]["ok"],
        failed=summary["requests"]["failed"],
        load_s=summary["load_seconds"],
        first_result_s=summary["first_result_seconds"],
    )


def ttft_probe(base_url: str, stop: threading.Event, times: list[float], limit: int | None = None) -> None:
    """One streamed chat request a second; its time to first token."""
    import httpx

    body = {
        "model": "small",
        "messages": [{"role": "user", "content": "Say something short about the weather today, please."}],
        "max_tokens": 16,
        "stream": True,
    }
    with httpx.Client(timeout=120) as client:
        while not stop.is_set() and (limit is None or len(times) < limit):
            tick = time.perf_counter()
            with client.stream("POST", base_url + "/v1/chat/completions", json=body) as response:
                lines = response.iter_lines()
                for line in lines:
                    if line.startswith("data: ") and '"content"' in line:
                        times.append(time.perf_counter() - tick)
                        break
                for _ in lines:  # the rest of the answer
                    pass
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - tick)))


def reset_prefix_cache(base_url: str) -> None:
    import httpx

    response = httpx.post(base_url + "/reset_prefix_cache", timeout=60)
    print(f"reset_prefix_cache: HTTP {response.status_code}", flush=True)


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    ordered = sorted(values)
    return dict(
        n=len(values),
        p50_ms=round(1000 * statistics.median(ordered), 1),
        p90_ms=round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 1),
        max_ms=round(1000 * ordered[-1], 1),
    )


class HttpServer:
    """A server process on this machine, its output in a log, until stopped: start it, wait until
    its /health answers (or it dies), stop it."""

    #: Seconds a cold start may take (vLLM's compile and CUDA graphs on a 7B model: ~3 minutes).
    start_limit_s = 500

    def __init__(self, command: list[str], port: int, log_path: Path, env: dict[str, str] | None = None):
        self.command = command
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 - open while the server runs
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_ready(self) -> float:
        """Seconds until /health answered 200."""
        import httpx

        started = time.perf_counter()
        while True:
            try:
                if httpx.get(self.base + "/health", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None or time.perf_counter() - started > self.start_limit_s:
                raise SystemExit(f"{self.command[0]} did not start:\n" + self.log_path.read_text()[-3000:])
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


class Server(HttpServer):
    """`vbatch serve --profile PROFILE` in dev mode (POST /reset_prefix_cache), until stopped."""

    def __init__(self, profile: Path, port: int, work: Path, name: str):
        # Dev mode for POST /reset_prefix_cache: every row starts from an empty prefix cache.
        env = dict(os.environ, XDG_STATE_HOME=str(work / f"state-{name}"), VLLM_SERVER_DEV_MODE="1")
        command = [sys.executable, "-m", "vbatch", "serve", "--profile", str(profile), "-q"]
        super().__init__(command, port, work / f"serve-{name}.log", env)


def staggered(server: Server, parts: list[Path], gap: float) -> dict:
    """Create one batch per part, `gap` seconds apart; wait for all; totals over the whole span."""
    from openai import OpenAI

    client = OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=2)
    reset_prefix_cache(server.base)
    uploaded = []
    for part in parts:
        with open(part, "rb") as data:
            uploaded.append(client.files.create(file=data, purpose="batch").id)
    t0 = time.perf_counter()
    created = []
    for index, file_id in enumerate(uploaded):
        time.sleep(max(0.0, t0 + index * gap - time.perf_counter()))
        created.append(
            client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h").id
        )
    finished: dict[str, float] = {}
    ended = ("completed", "failed", "cancelled", "expired")
    while len(finished) < len(created):
        for batch_id in created:
            if batch_id not in finished and client.batches.retrieve(batch_id).status in ended:
                finished[batch_id] = time.perf_counter() - t0
        time.sleep(0.2)
    seconds = max(finished.values())
    states = [client.batches.retrieve(batch_id) for batch_id in created]
    output = sum(b.usage.output_tokens for b in states)
    prompt = sum(b.usage.input_tokens for b in states)
    cached = sum(b.usage.input_tokens_details.cached_tokens for b in states)
    return dict(
        batches=len(parts),
        gap_s=gap,
        statuses=sorted({b.status for b in states}),
        seconds=round(seconds, 2),
        each_done_s=[round(finished[b], 1) for b in created],
        output_tokens=output,
        out_tok_s=round(output / seconds, 1),
        cached_share=round(cached / max(prompt, 1), 4),
        ok=sum(b.request_counts.completed for b in states),
        failed=sum(b.request_counts.failed for b in states),
    )


def api_rows(args, batch: Path, profile: Path, work: Path, out: Path, common: dict) -> None:
    """The api, ttft (and server) rows, on one server."""
    server = Server(profile, args.port, work, "api")
    base = server.base
    try:
        from openai import OpenAI

        ready_s = server.wait_ready()
        alone: list[float] = []
        ttft_probe(base, threading.Event(), alone, limit=10)

        client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=2)
        reset_prefix_cache(base)
        with open(batch, "rb") as data:
            uploaded = client.files.create(file=data, purpose="batch")
        during: list[float] = []
        stop = threading.Event()
        probe = threading.Thread(target=ttft_probe, args=(base, stop, during), daemon=True)
        t0 = time.perf_counter()
        created = client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        probe.start()
        while True:
            state = client.batches.retrieve(created.id)
            if state.status in ("completed", "failed", "cancelled", "expired"):
                break
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        stop.set()
        probe.join(timeout=30)
        usage = state.usage
        record(
            out,
            dict(
                common,
                row="api",
                status=state.status,
                ready_s=round(ready_s, 1),
                seconds=round(seconds, 2),
                output_tokens=usage.output_tokens,
                out_tok_s=round(usage.output_tokens / seconds, 1),
                cached_share=round(usage.input_tokens_details.cached_tokens / max(usage.input_tokens, 1), 4),
                ok=state.request_counts.completed,
                failed=state.request_counts.failed,
            ),
        )
        record(out, dict(common, row="ttft", alone=percentiles(alone), during_batch=percentiles(during)))
        if args.server_engine:
            reset_prefix_cache(base)
            result = vbatch_run(args, batch, profile, f"server={base}", work / "server.jsonl")
            record(out, dict(common, row="server", **result))
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="/var/tmp/models/small")
    parser.add_argument("--kit-bin", default=str(ROOT / ".gpukit" / "bin"))
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    parser.add_argument("--work", default="/var/tmp/bench-batch-server")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--port", type=int, default=8020)
    parser.add_argument("--server-engine", action="store_true", help="also time `vbatch run --engine server=URL`")
    parser.add_argument("--skip-run", action="store_true", help="leave out the `vbatch run` row")
    parser.add_argument("--skip-api", action="store_true", help="leave out the api and ttft rows")
    parser.add_argument("--staggered", type=int, default=0, help="K: the staggered rows, W1 in K batches")
    parser.add_argument("--gap", type=float, default=8.0, help="seconds between the staggered batches")
    parser.add_argument("--label", default="", help="a name for the rows (which source tree ran them)")
    args = parser.parse_args()
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, args.kit_bin)
    import w1  # the kit's workload: the same prompts as every other W1 row
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    records = w1.order(w1.build(tokenizer, n_prompts=args.n, n_prefixes=20), "shuffled")
    batch = work / "w1.jsonl"
    w1.write_batch_jsonl(str(batch), records, "small")
    profile = work / "capped.toml"
    profile.write_text(PROFILE.format(model=args.model, kv_bytes=KV_CAP_BYTES, port=args.port, one_stream="true"))
    common = dict(workload="w1", n=args.n, setting="capped", kv_cache_memory_bytes=KV_CAP_BYTES, label=args.label)

    if not args.skip_run:
        record(out, dict(common, row="run", **vbatch_run(args, batch, profile, "local", work / "run.jsonl")))

    if not args.skip_api:
        api_rows(args, batch, profile, work, out, common)
    if args.staggered:
        # Each part holds every prefix: W1's requests in runs of 20 (one per prefix), dealt out.
        parts = []
        for k in range(args.staggered):
            part = work / f"w1-part{k}.jsonl"
            w1.write_batch_jsonl(str(part), [r for r in records if (r["id"] // 20) % args.staggered == k], "small")
            parts.append(part)
        for one_stream in ("true", "false"):
            variant = work / f"capped-one-stream-{one_stream}.toml"
            variant.write_text(
                PROFILE.format(model=args.model, kv_bytes=KV_CAP_BYTES, port=args.port, one_stream=one_stream)
            )
            server = Server(variant, args.port, work, f"one-stream-{one_stream}")
            try:
                ready_s = server.wait_ready()
                row = f"staggered-{'one-stream' if one_stream == 'true' else 'separate'}"
                record(out, dict(common, row=row, ready_s=round(ready_s, 1), **staggered(server, parts, args.gap)))
            finally:
                server.stop()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    base_row = next((r for r in rows if r["row"] == "run"), None)
    for row in rows:
        if "out_tok_s" in row:
            ratio = f"{row['out_tok_s'] / base_row['out_tok_s']:.2f}x" if base_row else "-"
            print(f"{row['row']:>7}: {row['out_tok_s']:>9,.1f} out tok/s  cached {row['cached_share']:.1%}  {ratio}")


if __name__ == "__main__":
    main()
