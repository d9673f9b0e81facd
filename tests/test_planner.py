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


class Trickle:
    """A source whose items arrive while the planner emits, as a producer thread's would:
    `arrived` of them are there at first, `per_emission[k]` more after the k-th emission. ready()
    says whether the next item is there; reading one that is not waits for it (it arrives)."""

    def __init__(self, items: list, arrived: int, per_emission: list[int] | int = 0):
        self.items = items
        self.arrived = arrived
        self.per_emission = per_emission
        self.read = 0
        self.waits = 0
        self.held_at_waits: list[int] = []  # how many the planner held each time it waited
        self.out = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.read >= len(self.items):
            raise StopIteration
        if self.read >= self.arrived:
            self.waits += 1
            self.held_at_waits.append(self.read - self.out)
            self.arrived = self.read + 1
        self.read += 1
        return self.items[self.read - 1]

    def ready(self) -> bool:
        return self.read < self.arrived or self.read >= len(self.items)

    def emitted(self, count: int) -> None:
        self.out = count
        per = self.per_emission
        self.arrived += per if isinstance(per, int) else (per[count] if count < len(per) else 1)


def drain(source: Trickle, key, window: int, **kwargs) -> list:
    """Plan `source` to the end, letting items arrive between emissions; checks memory on the way."""
    out = []
    for item in plan(source, key, window, ready=source.ready, **kwargs):
        assert source.read - len(out) <= window  # never more than a window held
        out.append(item)
        source.emitted(len(out))
    return out


def round_robin_keys(requests: int, prefixes: int = 20) -> list[bytes]:
    """W1's shape: `prefixes` shared system prompts of 4 blocks in round-robin file order, a
    unique block each."""
    return [tokens([1000 + i % prefixes] * 64 + [i] * BLOCK_TOKENS) for i in range(requests)]


def planned_share(order: list[bytes]) -> float:
    tally = PrefixSharing()
    list(tally.count_planned(tally.count_file_order(order, lambda k: k), lambda k: k))
    return tally.planned_share


def test_first_item_comes_out_before_the_source_is_read_to_its_end():
    """Only what has arrived is taken in before the first emission; no wait for a full window."""
    keys = round_robin_keys(1000)
    source = Trickle(keys, arrived=10)
    first = next(plan(source, lambda k: k, window=4096, ready=source.ready))
    assert source.read == 10 and source.waits == 0
    assert first == min(keys[:10])  # sorted among the arrivals

    # A plain iterable (no ready): every item counts as ready, the window fills first.
    source = Trickle(keys, arrived=10)
    next(plan(source, lambda k: k, window=4096))
    assert source.read == 1000 and source.waits == 990


def test_waits_for_the_source_only_when_it_holds_nothing():
    keys = round_robin_keys(300)
    source = Trickle(keys, arrived=64, per_emission=0)  # a producer far behind the consumer
    planned = drain(source, lambda k: k, window=4096)
    assert sorted(planned) == sorted(keys)
    # 64 at once, then every item was waited for, and only when the planner held none
    assert source.waits == 300 - 64 and set(source.held_at_waits) == {0}
    assert planned[:64] == sorted(keys[:64])


def test_items_arriving_later_are_still_grouped():
    """A producer running ahead of the consumer: the window fills while it emits, and the
    grouping is within two points of a window that was full from the start."""
    keys = round_robin_keys(4000)
    full = planned_share(list(plan(keys, lambda k: k, window=400)))
    source = Trickle(keys, arrived=64, per_emission=3)
    trickled = drain(source, lambda k: k, window=400)
    assert sorted(trickled) == sorted(keys)
    assert source.waits == 0
    assert planned_share(trickled) >= full - 0.02
    assert planned_share(trickled[1000:]) >= planned_share(list(plan(keys, lambda k: k, window=400))[1000:]) - 0.01

    # A producer exactly as fast as the consumer: the planner holds the first 64 arrivals all
    # along, and still emits runs of one prefix (file order shares nothing).
    source = Trickle(keys, arrived=64, per_emission=1)
    steady = drain(source, lambda k: k, window=400)
    assert planned_share(steady) > 0.5
    assert planned_share(keys) == 0


arrival_schedules = st.lists(st.integers(0, 6), max_size=80)


@settings(max_examples=300, deadline=None)
@given(token_lists, st.integers(1, 70), st.integers(0, 10), arrival_schedules)
def test_every_item_once_and_two_windows_at_most_however_items_arrive(prompts, window, first, schedule):
    keys = [tokens(p) for p in prompts]
    source = Trickle(list(range(len(prompts))), arrived=first, per_emission=schedule)
    planned = drain(source, keys.__getitem__, window)
    assert sorted(planned) == list(range(len(prompts)))
    for position, index in enumerate(planned):
        assert position - index <= 2 * window
    assert set(source.held_at_waits) <= {0}  # waited only when it held nothing


@settings(max_examples=100, deadline=None)
@given(token_lists, st.integers(1, 70), st.lists(st.integers(0, 5), max_size=40))
def test_everything_ready_is_the_plain_iterable_order(prompts, window, start):
    keys = [tokens(p) for p in prompts]
    first = lambda: tokens(start)  # noqa: E731
    plain = list(plan(range(len(prompts)), keys.__getitem__, window, start=first))
    assert list(plan(range(len(prompts)), keys.__getitem__, window, start=first, ready=lambda: True)) == plain


def test_start_is_read_once_when_the_first_item_is_asked_for():
    """The batch server's stream position is taken when the batch's first request goes in."""
    prompts = [[p] * BLOCK_TOKENS + [i] for p in range(8) for i in range(3)]
    keys = [tokens(p) for p in prompts]
    source = Trickle(list(range(len(prompts))), arrived=6)
    reads = []

    def start() -> bytes:
        reads.append(source.read)
        return tokens([1] * 20)

    planned = plan(source, keys.__getitem__, window=100, start=start, ready=source.ready)
    assert reads == []
    assert prompts[next(planned)][0] == 1  # the first arrivals hold prefixes 0 and 1
    assert reads == [6]
    rest = list(planned)
    assert reads == [6] and len(rest) == len(prompts) - 1
