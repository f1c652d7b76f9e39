"""The step gate (node/server/stepgate.py): while a follower's append is being written,
steps wait in arrival order and answers that count entries wait for the disk."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from node.server.stepgate import MAX_WAITING, MAX_WAITING_BYTES, StepGate, answered


def test_an_open_gate_defers_nothing() -> None:
    gate = StepGate()
    assert not gate.closed
    assert gate.defer(lambda: None) is False


def test_steps_wait_while_closed_and_run_in_arrival_order_once_open() -> None:
    gate, ran = StepGate(), []
    gate.close()
    for name in "abc":
        assert gate.defer(lambda name=name: ran.append(name))
    assert ran == []
    gate.open(durable=True)
    assert ran == ["a", "b", "c"] and not gate.closed


@pytest.mark.parametrize("durable", [True, False])
def test_held_answers_are_released_before_the_waiting_steps_and_told_whether_durable(durable: bool) -> None:
    gate, events = StepGate(), []
    gate.close()
    gate.hold(lambda ok: events.append(("answer", ok)))
    gate.defer(lambda: events.append(("step", None)))
    gate.open(durable)
    assert events == [("answer", durable), ("step", None)]


def test_a_step_that_closes_the_gate_again_keeps_the_rest_waiting_ahead_of_newcomers() -> None:
    gate, ran = StepGate(), []

    def writes() -> None:  # a beat whose entries start another write
        ran.append("writes")
        gate.close()
        gate.defer(lambda: ran.append("came during that step"))

    gate.close()
    gate.defer(writes)
    gate.defer(lambda: ran.append("waited"))
    gate.open(durable=True)
    assert ran == ["writes"] and gate.closed
    gate.defer(lambda: ran.append("came later"))
    gate.open(durable=True)
    assert ran == ["writes", "waited", "came during that step", "came later"]


def test_a_failing_step_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    gate, ran = StepGate(), []

    def broken() -> None:
        raise RuntimeError("a bug")

    gate.close()
    gate.defer(broken)
    gate.defer(lambda: ran.append("next"))
    gate.open(durable=True)
    assert ran == ["next"]
    assert any("waited for the journal failed" in r.getMessage() for r in caplog.records)


async def test_answered_returns_an_answer_given_now_or_later() -> None:
    assert await answered(lambda reply: reply(7)) == 7
    gate = StepGate()
    gate.close()

    def start(reply: Callable[[int], None]) -> None:
        gate.defer(lambda: reply(8))

    waiting = asyncio.create_task(answered(start))
    await asyncio.sleep(0)
    assert not waiting.done()
    gate.open(durable=True)
    assert await waiting == 8


def test_at_most_max_waiting_steps_wait_and_the_oldest_go_first() -> None:
    """A disk that hangs must not fill memory with beats: past MAX_WAITING the oldest
    waiting step is dropped (as a lost message); the newest still run, in order."""
    gate, ran = StepGate(), []
    gate.close()
    for number in range(MAX_WAITING + 5):
        gate.defer(lambda number=number: ran.append(number))
    assert gate.waiting == MAX_WAITING and gate.dropped == 5
    gate.open(durable=True)
    assert ran == list(range(5, MAX_WAITING + 5))


def test_the_waiting_beats_carry_at_most_max_waiting_bytes_and_the_oldest_go_first() -> None:
    """Nothing slows a leader's resends to a follower whose disk is slow (its stream answers
    beats as they are ready): past MAX_WAITING_BYTES of entries the oldest waiting beats are
    dropped, as lost messages; a step that closes the gate again keeps the count right."""
    gate, ran = StepGate(), []
    gate.close()
    quarter = MAX_WAITING_BYTES // 4
    for number in range(6):
        gate.defer(lambda number=number: ran.append(number), quarter)
    assert gate.waiting == 4 and gate.dropped == 2
    gate.defer(lambda: ran.append(-1))  # a vote or a bare beat carries nothing
    assert gate.waiting == 5 and gate.dropped == 2

    def close_again() -> None:
        ran.append(6)
        gate.close()

    gate.defer(close_again, quarter)  # the oldest makes room
    assert gate.waiting == 5 and gate.dropped == 3
    gate.open(durable=True)
    assert ran == [3, 4, 5, -1, 6] and gate.closed and gate.waiting == 0
    gate.defer(lambda: ran.append(7), MAX_WAITING_BYTES)  # fits: nothing else waits
    assert gate.waiting == 1 and gate.dropped == 3
