"""The batch server's one stream between batches (engines/vllm/served.SharedAdmission): pure
logic, no engine; the real server runs it in tests/test_batch_server.py."""

from __future__ import annotations

from array import array

from vbatch.engines.vllm import served
from vbatch.engines.vllm.served import SharedAdmission

BLOCK = 16
SHARED = [7] * (4 * BLOCK)
OTHER = [3] * (4 * BLOCK)


def prompt(head: list[int], tail: int) -> list[int]:
    return head + [tail] * BLOCK


class Batch:
    """One batch's side of the admission: its next request, tried as its thread would."""

    def __init__(self, admission: SharedAdmission):
        self.admission = admission

    def tries(self, tokens: list[int]):
        need = self.admission.footprint(tokens, 8)
        return need if self.admission.try_admit(need, self, tokens) else None


def two_slots_one_held_by_each():
    """A holds a SHARED prompt, B an OTHER one; both engine slots are taken."""
    admission = SharedAdmission(10_000, BLOCK, max_requests=2)
    a, b = Batch(admission), Batch(admission)
    assert a.tries(prompt(SHARED, 1))
    b_first = b.tries(prompt(OTHER, 1))
    assert b_first
    return admission, a, b, b_first


def test_a_request_that_continues_what_is_in_flight_goes_first():
    admission, a, b, b_first = two_slots_one_held_by_each()
    assert a.tries(prompt(SHARED, 2)) is None  # no slot: A's next request waits
    admission.release(b_first)  # B's request finished: one slot free
    assert b.tries(prompt([9] * 64, 2)) is None  # B's next shares nothing in flight: it gives way to A's
    assert a.tries(prompt(SHARED, 2))  # A's continues SHARED, which the engine holds


def test_a_batch_gives_way_only_for_a_while(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(served.time, "monotonic", lambda: clock[0])
    admission, a, b, b_first = two_slots_one_held_by_each()
    assert a.tries(prompt(SHARED, 2)) is None
    admission.release(b_first)
    assert b.tries(prompt([9] * 64, 2)) is None
    clock[0] += served.GIVE_WAY_S
    assert b.tries(prompt([9] * 64, 2))  # no batch waits longer than GIVE_WAY_S for the others


def test_a_batch_that_ends_no_longer_holds_others_back():
    admission, a, b, b_first = two_slots_one_held_by_each()
    assert a.tries(prompt(SHARED, 2)) is None
    admission.release(b_first)
    admission.forget(a)  # A stopped (cancelled) with its request unsent
    assert b.tries(prompt([9] * 64, 2))


def test_without_one_stream_nobody_gives_way():
    admission = SharedAdmission(10_000, BLOCK, max_requests=2, one_stream=False)
    a, b = Batch(admission), Batch(admission)
    assert a.tries(prompt(SHARED, 1))
    b_first = b.tries(prompt(OTHER, 1))
    assert a.tries(prompt(SHARED, 2)) is None
    admission.release(b_first)
    assert b.tries(prompt([9] * 64, 2))
    assert admission.position() == b""


def test_the_stream_position_is_the_prompt_last_admitted():
    admission = SharedAdmission(10_000, BLOCK, max_requests=4)
    assert admission.position() == b""
    assert Batch(admission).tries(prompt(SHARED, 1))
    assert admission.position() == array("i", prompt(SHARED, 1)).tobytes()
