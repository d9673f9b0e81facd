"""Time to the first result: the engine starts on the first requests made while the rest of the
file is still read and tokenized (issue 16), through the read-ahead thread's ready() and the
planner taking in only what is ready."""

from __future__ import annotations

import gc
import itertools
import threading
import time
from pathlib import Path

import pytest
from support.jsonl import read_jsonl, write_lines

from vbatch.config.profiles import Profile
from vbatch.engines.null import NullEngine
from vbatch.services import run as run_module
from vbatch.services.background import _PREFETCH_CHUNK, _PREFETCH_DEPTH, Prefetched
from vbatch.services.run import Reporter, RunSpec, run_batch


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_ready_says_whether_the_next_item_comes_without_waiting():
    gate = threading.Event()

    def source():
        yield from range(_PREFETCH_CHUNK)  # one whole chunk
        assert gate.wait(30)
        yield from range(_PREFETCH_CHUNK, _PREFETCH_CHUNK + 10)

    items = Prefetched(source())
    assert next(items) == 0  # waits for the first chunk
    assert items.ready()
    assert [next(items) for _ in range(_PREFETCH_CHUNK - 1)] == list(range(1, _PREFETCH_CHUNK))
    assert not items.ready()  # the producer is held: nothing to take without waiting
    gate.set()
    assert list(items) == list(range(_PREFETCH_CHUNK, _PREFETCH_CHUNK + 10))
    assert items.ready()  # the end comes at once, and stays the end
    assert list(items) == []


def test_a_producer_error_is_raised_after_the_items_before_it():
    def source():
        yield from range(70)
        raise ValueError("line 71 is broken")

    items = Prefetched(source())
    assert [next(items) for _ in range(70)] == list(range(70))
    with pytest.raises(ValueError, match="line 71"):
        next(items)
    assert list(items) == []


@pytest.mark.parametrize("how", ["close", "drop"])
def test_a_consumer_that_stops_stops_the_producer(how):
    """Without it, the thread would read and tokenize the whole file for nobody."""
    pulled = itertools.count()

    def endless():
        while True:
            yield next(pulled)

    items = Prefetched(endless())
    assert next(items) == 0
    if how == "close":
        items.close()
    else:
        del items
        gc.collect()
    time.sleep(1.0)
    bound = (_PREFETCH_DEPTH + 3) * _PREFETCH_CHUNK  # the queue, the chunk in hand, the one being made
    assert next(pulled) <= bound
    time.sleep(0.3)
    assert next(pulled) <= bound + 1


def chat(i: int, system: str) -> dict:
    return {
        "custom_id": f"r{i}",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": f"question number {i}"}],
        "max_tokens": 3,
    }


@pytest.mark.parametrize("ordered", [False, True])
def test_the_engine_gets_its_first_request_while_the_file_is_still_being_tokenized(
    tmp_path: Path, tokenizer, monkeypatch, ordered
):
    """The producer is held after 300 of 600 requests until the engine has its first request:
    with a 4,096-request window, a planner that filled its window first would never let it go."""
    systems = [f"system prompt {k} " * 20 for k in range(4)]
    write_lines(tmp_path / "in.jsonl", [chat(i, systems[i % 4]) for i in range(600)])
    first_request = threading.Event()
    held_in_vain: list[bool] = []
    render_all = run_module.render_all

    def held_render_all(renderer, items, chunk=256):
        for count, item in enumerate(render_all(renderer, items, chunk)):
            if count == 300 and not first_request.wait(15):
                held_in_vain.append(True)
            yield item

    class WatchedEngine(NullEngine):
        def run(self, requests):
            def watched():
                for request in requests:
                    first_request.set()
                    yield request

            return super().run(watched())

    monkeypatch.setattr(run_module, "render_all", held_render_all)
    profile = Profile(name="t", model="tiny", source="test", batch={"window": 4096, "max_in_flight": 4})
    summary = run_batch(
        RunSpec(
            input=str(tmp_path / "in.jsonl"),
            output=tmp_path / "out.results.jsonl",
            errors=tmp_path / "out.errors.jsonl",
            profile=profile,
            ordered=ordered,
        ),
        Reporter(),
        load=lambda _: WatchedEngine(tokenizer, max_model_len=1024),
    ).to_dict()
    assert held_in_vain == []
    assert summary["requests"]["ok"] == 600
    ids = [r["custom_id"] for r in read_jsonl(tmp_path / "out.results.jsonl")]
    assert sorted(ids) == sorted(f"r{i}" for i in range(600))
    if ordered:
        assert ids == [f"r{i}" for i in range(600)]
    # the first 300 arrivals were still sorted among themselves
    assert summary["planned_prefix_share"] > summary["file_order_prefix_share"]
