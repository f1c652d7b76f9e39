"""The blocking Client's watchdog: one thread that probes jobs running long.

`Client.submit` makes a plain blocking gRPC call in the caller's thread. The
alternative, a call future whose answer gRPC's channel thread hands to the
caller, costs ~0.15-0.2 ms per job in thread hand-offs: a fifth of a small
job. But a blocking call cannot watch itself, and a leader that hangs (paused,
partitioned away) must not hang the caller until the deadline.

So each call registers a `Watch` here. Once a call has run PROBE_INTERVAL_S,
this thread asks its node for the job's Progress; every answer resets the
count, and after `failures` misses in a row it marks the watch abandoned and
has the node's channel closed, which ends the blocking call with CANCELLED.
The caller sees `abandoned` and retries elsewhere, as AsyncClient does.

Cost on the hot path: a lock and a set insert per call, and a wake-up of
this thread only when it was idle. A stream of short calls wakes it about
once per PROBE_INTERVAL_S; with no call in flight it sleeps.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from node.client import ProgressCallback

#: (address, job_id, on_progress) -> did the node confirm it holds the job?
Probe = Callable[[str, str, ProgressCallback | None], bool]


@dataclass(eq=False)
class Watch:
    """One blocking Submit under watch (compared by identity)."""

    address: str
    job_id: str
    on_progress: ProgressCallback | None
    due_s: float  # monotonic time of the next probe
    known: bool = False  # the node has confirmed it holds the job
    failures: int = 0  # probes missed in a row
    abandoned: bool = False  # the watchdog gave up and closed the channel


class Watchdog:
    def __init__(
        self, probe: Probe, abandon: Callable[[str], None], interval_s: float, failures: int
    ) -> None:
        self._probe = probe
        self._abandon = abandon
        self.interval_s = interval_s
        self.failures = failures
        self._cond = threading.Condition()
        self._watches: set[Watch] = set()
        self._idle = False
        self._closed = False
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def watch(self, address: str, job_id: str, on_progress: ProgressCallback | None) -> Iterator[Watch]:
        """Watch the call made inside the `with` block."""
        watch = Watch(address, job_id, on_progress, time.monotonic() + self.interval_s)
        with self._cond:
            if self._closed:
                raise RuntimeError("the client is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="distnode-watchdog", daemon=True)
                self._thread.start()
            self._watches.add(watch)
            if self._idle:
                self._cond.notify()
        try:
            yield watch
        finally:
            with self._cond:
                self._watches.discard(watch)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    due = [w for w in self._watches if w.due_s <= now]
                    if due:
                        break
                    self._idle = not self._watches
                    wait_s = None if self._idle else min(w.due_s for w in self._watches) - now
                    self._cond.wait(wait_s)
                    self._idle = False
            for watch in due:
                self._check(watch)

    def _check(self, watch: Watch) -> None:
        known = self._probe(watch.address, watch.job_id, watch.on_progress)
        with self._cond:
            if watch not in self._watches:  # the call ended while we probed
                return
            watch.due_s = time.monotonic() + self.interval_s
            if known:
                watch.known, watch.failures = True, 0
                return
            watch.failures += 1
            if watch.failures < self.failures:
                return
            watch.abandoned = True
        self._abandon(watch.address)
