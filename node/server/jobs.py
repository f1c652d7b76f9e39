"""The leader's side of a job: plan shards, hand them out, merge, answer.

Theory of operation
-------------------
A job's data is cut into fixed shards (`compute.plan_shards`): boundaries
depend on the data size and the shard size only. Each live node gets *lanes*
(lanes.py) that pull small batches of shard indices from the job's queue and
compute them: the leader's own lane in its pool's thread, always one shard
queued ahead, a worker's lane sends `Compute(batch, reduce_to=leader)`
(dispatch.py); the worker writes one partial per shard to its `Reduce`
stream (one per worker, open across jobs: reducestream.py), or back on the
compute link the call came on (computelink.py), and `accept_partial` stores
it. `Compute` returns once the partials are written, which is not received:
the lane then waits for them (at most PARTIALS_GRACE_S) before it gives back
any that did not come. Partials are merged strictly in shard order (a prefix
merge as they arrive), so the answer is bit-for-bit the same on 1 node or
16, with or without failures.

Pulling instead of pushing a fixed split means a slow or dead node holds at
most one batch per lane, and a lane that finds the queue empty takes a shard
a busier node has not begun (stealing.py), so a slow node does not hold up
the end of a job. When a worker dies (its `Compute` RPC fails, or the
failure detector declares it dead while the RPC hangs) the unfinished shards
of its batch go back to the front of the queue for the other lanes. A partial
for a shard already received is dropped, so re-running a shard is harmless.

The leader remembers answers by `job_id` (bounded), so a client that retries
gets the same answer instead of a second run. A submit of a job id whose run
is going joins it: a run is driven by a task of its own that every caller
waits for, and it ends only when the last of them stops waiting (a retry
that joined keeps the run its first try started, which that try's client
cancelled meanwhile). If this node stops being the
leader, every running job fails with `NotLeader`; clients retry elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from msgspec.structs import replace

from node.core import halt
from node.core.compute import (
    Partial,
    compute_partial,
    finalize,
    partial_template,
    plan_shards,
    shard_rows,
    validate_job,
)
from node.core.job import Job
from node.core.limits import Limits
from node.core.sources import FORMAT_KINDS, DataSource, Opener, source_kind
from node.errors import (
    InvalidField,
    JobCancelled,
    JobConflict,
    JobFailed,
    JobTimedOut,
    LimitExceeded,
    NotLeader,
    RunAbandoned,
)
from node.server.answercache import AnswerCache
from node.server.api import Outcome
from node.server.jobrun import JobRun
from node.server.lanes import Lanes, RemoteCompute, SkipRemote
from node.server.metrics import NodeMetrics, outcome_of
from node.server.peers import PeerTable
from node.server.tracing import InPool, JobTrace, ShardTimes, clocked, to_pool

log = logging.getLogger("distnode.jobs")

#: A job's source, opened, and its shards' rows.
Planned = tuple[DataSource, list[tuple[int, int]]]

#: Jobs at most this many elements are computed on the event loop itself:
#: the thread hop costs more than summing them.
INLINE_ELEMS = 1 << 16
#: A job of more shards than this is refused before planning (the plan alone
#: would not fit in memory): 100,000 default shards are 8.4 x 10^11 elements.
MAX_SHARDS = 100_000


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
        openers: Mapping[str, Opener] | None = None,
        ask_sources: Callable[[list[str]], Awaitable[None]] | None = None,
        metrics: NodeMetrics | None = None,
        skip_remote: SkipRemote | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.metrics = metrics or NodeMetrics()
        #: One shard's computation, counted, timed, and clocked for a traced run.
        self.compute = clocked(self.metrics.timed_shard(compute_partial))
        #: The file formats this node reads.
        self.openers = openers
        #: Asks peers which source kinds they read (PeerTable.sources_unknown).
        self.ask_sources = ask_sources
        self.node_id = node_id
        self.peers = peers
        self.executor = executor
        self.lanes = Lanes(node_id, peers, remote, skip_remote, executor, self.compute, self.metrics)
        self.shard_elems = shard_elems
        self.data_root = data_root
        self._running: dict[str, JobRun] = {}
        self._answers = AnswerCache()

    async def submit(self, job_id: str, job: Job, trace: bool = False) -> Outcome:
        """Run `job` (or join its earlier run) and return the merged answer; with `trace`,
        a run this call starts records its timeline in `Outcome.trace`.

        Raises node.errors classes: InvalidField for a bad job, LimitExceeded
        over a limit, JobConflict for a reused id, JobTimedOut past the job
        deadline, NotLeader if leadership is lost meanwhile, RunAbandoned if
        it joined a run as the run's last other caller went away.
        """
        known, run = self._answers.get(job_id), self._running.get(job_id)
        earlier = known[0] if known is not None else run.job if run is not None else None
        try:
            if earlier is not None:
                self._check_same(job_id, earlier, job)
            elif len(self._running) >= self.limits.max_jobs:
                raise LimitExceeded(f"max-jobs: {self.limits.max_jobs} jobs already running on the leader")
        except (JobConflict, LimitExceeded):
            self.metrics.job_ended(job.op, "refused", 0.0)  # refused before any run: counted here
            raise
        if known is not None:
            return known[1]
        if run is not None:
            return await self._wait(run)
        return await self._run(job_id, job, JobTrace(self.node_id) if trace else None)

    async def validate(self, job: Job) -> None:
        """Refuse a bad job (InvalidField, LimitExceeded) as `submit` would, without running it."""
        if source_kind(job.source) in FORMAT_KINDS:
            await asyncio.to_thread(self._plan, job)  # reads metadata from disk
        else:
            self._plan(job)

    def _check_same(self, job_id: str, old: Job, new: Job) -> None:
        if replace(old, shard_elems=None) != replace(new, shard_elems=None):
            raise JobConflict(f"job_id: {job_id!r} was already used for a different job")

    @property
    def running_count(self) -> int:
        return len(self._running)

    async def _run(self, job_id: str, job: Job, trace: JobTrace | None) -> Outcome:
        started = time.perf_counter()
        try:
            begun = self._begin(job_id, job, trace, started)
        except BaseException as exc:
            self.metrics.job_ended(job.op, outcome_of(exc), time.perf_counter() - started)
            raise
        if isinstance(begun, Outcome):  # tiny: computed at once
            self.metrics.job_ended(job.op, "done", time.perf_counter() - started)
            return begun
        return await self._wait(begun)

    def _begin(self, job_id: str, job: Job, trace: JobTrace | None, started: float) -> Outcome | JobRun:
        """A tiny job's outcome; or the run of the job, its driver started (`_drive`)."""
        if source_kind(job.source) in FORMAT_KINDS:
            # Opening a file format reads metadata from disk, and the first one imports its
            # library (a second or so): not on the event loop (`_drive`). The run is known
            # meanwhile, so a second caller of the id joins it (not a second run under the same
            # id, whose partials the two would share), and a cancel or a lost leadership reaches it.
            planned: Planned | None = None
        else:
            planned = self._plan(job)
            source, shards = planned
            if len(shards) == 1 and (shards[0][1] - shards[0][0]) * (source.cols or 1) <= INLINE_ELEMS:
                return self._run_inline(job_id, job, source, shards[0], trace)
        run = self._new_run(job_id, job, trace)
        run.submitted_s = started
        self._running[job_id] = run
        run.driver = asyncio.create_task(self._drive(run, planned))
        return run

    async def _wait(self, run: JobRun) -> Outcome:
        """The run's outcome, for one of its callers: its answer as soon as it is in (the driver
        may not have woken yet), anything else as the driver ends. The last caller to stop
        waiting (its client gone) ends the run; the others keep it."""
        assert run.driver is not None
        run.waiters += 1
        try:
            if not run.finished:
                await run.settled()
            if run.answered:  # the driver ends the run (its lanes) next: the answer goes first
                return self._remember(run)
            return await asyncio.shield(run.driver)
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if run.driver.cancelled() and caller is not None and not caller.cancelling():
                raise self._abandoned(run.job_id) from None  # joined as its last caller left
            raise
        finally:
            run.waiters -= 1
            if not run.waiters and not run.driver.done() and not run.answered:
                # Nobody waits for it any more: it ends now, not on a later turn of the loop,
                # so a submit that follows at once finds its --max-jobs slot free. (A run whose
                # answer is in is left to its driver, which remembers the answer and frees the
                # slot on its next turn.)
                self._end(run)
                run.driver.cancel()

    async def _drive(self, run: JobRun, planned: Planned | None) -> Outcome:
        try:
            return await self._execute(run, planned)
        except BaseException as exc:
            if not run.remembered:  # an answer its callers have is counted as that
                self.metrics.job_ended(run.job.op, outcome_of(exc), time.perf_counter() - run.submitted_s)
            raise

    async def _execute(self, run: JobRun, planned: Planned | None) -> Outcome:
        job_id = run.job_id
        if planned is None:  # a file format: planned here, off the event loop
            try:
                planned = await self._plan_aside(run)
                if self.ask_sources is not None and self.peers.sources_unknown():
                    await self.ask_sources(self.peers.sources_unknown())
            except BaseException as exc:
                self._forget(run)
                run.fail(exc if isinstance(exc, Exception) else self._abandoned(job_id))
                raise
            if run.finished:  # cancelled, or this node stopped leading, while it was planned (_end_planned)
                return await run.done
        source, shards = planned
        run.shards, run.started_s = shards, time.perf_counter()
        run.pending.extend(range(len(shards)))
        try:
            async with asyncio.timeout(self.limits.job_timeout_s):
                await self._launch(run, source)
                await asyncio.shield(run.done)
        except TimeoutError:
            if not run.answered:  # an answer in as the time ran out is still the answer
                timed_out = JobTimedOut(f"job-timeout-s: job ran past {self.limits.job_timeout_s} s")
                run.fail(timed_out)
                raise timed_out from None
        finally:
            self._end(run)
        return self._remember(run)

    def _remember(self, run: JobRun) -> Outcome:
        """An answered run's outcome, remembered and counted once, by whoever comes first: a
        caller (`_wait`) or the driver."""
        outcome = run.done.result()
        if not run.remembered:
            run.remembered = True
            self._answers.remember(run.job_id, run.job, outcome)
            self.metrics.job_ended(run.job.op, "done", time.perf_counter() - run.submitted_s)
        return outcome

    async def _plan_aside(self, run: JobRun) -> Planned:
        """A file format's plan, made in a thread; or the run's failure (a cancel, a lost
        leadership) as soon as it comes: its callers need not wait for the plan."""
        planning = asyncio.ensure_future(asyncio.to_thread(self._plan, run.job))
        either: set[asyncio.Future[Any]] = {planning, run.done}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not planning.done():  # the thread goes on; what it finds is nobody's
                planning.add_done_callback(lambda done: done.cancelled() or done.exception())
        if not planning.done():  # the run failed first
            failed = run.done.exception()
            raise failed if failed is not None else self._abandoned(run.job_id)
        return planning.result()

    def _end(self, run: JobRun) -> None:
        """The run is over, answered or not: out of the table, its lanes stopped, its shards
        still in the pool halted between pieces, and failed if it has no answer (its last
        caller went away). Idempotent."""
        self._forget(run)
        for task in run.tasks:
            task.cancel()
        run.halt.set()
        run.fail(self._abandoned(run.job_id))

    @staticmethod
    def _abandoned(job_id: str) -> RunAbandoned:
        return RunAbandoned(f"job_id: the run of {job_id!r} ended with its last caller; retry")

    @staticmethod
    def _new_run(job_id: str, job: Job, trace: JobTrace | None) -> JobRun:
        return JobRun(job_id, job, [], asyncio.get_running_loop().create_future(), 0.0, trace=trace)

    def _end_planned(self, run: JobRun) -> None:
        """A run failed while its plan is made (no shards yet) leaves at once: a later caller of
        the id must not join a failed run (this node leading again, a resubmit)."""
        if not run.shards:
            self._forget(run)

    def _forget(self, run: JobRun) -> None:
        if self._running.get(run.job_id) is run:  # not a later run of the id
            del self._running[run.job_id]

    async def _launch(self, run: JobRun, source: DataSource) -> None:
        if len(run.shards) == 1:  # a task, as lanes are: a cancel or a lost leadership ends it
            run.tasks.append(asyncio.create_task(self._run_alone(run, source)))
            return
        run.template = partial_template(run.job, source)
        self.lanes.start(run, source)

    def _plan(self, job: Job) -> Planned:
        """Validate the job against the limits and its source; cut the fixed shards."""
        self.limits.check_spec(job)
        source = validate_job(job, self.data_root, self.openers)
        self.limits.check_shape(job, source.rows, source.cols)
        shard_elems = job.shard_elems or self.shard_elems
        rows = shard_rows(source, shard_elems)
        if math.ceil(source.rows / rows) > MAX_SHARDS:  # before the plan is built: it would not fit
            raise LimitExceeded(
                f"source: {source.rows} rows make more than {MAX_SHARDS} shards of {rows} rows"
            )
        return source, plan_shards(source, shard_elems)

    def _run_inline(
        self, job_id: str, job: Job, source: DataSource, shard: tuple[int, int], trace: JobTrace | None
    ) -> Outcome:
        """Tiny jobs: computed on the event loop, no bookkeeping, no await.

        Nothing can interleave, so no other submission can join this run and no
        progress can be asked for: the answer is remembered before anyone else
        runs. This path is most of the small-job latency budget.
        """
        started = time.perf_counter()
        partial, started_ns, finished_ns = self.compute(job, source, *shard)
        if trace is not None:
            trace.span("shard 0 (on the event loop: tiny)", "compute", started_ns, finished_ns, shard=0)
        outcome = Outcome(
            job_id=job_id, op=job.op, result=finalize(job, partial), shards=1,
            nodes=(self.node_id,), elapsed_ms=(time.perf_counter() - started) * 1000,
            trace=tuple(trace.finish(job.op, 1)) if trace is not None else (),
        )
        self._answers.remember(job_id, job, outcome)
        return outcome

    async def _run_alone(self, run: JobRun, source: DataSource) -> None:
        """Data smaller than one shard but not tiny: the leader computes it in its pool."""
        try:
            partial, times = await self._compute_here(run, source, 0)
        except InvalidField as exc:  # the data is bad: the caller's to know
            run.fail(exc)
            return
        except Exception as exc:
            log.exception("job %s: computation failed", run.job_id, extra={"job_id": run.job_id})
            run.fail(JobFailed(f"computation failed: {exc}"))  # _run raises it
            return
        run.accept(0, self.node_id, partial, times)

    async def _compute_here(self, run: JobRun, source: DataSource, index: int) -> tuple[Partial, ShardTimes]:
        """One shard in this node's pool: its partial, and when it was queued, begun and done."""
        queued_ns, computing = self._queue_here(run, source, index)
        partial, started_ns, finished_ns = await computing
        return partial, ShardTimes(queued_ns, started_ns, finished_ns)

    def _queue_here(self, run: JobRun, source: DataSource, index: int) -> tuple[int, InPool[Partial]]:
        """Hand shard `index` to this node's pool now; when it was queued, and its future."""
        return to_pool(self.executor, halt.under(run.halt, self.compute), run.job, source, *run.shards[index])

    def accept_partial(
        self, job_id: str, shard: int, node_id: str, partial: Partial, times: ShardTimes | None = None,
        rows: tuple[int, int] | None = None, number: int = 0,
    ) -> bool:
        """A worker's partial for the running job `job_id`; dropped (False) if no run of it is
        here, or it answers another run's call (`number`), or the rows it says it covers are
        not this run's shard: a late partial of a run abandoned, of another job under its id
        or of another plan. A worker of an earlier version says no number, or no rows."""
        run = self._running.get(job_id)
        if run is None or (number and number != run.number):
            return False
        if rows is not None and rows != run.planned(shard):
            return False
        return run.accept(shard, node_id, partial, times, time.time_ns())

    def running(self) -> list[dict[str, object]]:
        """The jobs running now, with their shard progress (for /status.json)."""
        return [{"job_id": job_id, "op": run.job.op, "source": run.job.source, "shards": len(run.shards),
                 "shards_done": run.shards_received, "nodes": self.shards_by_node(job_id)}
                for job_id, run in self._running.items()]

    def progress(self, job_id: str) -> tuple[bool, int, int]:
        """(known, shards received, shards total) for a running or answered job."""
        run = self._running.get(job_id)
        if run is not None:
            return True, run.shards_received, len(run.shards)
        known = self._answers.get(job_id)
        if known is not None:
            return True, known[1].shards, known[1].shards
        return False, 0, 0

    def shards_by_node(self, job_id: str) -> dict[str, int]:
        """Shards each node has delivered so far of a running job (empty once it has ended)."""
        run = self._running.get(job_id)
        return dict(sorted(run.by_node.items())) if run is not None else {}

    def cancel(self, job_id: str) -> None:
        """The job was cancelled: end its run, if one is going (its caller gets JobCancelled)."""
        run = self._running.get(job_id)
        if run is not None:
            run.fail(JobCancelled(f"job {job_id} was cancelled"))
            self._end_planned(run)
            for task in run.tasks:
                task.cancel()

    def abort_all(self, reason: str) -> None:
        """Leadership is gone: fail every running job so clients retry elsewhere."""
        for run in list(self._running.values()):
            run.fail(NotLeader(reason))
            self._end_planned(run)
            for task in run.tasks:
                task.cancel()
