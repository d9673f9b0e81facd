"""Host-path mechanics of a run: the producer thread that reads, validates and tokenizes ahead of
the engine, and the garbage-collector setting that keeps the planner window cheap."""

from __future__ import annotations

import gc
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@contextmanager
def rare_garbage_collection(first_generation: int = 100_000) -> Iterator[None]:
    """Run the cyclic garbage collector rarely while a batch runs.

    A run allocates millions of short-lived, acyclic objects (decoded lines, request models,
    token lists, records). At Python's default threshold (700 allocations) the collector runs
    every few requests, and its older generations walk everything alive in the planner window:
    a quarter of the host path's time on short chat requests. Reference counting frees these
    objects anyway; the collector is still run, just every 100,000 allocations.
    """
    previous = gc.get_threshold()
    gc.set_threshold(first_generation, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)


_PREFETCH_CHUNK = 64

_PREFETCH_DEPTH = 32  # chunks: a few thousand requests ahead at most


def in_background(items: Iterable[T]) -> Iterator[T]:
    """Run a producer chain (read, validate, render, tokenize) in a thread, a bounded queue ahead.

    The tokenizer releases the GIL, so tokenizing overlaps with planning, the engine loop and
    writing. An exception in the producer is re-raised here, in order.
    """
    chunks: queue.Queue = queue.Queue(maxsize=_PREFETCH_DEPTH)
    stop = threading.Event()

    def produce() -> None:
        chunk: list = []
        try:
            for item in items:
                chunk.append(item)
                if len(chunk) >= _PREFETCH_CHUNK:
                    _put(chunks, chunk, stop)
                    chunk = []
            _put(chunks, chunk, stop)
            _put(chunks, _DONE, stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            _put(chunks, _Failed(exc), stop)

    thread = threading.Thread(target=produce, name="vbatch-prepare", daemon=True)
    thread.start()
    try:
        while True:
            chunk = chunks.get()
            if chunk is _DONE:
                return
            if isinstance(chunk, _Failed):
                raise chunk.error
            yield from chunk
    finally:
        stop.set()


_DONE = object()


@dataclass(slots=True)
class _Failed:
    error: BaseException


def _put(chunks: queue.Queue, item: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            chunks.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
