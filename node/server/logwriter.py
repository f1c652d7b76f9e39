"""The journal's writes, in order, with appends off the event loop.

A leader may send AppendEntries before its own write of the same entries
has finished, as long as it counts itself towards a commit only once that
write is durable (Raft thesis §10.2.1; etcd does the same). So an append
goes to one writer thread and the event loop goes on: a leader sends its
AppendEntries and holds back whatever would count it (the followers'
replies, an Apply) until `in_flight` is back to 0; a follower steps nothing
until its write has returned (stepgate.py), so a slow disk delays its
answers but never stops its loop. A snapshot its leader sends a follower
goes to the same thread, after the appends before it (`restore_later`).
Every other write (a lone leader's append, deleting the segments a
snapshot covers) runs on the caller's thread, after all the pending ones:
one writer at a time, so the file stays in log order. A node's own
snapshot is written and renamed into place `aside`, in a thread no append
waits for, as it touches no file an append touches (compaction.py).

A write that fails makes every write queued behind it fail too (their
entries follow the failed ones), until the caller has put its memory back
to what the disk holds and calls `reset`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from node.core.messages import AppendLog, RestoreSnapshot
from node.core.raftlog import Entry
from node.server.journal import Journal, Snapshot

log = logging.getLogger("distnode")

T = TypeVar("T")
#: An append pending this many election timeouts means a stuck disk: a leader's held replies
#: then stop counting for CheckQuorum, which deposes it for a node whose disk works (elections.py).
STUCK_WRITE_WINDOWS = 4
#: Called on the event loop once a background append returned: None, or why it failed.
Done = Callable[["OSError | None"], None]


class LogWriter:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        #: Writes that touch nothing an append touches (a snapshot's next file): no append waits for them.
        self._aside = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal-aside")
        #: Set by `close`: nothing more is written.
        self.closed = False
        #: Background appends not yet reported back to the event loop.
        self.in_flight = 0
        #: When each of them was handed to the thread (monotonic s), oldest first.
        self._pending_since: collections.deque[float] = collections.deque()
        #: Whether `overdue` has said so since appends were last all back.
        self._said_slow = False
        #: Set by the first failed write; refuses the ones queued after it until `reset`.
        self._failed: OSError | None = None
        #: Why the last write to the journal failed ("" while writes work).
        self.error = ""
        #: Told of every append that returned: (entries, seconds), from the writing thread.
        self.on_append: Callable[[int, float], None] = lambda entries, seconds: None

    def append_later(self, after: int, entries: tuple[Entry, ...], done: Done) -> None:
        """Append in the writer thread; `done` runs on the event loop when it is durable (or not)."""
        self._later(done, self._append, after, entries)

    def restore_later(self, out: RestoreSnapshot, done: Done) -> None:
        """Replace the log with a leader's snapshot in the writer thread, after the appends
        before it; `done` as for `append_later`. It is as large as the job table."""
        self._later(done, self.journal.save_snapshot, Snapshot(out.index, out.term, out.data), out.keep_log)

    def _later(self, done: Done, write: Callable[..., None], *args: object) -> None:
        future = asyncio.get_running_loop().run_in_executor(self._thread, self._guarded, write, *args)
        self.in_flight += 1  # once submitted: a refused submission (shut down) leaves nothing pending
        self._pending_since.append(time.monotonic())

        def finished(future: asyncio.Future[None]) -> None:
            self.in_flight -= 1
            self._pending_since.popleft()  # one thread: they return in the order handed
            self._said_slow = self._said_slow and bool(self.in_flight)
            error = None if future.cancelled() else future.exception()
            if error is not None and not isinstance(error, OSError):
                error = OSError(f"journal write failed: {error!r}")
            done(error)

        future.add_done_callback(finished)

    def overdue(self, after_s: float) -> float:
        """Seconds the oldest background append has been pending, if more than `after_s`
        (said once until all are back, as a WARNING: the disk is slow or stuck); else 0."""
        pending_s = time.monotonic() - self._pending_since[0] if self._pending_since else 0.0
        if pending_s <= after_s:
            return 0.0
        if not self._said_slow:
            self._said_slow = True
            log.warning("a journal write has been pending for %.1f s: a follower steps its leader's beats, "
                        "votes and ticks once it returns, and answers that it is writing for %d election "
                        "timeouts; a leader steps down after as many", pending_s, STUCK_WRITE_WINDOWS)
        return pending_s

    def stuck(self, window_s: float) -> bool:
        """Whether an append has been pending STUCK_WRITE_WINDOWS election timeouts of `window_s`."""
        return self.overdue(STUCK_WRITE_WINDOWS * window_s) > 0

    def run(self, write: Callable[..., T], *args: object) -> T:
        """A write now, after every pending one (the caller's thread waits for them)."""
        if self.in_flight == 0:
            return self._guarded(write, *args)
        return self._thread.submit(self._guarded, write, *args).result()

    def store(self, out: AppendLog) -> bool:
        """Append now (a lone node); False (said once per episode) if the disk refused."""
        try:
            self.run(self._append, out.after, out.entries)
        except OSError as exc:
            self.refused(exc)
            return False
        self.wrote()
        return True

    def _append(self, after: int, entries: tuple[Entry, ...]) -> None:
        started = time.perf_counter()
        self.journal.append(after, entries)
        self.on_append(len(entries), time.perf_counter() - started)

    def refused(self, exc: OSError) -> None:
        if not self.error:
            log.error("cannot write the journal in %s: %s; refusing entries until it can",
                      self.journal.dir, exc)
        self.error = f"{self.journal.dir}: {exc.strerror or exc}"

    def wrote(self) -> None:
        if self.error:
            log.warning("the journal in %s is writable again", self.journal.dir)
            self.error = ""

    def _guarded(self, write: Callable[..., T], *args: object) -> T:
        if self._failed is not None:
            why = self._failed.strerror or self._failed
            raise OSError(self._failed.errno, f"an earlier write failed: {why}")
        try:
            return write(*args)
        except Exception as exc:  # not only OSError: whatever stopped a write stops those behind it
            self._failed = exc if isinstance(exc, OSError) else OSError(f"journal write failed: {exc!r}")
            raise

    def aside(self, write: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """`write(*args)` in a thread of its own, beside the appends (compaction.py)."""
        return asyncio.get_running_loop().run_in_executor(self._aside, write, *args)

    def reset(self) -> None:
        """Memory matches the disk again: writes may go on."""
        self._failed = None

    def close(self) -> None:
        """Wait for the pending writes (the daemon closes the journal next)."""
        self.closed = True
        self._aside.shutdown(wait=True, cancel_futures=True)
        self._thread.shutdown(wait=True)
