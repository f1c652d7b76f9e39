"""The lanes that compute a running job's shards, on the leader: one for its own pool,
REMOTE_LANES for each live worker (jobs.py says how a job runs as a whole).

A lane takes a batch of shard indices from the run's queue, has them
computed, and takes the next batch; the leader's lane keeps one shard queued
in its pool behind the one computing, a worker's lane sends
`Compute(batch, reduce_to=leader)` and waits for the batch's partials. A lane
that finds the queue empty takes a shard another node holds but has not
begun, if that node holds two more than its own (stealing.py); otherwise it
waits until shards come back to the queue or the run ends.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

from node.core import halt
from node.core.compute import Partial
from node.core.job import Job
from node.core.sources import FORMAT_KINDS, DataSource, source_kind
from node.errors import InvalidField, JobFailed, WorkerFailed
from node.server.api import ShardRange
from node.server.jobrun import JobRun
from node.server.metrics import NodeMetrics
from node.server.peers import PeerTable
from node.server.stealing import GiveUp, Skips
from node.server.tracing import InPool, ShardTimes, to_pool

log = logging.getLogger("distnode.jobs")

#: Batches in flight per remote worker, so it never idles waiting for the next.
REMOTE_LANES = 2
#: The leader's own shards queued in its pool behind the one computing.
POOL_AHEAD = 1
#: After a worker's Compute returned, how long its lane waits for the batch's partials
#: (written to the worker's Reduce stream, maybe not yet read) before giving back the rest.
PARTIALS_GRACE_S = 1.0

#: (worker address, job id, job, shards, the run's number) -> those of `shards` the worker let
#: go (SkipRemote): it sent the partials of the others.
RemoteCompute = Callable[[str, str, Job, list[ShardRange], int], Coroutine[Any, Any, list[int]]]
#: (worker address, job id, shards) -> those of `shards` the worker let go (it will not begin them).
SkipRemote = Callable[[str, str, list[int]], Awaitable[list[int]]]


def _retrieve(task: asyncio.Task[Any]) -> None:
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


class Lanes:
    """Starts and runs the lanes of each run (JobManager._launch)."""

    def __init__(
        self, node_id: str, peers: PeerTable, remote: RemoteCompute, skip_remote: SkipRemote | None,
        executor: Executor, compute: Callable[..., tuple[Partial, int, int]], metrics: NodeMetrics,
    ) -> None:
        self.node_id = node_id
        self.peers = peers
        self.remote = remote
        #: Tells a worker to leave a shard to an idle node; None: workers are never asked.
        self.skip_remote = skip_remote
        self.executor = executor
        #: One shard's computation in this node's pool (clocked: tracing.py).
        self.compute = compute
        self.metrics = metrics

    def start(self, run: JobRun, source: DataSource) -> None:
        # A file format goes only to the peers that said they read it.
        kind = source_kind(run.job.source)
        workers = self.peers.alive_addresses(reading=kind if kind in FORMAT_KINDS else None)
        lanes = 1 + REMOTE_LANES * len(workers)
        batch = max(1, math.ceil(len(run.shards) / (2 * lanes)))
        run.tasks.append(asyncio.create_task(self._local_lane(run, source, batch)))
        for address in workers:
            for number in range(REMOTE_LANES):
                lane = f"rpc to {self.peers.id_of(address)} #{number + 1}"
                run.tasks.append(asyncio.create_task(self._remote_lane(run, address, batch, lane)))

    async def _local_lane(self, run: JobRun, source: DataSource, batch_size: int) -> None:
        try:
            await self._compute_local(run, source, batch_size)
        except InvalidField as exc:
            # The data itself is bad (a damaged chunk): the caller's to know, not a fault of ours.
            run.fail(exc)
        except Exception as exc:
            # Workers may fail and be replaced; the leader is the last resort.
            log.exception("job %s: local computation failed", run.job_id, extra={"job_id": run.job_id})
            run.fail(JobFailed(f"computation failed: {exc}"))

    async def _compute_local(self, run: JobRun, source: DataSource, batch_size: int) -> None:
        """Keep the next shard queued behind the one computing, so the pool's thread never
        waits for the event loop between shards. Never more than POOL_AHEAD: a thread that
        never ran dry would hold the GIL through runs of tiny shards and starve the loop."""
        claimed: collections.deque[int] = collections.deque()
        queued: collections.deque[tuple[int, int, InPool[Partial | None]]] = collections.deque()
        skips = Skips()
        compute = halt.under(run.halt, skips.guarded(self.compute))

        async def give_up(index: int) -> bool:
            if index in claimed:
                claimed.remove(index)
                return True
            return any(index == i for i, _, _ in queued) and skips.skip(index)

        try:
            while not run.finished:
                if not claimed and len(queued) <= POOL_AHEAD:
                    # Ask for another node's shard only with nothing in the pool: the partial
                    # of a shard computing meanwhile would wait for the answer.
                    batch = run.take(batch_size) or (await self._steal(run, self.node_id, "compute")
                                                     if not queued else [])
                    run.holdings.hand(self.node_id, batch, give_up, time.monotonic_ns())
                    claimed.extend(batch)
                while claimed and len(queued) <= POOL_AHEAD:
                    index = claimed.popleft()
                    skips.hand((index,))
                    entry = skips.entry(index)
                    queued.append((index, *to_pool(self.executor, compute, entry, run.job, source,
                                                   *run.shards[index])))
                if not queued:
                    await self._idle(run)
                    continue
                index, queued_ns, computing = queued.popleft()
                partial, started_ns, finished_ns = await computing
                if partial is not None:  # None: given up to an idle node (give_up)
                    run.accept(index, self.node_id, partial, ShardTimes(queued_ns, started_ns, finished_ns))
        finally:
            for _, _, computing in queued:  # the run ended or failed: what has not begun never will
                computing.cancel()

    async def _steal(self, run: JobRun, thief: str, lane: str) -> list[int]:
        """A shard for `thief`, whose lane found the queue empty, that a busy node let go
        (stealing.py); [] if there is none to ask for, or its holder began it."""
        picked = run.holdings.pick(thief, time.monotonic_ns())
        if picked is None:
            return []
        shard, holder, give_up = picked
        asked_ns, given = time.time_ns(), False
        try:
            given = await self._answer(give_up(shard), holder)
        except Exception:  # a best-effort ask: whatever went wrong, the shard stays where it is
            log.exception("job %s: asking %s for shard %d failed", run.job_id, self.peers.id_of(holder),
                          shard, extra={"job_id": run.job_id, "peer": holder, "shard": shard})
        finally:
            run.holdings.settle(thief, shard, given)
        if run.trace is not None:
            what = f"{'took' if given else 'was refused'} shard {shard} from {self.peers.id_of(holder)}"
            run.trace.span(what, lane, asked_ns, time.time_ns(), node=self.peers.id_of(thief))
        if not given or run.finished:
            return []
        self.metrics.shards_moved.inc()
        return [shard]

    async def _answer(self, asking: Awaitable[bool], holder: str) -> bool:
        """The holder's answer; no if a worker is declared dead first (its lane then gives
        back what it held, the shard asked for too)."""
        if holder == self.node_id:
            return await asking
        answer = asyncio.ensure_future(asking)
        await self._unless_dead(answer, holder)
        return answer.done() and not answer.cancelled() and answer.result()

    async def _unless_dead(self, work: asyncio.Future[Any], address: str) -> None:
        """Wait for `work` to end, or for the worker at `address` to be declared dead; then
        cancel `work` if it has not ended (also on our own cancellation: never orphan it)."""
        dead = asyncio.ensure_future(self.peers.dead_event(address).wait())
        try:
            await asyncio.wait({work, dead}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            dead.cancel()
            if not work.done():
                work.cancel()

    def _give_up(self, run: JobRun, address: str, batch: list[int]) -> GiveUp | None:
        """How a worker's batch lets a shard go: the worker is asked (dispatch.py)."""
        skip = self.skip_remote
        if skip is None:
            return None

        async def give_up(index: int) -> bool:
            if index not in batch or index not in await skip(address, run.job_id, [index]):
                return False
            # The worker let it go. Unless the lane put it back in the queue meanwhile (the
            # call's reply named it, or the worker failed) or it is done, it is the thief's;
            # the lane, still waiting for the batch's partials maybe, must no longer wait for
            # it nor put it back.
            holder = run.holdings.holder(index)
            if (index not in batch or index in run.pending or not run.missing([index])
                    or holder not in (None, address)):
                return False
            batch.remove(index)
            run.arrived.set()
            return True
        return give_up

    async def _remote_lane(self, run: JobRun, address: str, batch_size: int, lane: str) -> None:
        while not run.finished and address not in run.failed_nodes:
            batch = run.take(batch_size) or await self._steal(run, address, lane)
            if batch and address in run.failed_nodes:  # it failed while this lane asked for a shard
                run.requeue(batch)
                break
            if not batch:
                await self._idle(run)
                continue
            run.holdings.hand(address, batch, self._give_up(run, address, batch), time.monotonic_ns())
            if run.trace is not None:
                run.trace.lane_of.update(dict.fromkeys(batch, lane))
                rpc = run.trace.begin(f"Compute: {len(batch)} shards", lane, shards=batch)
            try:
                let_go = await self._compute_remote(run, address, batch)
                run.holdings.drop(batch)  # all sent: nothing left there to give up
                # Let go at a skip whose yes came too late, or not at all (the ask was taken
                # for a no): nobody computes them; back to the queue, not waited for.
                late = [index for index in let_go if index in batch]
                if late:
                    batch[:] = [index for index in batch if index not in late]
                    run.requeue(late)
                # Written is not received: the partials may still be on the worker's stream.
                if not await run.arrival(batch, self.peers.dead_event(address), PARTIALS_GRACE_S):
                    raise WorkerFailed(f"its partials did not arrive within {PARTIALS_GRACE_S} s")
            except WorkerFailed as exc:
                log.warning("job %s: worker %s failed (%s); reassigning %d shards",
                            run.job_id, self.peers.id_of(address), exc, len(batch),
                            extra={"job_id": run.job_id, "peer": address})
                run.failed_nodes.add(address)
            except Exception:
                # A bug here must not strand the batch: log it, drop the worker.
                log.exception("job %s: lane to %s failed", run.job_id, address,
                              extra={"job_id": run.job_id, "peer": address})
                run.failed_nodes.add(address)
            finally:
                # Anything the worker claimed but did not deliver goes back,
                # also when this lane is cancelled because the job ended.
                run.requeue(batch)
                if run.trace is not None:
                    run.trace.end(rpc)

    async def _compute_remote(self, run: JobRun, address: str, batch: list[int]) -> list[int]:
        """The worker's Compute call over `batch`: the shards it let go."""
        ranges = [(i, *run.shards[i]) for i in batch]
        call: asyncio.Task[list[int]] = asyncio.create_task(
            self.remote(address, run.job_id, run.job, ranges, run.number))
        call.add_done_callback(_retrieve)  # whoever wins below, asyncio never logs it as lost
        await self._unless_dead(call, address)  # also cancelled if the job ends meanwhile
        if not call.done():  # cancelled just above: cancellation lands on a later loop turn
            raise WorkerFailed("missed heartbeats")
        if call.cancelled():
            raise WorkerFailed("cancelled")
        exc = call.exception()
        if exc is not None:
            raise WorkerFailed(_one_line(exc))
        return call.result()

    async def _idle(self, run: JobRun) -> None:
        """Nothing to take: wait until shards come back or the job ends. Shards may have come
        back while this lane was asking a node for one (`_steal`), its wake-up spent."""
        run.wakeup.clear()
        if not run.pending and not run.finished:
            await run.wakeup.wait()
