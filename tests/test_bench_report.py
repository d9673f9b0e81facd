"""The JSON report (strict schema), its table, the comparison of two reports, and the PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from vbatch.errors import InputError
from vbatch.services.bench.metrics import RequestSample, failed, summarise
from vbatch.services.bench.plot import write_plot
from vbatch.services.bench.report import (
    BenchReport,
    Environment,
    ResultRow,
    TargetInfo,
    WorkloadInfo,
    compare_reports,
    load_report,
    render_comparison,
    render_report,
    report_json,
)


def row(target: str, concurrency: int, e2e: float, tokens: int, ttft: float | None = 0.05) -> ResultRow:
    samples = [
        RequestSample(
            ok=True,
            start=0.0,
            end=e2e,
            output_tokens=tokens,
            max_tokens=tokens,
            first_token=ttft,
            last_token=e2e if ttft is not None else None,
            token_times=[ttft, e2e] if ttft is not None else [],
        )
        for _ in range(4)
    ]
    return ResultRow(target=target, concurrency=concurrency, **summarise(samples, wall_seconds=e2e * 2))


def report(*, seed: int = 0, speedup: float = 1.0) -> BenchReport:
    return BenchReport(
        created_at="2026-11-23T22:00:00+00:00",
        command="vbatch bench -t vbatch:cpu-chat -t openai:http://127.0.0.1:8000/v1:tiny -c 1,4",
        workload=WorkloadInfo(name="shared-prefix", requests=4, max_tokens=16, prompt_words=None, seed=seed, warmup=2),
        concurrency=[1, 4],
        time_limit_s=600.0,
        request_timeout_s=120.0,
        environment=Environment(
            cpu="Test CPU",
            cpu_cores=2,
            memory_gib=24.0,
            gpus=[],
            os="Linux",
            python="3.11.7",
            vbatch_version="0.1.0",
            vllm_version="0.32.0",
            load_average=0.5,
        ),
        targets=[
            TargetInfo(
                label="vbatch:cpu-chat",
                kind="vbatch",
                spec="vbatch:cpu-chat",
                model="tiny",
                server="vbatch 0.1.0",
                quantization="none",
                settings={"max_model_len": 1024},
                notes=["ITL n/a: the engine returns finished requests only"],
            ),
            TargetInfo(
                label="openai:tiny",
                kind="openai",
                spec="openai:http://127.0.0.1:8000/v1:tiny",
                url="http://127.0.0.1:8000/v1",
                model="tiny",
                server="vLLM 0.32.0",
            ),
            TargetInfo(
                label="ollama:gone",
                kind="ollama",
                spec="ollama:gone",
                model="gone",
                error="nothing answers at http://localhost:11434/api/version",
            ),
        ],
        rows=[
            row("vbatch:cpu-chat", 1, 0.2 / speedup, 16),
            row("vbatch:cpu-chat", 4, 0.3 / speedup, 16),
            row("openai:tiny", 1, 0.25, 16),
            row("openai:tiny", 4, 0.4, 16, ttft=None),
            ResultRow(target="ollama:gone", concurrency=1, **summarise([failed("nothing answers")] * 4, 0.0)),
            ResultRow(target="ollama:gone", concurrency=4, **summarise([failed("nothing answers")] * 4, 0.0)),
        ],
    )


def test_report_round_trips_and_rejects_foreign_json(tmp_path: Path):
    original = report()
    path = tmp_path / "report.json"
    path.write_bytes(report_json(original))
    assert load_report(path) == original
    data = json.loads(path.read_text())
    data["rows"][0]["surprise"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"not a vbatch bench report: rows\.0\.surprise"):
        load_report(path)
    with pytest.raises(InputError, match="does not exist"):
        load_report(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read report"):
        load_report(tmp_path / "junk.json")


def test_table_shows_numbers_settings_notes_and_errors():
    console = Console(width=200, record=True)
    render_report(report(), console)
    text = console.export_text()
    assert "vbatch bench: shared-prefix, 4 requests per level, 16 output tokens, seed 0" in text
    assert "50 / 50 / 50" in text  # TTFT ms of vbatch:cpu-chat at concurrency 1
    assert "openai:tiny: model tiny, vLLM 0.32.0" in text
    assert "error: nothing answers at http://localhost:11434/api/version" in text
    assert "note: ITL n/a" in text
    assert "Test CPU (2 cores, 24 GiB), no GPU" in text


def test_compare_pairs_rows_and_names_what_differs():
    comparison = compare_reports(report(), report(seed=1, speedup=2.0), "a.json", "b.json")
    by_key = {(r.target, r.concurrency): r for r in comparison.rows}
    assert by_key[("vbatch:cpu-chat", 1)].e2e_p50_ratio == pytest.approx(0.5)
    assert by_key[("vbatch:cpu-chat", 1)].output_tokens_per_s_ratio == pytest.approx(2.0)
    assert by_key[("openai:tiny", 4)].requests_per_s_ratio == pytest.approx(1.0)
    assert by_key[("ollama:gone", 1)].output_tokens_per_s_ratio is None  # nothing to divide by
    assert comparison.differences == ["workload seed: 0 -> 1"]
    console = Console(width=200, record=True)
    render_comparison(comparison, console)
    text = console.export_text()
    assert "160.0 -> 320.0 (2.00x)" in text and "the runs differ in" in text
    assert compare_reports(report(), report(), "a", "b").differences == []
    other = report()
    other.targets[0].settings["max_model_len"] = 2048
    assert compare_reports(report(), other, "a", "b").differences == ["vbatch:cpu-chat max_model_len: 1024 -> 2048"]


def test_plot_writes_a_png(tmp_path: Path):
    path = tmp_path / "bench.png"
    write_plot(report(), path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 1200 and height > 400  # three readable panels side by side
