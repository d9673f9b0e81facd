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
