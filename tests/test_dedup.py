"""Identical deterministic requests run once (core/dedup, wired in services/run): the rule alone,
the pipeline with the NullEngine (copies of finished and of failed requests, --ordered), and the
real vLLM engine, where copies wait for requests still in flight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.jsonl import chat_line, read_jsonl, write_lines

from vbatch.config.profiles import Profile
from vbatch.core.dedup import Dedup, is_deterministic
from vbatch.core.engine_io import PromptKey, Sampling
from vbatch.engines.null import NullEngine
from vbatch.services.run import Reporter, RunSpec, run_batch


def test_only_deterministic_requests_are_deduplicated():
    assert is_deterministic(None)  # an embedding
    assert is_deterministic(Sampling(temperature=0))
    assert is_deterministic(Sampling(temperature=0.8, seed=3))
    assert not is_deterministic(Sampling(temperature=0.8))
    assert not is_deterministic(Sampling())  # the model's default temperature
    assert not is_deterministic(Sampling(temperature=0, n=2))


def test_copies_wait_for_their_leader_and_finished_answers_are_kept_bounded():
    dedup: Dedup[str, str] = Dedup(keep_finished=1)
    assert dedup.leads(b"a", "a1") == (True, None)
    assert dedup.leads(b"a", "a2") == (False, None)  # waits for a1
    assert dedup.leads(b"b", "b1") == (True, None)
    assert dedup.finish(b"a", "answer a") == ["a2"]
    assert dedup.leads(b"a", "a3") == (False, "answer a")
    assert dedup.finish(b"b", None) == []  # a failed leader is not kept ...
    assert dedup.leads(b"b", "b2") == (True, None)  # ... so its next copy runs
    assert dedup.finish(b"b", "answer b") == []
    assert dedup.leads(b"a", "a4") == (True, None)  # only one answer kept: a's went
    assert dedup.copies == 2


def lines_with_copies(count: int, copies: dict[int, int], **body) -> list[dict]:
    """`count` chat lines; line `copy` repeats line `original`'s body under its own custom_id."""
    lines = [chat_line(i, **body) for i in range(count)]
    for copy, original in copies.items():
        lines[copy] = {**lines[original], "custom_id": f"copy{copy}"}
    return lines


def run(tmp_path: Path, engine, lines: list[dict], *, dedup: bool = True, **spec) -> dict:
    write_lines(tmp_path / "in.jsonl", lines)
    profile = Profile(name="t", model="tiny", source="test", batch={"window": 64, "max_in_flight": 16, "dedup": dedup})
    return run_batch(
        RunSpec(
            input=str(tmp_path / "in.jsonl"),
            output=tmp_path / "out.results.jsonl",
            errors=tmp_path / "out.errors.jsonl",
            profile=profile,
            **spec,
        ),
        Reporter(),
        load=lambda _: engine,
    ).to_dict()


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_every_copy_gets_its_own_record_in_input_order(tmp_path, tokenizer):
    engine = NullEngine(tokenizer, max_model_len=512)
    summary = run(tmp_path, engine, lines_with_copies(20, {5: 0, 12: 0, 19: 3}), ordered=True)
    assert engine.pulled == 17
    assert summary["requests"] == {"total": 20, "ok": 20, "failed": 0, "resumed": 0, "deduplicated": 3}
    results = read_jsonl(tmp_path / "out.results.jsonl")
    ids = [r["custom_id"] for r in results]
    assert ids == [f"copy{i}" if i in (5, 12, 19) else f"c{i}" for i in range(20)]  # --ordered holds
    assert len({r["id"] for r in results}) == 20  # each record its own id
    by_id = {r["custom_id"]: r["response"]["body"] for r in results}
    assert by_id["copy5"]["choices"] == by_id["c0"]["choices"] == by_id["copy12"]["choices"]


def test_sampled_requests_and_a_profile_without_dedup_run_every_line(tmp_path, tokenizer):
    engine = NullEngine(tokenizer, max_model_len=512)
    summary = run(tmp_path, engine, lines_with_copies(6, {5: 0}, temperature=0.7))
    assert (engine.pulled, summary["requests"]["deduplicated"]) == (6, 0)
    engine = NullEngine(tokenizer, max_model_len=512)
    summary = run(tmp_path, engine, lines_with_copies(6, {5: 0}), dedup=False, restart=True)
    assert (engine.pulled, summary["requests"]["deduplicated"]) == (6, 0)
    engine = NullEngine(tokenizer, max_model_len=512)
    summary = run(tmp_path, engine, lines_with_copies(6, {5: 0}, temperature=0.7, seed=1), restart=True)
    assert (engine.pulled, summary["requests"]["deduplicated"]) == (5, 1)


def test_copies_of_a_failed_request_fail_with_it(tmp_path, tokenizer):
    class SlowFailing(NullEngine):
        """Pulls every request before answering any, so the copies wait for a leader in flight."""

        def run(self, requests):
            yield from super().run(list(requests))

    engine = SlowFailing(tokenizer, max_model_len=512, fail_keys=frozenset({PromptKey(1)}))
    summary = run(tmp_path, engine, lines_with_copies(4, {2: 0, 3: 0}))
    assert summary["requests"]["failed"] == 3 and summary["requests"]["ok"] == 1
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert sorted(e["custom_id"] for e in errors) == ["c0", "copy2", "copy3"]
    assert all(e["error"]["code"] == "engine_error" for e in errors)


@pytest.mark.engine
def test_the_real_engine_runs_each_repeated_line_once(tmp_path, tiny_engine):
    class Counting:
        """The session's engine, counting what reaches it and left open for the next test."""

        def __init__(self, engine):
            self.engine, self.pulled = engine, 0

        def __getattr__(self, name):
            return getattr(self.engine, name)

        def run(self, requests):
            def counted():
                for request in requests:
                    self.pulled += 1
                    yield request

            return self.engine.run(counted())

        def close(self):
            pass

    # 5 % of 200 lines repeat another line, as in the benchmark
    lines = lines_with_copies(200, {i: i - 7 for i in range(10, 200, 20)})
    engine = Counting(tiny_engine)
    summary = run(tmp_path, engine, lines)
    assert engine.pulled == 190 and summary["requests"]["deduplicated"] == 10
    results = {r["custom_id"]: r for r in read_jsonl(tmp_path / "out.results.jsonl")}
    assert len(results) == 200
    for i in range(10, 200, 20):
        copy, original = results[f"copy{i}"], results[f"c{i - 7}"]
        assert copy["response"]["body"]["choices"] == original["response"]["body"]["choices"]
        assert copy["id"] != original["id"]
    assert json.loads((tmp_path / "out.summary.json").read_text())["requests"]["deduplicated"] == 10
