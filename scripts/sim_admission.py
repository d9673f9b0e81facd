#!/usr/bin/env python3
"""A step-level model of vLLM V1's scheduler and prefix cache, to compare admission policies on CPU.

The GPU is lent 30 minutes a session; a capped W1 or MP row costs about a minute of it. This
model replays the same workloads (W1, MP: the same prompts, tokenized with the kit's tokenizer)
through a copy of what decides their speed at a small KV cache: vLLM V1's scheduler (running
requests first, preemption of the last running request when a block cannot be allocated,
waiting requests admitted in order while blocks and the token budget last, chunked prefill) and
its block pool (16-token blocks hashed by their whole prefix, freed blocks kept as cache hits
until they are handed out again, least recently freed first). Either every request goes in at
once in a given order (`LLM.generate`), or vbatch's engine loop feeds them through one of the
admission classes of vbatch/core/admission.py (the real code), in the planner's order (the real
planner), with its dedup of identical requests.

It counts engine steps, scheduled tokens and preemptions, and turns them into seconds with a
step cost `a + b * tokens + c * context` (context: the KV tokens the step's requests attend to),
fitted to the H200 rows of docs/benchmarks.md section 1d (`--fit`). What it is for: ranking
policies before spending device time on them, and bounds (`--bound`): the fewest engine steps
any schedule needs when every distinct prompt block is held only while its longest holder
decodes and the cache is always full.

Its resolution: it reproduced the ten H200 rows it was fitted to with an rms error of 2.1 % (the
worst, MP under peak admission: 1.02x in the model, 0.96x measured), but it predicted 4-5 % fewer engine steps for a paced policy that on the H200 gained
nothing on W1 and lost 0.7 % on MP (commit 15af3c5, reverted; docs/benchmarks.md 1e). Read
differences under ~5 % as noise; check every prediction on the H200. It is wrong by far more for
policies that leave admission to vLLM with hundreds of requests waiting: "generate in the
planner's order" was 1.033x on MP here, and vbatch without an admission limit (`vbatch@kv9`,
the nearest thing the bench runs) measured 0.89x, with 19 % more steps than generate
(docs/benchmarks.md 1g).

    python scripts/sim_admission.py --workload w1,mp --rows generate-sorted,peak,paced
    python scripts/sim_admission.py --fit
    python scripts/sim_admission.py --bound
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from array import array
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from vbatch.core import admission as admission_module  # noqa: E402
from vbatch.core.planner import plan  # noqa: E402

BLOCK = 16
CAPPED_TOKENS = 12_288
UNCAPPED_TOKENS = 933_952
MAX_SEQS = 256
TOKEN_BUDGET = 8192

#: H200 rows of docs/benchmarks.md 1d (wall seconds), what --fit fits the step cost to.
MEASURED = {
    ("w1", "capped", "generate-sorted"): 55.93,
    ("w1", "capped", "peak"): 55.31,
    ("w1", "capped", "paced@1.0"): 52.43,
    ("mp", "capped", "generate-sorted"): 43.61,
    ("mp", "capped", "peak"): 45.22,
    ("mp", "capped", "paced@1.0"): 44.61,
    ("w1", "uncapped", "generate-sorted"): 26.80,
    ("w1", "uncapped", "paced@1.0"): 26.61,
    ("mp", "uncapped", "generate-sorted"): 19.13,
    ("mp", "uncapped", "paced@1.0"): 17.97,
}


@dataclass
class Request:
    prompt: list[int]
    max_tokens: int
    key: int  # identical prompts (and max_tokens) generate identical tokens at temperature 0
    computed: int = 0
    generated: int = 0
    blocks: list = field(default_factory=list)
    hashes: list[int] = field(default_factory=list)  # of its full blocks so far
    footprint: object = None

    @property
    def tokens(self) -> int:
        return len(self.prompt) + self.generated

    def token(self, i: int) -> int:
        return self.prompt[i] if i < len(self.prompt) else hash((self.key, i))

    def block_hash(self, index: int) -> int:
        while len(self.hashes) <= index:
            j = len(self.hashes)
            previous = self.hashes[-1] if self.hashes else 0
            self.hashes.append(hash((previous, tuple(self.token(i) for i in range(j * BLOCK, (j + 1) * BLOCK)))))
        return self.hashes[index]


class Block:
    __slots__ = ("ident", "ref", "hash")

    def __init__(self, ident: int):
        self.ident = ident
        self.ref = 0
        self.hash: int | None = None


class BlockPool:
    """vLLM V1's block pool with prefix caching: free blocks keep their hash until handed out."""

    def __init__(self, blocks: int):
        self.free: OrderedDict[int, Block] = OrderedDict((i, Block(i)) for i in range(blocks))
        self.cached: dict[int, Block] = {}

    def hits(self, req: Request) -> list[Block]:
        found = []
        for j in range((req.tokens - 1) // BLOCK):  # at least one token is computed
            block = self.cached.get(req.block_hash(j))
            if block is None:
                break
            found.append(block)
        return found

    def allocate(self, req: Request, new_tokens: int, hit_blocks: list[Block]) -> bool:
        computed = req.computed + len(hit_blocks) * BLOCK
        wanted = -(-(computed + new_tokens) // BLOCK) - len(req.blocks) - len(hit_blocks)
        evictable_hits = sum(1 for b in hit_blocks if b.ref == 0)
        if wanted > len(self.free) - evictable_hits:
            return False
        for b in hit_blocks:
            if b.ref == 0:
                del self.free[b.ident]
            b.ref += 1
            req.blocks.append(b)
        for _ in range(max(0, wanted)):
            _, b = self.free.popitem(last=False)
            if b.hash is not None:
                if self.cached.get(b.hash) is b:
                    del self.cached[b.hash]
                b.hash = None
            b.ref = 1
            req.blocks.append(b)
        return True

    def cache_full(self, req: Request) -> None:
        for j in range(req.computed // BLOCK):
            b = req.blocks[j]
            if b.hash is None:
                b.hash = req.block_hash(j)
                self.cached.setdefault(b.hash, b)

    def release(self, req: Request) -> None:
        for b in reversed(req.blocks):
            b.ref -= 1
            if b.ref == 0:
                self.free[b.ident] = b
        req.blocks = []


@dataclass
class Counts:
    steps: int = 0
    tokens: int = 0
    context: int = 0
    preemptions: int = 0
    finished: int = 0
    kv_used: int = 0  # sum over steps of blocks in use, in tokens
    #: Steps that prefill (any request computes more than one token): vLLM launches them through
    #: piecewise CUDA graphs, a decode-only step as one full graph. On the H200 a prefilling
    #: step of W1 cost only ~0.8 ms more than a decode-only one (docs/benchmarks.md 1f).
    mixed: int = 0

    def seconds(self, a: float, b: float, c: float) -> float:
        return a * self.steps + b * self.tokens + c * self.context


class Scheduler:
    """vLLM V1's FCFS scheduler with chunked prefill, over a BlockPool."""

    def __init__(self, kv_tokens: int):
        self.pool = BlockPool(kv_tokens // BLOCK)
        self.blocks = kv_tokens // BLOCK
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.counts = Counts()

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def step(self) -> list[Request]:
        budget = TOKEN_BUDGET
        scheduled: list[tuple[Request, int]] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            new = min(req.tokens - req.computed, budget)
            ok = True
            while not self.pool.allocate(req, new, []):
                victim = self.running.pop()
                self.pool.release(victim)
                victim.computed = 0
                self.waiting.appendleft(victim)
                self.counts.preemptions += 1
                preempted = True
                if victim is req:
                    ok = False
                    break
            if not ok:
                break
            scheduled.append((req, new))
            budget -= new
            i += 1
        if not preempted:
            while self.waiting and budget > 0 and len(self.running) < MAX_SEQS:
                req = self.waiting[0]
                hit_blocks = self.pool.hits(req) if req.computed == 0 else []
                new = min(req.tokens - req.computed - len(hit_blocks) * BLOCK, budget)
                if not self.pool.allocate(req, new, hit_blocks):
                    break
                self.waiting.popleft()
                req.computed += len(hit_blocks) * BLOCK
                self.running.append(req)
                scheduled.append((req, new))
                budget -= new
        finished = []
        self.counts.steps += 1
        self.counts.mixed += any(new > 1 for _, new in scheduled)
        self.counts.kv_used += (self.blocks - len(self.pool.free)) * BLOCK
        for req, new in scheduled:
            self.counts.tokens += new
            self.counts.context += req.computed + new
            req.computed += new
            self.pool.cache_full(req)
            if req.computed >= req.tokens:
                req.generated += 1
                if req.generated >= req.max_tokens:
                    finished.append(req)
        for req in finished:
            self.running.remove(req)
            self.pool.release(req)
            self.counts.finished += 1
        return finished


def run_generate(requests: list[Request], kv_tokens: int) -> Counts:
    sched = Scheduler(kv_tokens)
    for r in requests:
        sched.add(r)
    while sched.busy():
        sched.step()
    return sched.counts


def run_vbatch(
    requests: Iterable[Request],
    kv_tokens: int,
    make_admission: Callable[[int, int], object],
    lookahead: int = 1,
    max_in_flight: int = 512,
    lag: int = 0,
) -> Counts:
    """vbatch's VllmEngine.run loop: admit while the policy says the next request fits, step,
    release the finished. `lookahead`: how many pulled requests may wait at once, each admitted
    when it fits (1: plan order, as VllmEngine); `lag`: steps between vbatch adding a request
    and vLLM's scheduler seeing it (the engine core runs in its own process)."""
    sched = Scheduler(kv_tokens)
    admission = make_admission(kv_tokens, BLOCK)
    source = iter(requests)
    held: list[Request] = []
    in_flight = 0
    pipe: deque[tuple[int, Request]] = deque()
    while True:
        while in_flight < max_in_flight:
            while len(held) < lookahead and (nxt := next(source, None)) is not None:
                nxt.footprint = admission.footprint(nxt.prompt, nxt.max_tokens, 1)
                held.append(nxt)
            index = next((i for i, r in enumerate(held) if admission.fits(r.footprint)), None)
            if index is None:
                break
            req = held.pop(index)
            admission.admit(req.footprint)
            pipe.append((sched.counts.steps + lag, req))
            in_flight += 1
        while pipe and pipe[0][0] <= sched.counts.steps:
            sched.add(pipe.popleft()[1])
        if not in_flight:
            if not held:
                return sched.counts
            continue
        done = sched.step()
        admission.step()
        for req in done:
            admission.release(req.footprint)
            in_flight -= 1


def tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def workload(name: str, tok, n: int) -> tuple[list[dict], list[dict], Callable]:
    """(records in file order, records pre-sorted, prompt_text) as bench_gpu_w1.py builds them."""
    if name == "w1":
        sys.path.insert(0, str(ROOT / ".gpukit" / "bin"))
        w1 = importlib.import_module("w1")
        records = w1.build(tok, n_prompts=n, n_prefixes=20)
        for r in records:
            r["max_tokens"] = 128
        return w1.order(records, "shuffled"), w1.order(records, "sorted"), w1.prompt_text
    mp = importlib.import_module("workload_mp")
    records = mp.build(tok, n, max_model_len=4096)
    return mp.order(records, "shuffled"), mp.order(records, "sorted", tok), mp.prompt_text


def requests(records: list[dict], tok, text: Callable, cache: dict) -> list[Request]:
    out = []
    for r in records:
        prompt_text = text(tok, r)
        ids = cache.get(prompt_text)
        if ids is None:
            ids = cache[prompt_text] = tok(prompt_text, add_special_tokens=False)["input_ids"]
        out.append(Request(list(ids), r["max_tokens"], hash((prompt_text, r["max_tokens"]))))
    return out


def planned(reqs: list[Request], window: int = 4096) -> list[Request]:
    """The real planner's order over the file order, identical requests answered once."""
    seen: set[int] = set()
    unique = []
    for r in reqs:
        if r.key not in seen:
            seen.add(r.key)
            unique.append(r)
    return list(plan(unique, key=lambda r: array("i", r.prompt).tobytes(), window=window))


def policy(name: str) -> Callable[[int, int], object]:
    """peak[@SHARE] (KvAdmission), paced[@SHARE] (PacedKvAdmission), or any class of
    vbatch.core.admission by name, at a share of the KV tokens (peak: 1.3, else PACED_MAX_SHARE)."""
    base, _, share_text = name.partition("@")
    cls = getattr(admission_module, {"peak": "KvAdmission", "paced": "PacedKvAdmission"}.get(base, base))
    default = 1.3 if base == "peak" else admission_module.PACED_MAX_SHARE
    share = float(share_text) if share_text else default
    return lambda tokens, block: cls(int(tokens * share), block)


def simulate(
    rows: list[str], names: list[str], settings: list[str], n_w1: int, n_mp: int, lag: int = 0, lookahead: int = 1
) -> list[dict]:
    tok = tokenizer(str(ROOT / ".gpukit" / "tok"))
    cache: dict = {}
    results = []
    for name in names:
        file_order, sorted_records, text = workload(name, tok, n_w1 if name == "w1" else n_mp)
        for setting in settings:
            kv = CAPPED_TOKENS if setting == "capped" else UNCAPPED_TOKENS
            for row in rows:
                t = time.perf_counter()
                if row == "generate-sorted":
                    counts = run_generate(requests(sorted_records, tok, text, cache), kv)
                elif row == "generate-file":
                    counts = run_generate(requests(file_order, tok, text, cache), kv)
                elif row == "generate-planned":
                    counts = run_generate(planned(requests(file_order, tok, text, cache)), kv)
                else:
                    name_, _, order = row.partition("/")
                    source = sorted_records if order == "sorted" else file_order
                    stream = planned(requests(source, tok, text, cache), window=1 if order == "sorted" else 4096)
                    counts = run_vbatch(stream, kv, policy(name_), lookahead, lag=lag)
                results.append(
                    dict(
                        workload=name,
                        setting=setting,
                        row=row,
                        steps=counts.steps,
                        tokens=counts.tokens,
                        context=counts.context,
                        preemptions=counts.preemptions,
                        mixed=counts.mixed,
                        finished=counts.finished,
                        mean_kv_used=round(counts.kv_used / max(1, counts.steps) / kv, 3),
                        sim_s=round(time.perf_counter() - t, 1),
                    )
                )
                print(json.dumps(results[-1]), flush=True)
    return results


COST = (0.004339, 3.708e-07, 6.559e-08)  # a, b, c: --fit on the H200 rows of 2026-12-01


def fit(results: list[dict]) -> tuple[float, float, float]:
    import numpy as np

    rows = [
        (r, MEASURED[(r["workload"], r["setting"], r["row"])])
        for r in results
        if (r["workload"], r["setting"], r["row"]) in MEASURED
    ]
    x = np.array([[r["steps"], r["tokens"], r["context"]] for r, _ in rows], dtype=float)
    y = np.array([s for _, s in rows])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    for (r, s), pred in zip(rows, x @ coef):
        print(f"{r['workload']:3} {r['setting']:8} {r['row']:16} measured {s:6.2f} model {pred:6.2f}")
    return tuple(float(c) for c in coef)


def bound(names: list[str], n_w1: int, n_mp: int) -> None:
    """The fewest engine steps at the capped KV size for any order and admission: each distinct
    full prompt block held (once) for the longest output among the requests that hold it, each
    request's partial block and output held while it decodes, the cache always full, no rounding
    of outputs to blocks. Real schedules need more: a group runs in waves when its requests do
    not fit at once, and two groups overlap while one hands over to the next."""
    tok = tokenizer(str(ROOT / ".gpukit" / "tok"))
    for name in names:
        file_order, _, text = workload(name, tok, n_w1 if name == "w1" else n_mp)
        reqs = planned(requests(file_order, tok, text, {}))
        longest: dict[int, int] = {}
        private = 0
        for r in reqs:
            for j in range(len(r.prompt) // BLOCK):
                h = r.block_hash(j)
                longest[h] = max(longest.get(h, 0), r.max_tokens)
            private += (len(r.prompt) % BLOCK) * r.max_tokens + r.max_tokens * (r.max_tokens - 1) // 2
        held = sum(longest.values()) * BLOCK + private
        print(
            f"{name}: {len(reqs)} requests, at least {held / CAPPED_TOKENS:.0f} engine steps at {CAPPED_TOKENS} KV tokens"
        )


def table(results: list[dict], cost: tuple[float, float, float]) -> None:
    base = {(r["workload"], r["setting"]): r for r in results if r["row"] == "generate-sorted"}
    for r in results:
        seconds = Counts(r["steps"], r["tokens"], r["context"]).seconds(*cost)
        ref = base.get((r["workload"], r["setting"]))
        ratio = Counts(ref["steps"], ref["tokens"], ref["context"]).seconds(*cost) / seconds if ref else float("nan")
        print(
            f"{r['workload']:3} {r['setting']:8} {r['row']:24} steps {r['steps']:6} tokens {r['tokens']:8} "
            f"preempt {r['preemptions']:5} kv {r['mean_kv_used']:.2f} model {seconds:6.1f} s  x{ratio:.3f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="w1,mp")
    p.add_argument("--setting", default="capped")
    p.add_argument("--rows", default="generate-sorted,peak,paced")
    p.add_argument("--n-w1", type=int, default=2000)
    p.add_argument("--n-mp", type=int, default=1000)
    p.add_argument("--lag", type=int, default=0, help="steps before vLLM sees a request vbatch added")
    p.add_argument("--lookahead", type=int, default=1, help="pulled requests that may wait at once (1: plan order)")
    p.add_argument("--fit", action="store_true", help="fit the step cost to the H200 rows and print it")
    p.add_argument("--bound", action="store_true", help="print the fewest engine steps any schedule needs")
    args = p.parse_args()
    if args.bound:
        bound(args.workload.split(","), args.n_w1, args.n_mp)
        return
    if args.fit:
        results = simulate(
            ["generate-sorted", "peak", "paced@1.0"], ["w1", "mp"], ["capped", "uncapped"], 2000, 1000, args.lag
        )
        cost = fit(results)
        print("cost a, b, c =", cost)
    else:
        results = simulate(
            args.rows.split(","),
            args.workload.split(","),
            args.setting.split(","),
            args.n_w1,
            args.n_mp,
            args.lag,
            args.lookahead,
        )
        cost = COST
    table(results, cost)


if __name__ == "__main__":
    main()
