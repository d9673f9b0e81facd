"""RunSummary: the JSON of <stem>.summary.json and `vbatch run --json`, and how `vbatch status`
reads a job's summary (leniently: a missing, corrupt or foreign file shows no counts)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from vbatch.config.profiles import load_profile
from vbatch.services.drain import InboxLayout, claim, finish
from vbatch.services.reporting import RequestCounts, RunSummary, TokenCounts
from vbatch.services.status import inbox_status

KEYS = [
    "input",
    "results",
    "errors",
    "model",
    "engine",
    "profile",
    "requests",
    "tokens",
    "output_tokens_per_s",
    "prefix_cache_hit_share",
    "planned_prefix_share",
    "file_order_prefix_share",
    "engine_metrics",
    "wall_seconds",
    "load_seconds",
    "first_result_seconds",
    "processing_seconds",
    "vbatch_version",
    "meta",
]


def summary(**changes) -> RunSummary:
    fields = dict(
        input="in.jsonl",
        results="in.results.jsonl",
        errors="in.errors.jsonl",
        model="tiny",
        engine="in process",
        profile="cpu",
        requests=RequestCounts(total=3, ok=2, failed=1, resumed=0),
        tokens=TokenCounts(prompt=30, cached=16, completion=9),
        output_tokens_per_s=12.5,
        prefix_cache_hit_share=0.5333,
        planned_prefix_share=0.5,
        file_order_prefix_share=0.25,
        engine_metrics={"prefix_cache_hits": 16.0},
        wall_seconds=1.234,
        load_seconds=0.0,
        first_result_seconds=0.5,
        processing_seconds=0.7,
        vbatch_version="0.1.0",
        meta={"team": "nlp"},
    )
    return RunSummary(**{**fields, **changes})


def test_json_keys_in_order_and_already_complete_only_when_true():
    data = summary().to_dict()
    assert list(data) == KEYS
    assert data["requests"] == {"total": 3, "ok": 2, "failed": 1, "resumed": 0, "deduplicated": 0}
    assert data["tokens"] == {"prompt": 30, "cached": 16, "completion": 9, "reasoning": 0}
    assert "already_complete" not in summary().model_dump() and "already_complete" not in summary().model_dump_json()
    complete = summary(already_complete=True).to_dict()
    assert list(complete) == [*KEYS, "already_complete"] and complete["already_complete"] is True


def test_read_back_from_its_file_is_the_same_summary():
    original = summary()
    data = orjson.dumps(original.to_dict(), option=orjson.OPT_INDENT_2)
    assert RunSummary.model_validate_json(data) == original
    assert orjson.dumps(RunSummary.model_validate_json(data).to_dict(), option=orjson.OPT_INDENT_2) == data


def test_unknown_keys_are_refused():
    with pytest.raises(ValidationError):
        RunSummary.model_validate({**summary().to_dict(), "surprise": 1})
    with pytest.raises(ValidationError):
        RequestCounts.model_validate({"total": 1, "ok": 1, "failed": 0, "resumed": 0, "more": 2})


@pytest.mark.parametrize(
    "content",
    [None, b"{not json", b"[]", b'{"requests": 3}', b'{"requests": {"total": 1}}', b'{"other": "tool"}'],
    ids=["missing", "corrupt", "a list", "requests not an object", "no ok/failed", "foreign"],
)
def test_status_shows_no_counts_for_a_summary_it_cannot_read(tmp_path: Path, content: bytes | None):
    layout = InboxLayout.of(tmp_path)
    (layout.inbox / "a.jsonl").write_text("{}\n")
    job = claim(layout.inbox / "a.jsonl", layout, load_profile("cpu"), {})
    if content is not None:
        job.file(".summary.json").write_bytes(content)
    finish(job, "done", layout)
    (row,) = inbox_status(layout).jobs
    assert (row.state, row.ok, row.failed, row.output_tokens_per_s, row.wall_seconds) == (
        "done",
        None,
        None,
        None,
        None,
    )


def test_status_reads_a_full_summary(tmp_path: Path):
    layout = InboxLayout.of(tmp_path)
    (layout.inbox / "a.jsonl").write_text("{}\n")
    job = claim(layout.inbox / "a.jsonl", layout, load_profile("cpu"), {})
    job.file(".summary.json").write_text(json.dumps(summary().to_dict()))
    finish(job, "done", layout)
    (row,) = inbox_status(layout).jobs
    assert (row.ok, row.failed, row.output_tokens_per_s, row.wall_seconds) == (2, 1, 12.5, 1.234)
