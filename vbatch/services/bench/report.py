"""The benchmark report: pydantic models (the JSON written by -o/--json), its table, comparisons.

A report carries what decides its numbers beside them: the workload, the hardware, and per
target the model, quantization, server version and settings that could be read, plus notes on
what could not be measured. `load_report` reads one back for `vbatch bench show` / `compare`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError

from vbatch.errors import InputError, UsageError
from vbatch.storage.writers import write_atomically

SettingValue = str | int | float | bool | None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Model):
    """Seconds."""

    p50: float
    p95: float
    p99: float
    mean: float
    count: int


class ResultRow(_Model):
    target: str
    concurrency: int
    requests: int
    ok: int
    errors: int
    duration_s: float
    requests_per_s: float
    output_tokens: int
    output_tokens_per_s: float
    prompt_tokens: int | None
    #: Successful requests whose output token count is not the max_tokens they asked for (the
    #: server stopped at EOS, or counts tokens its own way): their lengths differ between targets.
    off_length_outputs: int
    #: None: not measurable for this target (see the target's notes).
    ttft_s: Distribution | None
    itl_s: Distribution | None
    tpot_s: Distribution | None
    e2e_s: Distribution | None
    #: Server-reported totals over the successful requests (Ollama: eval_count, eval_s, ...).
    server: dict[str, float]
    error_samples: list[str]


class TargetInfo(_Model):
    label: str
    kind: Literal["vbatch", "openai", "ollama"]
    spec: str
    url: str | None = None
    model: str
    #: What answered: "vLLM 0.32.0", "Ollama 0.5.1", "vbatch 0.1.0 (in-process vLLM 0.32.0)", ...
    server: str | None = None
    quantization: str | None = None
    settings: dict[str, SettingValue] = {}
    notes: list[str] = []
    #: Set when the target could not be benchmarked at all (its rows are all errors).
    error: str | None = None


class WorkloadInfo(_Model):
    name: str
    requests: int
    max_tokens: int | None
    prompt_words: int | None
    seed: int
    warmup: int
    notes: list[str] = []


class Environment(_Model):
    cpu: str
    cpu_cores: int
    memory_gib: float | None
    gpus: list[str]
    os: str
    python: str
    vbatch_version: str
    vllm_version: str | None
    #: 1-minute load average when the benchmark started: other work on the machine skews results.
    load_average: float | None = None


class BenchReport(_Model):
    schema_version: Literal[1] = 1
    created_at: str
    command: str
    workload: WorkloadInfo
    concurrency: list[int]
    time_limit_s: float
    request_timeout_s: float
    environment: Environment
    targets: list[TargetInfo]
    rows: list[ResultRow]

    @property
    def failed_requests(self) -> int:
        return sum(row.errors for row in self.rows)


def load_report(path: Path) -> BenchReport:
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise InputError(f"report {path} does not exist", hint="write one with vbatch bench -o report.json") from None
    except (OSError, orjson.JSONDecodeError) as err:
        raise InputError(
            f"cannot read report {path}: {err}", hint="give a JSON report written by vbatch bench -o"
        ) from None
    try:
        return BenchReport.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise InputError(
            f"{path} is not a vbatch bench report: {where}: {first['msg']}",
            hint="give a JSON report written by vbatch bench -o",
        ) from None


def report_json(report: BenchReport) -> bytes:
    return orjson.dumps(report.model_dump(mode="json"), option=orjson.OPT_INDENT_2) + b"\n"


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _milliseconds(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def _ms(dist: Distribution | None) -> str:
    if dist is None:
        return "n/a"
    return " / ".join(_milliseconds(value) for value in (dist.p50, dist.p95, dist.p99))


def _seconds(dist: Distribution | None) -> str:
    if dist is None:
        return "n/a"
    return f"{dist.p50:.2f} / {dist.p95:.2f} / {dist.p99:.2f}"


def results_table(report: BenchReport) -> Any:
    from rich.table import Table

    table = Table(title=f"vbatch bench: {describe_workload(report)}", title_justify="left")
    for header, justify in (
        ("target", "left"),
        ("conc", "right"),
        ("ok / err", "right"),
        ("req/s", "right"),
        ("out tok/s", "right"),
        ("TTFT ms p50/p95/p99", "right"),
        ("ITL ms p50/p95/p99", "right"),
        ("TPOT ms p50", "right"),
        ("E2E s p50/p95/p99", "right"),
    ):
        table.add_column(header, justify=justify)  # type: ignore[arg-type]
    for row in report.rows:
        errors = f"[red]{row.errors}[/]" if row.errors else "0"
        table.add_row(
            row.target,
            str(row.concurrency),
            f"{row.ok} / {errors}",
            f"{row.requests_per_s:.2f}",
            f"{row.output_tokens_per_s:.1f}",
            _ms(row.ttft_s),
            _ms(row.itl_s),
            "n/a" if row.tpot_s is None else _milliseconds(row.tpot_s.p50),
            _seconds(row.e2e_s),
        )
    return table


def describe_workload(report: BenchReport) -> str:
    w = report.workload
    tokens = f"{w.max_tokens} output tokens" if w.max_tokens else "each line's max_tokens"
    return f"{w.name}, {w.requests} requests per level, {tokens}, seed {w.seed}"


def describe_environment(env: Environment) -> str:
    memory = f", {env.memory_gib:.0f} GiB" if env.memory_gib else ""
    gpus = ", ".join(env.gpus) if env.gpus else "no GPU"
    vllm = f", vLLM {env.vllm_version}" if env.vllm_version else ""
    load = f"; load average {env.load_average:.1f} at the start" if env.load_average is not None else ""
    return (
        f"{env.cpu} ({env.cpu_cores} cores{memory}), {gpus}; {env.os}, Python {env.python}, "
        f"vbatch {env.vbatch_version}{vllm}{load}"
    )


def render_report(report: BenchReport, console: Any) -> None:
    """The table, then per target what it ran on and what could not be measured, then errors."""
    console.print(results_table(report))
    console.print(f"[bold]hardware[/]: {describe_environment(report.environment)}", highlight=False)
    for note in report.workload.notes:
        console.print(f"[bold]workload[/]: {note}", highlight=False)
    for target in report.targets:
        facts = [f"model {target.model}"]
        if target.server:
            facts.append(target.server)
        facts.append(f"quantization {target.quantization or 'unknown'}")
        facts += [f"{key}={value}" for key, value in target.settings.items()]
        console.print(f"[bold]{target.label}[/]: " + ", ".join(facts), highlight=False)
        if target.error:
            console.print(f"  [red]error[/]: {target.error}", highlight=False)
        for note in target.notes:
            console.print(f"  note: {note}", highlight=False)
    for row in report.rows:
        for sample in row.error_samples:
            console.print(f"[red]errors[/] {row.target} at concurrency {row.concurrency}: {sample}", highlight=False)


# --------------------------------------------------------------------------------------------
# Comparing two reports
# --------------------------------------------------------------------------------------------


class ComparedRow(_Model):
    target: str
    concurrency: int
    a: ResultRow | None
    b: ResultRow | None
    #: b / a of output tok/s, requests/s and p50 end-to-end latency; None where one side is missing.
    output_tokens_per_s_ratio: float | None
    requests_per_s_ratio: float | None
    e2e_p50_ratio: float | None


class Comparison(_Model):
    a: str
    b: str
    #: Settings that differ between the two reports (workload, hardware, targets' setups).
    differences: list[str]
    rows: list[ComparedRow]


def _ratio(a: float | None, b: float | None) -> float | None:
    return b / a if a and b is not None else None


def compare_reports(a: BenchReport, b: BenchReport, a_name: str, b_name: str) -> Comparison:
    """Pair rows by (target, concurrency) and list the settings that make the runs differ."""
    index_a = {(r.target, r.concurrency): r for r in a.rows}
    index_b = {(r.target, r.concurrency): r for r in b.rows}
    keys = list(dict.fromkeys([*index_a, *index_b]))
    rows = []
    for target, concurrency in keys:
        ra, rb = index_a.get((target, concurrency)), index_b.get((target, concurrency))
        rows.append(
            ComparedRow(
                target=target,
                concurrency=concurrency,
                a=ra,
                b=rb,
                output_tokens_per_s_ratio=_ratio(ra and ra.output_tokens_per_s, rb and rb.output_tokens_per_s),
                requests_per_s_ratio=_ratio(ra and ra.requests_per_s, rb and rb.requests_per_s),
                e2e_p50_ratio=_ratio(ra and ra.e2e_s and ra.e2e_s.p50, rb and rb.e2e_s and rb.e2e_s.p50),
            )
        )
    return Comparison(a=a_name, b=b_name, differences=_differences(a, b), rows=rows)


def _differences(a: BenchReport, b: BenchReport) -> list[str]:
    out = []
    workload_a, workload_b = a.workload.model_dump(exclude={"notes"}), b.workload.model_dump(exclude={"notes"})
    pairs: list[tuple[str, Any, Any]] = [(f"workload {key}", workload_a[key], workload_b[key]) for key in workload_a]
    pairs.append(("hardware", _hardware(a.environment), _hardware(b.environment)))
    targets_b = {t.label: t for t in b.targets}
    for target in a.targets:
        other = targets_b.get(target.label)
        if other is not None:
            for field in ("model", "server", "quantization"):
                pairs.append((f"{target.label} {field}", getattr(target, field), getattr(other, field)))
            for key in dict.fromkeys([*target.settings, *other.settings]):
                pairs.append((f"{target.label} {key}", target.settings.get(key), other.settings.get(key)))
    for what, value_a, value_b in pairs:
        if value_a != value_b:
            out.append(f"{what}: {value_a} -> {value_b}")
    return out


def _hardware(env: Environment) -> str:
    """The machine and versions, without the moment's load average."""
    return describe_environment(env.model_copy(update={"load_average": None}))


def _pair(a: float | None, b: float | None, fmt: str, ratio: float | None) -> str:
    text = f"{'-' if a is None else format(a, fmt)} -> {'-' if b is None else format(b, fmt)}"
    return f"{text} ({ratio:.2f}x)" if ratio is not None else text


def render_comparison(comparison: Comparison, console: Any) -> None:
    from rich.table import Table

    table = Table(title=f"A = {comparison.a}   B = {comparison.b}", title_justify="left")
    for header in ("target", "conc", "out tok/s A -> B", "req/s A -> B", "E2E p50 s A -> B", "errors A -> B"):
        table.add_column(header, justify="left" if header == "target" else "right")
    for row in comparison.rows:
        a, b = row.a, row.b
        table.add_row(
            row.target,
            str(row.concurrency),
            _pair(a and a.output_tokens_per_s, b and b.output_tokens_per_s, ".1f", row.output_tokens_per_s_ratio),
            _pair(a and a.requests_per_s, b and b.requests_per_s, ".2f", row.requests_per_s_ratio),
            _pair(a and a.e2e_s and a.e2e_s.p50, b and b.e2e_s and b.e2e_s.p50, ".2f", row.e2e_p50_ratio),
            _pair(a and a.errors, b and b.errors, "d", None),
        )
    console.print(table)
    if comparison.differences:
        console.print("[yellow]the runs differ in[/]:", highlight=False)
        for line in comparison.differences:
            console.print(f"  {line}", highlight=False)
    else:
        console.print("same workload, hardware and target settings", highlight=False)


def save_report(path: Path, data: bytes) -> None:
    """Write a report (or replace an old one) all at once; an unwritable path is a usage error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data)
    except OSError as err:
        raise UsageError(
            f"cannot write the report to {path}: {err.strerror or err}", hint="choose a writable path for -o"
        ) from None
