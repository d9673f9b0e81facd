#!/usr/bin/env python3
"""W1/W2/mp on one GPU: vLLM run_batch, LLM.generate (file order and pre-sorted) and vbatch,
same model files, same engine settings, same prompts; one table with ratios.

W1 is the GPU kit's workload (.gpukit/bin/w1.py: 2,000 chat requests, 20 system prefixes of
~1,000 tokens + ~200 unique tokens, 128 output tokens, ignore_eos, temperature 0), in the
kit's "shuffled" file order. W2 is the same shape with every system prompt distinct. mp is
scripts/workload_mp.py (multi-prefix chat: Zipf-popular system prompts, RAG documents with many
questions, multi-turn conversations, max_tokens 16-512 per request, ~5 % repeated requests), in
its "shuffled" file order; its generate rows pass one SamplingParams per prompt (the record's
max_tokens), and "pre-sorted" sorts the prompts by their chat-template text.

Settings: `capped` = kv_cache_memory_bytes 1.5 GiB (12,288 KV tokens: what a 16 GB card keeps
beside a 7B model) with a 16 GB card's scheduler defaults (max_num_seqs 256,
max_num_batched_tokens 8192); `uncapped` = the same without the KV cap.

Each `inproc` call loads the model once and times, after a warm-up and reset_prefix_cache()
before each row: LLM.generate in file order, LLM.generate pre-sorted, and vbatch's whole
run_batch (read, validate, render, tokenize, plan, engine, write) on the batch file, on the
same LLM object. `runbatch` runs vLLM's run_batch in its own process on the same file and times
its processing phase. Rows go to $OUT/results.jsonl; `table` prints them with the ratios. Each
inproc row carries a `trace` (RowTrace: engine steps and their sizes, where the wall time went);
PYSPY=/path/to/py-spy also profiles each row (this process and the engine core).

  python scripts/bench_gpu_w1.py inproc --setting capped --workload w1
  python scripts/bench_gpu_w1.py inproc --setting capped --workload w1,mp
  python scripts/bench_gpu_w1.py runbatch --setting capped --workload w1
  python scripts/bench_gpu_w1.py table $OUT/results.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent
KV_CAP_BYTES = int(1.5 * 2**30)
MAX_MODEL_LEN = 4096
SCHEDULER = {"max_num_seqs": 256, "max_num_batched_tokens": 8192}


def engine_kwargs(setting: str) -> dict:
    kwargs = dict(
        dtype="bfloat16",
        enable_prefix_caching=True,
        max_model_len=MAX_MODEL_LEN,
        seed=0,
        disable_log_stats=False,
        **SCHEDULER,
    )
    if setting == "capped":
        kwargs["kv_cache_memory_bytes"] = KV_CAP_BYTES
    return kwargs


def load_w1(kit_bin: str):
    sys.path.insert(0, kit_bin)
    import w1  # the kit's workload module: identical prompts for every row

    return w1


def load_mp():
    sys.path.insert(0, str(SCRIPTS))
    import workload_mp  # scripts/workload_mp.py, beside this file

    return workload_mp


def workload(w1, tokenizer, name: str, n: int):
    if name == "mp":
        mp = load_mp()
        return mp.order(mp.build(tokenizer, n=n, max_model_len=MAX_MODEL_LEN), "shuffled")
    prefixes = 20 if name == "w1" else n
    records = w1.build(tokenizer, n_prompts=n, n_prefixes=prefixes)
    return w1.order(records, "shuffled")


def counters(llm) -> dict[str, float]:
    totals: dict[str, float] = {}
    for metric in llm.get_metrics():
        value = getattr(metric, "value", None)
        if isinstance(value, (int, float)) and metric.name in (
            "vllm:num_preemptions",
            "vllm:prompt_tokens",
            "vllm:generation_tokens",
        ):
            totals[metric.name] = totals.get(metric.name, 0) + value
    return totals


#: Histograms whose count and sum each row records: engine iterations (one per scheduler step
#: with work), and where requests spent their time inside the engine.
TRACED_HISTOGRAMS = {
    "vllm:iteration_tokens_total": "iterations",
    "vllm:request_queue_time_seconds": "queue_s",
    "vllm:request_prefill_time_seconds": "prefill_s",
    "vllm:request_decode_time_seconds": "decode_s",
}


class RowTrace:
    """Where one row's wall time went: time inside the engine's step() and add_request(), the
    front end's garbage-collection pauses, the engine's own iteration count, and the mean number
    of requests inside the engine (time-weighted). It separates a slow host (the engine waits for
    requests) from a slow engine (step() waits for the GPU) when two rows of the same work differ.

    With PYSPY naming the py-spy binary, the row also runs under `py-spy record` (this process
    and the engine core, idle samples kept), written to OUT/pyspy/ROW-N.txt (collapsed stacks)."""

    def __init__(self, llm, label: str, out: Path):
        self._engine = llm.llm_engine
        self._llm = llm
        self._label = label
        self._out = out
        self.fields: dict[str, float] = {}

    def __enter__(self) -> RowTrace:
        import gc

        engine, fields = self._engine, self.fields
        fields.update(steps=0, step_s=0.0, add_s=0.0, gc_s=0.0, gc_full=0, adds=0, finished=0)
        self._inside_s = 0.0  # integral of requests-inside-the-engine over time
        self._first_add: float | None = None
        self._gc_started = 0.0
        real_step, real_add = engine.step, engine.add_request

        def inside() -> None:
            now = time.perf_counter()
            self._inside_s += (fields["adds"] - fields["finished"]) * (now - self._last)
            self._last = now

        def step():
            t = time.perf_counter()
            outputs = real_step()
            fields["step_s"] += time.perf_counter() - t
            fields["steps"] += 1
            inside()
            fields["finished"] += sum(1 for o in outputs if getattr(o, "finished", False))
            return outputs

        def add_request(*a, **kw):
            t = time.perf_counter()
            inside()
            if self._first_add is None:
                self._first_add = t
            result = real_add(*a, **kw)
            fields["add_s"] += time.perf_counter() - t
            fields["adds"] += 1
            return result

        def on_gc(phase: str, info: dict) -> None:
            if phase == "start":
                self._gc_started = time.perf_counter()
            else:
                fields["gc_s"] += time.perf_counter() - self._gc_started
                fields["gc_full"] += info.get("generation") == 2

        engine.step, engine.add_request = step, add_request  # instance attributes shadow the methods
        self._on_gc = on_gc
        gc.callbacks.append(on_gc)
        self._histograms = self._read_histograms()
        self._pyspy = self._start_pyspy()
        self._start = self._last = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import gc

        end = time.perf_counter()
        del self._engine.step, self._engine.add_request
        gc.callbacks.remove(self._on_gc)
        if self._pyspy is not None:
            import signal

            self._pyspy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            self._pyspy.wait(timeout=60)
        after = self._read_histograms()
        for key, (count, total) in after.items():
            before_count, before_total = self._histograms.get(key, (0.0, 0.0))
            counted = key.startswith("iterations")  # how many steps; the others sum seconds
            self.fields[key] = count - before_count if counted else round(total - before_total, 2)
        wall = end - self._start
        self.fields["mean_inside"] = round(self._inside_s / wall, 1) if wall else 0.0
        self.fields["first_add_s"] = round((self._first_add or end) - self._start, 2)
        for key in ("step_s", "add_s", "gc_s"):
            self.fields[key] = round(self.fields[key], 2)

    def _read_histograms(self) -> dict[str, tuple[float, float]]:
        totals: dict[str, tuple[float, float]] = {}
        for metric in self._llm.get_metrics():
            key = TRACED_HISTOGRAMS.get(metric.name)
            if key is not None and hasattr(metric, "count"):
                count, total = totals.get(key, (0.0, 0.0))
                totals[key] = (count + metric.count, total + metric.sum)
                if key == "iterations":  # cumulative counts by upper bound: steps by size
                    for bound, n in (getattr(metric, "buckets", None) or {}).items():
                        totals[f"iterations_le_{bound}"] = (totals.get(f"iterations_le_{bound}", (0, 0))[0] + n, 0.0)
        return totals

    def _start_pyspy(self):
        binary = os.environ.get("PYSPY")
        if not binary:
            return None
        folder = self._out / "pyspy"
        folder.mkdir(parents=True, exist_ok=True)
        number = len(list(folder.glob(f"{self._label}-*.txt"))) + 1
        cmd = [binary, "record", "--pid", str(os.getpid()), "--rate", "100", "--subprocesses", "--idle"]
        cmd += ["--nonblocking", "--format", "raw", "-o", str(folder / f"{self._label}-{number}.txt")]
        log = (folder / f"{self._label}-{number}.log").open("w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # attached before the row starts
        return proc


def record(out: Path, row: dict) -> None:
    print("RESULT " + json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)  # a missing --out once cost a whole device run
    with (out / "results.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


def inproc(args) -> None:
    names = args.workload.split(",")
    w1 = None if set(names) == {"mp"} else load_w1(args.kit_bin)  # mp needs no kit
    from vllm import LLM, SamplingParams

    kwargs = engine_kwargs(args.setting)
    started = time.perf_counter()
    llm = LLM(model=args.model, **kwargs)
    load_s = time.perf_counter() - started
    cache = llm.llm_engine.vllm_config.cache_config
    kv_tokens = (cache.num_gpu_blocks or 0) * cache.block_size
    tokenizer = llm.get_tokenizer()
    sampling = SamplingParams(temperature=0, max_tokens=128, ignore_eos=True)
    llm.generate(
        [f"warm up {i} " * 40 for i in range(64)],
        SamplingParams(temperature=0, max_tokens=16, ignore_eos=True),
        use_tqdm=False,
    )
    if args.gc_freeze:  # what vLLM's server does after start-up: full collections skip this heap
        import gc

        gc.collect()
        gc.freeze()
    for workload_name in names:
        _rows(args, w1, llm, tokenizer, sampling, workload_name, load_s, kv_tokens, kwargs)


def _rows(args, w1, llm, tokenizer, sampling, workload_name, load_s, kv_tokens, kwargs) -> None:
    from vllm import SamplingParams

    from vbatch.config.profiles import Profile
    from vbatch.core.admission import PACED_MAX_SHARE
    from vbatch.engines.vllm.engine import VllmEngine
    from vbatch.services.run import Reporter, RunSpec, run_batch

    records = workload(w1, tokenizer, workload_name, args.mp_n if workload_name == "mp" else args.n)
    # mp: its own module, and one SamplingParams per prompt (each record's max_tokens).
    gen = load_mp() if workload_name == "mp" else w1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    batch_file = work / f"{workload_name}.jsonl"
    gen.write_batch_jsonl(str(batch_file), records, args.model)
    common = dict(
        setting=args.setting,
        workload=workload_name,
        n=len(records),
        load_s=round(load_s, 1),
        kv_tokens=kv_tokens,
        engine_kwargs=kwargs,
    )
    out = Path(args.out)

    for row_name in args.rows.split(","):
        llm.reset_prefix_cache()
        before = counters(llm)
        common.pop("vbatch_planned_prefix_share", None)  # a vbatch row's figure, not the next row's
        with RowTrace(llm, f"{workload_name}-{row_name}", out) as trace:
            if row_name in ("generate-file", "generate-sorted"):
                order = "shuffled" if row_name == "generate-file" else "sorted"
                if workload_name == "mp":
                    ordered = gen.order(records, "sorted", tokenizer) if order == "sorted" else records
                    prompts = [gen.prompt_text(tokenizer, r) for r in ordered]
                    params = [
                        SamplingParams(temperature=0, max_tokens=r["max_tokens"], ignore_eos=True) for r in ordered
                    ]
                else:
                    prompts = (
                        [w1.prompt_text(tokenizer, r) for r in w1.order(records, order)]
                        if order == "sorted"
                        else [w1.prompt_text(tokenizer, r) for r in records]
                    )
                    params = sampling
                t = time.perf_counter()
                outputs = llm.generate(prompts, params, use_tqdm=False)
                wall = time.perf_counter() - t
                prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs)
                output_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
                cached = sum(o.num_cached_tokens or 0 for o in outputs)
                failed = 0
            elif row_name.startswith("vbatch"):
                # Admission experiments: "vbatch@64" = max_in_flight 64, "vbatch@kv1.3" = kv_budget 1.3,
                # "vbatch@paced" = [batch].admission "paced" at its most, PACED_MAX_SHARE of the
                # cache ("vbatch@paced1.0": 1.0, as before 2026-12-01's eighth session).
                variant = row_name.partition("@")[2]
                in_flight = int(variant) if variant.isdigit() else args.max_in_flight
                paced = variant.startswith("paced")
                kv_budget = args.kv_budget
                if variant.startswith("kv"):
                    kv_budget = float(variant[2:])
                elif paced:
                    kv_budget = float(variant[5:]) if variant[5:] else PACED_MAX_SHARE
                engine = VllmEngine(
                    llm,
                    model_name=args.model,
                    max_in_flight=in_flight,
                    load_seconds=load_s,
                    kv_budget=kv_budget,
                    paced=paced,
                )
                profile = Profile(
                    name="bench",
                    model=args.model,
                    source="bench_gpu_w1.py",
                    engine=kwargs,
                    batch={
                        "window": args.window,
                        "max_in_flight": in_flight,
                        "kv_budget": kv_budget,
                        "admission": "paced" if paced else "peak",
                    },
                )
                spec = RunSpec(
                    input=str(batch_file),
                    output=work / f"{workload_name}-{args.setting}.results.jsonl",
                    errors=work / f"{workload_name}-{args.setting}.errors.jsonl",
                    profile=profile,
                    restart=True,
                )
                t = time.perf_counter()
                summary = run_batch(spec, Reporter(), load=lambda _: _Unclosed(engine)).to_dict()
                wall = time.perf_counter() - t
                prompt_tokens = summary["tokens"]["prompt"]
                output_tokens = summary["tokens"]["completion"]
                cached = summary["tokens"]["cached"]
                failed = summary["requests"]["failed"]
                common["vbatch_planned_prefix_share"] = summary["planned_prefix_share"]
            else:
                raise SystemExit(f"unknown row {row_name}")
        delta = {k: v - before.get(k, 0) for k, v in counters(llm).items()}
        record(
            out,
            dict(
                common,
                trace=trace.fields,
                row=row_name,
                wall_s=round(wall, 2),
                output_tokens=output_tokens,
                prompt_tokens=prompt_tokens,
                cached_share=round(cached / prompt_tokens, 4),
                out_tok_s=round(output_tokens / wall, 1),
                failed=failed,
                preemptions=delta.get("vllm:num_preemptions"),
            ),
        )


class _Unclosed:
    """Lends the loaded engine to one run_batch without letting it close the shared LLM."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def close(self) -> None:
        pass


def runbatch(args) -> None:
    """vLLM's own batch runner on the same file, in its own process; times its processing."""
    if args.workload != "w1":
        raise SystemExit("runbatch rows are measured for w1 only")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    flags = [
        "--max-num-seqs",
        str(SCHEDULER["max_num_seqs"]),
        "--max-num-batched-tokens",
        str(SCHEDULER["max_num_batched_tokens"]),
    ]
    if args.setting == "capped":
        flags += ["--kv-cache-memory-bytes", str(KV_CAP_BYTES)]
    label = f"runbatch-{args.workload}-{args.setting}"
    cmd = [
        sys.executable,
        os.path.join(args.kit_bin, "bench_runbatch.py"),
        "--model",
        args.model,
        "--out",
        str(work),
        "--work",
        str(work),
        "--label",
        label,
        "--",
        *flags,
    ]
    # The kit's bench_runbatch.py writes the W1 file itself: same builder, seed and order.
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    total = time.perf_counter() - t
    print(proc.stdout[-3000:], proc.stderr[-3000:])
    if proc.returncode:
        raise SystemExit(proc.returncode)
    row = json.loads((work / "results.jsonl").read_text().splitlines()[-1])
    record(
        Path(args.out),
        dict(
            setting=args.setting,
            workload=args.workload,
            n=row["n"],
            row="run_batch",
            wall_s=row["wall_s"],
            output_tokens=row["output_tokens"],
            prompt_tokens=row["prompt_tokens"],
            cached_share=None,
            out_tok_s=row["out_tok_s"],
            failed=0,
            preemptions=None,
            total_incl_load_s=round(total, 1),
            flags=flags,
        ),
    )


def table(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    print("| workload | setting | row | wall s | output tok/s | cached share | preemptions |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cached = f"{100 * r['cached_share']:.1f} %" if r.get("cached_share") is not None else "–"
        pre = r.get("preemptions")
        print(
            f"| {r['workload']} | {r['setting']} | {r['row']} | {r['wall_s']} | {r['out_tok_s']:,.0f} | "
            f"{cached} | {'–' if pre is None else int(pre)} |"
        )
    print()
    # Every row answers the same requests, so the ratio is one of wall times. (Tokens per second
    # would not do: vbatch answers mp's repeated requests once, so it generates fewer tokens.)
    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r["workload"], r["setting"]), {})[r["row"]] = r["wall_s"]
    for (workload_name, setting), by_row in groups.items():
        for vbatch_row in sorted(name for name in by_row if name.startswith("vbatch")):
            ratios = [
                f"{vbatch_row} / {name} {by_row[name] / by_row[vbatch_row]:.2f}x"
                for name in ("run_batch", "generate-sorted", "generate-file")
                if name in by_row
            ]
            print(f"{workload_name} {setting}: " + ", ".join(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("inproc", "runbatch"):
        p = sub.add_parser(name)
        p.add_argument("--setting", choices=("capped", "uncapped"), required=True)
        p.add_argument("--workload", default="w1", help="w1, w2, mp, or several: w1,mp")
        p.add_argument("--n", type=int, default=2000)
        p.add_argument("--mp-n", type=int, default=1000, help="requests of mp (its rows take longer than W1's)")
        p.add_argument("--model", default="/var/tmp/models/mistral-7b")
        p.add_argument("--kit-bin", default=str(ROOT / ".gpukit" / "bin"))
        p.add_argument("--work", default="/var/tmp/vbatch-bench")
        p.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    sub.choices["inproc"].add_argument("--rows", default="generate-file,generate-sorted,vbatch")
    sub.choices["inproc"].add_argument("--window", type=int, default=4096)
    sub.choices["inproc"].add_argument("--max-in-flight", type=int, default=512)
    sub.choices["inproc"].add_argument("--kv-budget", type=float, default=1.3)
    sub.choices["inproc"].add_argument("--gc-freeze", action="store_true", help="gc.freeze() after the warm-up")
    tab = sub.add_parser("table")
    tab.add_argument("results")
    args = parser.parse_args()
    {"inproc": inproc, "runbatch": runbatch, "table": lambda a: table(a.results)}[args.mode](args)


if __name__ == "__main__":
    main()
