"""scripts/workload_mp.py, the "mp" benchmark workload, on the tiny test tokenizer (no vLLM, no GPU)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
from collections import Counter

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "workload_mp.py"
N = 400
#: The tiny tokenizer has ~30 single-token words and a 1,024-token context: shorter texts.
SMALL = dict(max_model_len=1024, scale=0.2, min_words=20)


@pytest.fixture(scope="module")
def mp():
    spec = importlib.util.spec_from_file_location("workload_mp", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("tokenizers")
    pytest.importorskip("transformers")
    from vbatch.config.tinymodel import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def records(mp, tokenizer):
    return mp.build(tokenizer, n=N, **SMALL)


def _fits(mp, tokenizer, records, max_model_len):
    for r in records:
        assert mp.prompt_tokens(tokenizer, r["messages"]) + r["max_tokens"] <= max_model_len - mp.FIT_MARGIN, r["id"]


def test_composition(records):
    assert len(records) == N
    assert [r["id"] for r in records] == list(range(N))
    kinds = Counter(r["kind"] for r in records)
    for kind, share in {"system": 0.40, "rag": 0.30, "chat": 0.25, "repeat": 0.05}.items():
        assert abs(kinds[kind] / N - share) <= 0.02, kinds
    assert len({r["group"] for r in records if r["kind"] == "rag"}) == 40
    assert len({r["group"] for r in records if r["kind"] == "system"}) <= 30
    # Zipf-like: the most popular document has many questions, the rarest one.
    per_doc = Counter(r["group"] for r in records if r["kind"] == "rag")
    assert max(per_doc.values()) >= 20 and min(per_doc.values()) == 1
    rag_systems = {r["messages"][0]["content"] for r in records if r["kind"] == "rag"}
    assert len(rag_systems) == 1
    for r in records:
        assert 16 <= r["max_tokens"] <= 512
        assert r["messages"][-1]["role"] == "user"


def test_repeats_are_exact_copies(records):
    keys = [json.dumps([r["messages"], r["max_tokens"]]) for r in records]
    duplicates = len(keys) - len(set(keys))
    assert 0.04 <= duplicates / N <= 0.06
    by_id = {r["id"]: r for r in records}
    for r in records:
        if r["kind"] == "repeat":
            source = by_id[r["copy_of"]]
            assert source["id"] < r["id"] and source["kind"] != "repeat"
            assert (source["messages"], source["max_tokens"]) == (r["messages"], r["max_tokens"])


def test_chat_turns_repeat_earlier_turns(records):
    conversations: dict[str, list[dict]] = {}
    for r in records:
        if r["kind"] == "chat":
            conversations.setdefault(r["group"], []).append(r)
    assert len(conversations) >= 10
    for turns in conversations.values():
        turns.sort(key=lambda r: r["turn"])
        for earlier, later in zip(turns, turns[1:]):
            # Every earlier request's messages are a prefix of the later one's.
            assert later["messages"][: len(earlier["messages"])] == earlier["messages"]
            assert len(later["messages"]) > len(earlier["messages"])


def test_everything_fits(mp, tokenizer, records):
    _fits(mp, tokenizer, records, SMALL["max_model_len"])


def test_tight_context_cuts_or_replaces(mp, tokenizer):
    records = mp.build(tokenizer, n=200, max_model_len=800, scale=0.25, min_words=20)
    assert len(records) == 200
    _fits(mp, tokenizer, records, 800)


def test_deterministic(mp, tokenizer, records):
    assert mp.build(tokenizer, n=N, **SMALL) == records
    assert mp.build(tokenizer, n=N, seed=7, **SMALL) != records
    assert mp.order(records, "shuffled") == mp.order(records, "shuffled")
    assert mp.order(records, "original") == records


def _assert_grouped(ordered):
    positions: dict[str, list[int]] = {}
    for i, r in enumerate(ordered):
        positions.setdefault(r["group"], []).append(i)
    for group, where in positions.items():
        if group.startswith(("doc-", "conv-")):  # a document's questions, a conversation's turns
            assert where == list(range(where[0], where[0] + len(where))), group
        if group.startswith("conv-"):  # turn k's prompt is a prefix of turn k+1's
            turns = [ordered[i]["turn"] for i in where]
            assert turns == sorted(turns), group
    # Records with the same system prompt stay together.
    firsts = [r["messages"][0]["content"] for r in ordered]
    runs = [s for i, s in enumerate(firsts) if i == 0 or firsts[i - 1] != s]
    assert len(runs) == len(set(runs))


def test_sorted_order_groups_prefixes(mp, tokenizer, records):
    ordered = mp.order(records, "sorted", tokenizer)
    texts = [mp.prompt_text(tokenizer, r) for r in ordered]
    assert texts == sorted(texts)
    _assert_grouped(ordered)
    _assert_grouped(mp.order(records, "sorted"))  # without a tokenizer: by the messages
    with pytest.raises(AssertionError):
        _assert_grouped(mp.order(records, "shuffled"))


def test_batch_file(mp, records, tmp_path):
    path = tmp_path / "mp.jsonl"
    shuffled = mp.order(records, "shuffled")
    mp.write_batch_jsonl(str(path), shuffled, "some-model")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == N
    for line, r in zip(lines, shuffled):
        assert line["custom_id"] == f"mp-{r['id']}"
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        body = line["body"]
        assert body == {
            "model": "some-model",
            "messages": r["messages"],
            "max_tokens": r["max_tokens"],
            "temperature": 0,
            "ignore_eos": True,
        }
    assert len({line["custom_id"] for line in lines}) == N


def test_describe(mp, tokenizer, records):
    summary = mp.describe(records, tokenizer)
    assert summary["n"] == N
    assert summary["kinds"]["repeat"] == N - 160 - 120 - 100
    assert summary["exact_duplicates"] == summary["kinds"]["repeat"]
    assert summary["max_prompt_plus_max_tokens"] <= SMALL["max_model_len"] - mp.FIT_MARGIN
    assert summary["prompt_tokens"] == pytest.approx(summary["mean_prompt_tokens"] * N, rel=1e-3)
    assert 0.5 < summary["sorted_shared_prefix_share"] < 1
