"""Host-path mechanics of a run: the producer thread that reads, validates and tokenizes ahead of
the engine, and the garbage-collector setting that keeps the planner window cheap."""

from __future__ import annotations

import gc
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from operator import length_hint
from typing import Any, Generic, TypeVar

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


class Prefetched(Generic[T]):
    """Items of a producer chain (read, validate, render, tokenize) made in a thread, a bounded
    queue ahead of the consumer.

    The tokenizer releases the GIL, so tokenizing overlaps with planning, the engine loop and
    writing. An exception in the producer is re-raised here, in order. `ready()` says whether
    the next item comes without waiting (the planner takes in only those before it emits).
    `close()` (or dropping the last reference) stops the producer at its next chunk.
    """

    def __init__(self, items: Iterable[T]):
        self._chunks: queue.Queue = queue.Queue(maxsize=_PREFETCH_DEPTH)
        self._stop = threading.Event()
        self._current: Iterator[T] = iter(())
        self._finished = False
        threading.Thread(
            target=_produce, args=(items, self._chunks, self._stop), name="vbatch-prepare", daemon=True
        ).start()

    def __iter__(self) -> Prefetched[T]:
        return self

    def __next__(self) -> T:
        for item in self._current:  # the current chunk's next item, if any
            return item
        if self._finished:
            raise StopIteration
        chunk = self._chunks.get()
        if isinstance(chunk, list):
            self._current = iter(chunk)
            return next(self._current)  # chunks are never empty
        self._finished = True
        self._stop.set()
        if isinstance(chunk, _Failed):
            raise chunk.error
        raise StopIteration

    def ready(self) -> bool:
        """True when the next item (or the end, or the producer's error) comes without waiting."""
        return length_hint(self._current) > 0 or self._finished or not self._chunks.empty()

    def close(self) -> None:
        self._stop.set()

    def __del__(self) -> None:
        self._stop.set()


def _produce(items: Iterable[Any], chunks: queue.Queue, stop: threading.Event) -> None:
    chunk: list = []
    try:
        for item in items:
            chunk.append(item)
            if len(chunk) >= _PREFETCH_CHUNK:
                if not _put(chunks, chunk, stop):
                    return  # the consumer is gone: read and tokenize no further
                chunk = []
        if chunk and not _put(chunks, chunk, stop):
            return
        _put(chunks, _DONE, stop)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
        if not chunk or _put(chunks, chunk, stop):  # the items made before it come first
            _put(chunks, _Failed(exc), stop)


_DONE = object()


@dataclass(slots=True)
class _Failed:
    error: BaseException


def _put(chunks: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Queue `item`, waiting for room; False when the consumer stopped first."""
    while not stop.is_set():
        try:
            chunks.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
