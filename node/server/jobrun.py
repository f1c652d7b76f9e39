"""One running job on the leader: its fixed shards, the queue lanes take them from,
and the merge of partials in shard order (see jobs.py for the whole story).

Partials may arrive in any order and more than once (a shard re-run after
its worker was declared dead may still arrive from the old one): the first
well-formed partial of a shard is kept, the contiguous prefix is merged at
once so memory holds only the out-of-order ones, and the answer is set when
the last shard is merged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import secrets
import time
from typing import Any

import msgspec
import numpy as np

from node.core.compute import Partial, finalize, merge
from node.core.halt import Halt
from node.core.job import Job
from node.server.api import Outcome
from node.server.stealing import Holdings
from node.server.tracing import JobTrace, ShardTimes

log = logging.getLogger("distnode.jobs")

#: A lane waiting for its batch's partials looks again this often (see JobRun.arrival).
ARRIVAL_STEP_S = 0.05


class JobRun(msgspec.Struct):
    """One running job's bookkeeping; lives on the leader's event loop only."""

    job_id: str
    job: Job
    shards: list[tuple[int, int]]
    done: asyncio.Future[Outcome]
    started_s: float
    pending: collections.deque[int] = msgspec.field(default_factory=collections.deque)
    received: dict[int, Partial] = msgspec.field(default_factory=dict)
    merged: Partial | None = None
    next_merge: int = 0
    contributors: set[str] = msgspec.field(default_factory=set)
    #: Shards received from each node so far (for /status.json: which node computed what).
    by_node: dict[str, int] = msgspec.field(default_factory=dict)
    failed_nodes: set[str] = msgspec.field(default_factory=set)
    wakeup: asyncio.Event = msgspec.field(default_factory=asyncio.Event)
    #: Set whenever a partial is stored (lanes wait on it for their batch's partials).
    arrived: asyncio.Event = msgspec.field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = msgspec.field(default_factory=list)
    #: Keys, shapes and dtypes every partial of this job must have (from a
    #: one-row partial computed locally), so a malformed partial from the
    #: network is dropped before it can poison the merge.
    template: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = msgspec.field(default_factory=dict)
    #: The run's timeline, when the job was submitted with `trace`.
    trace: JobTrace | None = None
    #: Shards handed out and not back yet, by node (an idle lane takes one: stealing.py).
    holdings: Holdings = msgspec.field(default_factory=Holdings)
    #: Set as the run ends: its shards still in this node's pool stop between pieces (halt.py).
    halt: Halt = msgspec.field(default_factory=Halt)
    #: The task that drives the run (jobs.py), and how many callers wait for it: the last
    #: one to stop waiting ends it.
    driver: asyncio.Task[Outcome] | None = None
    waiters: int = 0
    #: When its first caller's submit began (perf_counter): the job's time in the metrics.
    submitted_s: float = 0.0
    #: Its answer is in the answer cache and counted in the metrics (jobs.py `_remember`).
    remembered: bool = False
    #: Futures resolved in the very call that finishes the run (`settled`).
    listeners: list[asyncio.Future[None]] = msgspec.field(default_factory=list)
    #: The run's number, drawn at random, said in its Compute calls and said back in their
    #: partials: a late partial of another run of the same job id is not merged (`accept_partial`).
    number: int = msgspec.field(default_factory=lambda: secrets.randbits(63) + 1)

    @property
    def finished(self) -> bool:
        return self.done.done()

    def settled(self) -> asyncio.Future[None]:
        """A future of one caller's own, resolved as the run finishes, however, or as its
        driver ends without finishing it (cancelled before it began). A callback on `done`
        would resolve it a turn of the event loop later, and the task awaiting it wakes a turn
        after that (asyncio schedules both); the answer's way to its client is the last
        stretch of every job, so the run resolves it directly. Cancelling it (the caller gone)
        leaves the run alone."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.finished:
            waiter.set_result(None)
            return waiter
        self.listeners.append(waiter)
        if self.driver is not None:
            self.driver.add_done_callback(lambda _: _resolve(waiter))
        return waiter

    def _settle_listeners(self) -> None:
        listeners, self.listeners = self.listeners, []
        for waiter in listeners:
            _resolve(waiter)

    @property
    def answered(self) -> bool:
        """Finished with an answer (not failed, not cancelled)."""
        return self.finished and not self.done.cancelled() and self.done.exception() is None

    @property
    def shards_received(self) -> int:
        return self.next_merge + len(self.received)

    def planned(self, shard: int) -> tuple[int, int] | None:
        """Shard `shard`'s rows in this run's plan; None if the plan has no such shard."""
        return self.shards[shard] if 0 <= shard < len(self.shards) else None

    def take(self, count: int) -> list[int]:
        """Up to `count` queued shards; one put back whose partial came since is not taken."""
        batch: list[int] = []
        while self.pending and len(batch) < count:
            shard = self.pending.popleft()
            if shard >= self.next_merge and shard not in self.received:
                batch.append(shard)
        return batch

    def fail(self, exc: Exception) -> None:
        """End the run with `exc` for whoever awaits it. Marked as retrieved: its
        callers may all have gone meanwhile (their clients went away), and then
        nobody awaits it, which asyncio would log as an error when the future is
        collected."""
        if not self.finished:
            self._settle_listeners()
            self.done.set_exception(exc)
            self.done.exception()

    def missing(self, batch: list[int]) -> list[int]:
        """The shards of `batch` whose partial has not arrived."""
        return [i for i in batch if i >= self.next_merge and i not in self.received]

    async def arrival(self, batch: list[int], give_up: asyncio.Event, grace_s: float) -> bool:
        """Wait until every partial of `batch` has arrived or the run ends (True), or until
        `give_up` is set or `grace_s` passes with some still missing (False).

        The grace is counted in waits of ARRIVAL_STEP_S that ended with nothing new, so
        an event loop that stalls (its partials unread in the socket meanwhile) does
        not use it up in one late wake-up."""
        steps = max(1, math.ceil(grace_s / ARRIVAL_STEP_S))
        while not self.finished and self.missing(batch):
            if give_up.is_set() or steps == 0:
                return False
            self.arrived.clear()
            waits = [asyncio.ensure_future(self.arrived.wait()), asyncio.ensure_future(give_up.wait())]
            try:
                done, _ = await asyncio.wait(
                    waits, timeout=ARRIVAL_STEP_S, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiting in waits:
                    waiting.cancel()
            if not done:
                steps -= 1
        return True

    def requeue(self, batch: list[int]) -> None:
        """Put back the shards of `batch` that never arrived, in front of the queue."""
        missing = self.missing(batch)
        self.holdings.drop(missing)
        self.pending.extendleft(reversed(missing))
        if missing:
            self.wakeup.set()

    def well_formed(self, partial: Partial) -> bool:
        if not self.template:
            return True
        if partial.keys() != self.template.keys():
            return False
        return all(
            (partial[key].shape, partial[key].dtype) == self.template[key] for key in self.template
        )

    def accept(
        self, shard: int, node_id: str, partial: Partial, times: ShardTimes | None = None,
        received_ns: int | None = None,
    ) -> bool:
        """Store a partial and merge the contiguous prefix. False for a duplicate or a misfit.
        A traced run records the shard's `times` (and, for a remote one, its trip to
        `received_ns`) before the merge that may end the run."""
        if not 0 <= shard < len(self.shards) or shard < self.next_merge or shard in self.received:
            self.holdings.drop((shard,))  # a second handing's copy: nobody holds it any more
            return False
        if not self.well_formed(partial):
            log.warning("job %s: dropped a malformed partial for shard %d from %s",
                        self.job_id, shard, node_id, extra={"job_id": self.job_id, "shard": shard})
            return False
        self.received[shard] = partial
        self.arrived.set()
        took_ns = times.finished_ns - times.started_ns if times is not None else None
        self.holdings.arrived(shard, time.monotonic_ns(), took_ns)
        if not self.pending and self.holdings.most() >= 2:  # idle lanes may take one from a busy node
            self.wakeup.set()
        if self.trace is not None and times is not None:
            self.trace.shard(shard, node_id, times, received_ns)
        self.contributors.add(node_id)
        self.by_node[node_id] = self.by_node.get(node_id, 0) + 1
        while self.next_merge in self.received:
            part = self.received.pop(self.next_merge)
            merge_ns = time.time_ns()
            self.merged = part if self.merged is None else merge(self.job.op, self.merged, part)
            if self.trace is not None:
                self.trace.span(f"merge shard {self.next_merge}", "merge", merge_ns, time.time_ns(),
                                shard=self.next_merge)
            self.next_merge += 1
        if self.next_merge == len(self.shards) and not self.finished:
            self._finish()
        return True

    def _finish(self) -> None:
        assert self.merged is not None
        outcome = Outcome(
            job_id=self.job_id,
            op=self.job.op,
            result=finalize(self.job, self.merged),
            shards=len(self.shards),
            nodes=tuple(sorted(self.contributors)),
            elapsed_ms=(time.perf_counter() - self.started_s) * 1000,
            trace=tuple(self.trace.finish(self.job.op, len(self.shards))) if self.trace is not None else (),
        )
        # The callers first: asyncio runs what is scheduled in order, and the driver's
        # bookkeeping (done's callbacks) and the lanes' ends can wait until the answer is out.
        self._settle_listeners()
        self.done.set_result(outcome)
        self.wakeup.set()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
