"""Identical deterministic requests run once: the others copy the first one's answer.

Files built from templates or retried pipelines repeat lines (the same prompt under another
custom_id). When a request is deterministic (greedy, or a fixed seed; one choice; embeddings
always), running it again would produce the same answer, so the engine runs the first one (the
leader) and every copy gets its own record, with its own custom_id and id, from the leader's
result. The key is the request's endpoint and body (`Request.digest`), custom_id aside.

Memory is bounded: copies wait only for leaders that are still pending or in flight, and the
answers of the last KEEP_FINISHED leaders stay for copies that come later.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from vbatch.core.engine_io import Sampling

T = TypeVar("T")
R = TypeVar("R")

#: Answers kept for copies that arrive after their leader finished.
KEEP_FINISHED = 4096


def is_deterministic(sampling: Sampling | None) -> bool:
    """Whether running the request again gives the same answer (None: an embedding)."""
    if sampling is None:
        return True
    return (sampling.n or 1) == 1 and (sampling.temperature == 0 or sampling.seed is not None)


class Dedup(Generic[T, R]):
    """Which requests run and which copy another's answer; T: a request, R: its answer."""

    def __init__(self, keep_finished: int = KEEP_FINISHED):
        self._waiting: dict[bytes, list[T]] = {}  # leader's key -> the copies waiting for it
        self._finished: OrderedDict[bytes, R] = OrderedDict()
        self._keep = keep_finished
        self.copies = 0

    def leads(self, key: bytes, item: T) -> tuple[bool, R | None]:
        """(True, None): run it, it leads its key. (False, answer): a copy of a finished leader,
        answer it now. (False, None): a copy of a leader still running, answered by `finish`."""
        if key in self._waiting:
            self._waiting[key].append(item)
            self.copies += 1
            return False, None
        answer = self._finished.get(key)
        if answer is not None:
            self._finished.move_to_end(key)
            self.copies += 1
            return False, answer
        self._waiting[key] = []
        return True, None

    def finish(self, key: bytes, answer: R | None) -> list[T]:
        """The leader of `key` is done: its copies, to answer with it. A failed leader (None)
        is not kept: a later copy runs again."""
        copies = self._waiting.pop(key, [])
        if answer is not None:
            self._finished[key] = answer
            if len(self._finished) > self._keep:
                self._finished.popitem(last=False)
        return copies
