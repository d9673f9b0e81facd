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

Counting every request at its peak (`KvAdmission`) leaves the cache half used on average: a
request holds its whole output only at its last step. `PacedKvAdmission` follows each request's
progress instead (engine steps since it was added) and admits while the cache holds the largest
total the requests in flight will ever reach together. That peak is lowest when their progress
is spread evenly over their output lengths, so it also paces admissions: a full wave admitted at
once would finish, and peak, together.
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
    #: Of private_tokens, those it generates (the rest is its prompt's partial last block).
    output_tokens: int = 0
    #: The engine step it was admitted at (PacedKvAdmission).
    admitted_at: int = 0
    #: Sequences it decodes at once (a request's n): output_tokens grows this many a step.
    sequences: int = 1


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

    def footprint(self, prompt: list[int], output_tokens: int, sequences: int = 1) -> Footprint:
        size = self.block_size
        blocks: list[int] = []
        previous = 0
        for end in range(size, len(prompt) + 1, size):
            previous = hash((previous, tuple(prompt[end - size : end])))
            blocks.append(previous)
        output = max(0, output_tokens)
        return Footprint(blocks, len(prompt) % size + output, output, sequences=max(1, sequences))

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

    def step(self) -> None:
        """The engine ran one step (the paced variant counts them; here nothing changes)."""


#: The most of the KV cache paced admission fills at the projected peak. The projection is exact
#: for requests that run to max_tokens, so at 1.0 nothing is ever preempted, but the cache is
#: full only at peaks. 10 % past it, vLLM preempts (and recomputes, mostly from the prefix cache)
#: a few requests at the peaks and decodes more at once the rest of the time: on the H200 at a
#: 16 GB card's cache, W1 ran 3-8 % faster with ~320 preemptions per 2,000 requests and MP 1 %;
#: 5 % and 15 % past it were slower than 10 % (docs/benchmarks.md, section 1f).
PACED_MAX_SHARE = 1.1

#: Engine steps a request spends being prefilled before it generates (its prompt's new part fits
#: one chunk when admissions are paced); counting fewer would over-estimate its progress.
PREFILL_STEPS = 1


class PacedKvAdmission(KvAdmission):
    """Admits against the future peak of the requests in flight, at a pace that spreads them.

    A request admitted at step a with output length L is taken to hold, at step s, its prompt
    blocks, its partial block and g = n * (s - a - PREFILL_STEPS) generated tokens (0 <= g <= L,
    n its sequences), plus one block of rounding per sequence. Without new admissions the total
    grows until requests finish; a new one is admitted when the total's maximum over the future,
    with it, fits the budget. Requests that end early (EOS) only make the estimate safe.
    Admissions of one output length class (lengths of one bit length) are paced to one per
    L / K steps, K being how many such requests the budget holds at half their output on
    average, so a batch starts spread out rather than as one wave that peaks at once; in a
    steady state requests finish at about that rate anyway.
    Requests of other lengths peak at other times, so they do not wait for each other's pace (one
    pace for all held a mixed workload back: 0.92x pre-sorted generate on the H200, where peak
    admission made 0.96x; docs/benchmarks.md).
    """

    def __init__(self, budget_tokens: int, block_size: int):
        super().__init__(budget_tokens, block_size)
        self._steps = 0
        #: Per output length class (its bit length): the step the pace allows the next one at.
        self._next_admission: dict[int, float] = {}
        self._in_flight: dict[int, Footprint] = {}
        self._sequences = 0  # of the requests in flight

    def step(self) -> None:
        self._steps += 1

    def fits(self, need: Footprint) -> bool:
        if not self._admitted:
            return True
        if self._next_admission.get(_length_class(need), 0.0) >= self._steps + 1:
            return False  # the pace allows the next one of its length in a later step
        new_tokens = (len(need.blocks) - self.held_blocks(need)) * self.block_size
        rounding = self._rounding(self._sequences + need.sequences)
        if self.footprint_tokens + new_tokens + need.private_tokens + rounding <= self.budget_tokens:
            return True  # even every request at its peak at once fits: nothing to work out
        return self.future_peak(need, new_tokens) <= self.budget_tokens

    def future_peak(self, need: Footprint, new_tokens: int) -> int:
        """The most KV tokens the requests in flight (and `need`, admitted now) will hold at once."""
        held = len(self._holders) * self.block_size + new_tokens
        growing: list[tuple[int, int, int]] = []  # (steps left, tokens held now, sequences) per request
        for f in self._in_flight.values():
            steps = max(0, self._steps - f.admitted_at - PREFILL_STEPS)
            generated = min(f.output_tokens, steps * f.sequences)
            left = -(-(f.output_tokens - generated) // f.sequences)
            growing.append((left, f.private_tokens - f.output_tokens + generated, f.sequences))
        left = -(-need.output_tokens // need.sequences)
        growing.append((left, need.private_tokens - need.output_tokens, need.sequences))
        growing.sort(reverse=True)
        peak = total = sequences = 0
        for left, now, n in growing:
            total += now
            sequences += n
            # Just before this one (and every shorter one) finishes, only these are left, each
            # sequence `left - 1` tokens further on. The last of these points holds every request
            # at least as far on as now, so the present needs no term of its own.
            peak = max(peak, held + total + sequences * (max(left, 1) - 1) + self._rounding(sequences))
        return peak

    def admit(self, need: Footprint) -> None:
        spacing = self._spacing(need)  # before its blocks count as held
        super().admit(need)
        need.admitted_at = self._steps
        self._in_flight[id(need)] = need
        self._sequences += need.sequences
        length_class = _length_class(need)
        self._next_admission[length_class] = max(self._next_admission.get(length_class, 0.0), self._steps) + spacing

    def release(self, admitted: Footprint) -> None:
        super().release(admitted)
        del self._in_flight[id(admitted)]
        self._sequences -= admitted.sequences

    def _rounding(self, sequences: int) -> int:
        return sequences * self.block_size  # each sequence's last block is partly empty

    def _spacing(self, need: Footprint) -> float:
        """Steps until the next admission: need's output length over how many requests like it
        the budget holds on average (prompt blocks shared with others count once, outside)."""
        shared = self.held_blocks(need) * self.block_size
        own = (len(need.blocks) * self.block_size - shared) + need.private_tokens - need.output_tokens / 2
        capacity = max(1.0, (self.budget_tokens - shared) / (own + need.sequences * self.block_size))
        return need.output_tokens / need.sequences / capacity


def _length_class(need: Footprint) -> int:
    """Requests that decode for about as many steps (one bit length) peak together: one pace."""
    return (need.output_tokens // need.sequences).bit_length()
