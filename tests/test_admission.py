"""KV-aware admission accounting (pure): shared prompt blocks count once, releases restore."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbatch.core.admission import Footprint, KvAdmission

BLOCK = 4


def test_shared_prefix_blocks_count_once():
    admission = KvAdmission(budget_tokens=1000, block_size=BLOCK)
    prefix = list(range(8))  # two full blocks
    a = admission.footprint(prefix + [100, 101], 5)
    admission.admit(a)
    # 2 blocks + 2 tail tokens + 5 output
    assert admission.footprint_tokens == 2 * BLOCK + 2 + 5
    b = admission.footprint(prefix + [200, 201, 202, 203, 204], 5)
    admission.admit(b)
    # b adds one new full block ([200..203]), a tail of 1 and 5 output; the prefix is shared
    assert admission.footprint_tokens == 3 * BLOCK + (2 + 5) + (1 + 5)
    admission.release(a)
    assert admission.footprint_tokens == 3 * BLOCK + 1 + 5
    admission.release(b)
    assert admission.footprint_tokens == 0 and len(admission) == 0


def test_same_tokens_at_other_positions_are_not_shared():
    admission = KvAdmission(budget_tokens=1000, block_size=BLOCK)
    admission.admit(admission.footprint([1, 2, 3, 4, 5, 6, 7, 8], 0))
    admission.admit(admission.footprint([5, 6, 7, 8, 1, 2, 3, 4], 0))  # same blocks, other prefix
    assert admission.footprint_tokens == 4 * BLOCK


def test_fits_respects_budget_but_always_admits_into_an_empty_engine():
    admission = KvAdmission(budget_tokens=20, block_size=BLOCK)
    huge = list(range(100))
    assert admission.fits(admission.footprint(huge, 50))  # nothing in flight: never starve
    big = admission.footprint(huge, 50)
    admission.admit(big)
    assert not admission.fits(admission.footprint([1, 2], 1))
    admission.release(big)
    assert admission.fits(admission.footprint(list(range(8)), 12))  # 8 + 12 == budget
    admission.admit(admission.footprint(list(range(8)), 12))
    # the same prompt again needs only its output: its blocks are already held
    assert not admission.fits(admission.footprint(list(range(8)), 1))
    assert admission.fits(admission.footprint([], 0))


def test_twin_requests_are_released_one_at_a_time():
    """The engine's in-flight table keeps each request's footprint; two equal ones are two holders."""
    admission = KvAdmission(budget_tokens=100, block_size=BLOCK)
    first, second = (admission.footprint(list(range(8)), 2) for _ in range(2))
    admission.admit(first)
    admission.admit(second)
    admission.release(first)
    assert admission.footprint_tokens == 2 * BLOCK + 2 and len(admission) == 1
    admission.release(second)
    assert admission.footprint_tokens == 0 and len(admission) == 0


def test_rejects_nonsense_sizes():
    with pytest.raises(ValueError):
        KvAdmission(budget_tokens=0, block_size=16)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 12), st.integers(0, 20)), max_size=40),
    st.randoms(use_true_random=False),
)
def test_footprint_equals_distinct_blocks_plus_private_tokens(specs, rnd: random.Random):
    """Against a from-scratch recount after every admit/release, in random release order."""
    prefixes = [list(range(p * 100, p * 100 + 9)) for p in range(4)]
    admission = KvAdmission(budget_tokens=10**6, block_size=BLOCK)
    live: dict[str, tuple[list[int], int, Footprint]] = {}
    for i, (prefix, extra, out) in enumerate(specs):
        prompt = prefixes[prefix] + [1000 + i] * extra
        need = admission.footprint(prompt, out)
        admission.admit(need)
        live[str(i)] = (prompt, out, need)
        if live and rnd.random() < 0.4:
            key = rnd.choice(sorted(live))
            admission.release(live.pop(key)[2])
        blocks = {tuple(p[:end]) for p, _, _ in live.values() for end in range(BLOCK, len(p) + 1, BLOCK)}
        private = sum(len(p) % BLOCK + o for p, o, _ in live.values())
        assert admission.footprint_tokens == len(blocks) * BLOCK + private


# ---------------------------------------------------------------- paced admission (future peak)


def _simulate(
    admission: KvAdmission, requests: list[tuple[list[int], int]], sequences: int = 1
) -> tuple[int, int, float]:
    """A toy engine: each admitted request is prefilled for PREFILL_STEPS steps, then each of its
    `sequences` generates one token a step (in blocks of its own) until the request's output
    length (max_tokens x sequences) is done. Returns (steps, the most KV tokens held at once in
    whole blocks, mean requests in flight)."""
    from vbatch.core.admission import PREFILL_STEPS

    pending = list(requests)
    running: list[tuple[Footprint, int, int]] = []  # footprint, prompt length, steps run
    steps = most = in_flight_sum = 0
    while pending or running:
        while pending:
            need = admission.footprint(pending[0][0], pending[0][1] * sequences, sequences)
            if not admission.fits(need):
                break
            admission.admit(need)
            running.append((need, len(pending.pop(0)[0]), 0))
        steps += 1
        admission.step()
        running = [(f, p, n + 1) for f, p, n in running]
        blocks = {h for f, _, _ in running for h in f.blocks}
        held = len(blocks) * BLOCK + sum(
            sequences * -(-(p % BLOCK + max(0, n - PREFILL_STEPS)) // BLOCK) * BLOCK for f, p, n in running
        )
        most = max(most, held)
        in_flight_sum += len(running)
        for item in [r for r in running if (r[2] - PREFILL_STEPS) * sequences >= r[0].output_tokens]:
            running.remove(item)
            admission.release(item[0])
    return steps, most, in_flight_sum / steps


def _w1_like(count: int, groups: int, rnd: random.Random) -> list[tuple[list[int], int]]:
    """W1's shape in small: shared 64-token prefixes, 16 unique tokens, 32 tokens out, by group."""
    prefixes = [[rnd.randrange(1000) for _ in range(64)] for _ in range(groups)]
    return [(prefixes[i * groups // count] + [rnd.randrange(1000) for _ in range(16)], 32) for i in range(count)]


def test_paced_admission_holds_more_requests_than_peak_admission_within_the_budget():
    from vbatch.core.admission import PacedKvAdmission

    requests = _w1_like(600, 3, random.Random(7))
    budget = 64 + 24 * (16 + 32)  # one prefix and 24 requests at their peak
    peak_steps, peak_most, peak_mean = _simulate(KvAdmission(budget, BLOCK), requests)
    paced_steps, paced_most, paced_mean = _simulate(PacedKvAdmission(budget, BLOCK), requests)
    assert peak_most <= budget and paced_most <= budget  # neither would make vLLM preempt
    # Requests spread over their outputs hold ~half of it on average: more of them fit.
    assert paced_mean > 1.15 * peak_mean
    assert paced_steps < 0.9 * peak_steps


def test_paced_admission_spreads_a_first_wave_out():
    from vbatch.core.admission import PacedKvAdmission

    admission = PacedKvAdmission(64 + 24 * (16 + 32), BLOCK)
    requests = _w1_like(30, 1, random.Random(3))
    admitted_at = []
    for step in range(40):
        while requests and admission.fits(need := admission.footprint(*requests[0])):
            admission.admit(need)
            admitted_at.append(step)
            requests.pop(0)
        admission.step()
    assert admitted_at[:2] == [0, 0] or admitted_at[0] == 0
    assert len(set(admitted_at)) > len(admitted_at) // 2  # not all in a few steps
    assert admitted_at[-1] >= 20  # the 30th came after ~30 x 32 / 28 steps, not at once


def test_paced_admission_with_a_huge_budget_does_not_pace():
    from vbatch.core.admission import PacedKvAdmission

    admission = PacedKvAdmission(10**9, BLOCK)
    for request in _w1_like(500, 5, random.Random(1)):
        need = admission.footprint(*request)
        assert admission.fits(need)
        admission.admit(need)
    assert len(admission) == 500


def test_paced_admission_paces_each_output_length_apart():
    """A long request's pace does not hold back short ones: they peak at other times."""
    from vbatch.core.admission import PacedKvAdmission

    admission = PacedKvAdmission(64 + 24 * (16 + 32), BLOCK)
    prompt = list(range(80))
    admission.admit(admission.footprint(prompt, 32))
    assert not admission.fits(admission.footprint(prompt + [1], 32))  # same length: wait for the pace
    assert admission.fits(admission.footprint(prompt + [2], 4))  # another length: no wait


def test_paced_admission_counts_every_sequence_of_a_request():
    """n = 4: four sequences grow at once; the budget still holds."""
    from vbatch.core.admission import PacedKvAdmission

    requests = _w1_like(200, 2, random.Random(11))
    budget = 64 + 12 * (16 + 4 * 32)
    steps, most, mean = _simulate(PacedKvAdmission(budget, BLOCK), requests, sequences=4)
    assert most <= budget
    assert mean > _simulate(KvAdmission(budget, BLOCK), requests, sequences=4)[2]
