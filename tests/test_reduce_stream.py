"""A worker's one Reduce stream (reducestream.py) and the leader's wait for its partials (jobs.py).

Fake gRPC calls and a fake worker: no node, no network. Waits poll with deadlines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_jobs import NextQueuedPool

import node.server.lanes
import node.server.reducestream
from node._proto import distnode_pb2 as pb
from node.core.compute import compute_partial, validate_job
from node.core.job import Job
from node.errors import ReduceFailed
from node.server.jobs import JobManager
from node.server.peers import PeerTable
from node.server.reducestream import ReduceStreams
from node.server.worker import Worker

DEADLINE_S = 5.0


async def poll(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


class FakeCall:
    """A client-streaming call: records writes, fails when told, and checks that
    no two writes are ever in flight at once (gRPC refuses that)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.written: list[int] = []
        self.in_flight = 0
        self.gate: asyncio.Event | None = None  # set: writes wait for it
        self.fail_next: Exception | None = None
        self.half_closed = False
        self.cancelled = False
        self.answer = True  # False: never answers after the half-close

    async def write(self, message: pb.Partial) -> None:
        assert not self.cancelled and not self.half_closed
        self.in_flight += 1
        assert self.in_flight == 1, "two writes in flight on one call"
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            if self.fail_next is not None:
                exc, self.fail_next = self.fail_next, None
                raise exc
            self.written.append(message.shard)
        finally:
            self.in_flight -= 1

    async def done_writing(self) -> None:
        self.half_closed = True

    def __await__(self) -> Generator[Any, None, pb.ReduceReply]:
        while not self.answer:
            yield from asyncio.sleep(0.01).__await__()
        return pb.ReduceReply(accepted=len(self.written))

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def done(self) -> bool:
        return self.cancelled or (self.half_closed and self.answer)


class Calls:
    """Opens FakeCalls and keeps them, in order."""

    def __init__(self) -> None:
        self.opened: list[FakeCall] = []

    def __call__(self, address: str) -> Any:
        self.opened.append(FakeCall(address))
        return self.opened[-1]


def partial(shard: int) -> pb.Partial:
    return pb.Partial(job_id="j", shard=shard, node_id="n2")


async def held_write(streams: ReduceStreams, calls: Calls, address: str) -> tuple[FakeCall, asyncio.Task[None]]:
    """A stream to `address` with partial 0 written and partial 1's write held at the call's gate."""
    await streams.send(address, partial(0), None)
    call = calls.opened[-1]
    call.gate = asyncio.Event()
    sender = asyncio.create_task(streams.send(address, partial(1), None))
    await poll(lambda: call.in_flight == 1, "a write under way")
    return call, sender


async def test_concurrent_compute_calls_share_one_stream_one_write_at_a_time() -> None:
    calls = Calls()
    streams = ReduceStreams(calls)
    await asyncio.gather(*(streams.send("leader:1", partial(i), None) for i in range(20)))
    await streams.send("leader:1", partial(20), None)
    assert len(calls.opened) == 1
    assert calls.opened[0].written == list(range(21))  # in the order handed over
    await streams.close()
    assert calls.opened[0].half_closed and not calls.opened[0].cancelled


async def test_a_sender_cancelled_mid_write_leaves_the_stream_whole() -> None:
    calls = Calls()
    streams = ReduceStreams(calls)
    call, sender = await held_write(streams, calls, "leader:1")
    sender.cancel()  # the leader cancelled that Compute call
    call.gate.set()
    await poll(lambda: call.written == [0, 1], "the cancelled caller's partial still written")
    await streams.send("leader:1", partial(2), None)
    assert len(calls.opened) == 1 and not call.cancelled
    assert call.written == [0, 1, 2]


async def test_a_failed_write_fails_it_and_everything_queued_then_a_new_stream_opens() -> None:
    calls = Calls()
    streams = ReduceStreams(calls)
    await streams.send("leader:1", partial(0), None)
    first = calls.opened[0]
    first.gate, first.fail_next = asyncio.Event(), RuntimeError("connection reset")
    senders = [asyncio.create_task(streams.send("leader:1", partial(i), None)) for i in (1, 2, 3)]
    await poll(lambda: first.in_flight == 1, "the failing write under way")
    first.gate.set()
    results = await asyncio.gather(*senders, return_exceptions=True)
    assert all(isinstance(r, ReduceFailed) for r in results), results
    assert "leader:1: RuntimeError: connection reset" in str(results[0])
    assert first.cancelled and first.written == [0]
    await streams.send("leader:1", partial(4), None)
    assert len(calls.opened) == 2 and calls.opened[1].written == [4]


async def test_a_write_past_its_compute_calls_deadline_breaks_the_stream() -> None:
    calls = Calls()
    streams = ReduceStreams(calls)
    await streams.send("leader:1", partial(0), None)
    calls.opened[0].gate = asyncio.Event()  # the aggregator stopped reading
    with pytest.raises(ReduceFailed, match="outlasted its Compute call's deadline"):
        await streams.send("leader:1", partial(1), time.monotonic() + 0.05)
    assert calls.opened[0].cancelled


async def test_a_compute_for_another_aggregator_closes_the_old_stream_after_its_queue() -> None:
    calls = Calls()
    streams = ReduceStreams(calls)
    old, queued = await held_write(streams, calls, "old:1")
    new_send = asyncio.create_task(streams.send("new:1", partial(2), None))
    old.gate.set()
    await asyncio.gather(queued, new_send)
    await poll(lambda: old.half_closed, "the old stream half-closed")
    assert old.written == [0, 1] and not old.cancelled
    assert [c.address for c in calls.opened] == ["old:1", "new:1"] and calls.opened[1].written == [2]


async def test_close_gives_up_on_an_aggregator_that_never_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node.server.reducestream, "CLOSE_WAIT_S", 0.05)
    calls = Calls()
    streams = ReduceStreams(calls)
    await streams.send("leader:1", partial(0), None)
    calls.opened[0].answer = False
    await asyncio.wait_for(streams.close(), DEADLINE_S)
    assert calls.opened[0].half_closed and calls.opened[0].cancelled


# ---- the leader's side: a lane waits for what its Compute call wrote -------------------


def stall_the_loop(seconds: float) -> None:
    """Called from a coroutine, it holds the event loop: the stall under test."""
    time.sleep(seconds)


class LateWorker:
    """A worker whose Compute returns as soon as its partials are computed and
    delivers them `delay_s` later (None: never), as a Reduce stream may."""

    def __init__(self, root: Path, delay_s: float | None, stall_s: float = 0.0) -> None:
        self.root, self.delay_s, self.stall_s = root, delay_s, stall_s
        self.jobs: JobManager | None = None
        self.batches: list[list[int]] = []
        self.later: set[asyncio.Task[None]] = set()

    async def __call__(
        self, address: str, job_id: str, job: Job, ranges: list[tuple[int, int, int]], run: int = 0
    ) -> list[int]:
        source = validate_job(job, self.root)
        partials = [(i, compute_partial(job, source, a, b)) for i, a, b in ranges]
        self.batches.append([i for i, _, _ in ranges])
        if self.delay_s is not None:
            task = asyncio.create_task(self._deliver(job_id, partials, self.delay_s))
            self.later.add(task)
            task.add_done_callback(self.later.discard)
        return []  # it lets no shard go

    async def _deliver(self, job_id: str, partials: list[tuple[int, Any]], delay_s: float) -> None:
        await asyncio.sleep(delay_s)  # the partials' trip on the stream
        if self.stall_s:
            stall_the_loop(self.stall_s)  # the leader's event loop stalls with them unread...
            await asyncio.sleep(0.001)  # ...and reads them only after the timers that fell due
        assert self.jobs is not None
        for shard, state in partials:
            self.jobs.accept_partial(job_id, shard, "n2", state)


def cluster_of_two(root: Path, worker: LateWorker) -> tuple[JobManager, list[int]]:
    """A leader with one live worker; the list counts the shards the leader computed itself."""
    peers = PeerTable(("w:1",), "n1")
    peers.learn("w:1", "n2")
    peers.sync({"w:1"})
    local: list[int] = []
    jobs = JobManager("n1", peers, remote=worker, executor=ThreadPoolExecutor(1), shard_elems=1000,
                      data_root=root)
    compute = jobs.lanes.compute

    def counted(job: Job, source: Any, start: int, stop: int) -> Any:
        local.append(start // 1000)
        return compute(job, source, start, stop)

    jobs.lanes.compute = counted
    worker.jobs = jobs
    return jobs, local


async def test_a_lane_waits_for_partials_still_on_the_stream_and_runs_no_shard_twice(tmp_path: Path) -> None:
    data = np.random.default_rng(3).standard_normal(20_000)
    np.save(tmp_path / "d.npy", data)
    worker = LateWorker(tmp_path, delay_s=0.05)
    jobs, local = cluster_of_two(tmp_path, worker)
    outcome = await jobs.submit("j1", Job("sum", "npy:d.npy"))
    remote = [i for batch in worker.batches for i in batch]
    assert remote, "the worker had no batch: nothing was tested"
    assert sorted(remote + local) == list(range(20)), "a shard computed twice, or never"
    assert "n2" in outcome.nodes
    assert np.isclose(outcome.result, data.sum())


async def test_partials_that_never_come_are_given_back_after_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node.server.lanes, "PARTIALS_GRACE_S", 0.05)
    data = np.arange(20_000, dtype=np.float64)
    np.save(tmp_path / "d.npy", data)
    worker = LateWorker(tmp_path, delay_s=None)
    jobs, local = cluster_of_two(tmp_path, worker)
    outcome = await asyncio.wait_for(jobs.submit("j1", Job("sum", "npy:d.npy")), DEADLINE_S)
    assert sorted(local) == list(range(20))  # each batch given back, then computed by the leader
    assert 1 <= len(worker.batches) <= node.server.lanes.REMOTE_LANES  # one batch per lane, then dropped
    assert outcome.result == data.sum() and outcome.nodes == ("n1",)


async def test_a_stalled_event_loop_does_not_use_up_the_grace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stall longer than the grace, with the partials waiting to be read, must not drop
    the worker: the grace is counted in waits that ended with nothing new."""
    monkeypatch.setattr(node.server.lanes, "PARTIALS_GRACE_S", 0.1)
    data = np.random.default_rng(4).standard_normal(20_000)
    np.save(tmp_path / "d.npy", data)
    worker = LateWorker(tmp_path, delay_s=0.0, stall_s=0.3)
    jobs, local = cluster_of_two(tmp_path, worker)
    outcome = await asyncio.wait_for(jobs.submit("j1", Job("sum", "npy:d.npy")), DEADLINE_S)
    remote = [i for batch in worker.batches for i in batch]
    assert remote and sorted(remote + local) == list(range(20)), "the worker was dropped, its shards redone"
    assert "n2" in outcome.nodes


@pytest.mark.parametrize("shards", [3, 12])
async def test_a_worker_queues_its_next_shard_before_it_sends_the_last_ones_partial(shards: int) -> None:
    """The pool's thread goes straight on to a Compute call's next shard while the event
    loop sends the last one's partial (worker.py), and holds at most that one ahead."""
    rows_per_shard = 1 << 12
    pool = NextQueuedPool(total_rows=shards * rows_per_shard)
    calls = Calls()
    worker = Worker("n2", None, pool, None, lambda leader_id: "n1:1")  # type: ignore[arg-type]
    worker.streams = ReduceStreams(calls)
    ranges = [(i, i * rows_per_shard, (i + 1) * rows_per_shard) for i in range(shards)]
    job = Job(op="count", source=f"random:n={shards * rows_per_shard},seed=1")
    assert (await worker.compute("j", job, ranges, "n1", timeout_s=DEADLINE_S)).sent == shards
    pool.shutdown(wait=True)
    assert calls.opened[0].written == list(range(shards))
    assert pool.next_was_queued == [True] * (shards - 1)
    assert pool.most_in_pool == 2
