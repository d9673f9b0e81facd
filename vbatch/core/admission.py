"""KV-aware admission: hand the engine only as many requests as its KV cache can hold.

vLLM admits every waiting request it has room for *now* and preempts (then recomputes) when
decoding outgrows the cache. On a small cache (a 16 GB card beside a 7B model keeps ~12k KV
tokens) that overcommit costs hundreds of preemptions per thousand requests. vbatch knows the
cache size and which prompt blocks its in-flight requests share, so it can admit a request
only when the cache holds its whole footprint: the prompt blocks no in-flight request already
holds, plus the tokens it may generate.

The accounting mirrors vLLM's block hashing: a prompt block is identified by all the tokens up
to its end (a chained hash over full blocks), so two prompts share exactly the blocks vLLM's
prefix cache would let them share.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass(slots=True)
class Footprint:
    """What one request may hold in the KV cache: its prompt blocks (hashed once, when the
    request is pulled) and the tokens only it holds (its partial last block and its output)."""

    blocks: list[int]
    private_tokens: int


class KvAdmission:
    """Tracks the KV footprint of the requests in flight against a token budget."""

    def __init__(self, budget_tokens: int, block_size: int):
        if budget_tokens <= 0 or block_size <= 0:
            raise ValueError("budget_tokens and block_size must be positive")
        self.budget_tokens = budget_tokens
        self.block_size = block_size
        self._holders: Counter[int] = Counter()  # block hash -> in-flight requests holding it
        self._private_tokens = 0
        self._admitted = 0

    @property
    def footprint_tokens(self) -> int:
        """KV tokens the admitted requests may hold at their peak."""
        return len(self._holders) * self.block_size + self._private_tokens

    def footprint(self, prompt: list[int], output_tokens: int) -> Footprint:
        size = self.block_size
        blocks: list[int] = []
        previous = 0
        for end in range(size, len(prompt) + 1, size):
            previous = hash((previous, tuple(prompt[end - size : end])))
            blocks.append(previous)
        return Footprint(blocks, len(prompt) % size + max(0, output_tokens))

    def fits(self, need: Footprint) -> bool:
        """Whether admitting this request keeps the footprint within the budget.

        An empty engine always takes one request, however large, so nothing waits forever.
        """
        if not self._admitted:
            return True
        new_blocks = len(need.blocks) - self.held_blocks(need)
        return self.footprint_tokens + new_blocks * self.block_size + need.private_tokens <= self.budget_tokens

    def held_blocks(self, need: Footprint) -> int:
        """How many of the request's prompt blocks in-flight requests already hold (cache hits)."""
        return sum(1 for h in need.blocks if h in self._holders)

    def admit(self, need: Footprint) -> None:
        self._holders.update(need.blocks)
        self._private_tokens += need.private_tokens
        self._admitted += 1

    def release(self, admitted: Footprint) -> None:
        """Give back what `admit(admitted)` took; the caller's in-flight table keeps the footprint."""
        self._holders.subtract(admitted.blocks)
        for block in admitted.blocks:
            if self._holders[block] <= 0:
                del self._holders[block]
        self._private_tokens -= admitted.private_tokens
        self._admitted -= 1

    def __len__(self) -> int:
        return self._admitted
