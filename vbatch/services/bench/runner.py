"""`run_bench`: the one core function behind `vbatch bench`.

For each target in turn: open it (connect or load), warm it up (untimed), then run the same
requests at every concurrency level, each level bounded by a request count and a time limit.
A target that cannot be opened, fails its whole warm-up, or fails a whole level ends as error
rows for what is left, at once: a dead target never stalls the others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from vbatch.core.requests import Request
from vbatch.services.bench.engine_target import EngineTarget, default_bench_profile
from vbatch.services.bench.environment import environment
from vbatch.services.bench.http_targets import (
    OllamaTarget,
    OpenAITarget,
    detect_local_ollama,
)
from vbatch.services.bench.metrics import failed, summarise
from vbatch.services.bench.report import (
    BenchReport,
    ResultRow,
    TargetInfo,
    WorkloadInfo,
)
from vbatch.services.bench.targets import (
    BenchTarget,
    Limits,
    TargetSpec,
    TargetUnavailable,
    unique_labels,
)
from vbatch.services.bench.workloads import WorkloadSpec, workload_requests

Say = Callable[[str], None]


@dataclass
class BenchSpec:
    targets: list[TargetSpec]
    workload: WorkloadSpec
    concurrency: list[int]
    #: Untimed requests sent to each target before its first level (0: none).
    warmup: int = 4
    limits: Limits = field(default_factory=Limits)
    #: The command line, recorded in the report.
    command: str = ""


def default_targets(say: Say) -> list[TargetSpec]:
    """No --target: the default profile, plus Ollama if one answers on localhost:11434."""
    specs = [TargetSpec("vbatch", default_bench_profile(), None, "vbatch")]
    ollama = detect_local_ollama()
    if ollama is not None:
        say(f"Ollama answers on {ollama.url}: benchmarking its model {ollama.model} too")
        specs.append(ollama)
    return specs


def build_target(spec: TargetSpec, label: str, limits: Limits) -> BenchTarget:
    if spec.kind == "vbatch":
        return EngineTarget(spec, label, limits)
    return (OpenAITarget if spec.kind == "openai" else OllamaTarget)(spec, label, limits)


def run_bench(
    spec: BenchSpec,
    say: Say = lambda _text: None,
    build: Callable[[TargetSpec, str, Limits], BenchTarget] = build_target,
) -> BenchReport:
    spec.workload.check()
    machine = environment()  # now: its load average is the one the benchmark started under
    specs = [
        dataclasses.replace(t, model=default_bench_profile()) if t.kind == "vbatch" and not t.model else t
        for t in spec.targets
    ]
    labels = unique_labels(specs)
    targets = [build(t, label, spec.limits) for t, label in zip(specs, labels)]  # bad profiles stop us here
    levels = {level: workload_requests(spec.workload, f"level-{i}") for i, level in enumerate(spec.concurrency)}
    warmup = workload_requests(spec.workload, "warmup", spec.warmup) if spec.warmup else []
    infos: list[TargetInfo] = []
    rows: list[ResultRow] = []
    for target_spec, label, target in zip(specs, labels, targets):
        info, target_rows = _bench_target(target, target_spec, label, levels, warmup, say)
        infos.append(info)
        rows.extend(target_rows)
    first_level = next(iter(levels.values()))
    return BenchReport(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        command=spec.command,
        workload=WorkloadInfo(
            name=spec.workload.name,
            requests=len(first_level),
            max_tokens=spec.workload.fixed_max_tokens,
            prompt_words=spec.workload.words,
            seed=spec.workload.seed,
            warmup=len(warmup),
            notes=_workload_notes(spec.workload),
        ),
        concurrency=spec.concurrency,
        time_limit_s=spec.limits.time_limit_s,
        request_timeout_s=spec.limits.request_timeout_s,
        environment=machine,
        targets=infos,
        rows=rows,
    )


def _bench_target(
    target: BenchTarget, spec: TargetSpec, label: str, levels: dict[int, list[Request]], warmup: list[Request], say: Say
) -> tuple[TargetInfo, list[ResultRow]]:
    say(f"{label}: connecting" if spec.kind != "vbatch" else f"{label}: loading the model")
    rows: list[ResultRow] = []
    off_length = ok = 0
    counted_chunks = False
    try:
        try:
            info = target.open()
        except TargetUnavailable as err:
            info = TargetInfo(
                label=label,
                kind=spec.kind,
                spec=spec.text,
                url=spec.url,  # type: ignore[arg-type]
                model=spec.model or "",
                error=str(err),
            )
            return info, _error_rows(label, levels, info.error)
        if warmup:
            say(f"{label}: warm-up, {_requests(len(warmup))} (not timed)")
            phase = target.run_phase(warmup, min(max(levels), len(warmup)))
            if not any(s.ok for s in phase.samples):
                info.error = f"every warm-up request failed: {phase.samples[0].error}"
                return info, _error_rows(label, levels, info.error)
        for level, requests in levels.items():
            if info.error:
                rows.extend(_error_rows(label, {level: requests}, info.error))
                continue
            say(f"{label}: concurrency {level}, {_requests(len(requests))}")
            phase = target.run_phase(requests, level)
            row = ResultRow(target=label, concurrency=level, **summarise(phase.samples, phase.wall_seconds))
            say(
                f"{label}: concurrency {level}: {row.ok} ok, {row.errors} failed, "
                f"{row.requests_per_s:.2f} req/s, {row.output_tokens_per_s:.1f} output tok/s"
            )
            rows.append(row)
            off_length += row.off_length_outputs
            ok += row.ok
            counted_chunks |= any(s.tokens_from_chunks for s in phase.samples if s.ok)
            if not row.ok:
                info.error = f"every request at concurrency {level} failed: {row.error_samples[0]}"
    finally:
        target.close()
    if info.error:
        say(f"{label}: stopped: {info.error}")
    if counted_chunks:
        info.notes.append("the server reported no token counts: output tokens are counted as streamed chunks")
    if off_length:
        info.notes.append(
            f"off-length outputs: {off_length} of {ok} outputs did not have exactly max_tokens tokens "
            "(the server stopped at EOS or counts tokens its own way): compare tok/s, not req/s"
        )
    return info, rows


def _requests(count: int) -> str:
    return f"{count} request{'s' if count != 1 else ''}"


def _error_rows(label: str, levels: dict[int, list[Request]], error: str) -> list[ResultRow]:
    return [
        ResultRow(target=label, concurrency=level, **summarise([failed(error) for _ in requests], 0.0))
        for level, requests in levels.items()
    ]


def _workload_notes(workload: WorkloadSpec) -> list[str]:
    notes = ["every request asks for a fixed max_tokens with ignore_eos=true (Ollama: num_predict)"]
    if workload.is_file:
        notes.append(
            "the file's requests are sent again at every concurrency level: "
            "a server's prefix cache may serve repeated prompts"
        )
    else:
        notes.append(
            "each concurrency level sends its own seeded draw of the workload, "
            "so no level reuses another level's prompts"
        )
    return notes
