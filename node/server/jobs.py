"""The leader's side of a job: plan shards, hand them out, merge, answer.

Theory of operation
-------------------
A job's data is cut into fixed shards (`compute.plan_shards`): boundaries
depend on the data size and the shard size only. Each live node gets *lanes*
that pull small batches of shard indices from the job's queue and compute
them: the leader's own lane calls numpy in a thread, a worker's lane sends
`Compute(batch, reduce_to=leader)`; the worker streams one partial per shard
back through `Reduce`, and `accept_partial` stores it. Partials are merged
strictly in shard order (a prefix merge as they arrive), so the answer is
bit-for-bit the same on 1 node or 16, with or without failures.

Pulling instead of pushing a fixed split means a slow or dead node holds at
most one batch per lane. When a worker dies (its `Compute` RPC fails, or the
failure detector declares it dead while the RPC hangs) the unfinished shards
of its batch go back to the front of the queue for the other lanes. A partial
for a shard already received is dropped, so re-running a shard is harmless.

The leader remembers answers by `job_id` (bounded), so a client that retries
gets the same answer instead of a second run. If this node stops being the
leader, every running job fails with `NotLeader`; clients retry elsewhere.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from node.core.compute import Partial, compute_partial, finalize, merge, plan_shards, shard_rows, validate_job
from node.core.job import Job
from node.core.limits import Limits
from node.core.sources import DataSource
from node.errors import (
    JobConflict,
    JobFailed,
    JobTimedOut,
    LimitExceeded,
    NotLeader,
    RunAbandoned,
    WorkerFailed,
)
from node.server.api import Outcome, ShardRange
from node.server.peers import PeerTable

log = logging.getLogger("distnode.jobs")

#: Jobs at most this many elements are computed on the event loop itself:
#: the thread hop costs more than summing them.
INLINE_ELEMS = 1 << 16
#: Batches in flight per remote worker, so it never idles waiting for the next.
REMOTE_LANES = 2
#: Answers kept for deduplication of retried job ids: at most this many, and
#: at most this many bytes of results. Vector answers are megabytes each; a
#: retry comes seconds after its failure, so the newest few are what matter.
#: The byte bound keeps an idle leader small after a burst of them, and lets
#: their buffers be reused: each answer held is fresh memory the next job
#: must fault in (about 4 ms per 8 MB answer on a 2-core VM). An evicted job
#: that is retried runs again, with the same answer bit for bit.
ANSWER_CACHE_ENTRIES = 10_000
ANSWER_CACHE_BYTES = 16 << 20
#: A job of more shards than this is refused before planning (the plan alone
#: would not fit in memory): 100,000 default shards are 8.4 x 10^11 elements.
MAX_SHARDS = 100_000

RemoteCompute = Callable[[str, str, Job, list[ShardRange]], Coroutine[Any, Any, None]]


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark an RPC task's outcome as seen, however it ended, so asyncio never logs it as lost."""
    if not task.cancelled():
        task.exception()


def _one_line(exc: BaseException) -> str:
    """An RPC error's first line (its repr spans several)."""
    details = getattr(exc, "details", None)
    if callable(details):
        code = exc.code().name if callable(getattr(exc, "code", None)) else ""  # type: ignore[attr-defined]
        return f"{code}: {details()}"
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class JobRun:
    """One running job's bookkeeping; lives on the leader's event loop only."""

    job_id: str
    job: Job
    shards: list[tuple[int, int]]
    done: asyncio.Future[Outcome]
    started_s: float
    pending: collections.deque[int] = field(default_factory=collections.deque)
    received: dict[int, Partial] = field(default_factory=dict)
    merged: Partial | None = None
    next_merge: int = 0
    contributors: set[str] = field(default_factory=set)
    failed_nodes: set[str] = field(default_factory=set)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    #: Keys, shapes and dtypes every partial of this job must have (from a
    #: one-row partial computed locally), so a malformed partial from the
    #: network is dropped before it can poison the merge.
    template: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.done.done()

    @property
    def shards_received(self) -> int:
        return self.next_merge + len(self.received)

    def take(self, count: int) -> list[int]:
        batch: list[int] = []
        while self.pending and len(batch) < count:
            batch.append(self.pending.popleft())
        return batch

    def fail(self, exc: Exception) -> None:
        """End the run with `exc` for whoever awaits it. Marked as retrieved: the
        submit that started the run may itself have been cancelled meanwhile
        (its client went away), and then nobody awaits it, which asyncio would
        log as an error when the future is collected."""
        if not self.finished:
            self.done.set_exception(exc)
            self.done.exception()

    def requeue(self, batch: list[int]) -> None:
        """Put back the shards of `batch` that never arrived, in front of the queue."""
        missing = [i for i in batch if i >= self.next_merge and i not in self.received]
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

    def accept(self, shard: int, node_id: str, partial: Partial) -> bool:
        """Store a partial and merge the contiguous prefix. False for a duplicate or a misfit."""
        if not 0 <= shard < len(self.shards) or shard < self.next_merge or shard in self.received:
            return False
        if not self.well_formed(partial):
            log.warning("job %s: dropped a malformed partial for shard %d from %s",
                        self.job_id, shard, node_id)
            return False
        self.received[shard] = partial
        self.contributors.add(node_id)
        while self.next_merge in self.received:
            part = self.received.pop(self.next_merge)
            self.merged = part if self.merged is None else merge(self.job.op, self.merged, part)
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
        )
        self.done.set_result(outcome)
        self.wakeup.set()


class JobManager:
    """Runs jobs while this node is the leader."""

    def __init__(
        self,
        node_id: str,
        peers: PeerTable,
        remote: RemoteCompute,
        executor: Executor,
        shard_elems: int,
        data_root: Path | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.node_id = node_id
        self.peers = peers
        self.remote = remote
        self.executor = executor
        self.shard_elems = shard_elems
        self.data_root = data_root
        self._running: dict[str, JobRun] = {}
        self._answers: collections.OrderedDict[str, tuple[Job, Outcome]] = (
            collections.OrderedDict()
        )
        self._answer_bytes = 0

    async def submit(self, job_id: str, job: Job) -> Outcome:
        """Run `job` (or join its earlier run) and return the merged answer.

        Raises node.errors classes: InvalidField for a bad job, LimitExceeded
        over a limit, JobConflict for a reused id, JobTimedOut past the job
        deadline, NotLeader if leadership is lost meanwhile, RunAbandoned if
        the caller that started the run went away.
        """
        known = self._answers.get(job_id)
        if known is not None:
            self._check_same(job_id, known[0], job)
            return known[1]
        run = self._running.get(job_id)
        if run is not None:
            self._check_same(job_id, run.job, job)
            return await asyncio.shield(run.done)
        if len(self._running) >= self.limits.max_jobs:
            raise LimitExceeded(f"max-jobs: {self.limits.max_jobs} jobs already running on the leader")
        return await self._run(job_id, job)

    def _check_same(self, job_id: str, old: Job, new: Job) -> None:
        if old != new:
            raise JobConflict(f"job_id: {job_id!r} was already used for a different job")

    async def _run(self, job_id: str, job: Job) -> Outcome:
        source, shards = self._plan(job)
        if len(shards) == 1 and (shards[0][1] - shards[0][0]) * (source.cols or 1) <= INLINE_ELEMS:
            return self._run_inline(job_id, job, source, shards[0])
        loop = asyncio.get_running_loop()
        run = JobRun(job_id, job, shards, loop.create_future(), time.perf_counter())
        run.pending.extend(range(len(shards)))
        self._running[job_id] = run
        try:
            async with asyncio.timeout(self.limits.job_timeout_s):
                await self._launch(run, source)
                outcome = await asyncio.shield(run.done)
        except TimeoutError:
            timed_out = JobTimedOut(f"job-timeout-s: job ran past {self.limits.job_timeout_s} s")
            run.fail(timed_out)  # joiners of this job id fail too; our caller by the raise below
            raise timed_out from None
        finally:
            self._running.pop(job_id, None)
            for task in run.tasks:
                task.cancel()
            # Ended without an answer (the caller that started it was cancelled):
            # those who joined it must not wait for a run nobody drives.
            run.fail(RunAbandoned(f"job_id: the run of {job_id!r} ended with its first caller; retry"))
        self._remember(job_id, job, outcome)
        return outcome

    async def _launch(self, run: JobRun, source: DataSource) -> None:
        if len(run.shards) == 1:
            await self._run_alone(run, source)
            return
        # The template reads a row: for `random:` that makes a 2^20 block,
        # milliseconds the event loop (and the heartbeats) must not wait for.
        sample = await asyncio.get_running_loop().run_in_executor(
            self.executor, compute_partial, run.job, source, 0, 1
        )
        run.template = {key: (value.shape, value.dtype) for key, value in sample.items()}
        self._start_lanes(run, source)

    def _plan(self, job: Job) -> tuple[DataSource, list[tuple[int, int]]]:
        """Validate the job against the limits and its source; cut the fixed shards."""
        self.limits.check_spec(job)
        source = validate_job(job, self.data_root)
        self.limits.check_shape(job, source.rows, source.cols)
        rows = shard_rows(source, self.shard_elems)
        if math.ceil(source.rows / rows) > MAX_SHARDS:
            raise LimitExceeded(
                f"source: {source.rows} rows make more than {MAX_SHARDS} shards of {rows} rows"
            )
        return source, plan_shards(source, self.shard_elems)

    def _run_inline(
        self, job_id: str, job: Job, source: DataSource, shard: tuple[int, int]
    ) -> Outcome:
        """Tiny jobs: computed on the event loop, no bookkeeping, no await.

        Nothing can interleave, so no other submission can join this run and no
        progress can be asked for: the answer is remembered before anyone else
        runs. This path is most of the small-job latency budget.
        """
        started = time.perf_counter()
        partial = compute_partial(job, source, *shard)
        outcome = Outcome(
            job_id=job_id, op=job.op, result=finalize(job, partial), shards=1,
            nodes=(self.node_id,), elapsed_ms=(time.perf_counter() - started) * 1000,
        )
        self._remember(job_id, job, outcome)
        return outcome

    async def _run_alone(self, run: JobRun, source: DataSource) -> None:
        """Data smaller than one shard but not tiny: the leader computes it in its pool."""
        start, stop = run.shards[0]
        try:
            partial = await asyncio.get_running_loop().run_in_executor(
                self.executor, compute_partial, run.job, source, start, stop
            )
        except Exception as exc:
            log.exception("job %s: computation failed", run.job_id)
            run.fail(JobFailed(f"computation failed: {exc}"))  # _run raises it
            return
        run.accept(0, self.node_id, partial)

    def _start_lanes(self, run: JobRun, source: DataSource) -> None:
        workers = self.peers.alive_addresses()
        lanes = 1 + REMOTE_LANES * len(workers)
        batch = max(1, math.ceil(len(run.shards) / (2 * lanes)))
        run.tasks.append(asyncio.create_task(self._local_lane(run, source, batch)))
        for address in workers:
            for _ in range(REMOTE_LANES):
                run.tasks.append(asyncio.create_task(self._remote_lane(run, address, batch)))

    async def _local_lane(self, run: JobRun, source: DataSource, batch_size: int) -> None:
        try:
            await self._compute_local(run, source, batch_size)
        except Exception as exc:
            # Workers may fail and be replaced; the leader is the last resort.
            log.exception("job %s: local computation failed", run.job_id)
            run.fail(JobFailed(f"computation failed: {exc}"))

    async def _compute_local(self, run: JobRun, source: DataSource, batch_size: int) -> None:
        loop = asyncio.get_running_loop()
        while not run.finished:
            batch = run.take(batch_size)
            if not batch:
                await self._idle(run)
                continue
            for index in batch:
                start, stop = run.shards[index]
                partial = await loop.run_in_executor(
                    self.executor, compute_partial, run.job, source, start, stop
                )
                run.accept(index, self.node_id, partial)

    async def _remote_lane(self, run: JobRun, address: str, batch_size: int) -> None:
        while not run.finished and address not in run.failed_nodes:
            batch = run.take(batch_size)
            if not batch:
                await self._idle(run)
                continue
            try:
                await self._compute_remote(run, address, batch)
            except WorkerFailed as exc:
                log.warning("job %s: worker %s failed (%s); reassigning %d shards",
                            run.job_id, self.peers.id_of(address), exc, len(batch))
                run.failed_nodes.add(address)
            except Exception:
                # A bug here must not strand the batch: log it, drop the worker.
                log.exception("job %s: lane to %s failed", run.job_id, address)
                run.failed_nodes.add(address)
            finally:
                # Anything the worker claimed but did not deliver goes back,
                # also when this lane is cancelled because the job ended.
                run.requeue(batch)

    async def _compute_remote(self, run: JobRun, address: str, batch: list[int]) -> None:
        ranges = [(i, *run.shards[i]) for i in batch]
        call = asyncio.create_task(self.remote(address, run.job_id, run.job, ranges))
        call.add_done_callback(_retrieve)  # whoever wins below, asyncio never logs it as lost
        dead = asyncio.create_task(self.peers.dead_event(address).wait())
        try:
            await asyncio.wait({call, dead}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also on our own cancellation (the job ended): never orphan the RPC.
            dead.cancel()
            if not call.done():
                call.cancel()
        if not call.done():  # cancelled just above: cancellation lands on a later loop turn
            raise WorkerFailed("missed heartbeats")
        if call.cancelled():
            raise WorkerFailed("cancelled")
        exc = call.exception()
        if exc is not None:
            raise WorkerFailed(_one_line(exc))

    async def _idle(self, run: JobRun) -> None:
        """Nothing to take: wait until shards come back or the job ends."""
        run.wakeup.clear()
        await run.wakeup.wait()

    def _remember(self, job_id: str, job: Job, outcome: Outcome) -> None:
        """Keep the answer for retries, oldest out first when over either bound."""
        old = self._answers.pop(job_id, None)
        if old is not None:
            self._answer_bytes -= old[1].result.nbytes
        self._answers[job_id] = (job, outcome)
        self._answer_bytes += outcome.result.nbytes
        while len(self._answers) > ANSWER_CACHE_ENTRIES or self._answer_bytes > ANSWER_CACHE_BYTES:
            _, (_, evicted) = self._answers.popitem(last=False)
            self._answer_bytes -= evicted.result.nbytes

    def accept_partial(self, job_id: str, shard: int, node_id: str, partial: Partial) -> bool:
        run = self._running.get(job_id)
        return run.accept(shard, node_id, partial) if run is not None else False

    def progress(self, job_id: str) -> tuple[bool, int, int]:
        """(known, shards received, shards total) for a running or answered job."""
        run = self._running.get(job_id)
        if run is not None:
            return True, run.shards_received, len(run.shards)
        known = self._answers.get(job_id)
        if known is not None:
            return True, known[1].shards, known[1].shards
        return False, 0, 0

    def abort_all(self, reason: str) -> None:
        """Leadership is gone: fail every running job so clients retry elsewhere."""
        for run in list(self._running.values()):
            run.fail(NotLeader(reason))
            for task in run.tasks:
                task.cancel()
