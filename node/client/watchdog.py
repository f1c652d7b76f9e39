"""The blocking Client's watchdog: one thread that probes jobs running long.

`Client.submit` makes a plain blocking gRPC call in the caller's thread. The
alternative, a call future whose answer gRPC's channel thread hands to the
caller, costs ~0.15-0.2 ms per job in thread hand-offs: a fifth of a small
job. But a blocking call cannot watch itself, and a leader that hangs (paused,
partitioned away) must not hang the caller until the deadline.

So each call registers a `Watch` here. Once a call has run PROBE_INTERVAL_S
(or half its time, if it has less than two intervals: `first_probe_s`),
this thread asks its node for the job's Progress; every answer resets the
count, and after `failures` misses in a row it marks the watch abandoned and
has the call's channel closed, which ends the blocking call with CANCELLED
(and any other call on that channel: the node is silent for them too).
The caller sees `abandoned` and retries elsewhere, as AsyncClient does.
A probe or a progress callback that raises is logged and never stops the
thread: a probe that raised counts as a miss. Probes run in a small pool,
each as its call falls due, while this thread goes on keeping deadlines: a
silent node's probe takes its whole timeout, and one by one, in this
thread, eight calls to a paused node had their deadlines come two seconds
late.

Cost on the hot path: a lock and a set insert per call, and a wake-up of
this thread only when it would sleep past the new call's first look. A
stream of short calls wakes it about once per PROBE_INTERVAL_S; with no
call in flight it sleeps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from node.client.answer import ProgressCallback
from node.client.retry import first_probe_s
from node.errors import ClusterUnavailable

log = logging.getLogger("distnode.watchdog")

#: (address, job_id) -> (shards done, shards total) if the node holds the job, else None.
Probe = Callable[[str, str], "tuple[int, int] | None"]
#: Probes made at once, at most.
PROBES_AT_ONCE = 8


@dataclass(eq=False)
class Watch:
    """One blocking Submit under watch (compared by identity)."""

    address: str
    job_id: str
    on_progress: ProgressCallback | None
    #: The caller's handle on what to close when abandoning (its channel).
    channel: Any
    due_s: float  # monotonic time of the next probe
    known: bool = False  # the node has confirmed it holds the job
    failures: int = 0  # probes missed in a row
    abandoned: bool = False  # the watchdog gave up and closed the channel
    #: For a call with no deadline of its own (a job on a stream): when to end it, and how.
    deadline_s: float | None = None
    on_deadline: Callable[[], None] | None = None
    timed_out: bool = False  # the watchdog ended the call at its deadline
    probing: bool = False  # a probe of it is under way in the pool


class Watchdog:
    def __init__(
        self, probe: Probe, abandon: Callable[[Watch], None], interval_s: float, failures: int
    ) -> None:
        self._probe = probe
        self._abandon = abandon
        self.interval_s = interval_s
        self.failures = failures
        self._cond = threading.Condition()
        self._watches: set[Watch] = set()
        #: When this thread wakes next (monotonic; inf: only when told): a new watch due sooner
        #: (its first probe, or its deadline) wakes it.
        self._wake_s = math.inf
        self._closed = False
        self._thread: threading.Thread | None = None
        self._probes: ThreadPoolExecutor | None = None  # made at the first probe

    @contextlib.contextmanager
    def watch(
        self, address: str, job_id: str, on_progress: ProgressCallback | None, channel: Any = None,
        deadline_s: float | None = None, on_deadline: Callable[[], None] | None = None,
    ) -> Iterator[Watch]:
        """Watch the call made inside the `with` block (on `channel`, to `address`), whose
        client gives up at the monotonic `deadline_s`; then call `on_deadline`, if given (it
        must end the call)."""
        now = time.monotonic()
        first_s = self.interval_s
        if deadline_s is not None:
            first_s = first_probe_s(deadline_s - now, self.interval_s)
        watch = Watch(address, job_id, on_progress, channel, now + first_s,
                      deadline_s=deadline_s if on_deadline is not None else None, on_deadline=on_deadline)
        with self._cond:
            if self._closed:  # the client that owns this watchdog was closed, maybe meanwhile
                raise ClusterUnavailable("this client was closed during submit")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="distnode-watchdog", daemon=True)
                self._thread.start()
            self._watches.add(watch)
            if _next_s(watch) < self._wake_s:
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
        if self._probes is not None:  # a probe under way ends within its timeout; none runs after
            self._probes.shutdown(wait=True, cancel_futures=True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    due = [w for w in self._watches if _next_s(w) <= now]
                    if due:
                        break
                    self._wake_s = min((_next_s(w) for w in self._watches), default=math.inf)
                    self._cond.wait(None if math.isinf(self._wake_s) else self._wake_s - now)
                    self._wake_s = -math.inf  # awake: it looks at every watch before it sleeps
                expired = [w for w in due if w.deadline_s is not None and w.deadline_s <= now]
                probed = [w for w in due if w not in expired]
                for watch in probed:
                    watch.probing = True
            for watch in expired:
                self._expire(watch)
            if probed and self._probes is None:
                self._probes = ThreadPoolExecutor(PROBES_AT_ONCE, thread_name_prefix="distnode-probe")
            for watch in probed:
                assert self._probes is not None
                self._probes.submit(self._check, watch)

    def _expire(self, watch: Watch) -> None:
        with self._cond:
            if watch not in self._watches:  # the call ended meanwhile
                return
            watch.timed_out, watch.deadline_s = True, None
        assert watch.on_deadline is not None
        try:
            watch.on_deadline()
        except Exception:
            log.exception("ending a call at its deadline failed")

    def _check(self, watch: Watch) -> None:
        """One probe of `watch`, in the pool (not if its call ended while it waited there)."""
        with self._cond:
            if watch not in self._watches:
                watch.probing = False
                return
        try:
            progress = self._probe(watch.address, watch.job_id)
        except Exception:
            log.exception("progress probe of %s failed; counted as a miss", watch.address)
            progress = None
        with self._cond:
            watch.probing = False
            self._cond.notify()  # its next probe falls due again
            if watch not in self._watches:  # the call ended while we probed
                return
            watch.due_s = time.monotonic() + self.interval_s
            if progress is not None:
                watch.known, watch.failures = True, 0
            else:
                watch.failures += 1
                watch.abandoned = watch.failures >= self.failures
        if progress is not None and watch.on_progress is not None:
            try:
                watch.on_progress(*progress)
            except Exception:
                log.exception("on_progress callback raised; ignored")
        if watch.abandoned:
            try:
                self._abandon(watch)
            except Exception:
                log.exception("abandoning the call to %s failed", watch.address)


def _next_s(watch: Watch) -> float:
    """When the watchdog must next look at `watch`: its probe (none while one is under way),
    or its deadline if sooner."""
    probe_s = math.inf if watch.probing else watch.due_s
    return probe_s if watch.deadline_s is None else min(probe_s, watch.deadline_s)
