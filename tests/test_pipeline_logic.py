"""Pipeline logic with the NullEngine (instant answers, real tokenizer): ordering, resume
bookkeeping, multi-input embeddings, token-segment cache. The real engine is covered by
test_cli_run.py and test_engine_vllm.py."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
from support.jsonl import read_jsonl as records
from support.jsonl import write_lines

from vbatch.config.profiles import Profile
from vbatch.core.engine_io import PromptKey
from vbatch.core.tokens import PromptTokenizer
from vbatch.engines.null import NullEngine
from vbatch.errors import InputError, StateError
from vbatch.services.run import Reporter, RunSpec, run_batch


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def chat(i: int, system: str) -> dict:
    return {
        "custom_id": f"r{i}",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": f"question number {i}"}],
        "max_tokens": 3,
    }


def run(tmp_path: Path, engine: NullEngine, name="in.jsonl", **spec) -> dict:
    profile = Profile(name="t", model="tiny", source="test", batch={"window": 8, "max_in_flight": 4})
    return run_batch(
        RunSpec(
            input=str(tmp_path / name),
            output=tmp_path / "out.results.jsonl",
            errors=tmp_path / "out.errors.jsonl",
            profile=profile,
            **spec,
        ),
        Reporter(),
        load=lambda _: engine,
    ).to_dict()


def test_planned_order_groups_prefixes_and_ordered_restores_input_order(tmp_path, tokenizer):
    systems = [f"system prompt {k} " * 20 for k in range(4)]
    write_lines(tmp_path / "in.jsonl", [chat(i, systems[i % 4]) for i in range(40)])
    summary = run(tmp_path, NullEngine(tokenizer, max_model_len=1024))
    ids = [r["custom_id"] for r in records(tmp_path / "out.results.jsonl")]
    assert sorted(ids) == sorted(f"r{i}" for i in range(40)) and ids != [f"r{i}" for i in range(40)]
    assert summary["planned_prefix_share"] > summary["file_order_prefix_share"]

    summary = run(tmp_path, NullEngine(tokenizer, max_model_len=1024), ordered=True, restart=True)
    assert [r["custom_id"] for r in records(tmp_path / "out.results.jsonl")] == [f"r{i}" for i in range(40)]


def test_ordered_output_skips_requests_the_engine_failed(tmp_path, tokenizer):
    write_lines(tmp_path / "in.jsonl", [chat(i, "same system") for i in range(10)])
    engine = NullEngine(tokenizer, max_model_len=1024, fail_keys=frozenset({PromptKey(4)}))
    summary = run(tmp_path, engine, ordered=True)
    assert [r["custom_id"] for r in records(tmp_path / "out.results.jsonl")] == [f"r{i}" for i in range(10) if i != 3]
    (error,) = records(tmp_path / "out.errors.jsonl")
    assert error["line"] == 4 and error["error"]["code"] == "engine_error"
    assert summary["requests"]["failed"] == 1


def test_resume_skips_what_is_on_disk(tmp_path, tokenizer):
    write_lines(tmp_path / "in.jsonl", [chat(i, "s") for i in range(6)] + [{"bad": 1}])
    run(tmp_path, NullEngine(tokenizer, max_model_len=1024))
    results = tmp_path / "out.results.jsonl"
    kept = results.read_text().splitlines()[:2]
    results.write_text("\n".join(kept) + "\n" + kept[0][:10])  # a torn last line, as a kill leaves
    (tmp_path / "out.summary.json").unlink()
    manifest = tmp_path / "out.run.json"
    manifest.write_text(manifest.read_text().replace('"complete"', '"running"'))
    engine = NullEngine(tokenizer, max_model_len=1024)
    summary = run(tmp_path, engine)
    assert engine.pulled == 4
    assert summary["requests"] == {"total": 7, "ok": 6, "failed": 1, "resumed": 3, "deduplicated": 0}
    assert sorted(r["custom_id"] for r in records(results)) == [f"r{i}" for i in range(6)]


def test_embedding_list_input_is_one_record_with_ordered_vectors(tmp_path, tokenizer):
    write_lines(
        tmp_path / "in.jsonl",
        [
            {"custom_id": "e", "input": ["one", "two words", "three words here"], "encoding_format": "base64"},
            {"custom_id": "f", "input": "single"},
        ],
    )
    run(tmp_path, NullEngine(tokenizer, task="embed", max_model_len=64))
    by_id = {r["custom_id"]: r["response"]["body"] for r in records(tmp_path / "out.results.jsonl")}
    assert [d["index"] for d in by_id["e"]["data"]] == [0, 1, 2]
    assert isinstance(by_id["e"]["data"][0]["embedding"], str)  # base64
    assert by_id["f"]["data"][0]["embedding"] == [0.0] * 8
    assert by_id["e"]["usage"]["prompt_tokens"] > by_id["f"]["usage"]["prompt_tokens"]


def test_prompt_tokenizer_matches_whole_text_tokenization(tokenizer):
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "system", "content": f"shared system {k % 3} " * 10}, {"role": "user", "content": f"u {k}"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for k in range(200)
    ]
    fast = PromptTokenizer(tokenizer, first_checks=0, check_every=10**9)
    got = []
    for start in range(0, 200, 50):
        got += fast.encode(texts[start : start + 50], add_special_tokens=False)
    assert fast.enabled and fast.cache  # the shared system pieces were cached and reused
    plain = PromptTokenizer(tokenizer)
    plain.enabled = False
    assert got == plain.encode(texts, add_special_tokens=False)


def test_prompt_tokenizer_turns_itself_off_on_a_mismatch(tokenizer):
    fast = PromptTokenizer(tokenizer)
    fast.special_tokens = {
        k: array("i", (0,)).tobytes() for k in fast.special_tokens
    }  # sabotage: specials now map to the wrong id
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    plain = PromptTokenizer(tokenizer)
    plain.enabled = False
    assert fast.encode([text], add_special_tokens=False) == plain.encode([text], add_special_tokens=False)
    assert not fast.enabled


def test_help_and_pure_core_import_neither_torch_nor_vllm():
    code = (
        "import sys, runpy\n"
        "import vbatch.services.run, vbatch.core.planner, vbatch.storage.readers, vbatch.core.requests, vbatch.core.render,"
        " vbatch.core.records, vbatch.storage.journal, vbatch.storage.writers, vbatch.config.profiles, vbatch.engines.vllm.engine\n"
        "sys.argv = ['vbatch', '--help']\n"
        "try:\n    runpy.run_module('vbatch', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "sys.argv = ['vbatch', 'run', '--help']\n"
        "try:\n    runpy.run_module('vbatch', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm', 'transformers'))\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--fail-fast" in proc.stdout and "Exit codes" in proc.stdout


def test_prompt_tokenizer_ignores_padding_and_truncation_of_tokenizer_json(minilm_dir):
    """MiniLM's tokenizer.json pads and truncates to 128: prompts must be counted as they are."""
    from array import array

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    fast = PromptTokenizer(tokenizer)
    short, long = fast.encode(["hello world", "word " * 300], add_special_tokens=True)
    assert array("i", short).tolist() == tokenizer("hello world")["input_ids"]
    assert len(long) // 4 == 302  # [CLS] + 300 words + [SEP], not cut at 128


class _Interrupting(NullEngine):
    """Answers `answer` requests, then raises as a Ctrl-C in the middle of a run would."""

    def __init__(self, tokenizer, answer: int, **kwargs):
        super().__init__(tokenizer, **kwargs)
        self.answer = answer

    def run(self, requests):
        for count, result in enumerate(super().run(requests)):
            if count == self.answer:
                raise KeyboardInterrupt
            yield result


def run_stdin(tmp_path: Path, monkeypatch, data: bytes, engine: NullEngine) -> dict:
    class Stdin:
        buffer = io.BytesIO(data)

    monkeypatch.setattr(sys, "stdin", Stdin)
    profile = Profile(name="t", model="tiny", source="test", batch={"window": 8, "max_in_flight": 4, "flush_every": 1})
    return run_batch(
        RunSpec(
            input="-", output=tmp_path / "out.results.jsonl", errors=tmp_path / "out.errors.jsonl", profile=profile
        ),
        Reporter(),
        load=lambda _: engine,
    ).to_dict()


def test_stdin_resume_is_refused_when_stdin_holds_other_lines(tmp_path, tokenizer, monkeypatch):
    first = b"".join(json.dumps(chat(i, "s")).encode() + b"\n" for i in range(20))
    with pytest.raises(KeyboardInterrupt):
        run_stdin(tmp_path, monkeypatch, first, _Interrupting(tokenizer, 5, max_model_len=1024))
    assert 0 < len(records(tmp_path / "out.results.jsonl")) < 20

    other = first.replace(b"question number", b"another question")
    with pytest.raises(StateError, match="input file changed"):
        run_stdin(tmp_path, monkeypatch, other, NullEngine(tokenizer, max_model_len=1024))

    summary = run_stdin(tmp_path, monkeypatch, first, NullEngine(tokenizer, max_model_len=1024))
    assert summary["requests"]["total"] == 20 and summary["requests"]["resumed"] > 0
    assert sorted(r["custom_id"] for r in records(tmp_path / "out.results.jsonl")) == sorted(f"r{i}" for i in range(20))
    assert not (tmp_path / "out.stdin.jsonl").exists()  # the copy of stdin is gone once the run ends


@pytest.mark.parametrize("content", [b"", b"\n  \n\r\n"])
@pytest.mark.parametrize("output", ["out.results.jsonl", "out.parquet"])
def test_input_without_requests_finishes_without_loading_the_model(tmp_path, content, output):
    (tmp_path / "in.jsonl").write_bytes(content)
    profile = Profile(name="t", model="tiny", source="test")

    def must_not_load(_):
        raise AssertionError("the model was loaded for an input without requests")

    summary = run_batch(
        RunSpec(
            input=str(tmp_path / "in.jsonl"),
            output=tmp_path / output,
            errors=tmp_path / "out.errors.jsonl",
            profile=profile,
        ),
        Reporter(),
        load=must_not_load,
    ).to_dict()
    assert summary["requests"] == {"total": 0, "ok": 0, "failed": 0, "resumed": 0, "deduplicated": 0}
    assert "not loaded" in summary["engine"]
    assert (tmp_path / output).exists() and (tmp_path / "out.errors.jsonl").exists()
    if output.endswith(".parquet"):
        import pyarrow.parquet as pq

        assert pq.read_table(tmp_path / output).num_rows == 0


def test_a_file_for_another_model_stops_before_the_model_loads(tmp_path, tokenizer):
    """A file written for OpenAI names gpt-4o-mini on every line: one error, no model load, no
    thousand identical records; served_model_name maps the name onto the profile's model."""
    write_lines(tmp_path / "in.jsonl", [{**chat(i, "sys"), "model": "gpt-4o-mini"} for i in range(5)])
    loads = []

    def load(profile: Profile) -> NullEngine:
        loads.append(profile)
        return NullEngine(tokenizer, max_model_len=1024)

    spec = RunSpec(
        input=str(tmp_path / "in.jsonl"),
        output=tmp_path / "out.results.jsonl",
        errors=tmp_path / "out.errors.jsonl",
        profile=Profile(name="t", model="tiny", source="test"),
    )
    with pytest.raises(InputError, match="ask for model 'gpt-4o-mini', which this run does not serve") as raised:
        run_batch(spec, Reporter(), load=load)
    assert "--served-model-name gpt-4o-mini" in raised.value.hint
    assert loads == [] and not (tmp_path / "out.errors.jsonl").exists()
    mapped = spec.profile.model_copy(update={"served_model_name": ["tiny", "gpt-4o-mini"]})
    summary = run_batch(RunSpec(**{**spec.__dict__, "profile": mapped}), Reporter(), load=load).to_dict()
    assert summary["requests"]["ok"] == 5 and len(loads) == 1


def test_counts_a_reporter_publishes_after_sync_are_on_disk(tmp_path, tokenizer):
    """The batch server's catalog shows a run's counts to clients; it syncs first, so a kill -9
    right after cannot leave fewer records on disk than a client was told had finished."""
    write_lines(tmp_path / "in.jsonl", [chat(i, "shared system prompt " * 10) for i in range(60)] + ["not json"])
    seen = []

    class Publishing(Reporter):
        def update(self, stats):
            stats.sync()
            on_disk = sum(1 for _ in open(tmp_path / "out.results.jsonl"))
            errors_on_disk = sum(1 for _ in open(tmp_path / "out.errors.jsonl"))
            seen.append((stats.ok, on_disk, stats.failed, errors_on_disk))

    # Nothing flushes by itself in this run: only sync() puts records on disk before the end.
    profile = Profile(
        name="t",
        model="tiny",
        source="test",
        batch={"window": 8, "max_in_flight": 4, "flush_every": 10_000, "flush_seconds": 3600},
    )
    spec = RunSpec(
        input=str(tmp_path / "in.jsonl"),
        output=tmp_path / "out.results.jsonl",
        errors=tmp_path / "out.errors.jsonl",
        profile=profile,
    )
    run_batch(spec, Publishing(), load=lambda _: NullEngine(tokenizer, max_model_len=1024))
    assert len(seen) == 60 and seen[-1][0] == 60
    assert all(on_disk >= ok and errors >= failed for ok, on_disk, failed, errors in seen)
    assert any(failed for _, _, failed, _ in seen)  # the bad line was counted (and on disk) mid-run
