"""The worker's side of a job: compute the shards it was handed, stream partials.

`Compute(job, shards, reduce_to)` on gRPC hands each partial, as soon as it
is computed, to this worker's one open `Reduce` stream to the aggregator
(reducestream.py), and is answered once every partial is written; a call on
a compute link runs in the pool's thread whole (`compute_in_pool`), which
writes its partials to the link itself (linkserve.py). The
leader then waits for them to arrive (jobs.py). The next shard of the call
always waits in the pool behind the one computing, so the pool's thread
goes straight on while the event loop sends a partial (one ahead, never
more: see lanes.py's `_compute_local`). If the leader cancels the call (the
job ended, or the leader moved on), the remaining shards are skipped; a
shard under way in the thread pool stops at its next piece (halt.py) and is
dropped, and a partial already handed over is still written. If the leader gives one of a call's
shards to an idle node instead (a SkipShards, on the compute link or in a
`Skip` call), the pool's thread drops it unless it has begun it
(stealing.py), and the call sends no partial for it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from pathlib import Path

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.core import halt
from node.core.compute import Partial, compute_partial, validate_job
from node.core.job import Job
from node.core.sources import FORMAT_KINDS, DataSource, Opener, source_kind
from node.errors import InvalidField, JobFailed, ReduceFailed
from node.server.api import ShardRange
from node.server.computelink import Computed
from node.server.linkserve import SendBlocking
from node.server.metrics import NodeMetrics
from node.server.reducestream import ReduceStreams
from node.server.stealing import CallSkips, Skips, SkipsByCall
from node.server.tracing import InPool, clocked, to_pool
from node.wire.tensors import partial_to_proto

#: A job's later calls to this worker within this long reuse the source its first call
#: opened (its path resolved, the file's header read): a big job's calls come milliseconds
#: apart, and opening it again was about a tenth of a worker's event loop per job.
SOURCE_REUSE_S = 1.0
#: Sources kept for that, the most recent.
SOURCES_KEPT = 16


class RecentSources:
    """Sources opened for a job's call in the last SOURCE_REUSE_S, by job id and job: only
    the same job's later calls take one, and never a file format's (read in a thread)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._kept: collections.OrderedDict[tuple[str, Job], tuple[float, DataSource]] = (
            collections.OrderedDict())
        #: The event loop (gRPC calls) and the pool's thread (compute links) both use it.
        self._lock = threading.Lock()

    def get(self, job_id: str, job: Job) -> DataSource | None:
        with self._lock:
            found = self._kept.get((job_id, job))
        if found is None or self._clock() - found[0] > SOURCE_REUSE_S:
            return None
        return found[1]

    def keep(self, job_id: str, job: Job, source: DataSource) -> None:
        with self._lock:
            self._kept[(job_id, job)] = (self._clock(), source)
            self._kept.move_to_end((job_id, job))
            while len(self._kept) > SOURCES_KEPT:
                self._kept.popitem(last=False)


class Worker:
    def __init__(
        self,
        node_id: str,
        stubs: StubCache,
        executor: Executor,
        data_root: Path | None,
        address_of: Callable[[str], str | None],
        openers: Mapping[str, Opener] | None = None,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.node_id = node_id
        #: One shard's computation, counted, timed, and clocked for the leader's trace.
        self._compute_shard = clocked((metrics or NodeMetrics()).timed_shard(compute_partial))
        #: The file formats this node reads.
        self.openers = openers
        #: Maps the leader's id to the address this node dials it by.
        self.address_of = address_of
        self.stubs = stubs
        self.executor = executor
        self.data_root = data_root
        self.streams = ReduceStreams(lambda address: stubs.stub(address).Reduce())
        #: (leader id, job id) -> what becomes of the shards of its gRPC calls here (Skip calls).
        self._skips: SkipsByCall[tuple[str, str]] = SkipsByCall()
        self._sources = RecentSources()

    async def compute(
        self, job_id: str, job: Job, ranges: list[ShardRange], leader_id: str, timeout_s: float | None,
        run: int = 0,
    ) -> Computed:
        """A gRPC `Compute` call: compute the shards in `ranges`, send each partial to the
        leader `leader_id` on the Reduce stream. A shard the leader gave to an idle node
        before the pool's thread began it (a `Skip` call: `skip`) is dropped; the answer
        names it, so the leader knows even if its skip's answer came too late. Each partial
        says the leader's `run` back (jobs.py: a late one of another run is not merged).

        A shard that cannot be computed is JobFailed (INTERNAL); a leader that
        cannot be reached, or drops the stream, is ReduceFailed (UNAVAILABLE).
        """
        # The call's shards are here from now on, also while a format's metadata is read:
        # a Skip that comes meanwhile must find them.
        with self._skipping(leader_id, job_id, ranges) as skipping:
            return await self._compute(job_id, job, ranges, leader_id, timeout_s, skipping, run)

    async def _compute(
        self, job_id: str, job: Job, ranges: list[ShardRange], leader_id: str, timeout_s: float | None,
        skips: Skips, run: int,
    ) -> Computed:
        if source_kind(job.source) in FORMAT_KINDS:  # reads metadata, maybe imports a library: off the loop
            source = await asyncio.to_thread(validate_job, job, self.data_root, self.openers)
        else:
            source = self._source(job_id, job)
        check_ranges(ranges, source)
        # Dial the aggregator only through our own --peers entry for it (which
        # may be a proxy or NAT address), never the address it advertises.
        reduce_to = self.address_of(leader_id)
        if reduce_to is None:
            raise ReduceFailed(f"leader_id: {leader_id!r} is not yet known behind any --peers address")
        send = functools.partial(self.streams.send, reduce_to)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        halted = halt.Halt()  # set as the call ends: a shard still in the pool stops between pieces
        compute = halt.under(halted, skips.guarded(self._compute_shard))
        todo = iter(ranges)
        rows = {index: (start, stop) for index, start, stop in ranges}  # said with each partial
        queued: collections.deque[tuple[int, int, InPool[Partial | None]]] = collections.deque()

        def queue_next() -> None:
            shard = next(todo, None)
            if shard is not None:
                index, start, stop = shard
                entry = skips.entry(index)
                queued.append((index, *to_pool(self.executor, compute, entry, job, source, start, stop)))

        sent, skipped = 0, []
        try:
            queue_next()
            while queued:
                queue_next()  # it waits in the pool behind this one: the thread goes on while we send
                index, queued_ns, computing = queued.popleft()
                partial, started_ns, finished_ns = await self._computed(index, computing)
                if partial is None:  # the leader gave it to an idle node (skip)
                    skipped.append(index)
                    continue
                message = _message(job_id, index, self.node_id, partial,
                                   (queued_ns, started_ns, finished_ns), rows[index], run)
                await send(message, deadline)
                sent += 1
        finally:
            halted.set()
            for _, _, computing in queued:  # cancelled, or a shard failed: what has not begun never will
                computing.cancel()
        return Computed(sent, tuple(skipped))

    def compute_in_pool(
        self, job_id: str, job: Job, ranges: list[ShardRange], halted: halt.Halt, send: SendBlocking,
        skips: CallSkips, queued_ns: int, run: int = 0,
    ) -> Computed:
        """A compute link's call, run in the pool's thread (linkserve.py): the shards in
        `ranges` one after the other, each partial written with `send` as it is computed,
        until `halted` is set (then ShardHalted). A shard the leader gave to an idle node
        before this thread began it is dropped, as `skips` says, and the answer names it.
        `queued_ns`: when the call was handed to the pool (its shards wait there from then)."""
        if source_kind(job.source) in FORMAT_KINDS:
            source = validate_job(job, self.data_root, self.openers)
        else:
            source = self._source(job_id, job)
        check_ranges(ranges, source)
        compute = halt.under(halted, skips.guarded(self._compute_shard))
        sent, skipped = 0, []
        for index, start, stop in ranges:
            try:
                partial, started_ns, finished_ns = compute(skips.entry(index), job, source, start, stop)
            except (InvalidField, halt.ShardHalted):
                raise
            except Exception as exc:
                raise _shard_failed(index, exc) from exc
            if partial is None:  # the leader gave it to an idle node (skip)
                skipped.append(index)
                continue
            send(_message(job_id, index, self.node_id, partial, (queued_ns, started_ns, finished_ns),
                          (start, stop), run))
            sent += 1
        return Computed(sent, tuple(skipped))

    def _source(self, job_id: str, job: Job) -> DataSource:
        """The job's source as an earlier call of it opened it (RecentSources), or opened now."""
        known = self._sources.get(job_id, job)
        if known is not None:
            return known
        source = validate_job(job, self.data_root, self.openers)
        self._sources.keep(job_id, job, source)
        return source

    @contextlib.contextmanager
    def _skipping(self, leader_id: str, job_id: str, ranges: list[ShardRange]) -> Iterator[Skips]:
        """A gRPC call's Skips: this worker's record of the job from that leader, which its
        Skip calls mark, kept while a call of it runs. (A job's calls from an old leader have
        their own; a compute link keeps its own, linkserve.py.)"""
        key = (leader_id, job_id)
        skips = self._skips.register(key, (index for index, _, _ in ranges))
        try:
            yield skips
        finally:
            self._skips.unregister(key)

    def skip(self, leader_id: str, job_id: str, shards: list[int]) -> list[int]:
        """A Skip call from `leader_id`: it would give `shards` of `job_id` to an idle node.
        Those let go: handed here by its gRPC calls and not begun (a Skip that outran its
        call finds none, and the shards stay here)."""
        return self._skips.skip((leader_id, job_id), shards)

    async def close(self) -> None:
        """Close the Reduce stream, once what is queued on it is written."""
        await self.streams.close()

    @staticmethod
    async def _computed(index: int, computing: InPool[Partial | None]) -> tuple[Partial | None, int, int]:
        """The shard's partial, and when the pool's thread began and ended it (ns)."""
        try:
            return await computing
        except InvalidField:
            raise  # the data is bad (a damaged chunk): INVALID_ARGUMENT, said as is
        except Exception as exc:
            raise _shard_failed(index, exc) from exc


def _shard_failed(index: int, exc: Exception) -> JobFailed:
    """A shard that could not be computed (INTERNAL); bad data (InvalidField) is said as is."""
    return JobFailed(f"shard {index}: computation failed: {type(exc).__name__}: {exc}")


def _message(
    job_id: str, index: int, node_id: str, partial: Partial, times_ns: tuple[int, int, int],
    rows: tuple[int, int], run: int,
) -> pb.Partial:
    """A shard's partial as it travels: with when it was queued, begun and done (tracing.py),
    the rows it covers, and the leader's run whose call it answers."""
    message = partial_to_proto(job_id, index, node_id, partial)
    message.queued_ns, message.started_ns, message.finished_ns = times_ns
    message.start_row, message.stop_row = rows
    message.run = run
    return message


def check_ranges(ranges: list[ShardRange], source: DataSource) -> None:
    """Shard ranges come from the network: they must lie inside the data."""
    for index, start, stop in ranges:
        if not 0 <= start < stop <= source.rows:
            raise InvalidField(
                "shards", f"shard {index} rows [{start}, {stop}) outside the source's {source.rows} rows"
            )
