"""The prefix planner: a permutation that groups shared prefixes, with bounded delay."""

from array import array

from hypothesis import given, settings
from hypothesis import strategies as st

from vbatch.core.planner import BLOCK_TOKENS, PrefixSharing, plan, shared_prefix_tokens


def tokens(ids: list[int]) -> bytes:
    return array("i", ids).tobytes()


token_lists = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=40), max_size=60)


@settings(max_examples=200, deadline=None)
@given(token_lists, st.integers(1, 70))
def test_plan_round_trip(prompts, window):
    """Sort and restore (lm-eval's Collator idea): planned order is a permutation of the input,
    and putting it back by arrival index gives the input exactly."""
    items = list(enumerate(tokens(p) for p in prompts))
    planned = list(plan(items, key=lambda item: item[1], window=window))
    assert sorted(i for i, _ in planned) == list(range(len(items)))
    restored = [None] * len(items)
    for index, key in planned:
        restored[index] = key
    assert restored == [key for _, key in items]


@settings(max_examples=200, deadline=None)
@given(token_lists, st.integers(1, 70))
def test_no_item_waits_longer_than_two_windows(prompts, window):
    items = list(range(len(prompts)))
    keys = [tokens(p) for p in prompts]
    planned = list(plan(items, key=keys.__getitem__, window=window))
    for position, index in enumerate(planned):
        assert position - index <= 2 * window


@settings(max_examples=100, deadline=None)
@given(token_lists)
def test_window_holding_everything_sorts_by_tokens(prompts):
    keys = [tokens(p) for p in prompts]
    planned = list(plan(keys, key=lambda k: k, window=max(1, len(keys))))
    assert planned == sorted(keys)


def test_groups_w1_like_workload_in_a_small_window():
    """20 system prefixes of 64 tokens, 400 requests in round-robin file order (the worst case
    for an LRU cache): with a window of 100 the planner emits long runs of one prefix."""
    prefixes = [[1000 + p] * 64 for p in range(20)]
    prompts = [prefixes[i % 20] + [i, i + 1] for i in range(400)]
    keys = [tokens(p) for p in prompts]
    planned = list(plan(keys, key=lambda k: k, window=100))
    switches = sum(1 for a, b in zip(planned, planned[1:]) if a[:256] != b[:256])
    # file order switches prefix 399 times; the window holds ~5 of each prefix per sweep
    assert switches <= 100

    tally = PrefixSharing()
    list(tally.count_planned(tally.count_file_order(keys, lambda k: k), lambda k: k))
    assert tally.file_order_shared == 0
    tally = PrefixSharing()
    list(tally.count_planned(plan(tally.count_file_order(keys, lambda k: k), lambda k: k, 100), lambda k: k))
    assert tally.planned_share > 0.7
    assert tally.prompt_tokens == 400 * 66


def test_shared_prefix_counts_whole_blocks():
    a = tokens(list(range(40)))
    assert shared_prefix_tokens(a, a) == 32  # 40 tokens share 2 whole blocks
    b = tokens(list(range(20)) + [999] * 20)
    assert shared_prefix_tokens(a, b) == BLOCK_TOKENS
    assert shared_prefix_tokens(b"", a) == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=90), st.lists(st.integers(0, 2), max_size=90), st.integers(0, 90))
def test_shared_prefix_tokens_matches_a_token_by_token_count(left, right, common):
    """Against the definition: equal leading tokens, rounded down to whole blocks."""
    a, b = left[:common] + left, left[:common] + right
    same = 0
    while same < min(len(a), len(b)) and a[same] == b[same]:
        same += 1
    assert shared_prefix_tokens(tokens(a), tokens(b)) == same // BLOCK_TOKENS * BLOCK_TOKENS


def test_a_later_batch_starts_its_sweep_where_the_stream_is():
    """The batch server's one stream: a batch joining at prefix 5 runs 5.. first, then wraps."""
    prompts = [[p] * BLOCK_TOKENS + [i] for p in range(8) for i in range(3)]
    keys = [tokens(p) for p in prompts]
    planned = list(plan(range(len(prompts)), key=keys.__getitem__, window=100, start=lambda: tokens([5] * 20)))
    firsts = [prompts[i][0] for i in planned]
    assert firsts == [5] * 3 + [6] * 3 + [7] * 3 + [p for p in range(5) for _ in range(3)]


@settings(max_examples=100, deadline=None)
@given(token_lists, st.integers(1, 70), st.lists(st.integers(0, 5), max_size=40))
def test_any_start_still_yields_every_item_once(prompts, window, start):
    keys = [tokens(p) for p in prompts]
    planned = list(plan(range(len(prompts)), key=keys.__getitem__, window=window, start=lambda: tokens(start)))
    assert sorted(planned) == list(range(len(prompts)))
