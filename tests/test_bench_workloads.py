"""Workloads: seeded, fixed-length, and any OpenAI batch file read with vbatch's own readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vbatch.errors import InputError
from vbatch.services.bench.workloads import DEFAULT_MAX_TOKENS, WorkloadSpec, workload_requests


def _texts(requests) -> list[list[str]]:
    return [[m.text() for m in r.body.messages] for r in requests]


def test_builtin_workloads_are_reproducible_and_fixed_length():
    spec = WorkloadSpec("unique", requests=5, max_tokens=12, seed=3)
    first, again = workload_requests(spec, "level-0"), workload_requests(spec, "level-0")
    assert _texts(first) == _texts(again)
    assert len(first) == 5 and len(set(map(tuple, _texts(first)))) == 5
    assert all(r.body.max_tokens == 12 and r.body.ignore_eos and r.body.temperature == 0.0 for r in first)
    assert _texts(workload_requests(spec, "level-1")) != _texts(first)  # a fresh draw per level
    assert _texts(workload_requests(WorkloadSpec("unique", requests=5, max_tokens=12, seed=4), "level-0")) != _texts(
        first
    )


def test_shared_prefix_shares_its_system_prompt_and_sizes_follow_prompt_words():
    requests = workload_requests(WorkloadSpec("shared-prefix", requests=4, prompt_words=40), "level-0")
    systems = {r.body.messages[0].text() for r in requests}
    assert len(systems) == 1 and len(systems.pop().split()) == 40
    assert len({r.body.messages[1].text() for r in requests}) == 4
    assert all(r.body.max_tokens == DEFAULT_MAX_TOKENS for r in requests)
    short = workload_requests(WorkloadSpec("chat-short", requests=20, prompt_words=10), "level-0")
    assert all(5 <= len(r.body.messages[0].text().split()) <= 15 for r in short)


def test_file_workload_reads_batch_lines_and_fixes_output_length(tmp_path: Path):
    lines = [
        {
            "custom_id": "a",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5},
        },
        {"custom_id": "b", "prompt": "Once upon a time"},
        {"custom_id": "c", "prompt": "third", "max_tokens": 9},
    ]
    path = tmp_path / "batch.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    spec = WorkloadSpec(str(path))
    spec.check()
    requests = workload_requests(spec, "level-0")
    assert [r.custom_id for r in requests] == ["a", "b", "c"]
    assert [r.body.max_tokens for r in requests] == [5, DEFAULT_MAX_TOKENS, 9]  # each line's own
    assert requests[0].body.max_completion_tokens is None and all(r.body.ignore_eos for r in requests)
    assert [r.body.max_tokens for r in workload_requests(WorkloadSpec(str(path), max_tokens=3), "x")] == [3, 3, 3]
    assert len(workload_requests(WorkloadSpec(str(path), requests=2), "x")) == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"custom_id": "e", "input": "embed me"}, "is an embeddings request"),
        ({"custom_id": "n", "prompt": "x", "n": 2}, "asks for n=2 choices"),
        ({"custom_id": "bad", "prompt": "x", "max_tokens": -1}, "line 1"),
    ],
)
def test_file_workload_refuses_what_it_cannot_bench(tmp_path: Path, line: dict, message: str):
    path = tmp_path / "batch.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(InputError) as caught:
        workload_requests(WorkloadSpec(str(path)), "level-0")
    assert message in caught.value.message


def test_unknown_workload_names_the_choices(tmp_path: Path):
    with pytest.raises(InputError) as caught:
        WorkloadSpec(str(tmp_path / "nope.jsonl")).check()
    assert "shared-prefix, unique, chat-short" in caught.value.hint


def test_the_report_records_the_effective_sizes(tmp_path: Path):
    assert (WorkloadSpec("unique").fixed_max_tokens, WorkloadSpec("unique").words) == (DEFAULT_MAX_TOKENS, 96)
    assert (
        WorkloadSpec("chat-short", max_tokens=7, prompt_words=3).fixed_max_tokens,
        WorkloadSpec("chat-short", prompt_words=3).words,
    ) == (7, 3)
    path = tmp_path / "b.jsonl"
    path.write_text('{"prompt": "x"}\n')
    assert (WorkloadSpec(str(path)).fixed_max_tokens, WorkloadSpec(str(path)).words) == (None, None)
