"""The daemon's clock on its own: ticks without drift, and a stall said in the log.

The only sleep blocks the event loop on purpose: it is the stall under test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from node.server.clock import Clock

DEADLINE_S = 5.0


def block_the_loop(seconds: float) -> None:
    """The stall under test: called from a coroutine, it holds the event loop."""
    time.sleep(seconds)


def recorder(wakes: list[bool]) -> Callable[[bool], int]:
    """An owner that notes each wake-up and asks for the next one a tick later."""

    def on_wake(stalled: bool) -> int:
        wakes.append(stalled)
        return 1

    return on_wake


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


async def stall_then_wake(wakes: list[bool], seconds: float) -> bool:
    """Block the loop for `seconds`, then wait for the clock's next wake-up; was it marked stalled?"""
    seen = len(wakes)
    block_the_loop(seconds)
    await wait_for(lambda: len(wakes) > seen, "the wake-up after the stall")
    return wakes[seen]


async def test_a_wake_up_later_than_warn_late_s_is_logged_and_marked_stalled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wakes: list[bool] = []
    clock = Clock(tick_ms=10, max_replay_ticks=5, stall_s=0.02, max_sleep_s=0.05, warn_late_s=0.1)
    clock.start(recorder(wakes))
    try:
        await wait_for(lambda: len(wakes) >= 3, "three wake-ups")
        assert not any(wakes), "an idle loop is not a stall"
        assert "late" not in caplog.text
        with caplog.at_level(logging.WARNING, logger="distnode.clock"):
            stalled = await stall_then_wake(wakes, 0.2)
        assert stalled is True
        (record,) = [r for r in caplog.records if r.name == "distnode.clock"]
        assert record.levelno == logging.WARNING
        late_ms = float(record.getMessage().split("woke ")[1].split(" ms")[0])
        assert 100 < late_ms < 2000, record.getMessage()
    finally:
        clock.stop()


async def test_a_stall_shorter_than_warn_late_s_is_a_stall_but_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wakes: list[bool] = []
    clock = Clock(tick_ms=10, max_replay_ticks=5, stall_s=0.02, max_sleep_s=0.05, warn_late_s=1.0)
    clock.start(recorder(wakes))
    try:
        await wait_for(lambda: len(wakes) >= 2, "two wake-ups")
        with caplog.at_level(logging.WARNING, logger="distnode.clock"):
            stalled = await stall_then_wake(wakes, 0.1)
        assert stalled is True
        assert not [r for r in caplog.records if r.name == "distnode.clock"]
    finally:
        clock.stop()


async def test_a_stall_is_not_fed_as_time_so_what_arrived_during_it_is_stepped_first() -> None:
    """A handler that runs right after a stall, before the overdue wake-up, gets no ticks for
    the stall (fed, they would time out a leader's quorum or a follower's leader before the
    message is stepped); time goes on from there, and the wake-up is marked stalled."""
    wakes: list[tuple[bool, int]] = []
    clock = Clock(tick_ms=10, max_replay_ticks=100, stall_s=0.05, max_sleep_s=1.0)

    def owner(stalled: bool) -> int:
        wakes.append((stalled, clock.due_ticks()))
        return 5  # due 50 ms from now: the stall below outlasts it six times over

    clock.start(owner)
    try:
        await wait_for(lambda: len(wakes) >= 2, "two wake-ups")
        seen = len(wakes)
        block_the_loop(0.3)
        stall_ticks = clock.due_ticks()  # as a message's handler does before stepping it
        assert stall_ticks == 0, f"{stall_ticks} ticks of a 30-tick stall were fed"
        assert clock.take_stall() and not clock.take_stall(), "the stall is told once, at once"
        await wait_for(lambda: len(wakes) > seen, "the wake-up after the stall")
        assert wakes[seen][0] is True, "the wake-up after the stall is marked stalled"
        t0, fed_before = time.monotonic(), sum(ticks for _, ticks in wakes) + clock.due_ticks()
        await asyncio.sleep(0.3)
        fed = sum(ticks for _, ticks in wakes) + clock.due_ticks() - fed_before
        went_ticks = (time.monotonic() - t0) * 100
        # Time goes on after it (all of it on a quiet host; a loaded one may stall again).
        assert 1 <= fed <= went_ticks + 2, f"after the stall {fed} ticks in {went_ticks:.1f}"
    finally:
        clock.stop()
