"""The reorder buffer behind --ordered: results come back in the engine's order, go out in the input's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class ReorderBuffer:
    """Passes records on as they complete, or in input order with --ordered.

    Ordered mode holds at most what the planner window and the requests in flight can put
    out of order (the planner emits nothing later than 2 x window after it arrived)."""

    def __init__(self, emit: Callable[[dict[str, Any]], None], *, ordered: bool):
        self.emit = emit
        self.ordered = ordered
        self.next = 0
        self.waiting: dict[int, dict[str, Any] | None] = {}

    def add(self, ordinal: int, record: dict[str, Any]) -> None:
        if not self.ordered:
            self.emit(record)
            return
        self.waiting[ordinal] = record
        self._release()

    def skip(self, ordinal: int) -> None:
        if self.ordered:
            self.waiting[ordinal] = None
            self._release()

    def _release(self) -> None:
        while self.next in self.waiting:
            record = self.waiting.pop(self.next)
            if record is not None:
                self.emit(record)
            self.next += 1
