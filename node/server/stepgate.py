"""What waits while the journal writes: a follower's next steps, and answers that count entries.

A follower's append is written in the journal's thread (logwriter.py) so
that a slow disk never stops its event loop. Until the write returns, its
memory holds entries its disk may never get, so:

- nothing else is stepped into the core: beats, votes and replies wait
  here (`defer`) and run in the order they came once the gate opens, and
  the clock's ticks are dropped (elections.py `catch_up`): a follower busy
  writing its leader's entries has not lost touch with it, and a node
  must not campaign on entries its disk may not get. No answer, vote or
  election can then rest on entries not yet durable, and what the write's
  own step applies is never overtaken;
- an answer that counts entries (the answer to the beat that brought them,
  or any answer given while some append is pending) is held (`hold`) and
  released when no write is pending: the core's answer if the writes
  succeeded, a refusal if one failed and memory went back to the disk.

The gate also closes when a leader steps down while its own appends are
pending: its memory is then ahead of its disk in the same way. One gate
per node; it lives on the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger("distnode")
T = TypeVar("T")
#: Steps that may wait at once: beats and votes at the leader's pace for a minute or more.
MAX_WAITING = 1024
#: The bytes of entries and snapshots the waiting beats may carry at once: a follower's
#: stream answers its beats as they are ready (beatstream.py), so nothing slows a leader's
#: resends while the disk is slow, and each may carry 4 MiB or one larger entry.
MAX_WAITING_BYTES = 64 * 2**20

#: Told whether the writes it waited for are durable.
Release = Callable[[bool], None]


class StepGate:
    def __init__(self) -> None:
        #: The waiting steps, each with the bytes it carries; their total.
        self._waiting: collections.deque[tuple[Callable[[], None], int]] | None = None
        self._waiting_bytes = 0
        self._held: list[Release] = []
        #: Steps dropped because too many waited (MAX_WAITING).
        self.dropped = 0

    @property
    def closed(self) -> bool:
        """True while appends of a node that is not leading are being written: steps wait."""
        return self._waiting is not None

    @property
    def waiting(self) -> int:
        """Steps waiting for the gate to open."""
        return len(self._waiting or ())

    def close(self) -> None:
        if self._waiting is None:
            self._waiting = collections.deque()

    def defer(self, step: Callable[[], None], size: int = 0) -> bool:
        """Queue `step` (carrying `size` bytes of entries) if the gate is closed (True);
        False: the caller steps now.

        At most MAX_WAITING steps and MAX_WAITING_BYTES wait: past that the oldest are
        dropped, as the network may drop any message (its sender tries again or times
        out), so a disk that hangs for minutes does not fill memory with the beats of
        those minutes."""
        if self._waiting is None:
            return False
        while self._waiting and (len(self._waiting) >= MAX_WAITING
                                 or self._waiting_bytes + size > MAX_WAITING_BYTES):
            self._waiting_bytes -= self._waiting.popleft()[1]
            self.dropped += 1
        self._waiting.append((step, size))
        self._waiting_bytes += size
        return True

    def hold(self, release: Release) -> None:
        self._held.append(release)

    def open(self, durable: bool) -> None:
        """No write is pending: release the held answers, then run the waiting steps in
        order until one of them closes the gate again (the rest keep waiting, first)."""
        held, self._held = self._held, []
        waiting, self._waiting, self._waiting_bytes = self._waiting, None, 0
        for release in held:
            try:
                release(durable)
            except Exception:  # one answer that cannot be sent must not keep the others
                log.exception("an answer that waited for the journal failed")
        while waiting:
            step, _ = waiting.popleft()
            try:
                step()
            except Exception:  # a bug in one step must not leave the rest waiting forever
                log.exception("a step that waited for the journal failed")
            if self._waiting is not None:
                self._waiting.extendleft(reversed(waiting))
                self._waiting_bytes += sum(size for _, size in waiting)
                return


async def answered(start: Callable[[Callable[[T], None]], None]) -> T:
    """Call `start(reply)` and wait until it calls `reply`: at once, or once the gate opens."""
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    start(lambda value: None if future.done() else future.set_result(value))
    return await future
