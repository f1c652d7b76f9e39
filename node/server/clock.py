"""The daemon's clock: logical ticks from the wall clock, and a wake-up only when one is due.

Ticks are counted from an origin (`tick_ms` each), so the count never drifts
however late a wake-up is. The owner steps its pure core with `due_ticks()`
before anything else it steps, so the core sees time and messages in their
real order, with at most `max_replay_ticks` at once.

A stall (the loop ran nothing: a long computation on it, SIGSTOP, a frozen
VM) is not fed as time: a due tick of the owner's overdue by more than
`stall_s` means the loop stalled, and time goes on from the last tick fed
before it. Fed as it elapsed, the stall would run what fell due in it
(CheckQuorum, an election timeout) before the messages that arrived
meanwhile: a leader whose loop was busy for an election timeout deposed
itself, its followers' answers unread in its sockets, and every node of a
frozen VM started an election. etcd's ticker loses a stall's ticks alike.
The cost: the owner's timers run only while the loop does, so a peer that
died during a stall is found that much later, and a loop that stalls again
and again slows them by as much. The owner hears of each stall where it is
found (`take_stall()`, as it feeds the ticks; `on_wake`'s `stalled`): a
leader then beats at once and holds its reads (election.py).

Idle, a node does little but keep time, so the clock wakes only when its
owner says something is due (`on_wake` returns the ticks until then) and at
least every `max_sleep_s`, as a plain timer callback: a callback costs fewer
wake-ups than a task sleeping in a loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

#: uvloop keeps time in whole milliseconds and truncates a timer's delay, so a
#: timer may fire up to 1 ms before the asked-for time. Had the clock asked for
#: the exact deadline, it would then spin on 0 ms re-sleeps until the clock
#: caught up: about seven idle loop turns per wake-up, most of an idle node's
#: CPU. So it sleeps to the next whole millisecond past the deadline, plus this.
TIMER_SLACK_S = 0.001

log = logging.getLogger("distnode.clock")


class Clock:
    def __init__(
        self, tick_ms: int, max_replay_ticks: int, stall_s: float, max_sleep_s: float,
        warn_late_s: float | None = None,
    ) -> None:
        self.tick_ms = tick_ms
        self.max_replay_ticks = max_replay_ticks
        #: A wake-up later than planned by more than this means the process stalled.
        self.stall_s = stall_s
        #: A wake-up this late is logged: a node that stalls for an election timeout can
        #: lose its leader or its followers, and the log should say why it did.
        self.warn_late_s = warn_late_s
        self.max_sleep_s = max_sleep_s
        self._origin_s = time.monotonic()
        self._ticks_done = 0
        self._timer: asyncio.Handle | None = None
        self._on_wake: Callable[[bool], int] | None = None
        self._waking = False
        self._wake_by_s = 0.0
        #: How late the loop was at the last stall seen and not yet reported to the owner (s).
        self._stall_late_s: float | None = None
        #: A stall seen and not yet taken by `take_stall()`.
        self._stall_untaken = False

    def restart(self) -> None:
        """Tick 0 is now: call before anything can be stepped."""
        self._origin_s = time.monotonic()
        self._ticks_done = 0

    def due_ticks(self) -> int:
        """How many ticks to feed the core now (those elapsed since the last call, capped)."""
        now_s = time.monotonic()
        self._skip_stall(now_s)
        elapsed = int((now_s - self._origin_s) * 1000 / self.tick_ms)
        due = elapsed - self._ticks_done
        self._ticks_done = elapsed
        return min(due, self.max_replay_ticks)

    def _skip_stall(self, now_s: float) -> None:
        """If the loop ran nothing for `stall_s` past the planned wake, move the origin so that
        time stands at the last tick fed, and the next comes a tick from now."""
        late_s = now_s - self._wake_by_s
        if self._on_wake is None or late_s <= self.stall_s:
            return
        self._stall_late_s = max(late_s, self._stall_late_s or 0.0)
        self._stall_untaken = True
        self._wake_by_s = now_s  # seen: a second call finds no stall until the next wake plans one
        # Not exactly `_ticks_done` ticks back: a float a hair short would make it one fewer.
        self._origin_s = now_s - (self._ticks_done + 0.001) * self.tick_ms / 1000

    def take_stall(self) -> bool:
        """Whether a stall was seen since the last call (by `due_ticks()` or a wake): the owner
        acts on it as it feeds the ticks, before the message that found it, not a wake later."""
        untaken, self._stall_untaken = self._stall_untaken, False
        return untaken

    def start(self, on_wake: Callable[[bool], int]) -> None:
        """Call `on_wake(stalled)` now and whenever it is due; it returns ticks until the next due."""
        self._on_wake = on_wake
        self._wake_by_s = time.monotonic()
        self._timer = asyncio.get_running_loop().call_soon(self._wake)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._on_wake = None

    def wake_now(self) -> None:
        """Wake at once instead of at the planned time (no-op from inside `on_wake`)."""
        if self._waking or self._timer is None:
            return
        self._timer.cancel()
        self._wake_by_s = time.monotonic()  # due now: a stall from here on is one
        self._timer = asyncio.get_running_loop().call_soon(self._wake)

    def _wake(self) -> None:
        self._timer = None
        on_wake = self._on_wake
        if on_wake is None:
            return
        sleep_s = self.max_sleep_s
        self._waking = True
        try:
            self._skip_stall(time.monotonic())
            late_s, self._stall_late_s = self._stall_late_s, None
            stalled = late_s is not None
            if late_s is not None and self.warn_late_s is not None and late_s > self.warn_late_s:
                log.warning("the clock woke %.0f ms late: this process or the machine stalled", late_s * 1000)
            ticks = on_wake(stalled)
            # Wake at the monotonic time of the due tick, counted from the origin: no drift.
            due_s = self._origin_s + (self._ticks_done + ticks) * self.tick_ms / 1000
            sleep_s = min(max(0.0, due_s - time.monotonic()), self.max_sleep_s)
            sleep_s = math.ceil(sleep_s * 1000) / 1000 + TIMER_SLACK_S
        finally:  # whatever went wrong, the clock keeps running
            self._waking = False
            if self._on_wake is not None:
                self._wake_by_s = time.monotonic() + sleep_s
                self._timer = asyncio.get_running_loop().call_later(sleep_s, self._wake)
