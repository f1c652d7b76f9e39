"""Compute calls on a worker's local socket (node/server/computelink.py, dispatch.py).

Both ends of a link on a real abstract socket, without daemons: a call's
partials arrive before its end, which carries the shard count; a failure
comes back as the status gRPC would give, and the link serves on; a
cancelled or timed-out call is cancelled on the worker; a link closed by
either end fails the calls waiting at the leader and cancels those running
at the worker; a frame over the limit, or a partial the leader cannot take,
breaks the link (the limit is the partial's, not its envelope's); the
worker ends a call past its deadline by itself; `connect` reaches an
abstract socket on uvloop (whose `open_unix_connection` refuses the path
form).

Then in-process daemons: after a worker's first gRPC reply the leader's
calls to it go on a link, the answer stays bit-identical and the calls are
counted by transport; a node without a local socket keeps gRPC; a socket
out of reach, or answered by another node, leaves gRPC in place and is not
tried again; a link closed between jobs is replaced through the next gRPC
reply. The last test kills a linked worker process mid-job: its shards move.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inproc import InProcessCluster, StartCluster, poll, scraped

from node import AsyncClient, Client, LocalCluster
from node._proto import distnode_pb2 as pb
from node.core.compute import reduce_all, validate_job
from node.core.halt import ShardHalted
from node.core.job import Job
from node.errors import InvalidField
from node.server import computelink, linkserve, localsocket
from node.server.computelink import Computed, ComputeLink, LinkBroken, LinkCallFailed
from node.server.config import NodeConfig
from node.server.daemon import Daemon
from node.server.dispatch import Dispatch
from node.server.linkserve import CallHalt, LinkCompute, LinkServer, SendBlocking
from node.server.stealing import CallSkips
from node.server.worker import Worker
from node.testing.cluster import FAST_TIMING
from node.wire.localframes import ABSTRACT_PREFIX, client_proof, connect, frame, read_async, read_blocking

MAX_BYTES = 1 << 20


def request(shards: int, job_id: str = "j1") -> pb.ComputeRequest:
    return pb.ComputeRequest(job=pb.JobSpec(job_id=job_id, op="sum", source="range:n=10"),
                             shards=[pb.Shard(index=i, start=i, stop=i + 1) for i in range(shards)])


@contextlib.asynccontextmanager
async def served_on(compute: LinkCompute) -> AsyncIterator[tuple[str, list[LinkServer]]]:
    """A worker's end of links (linkserve.py) on a fresh abstract socket, each handed over as
    the local socket does after its handshake (no handshake here: that is the local socket's,
    tested with the daemons below): its name, and the links served."""
    name = f"distnode-test-{secrets.token_hex(8)}"
    served: list[LinkServer] = []
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")  # as a node's

    def accept(listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:  # the listener closed: the test is over
                return
            link = LinkServer(sock, b"", compute, pool, MAX_BYTES)
            link.start()
            served.append(link)  # started first: a test may join it as soon as it is here

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(ABSTRACT_PREFIX + name)
    listener.listen()
    accepting = threading.Thread(target=accept, args=(listener,), daemon=True)
    accepting.start()
    try:
        yield name, served
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for link in served:
            link.close()
        ended = await asyncio.to_thread(lambda: all(link.join() for link in served))
        pool.shutdown(wait=True)
        assert ended, "a link's threads did not end"


@contextlib.asynccontextmanager
async def link_to(
    compute: LinkCompute, accept: Callable[[pb.Partial], object], leader_max_bytes: int = MAX_BYTES
) -> AsyncIterator[tuple[ComputeLink, list[LinkServer]]]:
    """A leader's link to a worker's end, and the worker's links."""
    async with served_on(compute) as (name, served):
        reader, writer = await connect(name)
        link = ComputeLink(reader, writer, accept, leader_max_bytes)
        try:
            yield link, served
        finally:
            link.close()


def each_shard(
    request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips,
    queued_ns: int = 0,
) -> Computed:
    for shard in request.shards:
        send(pb.Partial(job_id=request.job.job_id, shard=shard.index, node_id="w"))
    return Computed(len(request.shards))


async def waited(event: threading.Event, what: str) -> None:
    assert await asyncio.to_thread(event.wait, 5.0), f"no sign of {what} within 5 s"


class Blocking:
    """A worker's compute that runs until halted, and says when it started and was halted."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.halted = threading.Event()
        self.seconds_left: list[float] = []

    def __call__(
        self, request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips,
        queued_ns: int = 0,
    ) -> Computed:
        if request.job.job_id != "block":
            return each_shard(request, halted, send, skips, queued_ns)
        deadline = halted.deadline
        self.seconds_left.append(math.inf if deadline is None else deadline - time.monotonic())
        self.started.set()
        while not halted.is_set():  # a shard's pieces, each followed by a look at its halt
            time.sleep(0.005)
        self.halted.set()
        raise ShardHalted("halted between pieces")


async def test_a_calls_partials_arrive_before_its_end_which_counts_them() -> None:
    taken: list[tuple[str, int]] = []
    async with link_to(each_shard, lambda p: taken.append((p.job_id, p.shard))) as (link, _):
        first, second = await asyncio.gather(link.compute(request(3), 5.0), link.compute(request(2, "j2"), 5.0))
        assert (first.shards_sent, second.shards_sent) == (3, 2)
        assert sorted(taken) == [("j1", 0), ("j1", 1), ("j1", 2), ("j2", 0), ("j2", 1)]
        assert link.broken is None


async def test_a_skip_applies_to_the_calls_of_its_job_read_before_it_and_the_link_serves_on() -> None:
    """A leader's SkipShards (stealing.py) marks the shards in the Skips of the calls of its
    job read before it, which the worker checks as it comes to each shard, and is answered
    with the shards let go; a later call hands a skipped shard back; a skip for a job with
    no call on the link lets nothing go."""
    gate = threading.Event()

    def gated(
        request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips,
        queued_ns: int = 0,
    ) -> Computed:
        gate.wait(10)  # the skip is read while the call waits here
        compute = skips.guarded(lambda index: (index, 0, 0))
        sent, skipped = 0, []
        for shard in request.shards:
            if compute(skips.entry(shard.index), shard.index)[0] is None:
                skipped.append(shard.index)
                continue
            send(pb.Partial(job_id=request.job.job_id, shard=shard.index, node_id="w"))
            sent += 1
        return Computed(sent, tuple(skipped))

    taken: list[int] = []
    async with link_to(gated, lambda p: taken.append(p.shard)) as (link, _):
        first = asyncio.ensure_future(link.compute(request(4), 5.0))
        await asyncio.sleep(0)  # the call's frame is written
        assert await link.skip("j1", [1, 3]) == [1, 3] and await link.skip("j2", [0]) == []
        gate.set()
        done = await first
        assert (done.shards_sent, list(done.skipped), taken) == (2, [1, 3], [0, 2])  # the end names them
        assert (await link.compute(request(2), 5.0)).shards_sent == 2  # shard 1 handed back
        assert (await link.compute(request(1, "j2"), 5.0)).shards_sent == 1
        assert taken == [0, 2, 0, 1, 0] and link.broken is None
    assert await link.skip("j1", [1]) == []  # a link that is gone lets nothing go


async def test_a_call_cancelled_before_the_pool_came_to_it_never_runs_and_leaves_no_shards() -> None:
    """The leader cancels a call queued behind another in the worker's pool: it never runs,
    says nothing, and its shards are no longer handed there once the pool came to it (a skip
    lets none go)."""
    worker = Blocking()
    ran: list[str] = []

    def compute(
        request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips,
        queued_ns: int = 0,
    ) -> Computed:
        ran.append(request.job.job_id)
        return worker(request, halted, send, skips, queued_ns)

    async with served_on(compute) as (name, _):
        reader, writer = await connect(name)
        numbers = itertools.count(3)

        async def skip(job_id: str) -> list[int]:
            asked = pb.SkipShards(job_id=job_id, shards=[0])
            writer.write(frame(pb.ComputeCall(call=next(numbers), skip=asked)))
            event = await read_async(reader, pb.ComputeEvent, MAX_BYTES)
            assert event is not None and event.HasField("skipped"), event  # a cancelled call says nothing
            return list(event.skipped.skipped)

        try:
            writer.write(frame(pb.ComputeCall(call=1, request=request(1, "block"))))
            await waited(worker.started, "the first call in the pool")
            writer.write(frame(pb.ComputeCall(call=2, request=request(2, "queued")))
                         + frame(pb.ComputeCall(call=2, cancel=True)))
            writer.write(frame(pb.ComputeCall(call=1, cancel=True)))  # the pool comes to the second
            await waited(worker.halted, "the first call halted")
            deadline_s = time.monotonic() + 10.0
            while await skip("queued"):
                assert time.monotonic() < deadline_s, "the cancelled call's shards are still handed here"
                await asyncio.sleep(0.005)
            assert ran == ["block"]
        finally:
            writer.close()


async def test_a_worker_of_an_older_version_answers_a_skip_at_once_with_nothing_let_go() -> None:
    """An older worker takes a skip frame for a call (it knows no `skip` field) and fails
    it: the leader reads that as a no, at once, not after SKIP_TIMEOUT_S."""
    def older(
        request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips,
        queued_ns: int = 0,
    ) -> Computed:
        raise LinkCallFailed("PERMISSION_DENIED: leader_id: '' is not a member of this cluster")

    async with served_on(older) as (name, _):
        reader, writer = await connect(name)
        link = ComputeLink(reader, writer, lambda p: None, MAX_BYTES)
        with_skip = link._send

        def as_an_older_worker_reads_it(call: pb.ComputeCall) -> None:
            call.ClearField("skip")  # it knows no such field: a numbered frame without a request
            with_skip(call)

        link._send = as_an_older_worker_reads_it  # type: ignore[method-assign]
        try:
            assert await asyncio.wait_for(link.skip("j1", [3]), 1.0) == []
            assert link.broken is None
        finally:
            link.close()


async def test_a_failed_call_says_what_grpc_would_and_the_link_serves_on() -> None:
    def refuse(
        request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips,
        queued_ns: int = 0,
    ) -> Computed:
        if request.job.job_id == "bad":
            raise LinkCallFailed("INVALID_ARGUMENT: shards: shard 0 rows [5, 9) outside the source's 4 rows")
        if request.job.job_id == "bug":
            raise RuntimeError("a bug")
        return each_shard(request, halted, send, skips, queued_ns)

    async with link_to(refuse, lambda p: None) as (link, _):
        with pytest.raises(LinkCallFailed, match=r"^INVALID_ARGUMENT: shards: shard 0 rows \[5, 9\)"):
            await link.compute(request(1, "bad"), 5.0)
        with pytest.raises(LinkCallFailed, match=r"^INTERNAL: RuntimeError: a bug"):
            await link.compute(request(1, "bug"), 5.0)
        assert (await link.compute(request(2), 5.0)).shards_sent == 2


async def test_a_cancelled_call_is_halted_on_the_worker_and_the_link_serves_on() -> None:
    worker = Blocking()
    async with link_to(worker, lambda p: None) as (link, _):
        call = asyncio.create_task(link.compute(request(1, "block"), 30.0))
        await waited(worker.started, "the call")
        assert 29.0 < worker.seconds_left[0] <= 30.0  # the deadline travels with the call
        call.cancel()
        await waited(worker.halted, "the call halted")
        assert (await link.compute(request(1), 5.0)).shards_sent == 1


async def test_a_call_past_its_deadline_times_out_and_is_halted_on_the_worker() -> None:
    worker = Blocking()
    async with link_to(worker, lambda p: None) as (link, _):
        with pytest.raises(TimeoutError):
            await link.compute(request(1, "block"), 0.2)
        await waited(worker.halted, "the call halted")
        assert link.broken is None


async def test_the_worker_ends_a_call_past_its_deadline_itself() -> None:
    """As gRPC ends a handler at its deadline: without a word from a leader that stalled."""
    worker = Blocking()
    async with served_on(worker) as (name, _):
        reader, writer = await connect(name)  # a leader that writes one call and then says nothing
        writer.write(frame(pb.ComputeCall(call=77, request=request(1, "block"), timeout_s=0.2)))
        event = await asyncio.wait_for(read_async(reader, pb.ComputeEvent, MAX_BYTES), 10)
        writer.close()
    assert event is not None and event.call == 77
    assert event.error == "DEADLINE_EXCEEDED: the call ran past 0.2 s"
    assert worker.halted.is_set()


async def test_a_link_the_worker_closes_fails_the_calls_waiting_on_it() -> None:
    worker = Blocking()
    async with link_to(worker, lambda p: None) as (link, served):
        call = asyncio.create_task(link.compute(request(1, "block"), 30.0))
        await waited(worker.started, "the call")
        served[0].close()  # the worker's end goes away (its node stopping, say)
        with pytest.raises(LinkBroken, match="closed by the worker"):
            await asyncio.wait_for(call, 5)
        assert isinstance(link.broken, LinkBroken)
        await waited(worker.halted, "the call halted")
        with pytest.raises(LinkBroken):  # and no call goes on it any more
            await link.compute(request(1), 5.0)


async def test_a_link_the_leader_closes_halts_the_calls_running_on_the_worker() -> None:
    worker = Blocking()
    async with link_to(worker, lambda p: None) as (link, served):
        call = asyncio.create_task(link.compute(request(1, "block"), 30.0))
        await waited(worker.started, "the call")
        link.close()
        with pytest.raises(LinkBroken, match="closed by the leader"):
            await asyncio.wait_for(call, 5)
        await waited(worker.halted, "the call halted")
        assert await asyncio.to_thread(served[0].join), "the worker's end of the link did not end"


async def test_a_leader_that_reads_nothing_has_its_link_closed_and_frees_the_pool(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """A write cannot wait for ever in a one-thread pool: past STALLED_S with the socket's
    buffer full, the link ends, its call with it (no error: nobody is there to be told),
    and the pool takes the next link's calls."""
    monkeypatch.setattr(linkserve, "STALLED_S", 0.3)
    big = pb.Partial(job_id="j1", shard=0, node_id="w")
    big.state["sum"].data = b"\0" * 65536

    def flood(
        request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips,
        queued_ns: int = 0,
    ) -> Computed:
        if request.job.job_id == "flood":
            for _ in range(1000):  # 64 MiB: far past what the socket buffers
                send(big)
        return each_shard(request, halted, send, skips, queued_ns)

    async with served_on(flood) as (name, served):
        _, stalled = await connect(name)  # a leader whose loop never reads
        try:
            stalled.write(frame(pb.ComputeCall(call=1, request=request(1, "flood"), timeout_s=60)))
            await poll(lambda: bool(served), 5.0, "the first link")
            assert await asyncio.to_thread(served[0].join), "the stalled link did not end"
            async with link_to(each_shard, lambda p: None) as (link, _):
                assert (await link.compute(request(2), 5.0)).shards_sent == 2
        finally:
            stalled.close()
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_shard_let_go_then_handed_here_again_is_computed_by_the_later_call() -> None:
    """A call waiting in the pool behind another keeps the handings it was read with: a shard
    of it let go at a skip, then handed here again by a later call (its thief failed), is
    the later call's to compute (stealing.py's Skips), not the first one's."""
    gate = threading.Event()
    worker = Worker("w", None, None, None, lambda leader: None)  # type: ignore[arg-type]

    def compute(
        request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips, queued_ns: int,
    ) -> Computed:
        if request.job.job_id == "gate":  # holds the pool's one thread
            gate.wait(10)
            return Computed(0)
        shards = [(shard.index, shard.start, shard.stop) for shard in request.shards]
        return worker.compute_in_pool(request.job.job_id, Job(op="sum", source="range:n=8"), shards, halted,
                                      send, skips, queued_ns)

    def job(job_id: str, shards: list[int]) -> pb.ComputeRequest:
        return pb.ComputeRequest(job=pb.JobSpec(job_id=job_id, op="sum", source="range:n=8"),
                                 shards=[pb.Shard(index=i, start=i, stop=i + 1) for i in shards])

    def skip(number: int, job_id: str, shard: int) -> list[int]:
        leader.sendall(frame(pb.ComputeCall(call=number, skip=pb.SkipShards(job_id=job_id, shards=[shard]))))
        event = read_blocking(leader, pb.ComputeEvent, MAX_BYTES)
        assert event.call == number and event.HasField("skipped"), event
        return list(event.skipped.skipped)

    pool = ThreadPoolExecutor(1)
    leader, mine = socket.socketpair()
    link = LinkServer(mine, b"", compute, pool, MAX_BYTES)
    link.start()
    try:
        leader.sendall(frame(pb.ComputeCall(call=1, request=job("gate", [0]), timeout_s=30))
                       + frame(pb.ComputeCall(call=2, request=job("J", [6, 7]), timeout_s=30)))
        assert skip(3, "J", 7) == [7]  # let go: call 2 waits behind the gate
        leader.sendall(frame(pb.ComputeCall(call=4, request=job("J", [7]), timeout_s=30)))  # handed again
        assert skip(5, "other", 0) == []  # frames are read in order: call 4 is registered
        gate.set()
        sent: dict[int, list[int]] = {2: [], 4: []}
        ends: dict[int, pb.ComputeReply] = {}
        while len(ends) < 3:
            event = read_blocking(leader, pb.ComputeEvent, MAX_BYTES)
            if event.WhichOneof("event") == "partial":
                sent[event.call].append(event.partial.shard)
            else:
                ends[event.call] = event.done
        assert (sent[2], list(ends[2].skipped)) == ([6], [7]), "call 2 computed the shard it let go"
        assert (sent[4], list(ends[4].skipped)) == ([7], [])
    finally:
        leader.close()
        link.join()
        pool.shutdown()


def test_a_link_that_ends_frees_a_write_blocked_on_a_leader_that_reads_nothing() -> None:
    """The reader ends (here on a frame over the limit) while the pool's thread is blocked
    writing to a leader that is not reading: the write fails at once, not after STALLED_S,
    so the node's next pool entry runs."""
    sent = [0]

    def flood(
        request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips, queued_ns: int,
    ) -> Computed:
        while True:  # partials until the link ends under them
            send(pb.Partial(job_id="j", shard=sent[0], node_id="w" * 2000))
            sent[0] += 1

    def blocked() -> bool:
        """The socket's buffer is full: the count stands still (polled with a deadline)."""
        before = sent[0]
        time.sleep(0.05)
        return sent[0] == before > 0

    pool = ThreadPoolExecutor(1)
    leader, mine = socket.socketpair()
    link = LinkServer(mine, b"", flood, pool, MAX_BYTES)
    link.start()
    try:
        leader.sendall(frame(pb.ComputeCall(call=1, request=request(1), timeout_s=60)))
        deadline_s = time.monotonic() + 10
        while not blocked():
            assert time.monotonic() < deadline_s, "the write never blocked"
        ended_s = time.monotonic()
        leader.sendall(b"\xff\xff\xff\x7f")  # a frame over the limit: the reader ends
        probe = pool.submit(time.monotonic)  # the node's next pool entry (any job)
        assert probe.result(timeout=linkserve.STALLED_S) - ended_s < linkserve.STALLED_S / 3
        assert link.join()
    finally:
        leader.close()
        pool.shutdown()


async def test_a_frame_over_the_limit_breaks_the_link_before_it_is_read() -> None:
    def large(
        request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips,
        queued_ns: int = 0,
    ) -> Computed:
        partial = pb.Partial(job_id="j1", shard=0, node_id="w")
        partial.state["sum"].data = b"\0" * 4096
        send(partial)
        return Computed(1)

    taken: list[pb.Partial] = []
    async with link_to(large, taken.append, leader_max_bytes=1024) as (link, _):
        with pytest.raises(LinkBroken, match=r"a partial over --max-message-bytes \(1024\): .* a frame of 4122 bytes"):
            await link.compute(request(1), 5.0)
        assert taken == []


async def test_a_partial_at_the_limit_passes_though_its_frame_is_larger() -> None:
    """As on gRPC, where the limit is the Partial message's."""
    partial = pb.Partial(job_id="j1", shard=0, node_id="w")
    size = 1024
    while partial.ByteSize() != 1024:  # each byte of data may add one to a length before it
        size -= 1
        partial.state["sum"].data = b"\0" * size
    assert pb.ComputeEvent(call=1, partial=partial).ByteSize() > 1024

    def at_limit(
        request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips,
        queued_ns: int = 0,
    ) -> Computed:
        send(partial)
        return Computed(1)

    taken: list[pb.Partial] = []
    async with link_to(at_limit, taken.append, leader_max_bytes=1024) as (link, _):
        assert (await link.compute(request(1), 5.0)).shards_sent == 1
    assert taken == [partial]


async def test_a_partial_the_leader_cannot_take_breaks_the_link() -> None:
    def refuse(partial: pb.Partial) -> None:
        raise InvalidField("state", "a tensor of 3 bytes for 8 elements")

    async with link_to(each_shard, refuse) as (link, _):
        with pytest.raises(LinkBroken, match="a partial that cannot be taken: state: a tensor of 3 bytes"):
            await link.compute(request(1), 5.0)


def test_connect_reaches_an_abstract_socket_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")  # a dependency of the daemon wherever it installs

    async def main() -> bytes:
        name = f"distnode-test-{secrets.token_hex(8)}"

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_unix_server(handle, path=ABSTRACT_PREFIX + name)
        try:
            reader, writer = await connect(name)
            writer.write(b"hello")
            echoed = await reader.readexactly(5)
            writer.close()
            return echoed
        finally:
            server.close()

    assert uvloop.run(main()) == b"hello"


# --- daemons -------------------------------------------------------------------

SHARD_ELEMS = 1 << 18
ROWS = 1 << 22
#: Elections slower than FAST's: these tests watch one leader's counters, and a stall of
#: the shared event loop in a loaded run (100-200 ms) must not move it.
STEADY = {"election_ms_min": 600, "election_ms_max": 1200}


@pytest.fixture
def data(tmp_path: Path) -> float:
    """`x.npy` in the data root: 16 shards; the answer of a sum over it, on one node."""
    np.save(tmp_path / "x.npy", np.random.default_rng(7).random(ROWS))
    job = Job(op="sum", source="npy:x.npy")
    return float(reduce_all(job, validate_job(job, tmp_path), SHARD_ELEMS).item())


def workers_of(cluster: InProcessCluster) -> tuple[Daemon, list[Daemon]]:
    leader = cluster.leader()
    assert leader is not None
    return leader, [d for d in cluster.daemons if d is not leader]


def calls(leader: Daemon, worker: Daemon, transport: str) -> int:
    return leader.dispatch.calls.get((worker.config.address, transport), 0)


async def sums_until(client: AsyncClient, answer: float, done: Callable[[], bool], what: str) -> int:
    """Sum `x.npy` until `done()`, each answer checked; how many sums it took."""
    for count in range(1, 200):
        result = await client.submit(op="sum", source="npy:x.npy")
        assert float(result.result) == answer
        if done():
            return count
    raise AssertionError(f"200 sums and still not {what}")


async def test_after_its_first_grpc_reply_a_workers_calls_go_on_a_link(
    start_cluster: StartCluster, data: float
) -> None:
    cluster = await start_cluster(3, shard_elems=SHARD_ELEMS, **STEADY)
    leader, workers = workers_of(cluster)
    async with AsyncClient(leader.config.address, timeout=30) as client:
        await sums_until(client, data, lambda: all(calls(leader, w, "link") >= 3 for w in workers),
                         "three calls on each worker's link")
    for worker in workers:
        assert leader.dispatch.links.linked(worker.config.address)
        assert calls(leader, worker, "grpc") >= 1  # until the first reply named the socket
        sample = leader.metrics.registry.get_sample_value(
            "distnode_compute_calls_total", {"peer": worker.config.address, "transport": "link"})
        assert sample == calls(leader, worker, "link")


async def test_a_worker_without_a_local_socket_keeps_grpc(start_cluster: StartCluster, data: float) -> None:
    cluster = await start_cluster(3, shard_elems=SHARD_ELEMS, **STEADY, node_overrides={
        f"n{i}": {"local_socket": False} for i in (1, 2, 3)})
    leader, workers = workers_of(cluster)
    async with AsyncClient(leader.config.address, timeout=30) as client:
        await sums_until(client, data, lambda: all(calls(leader, w, "grpc") >= 3 for w in workers),
                         "three gRPC calls to each worker")
    assert all(calls(leader, w, "link") == 0 for w in workers)


async def test_a_socket_out_of_reach_or_held_by_another_node_leaves_grpc_in_place(
    start_cluster: StartCluster, data: float
) -> None:
    cluster = await start_cluster(3, shard_elems=SHARD_ELEMS, **STEADY)
    leader, (first, second) = workers_of(cluster)
    links = leader.dispatch.links
    # Before any call: the first worker named a socket nobody listens on (another network
    # namespace, say); the second, the first worker's socket, which proves a different node.
    nowhere = pb.LocalEndpoint(name=f"distnode-nobody-{secrets.token_hex(8)}", key=b"k" * 32)
    assert second._local is not None and first._local is not None
    links.learn(first.config.address, first.node_id, nowhere)
    links.learn(second.config.address, second.node_id, first._local.endpoint)
    async with AsyncClient(leader.config.address, timeout=30) as client:
        # The first call to each tried the bad socket, found it so, and went on gRPC...
        await sums_until(client, data, lambda: all(calls(leader, w, "grpc") >= 1 for w in (first, second)),
                         "a gRPC call to each worker")
        assert links._unreachable == {first.config.address: nowhere.name,
                                      second.config.address: first._local.endpoint.name}
        # ... whose reply named the real one.
        await sums_until(client, data, lambda: all(links.linked(w.config.address) for w in (first, second)),
                         "a link to each worker")
    for worker in (first, second):
        links._links.pop(worker.config.address).close()
    # Neither bad socket is learned again, whatever names it; the real ones are.
    links.learn(first.config.address, first.node_id, nowhere)
    links.learn(second.config.address, second.node_id, first._local.endpoint)
    assert links._known == {}
    links.learn(second.config.address, second.node_id, second._local.endpoint)
    assert list(links._known) == [second.config.address]


async def test_a_link_closed_between_jobs_is_replaced_through_the_next_grpc_reply(
    start_cluster: StartCluster, data: float
) -> None:
    cluster = await start_cluster(3, shard_elems=SHARD_ELEMS, **STEADY)
    leader, workers = workers_of(cluster)
    links = leader.dispatch.links
    async with AsyncClient(leader.config.address, timeout=30) as client:
        await sums_until(client, data, lambda: all(links.linked(w.config.address) for w in workers),
                         "a link to each worker")
        worker = workers[0]
        grpc_before = calls(leader, worker, "grpc")
        assert worker._local is not None
        for served in list(worker._local.links):  # the worker ends its side of the link
            served.close()
        await poll(lambda: not links.linked(worker.config.address), 5.0, "the leader to see the link end")
        await sums_until(client, data, lambda: links.linked(worker.config.address), "a new link")
        assert calls(leader, worker, "grpc") > grpc_before


async def test_a_leader_without_a_local_socket_keeps_its_calls_on_grpc(
    start_cluster: StartCluster, data: float, tmp_path: Path
) -> None:
    config = NodeConfig(node_id="n9", listen="127.0.0.1:1", peers=(), data_dir=tmp_path / "n9",
                        local_socket=False)
    unused: Any = None
    assert Dispatch(config, unused, unused, lambda: 0, lambda p: None).use_links is False  # --no-local-socket
    cluster = await start_cluster(3, shard_elems=SHARD_ELEMS, **STEADY)
    leader, workers = workers_of(cluster)
    leader.dispatch.use_links = False  # its workers still name their sockets
    async with AsyncClient(leader.config.address, timeout=30) as client:
        await sums_until(client, data, lambda: all(calls(leader, w, "grpc") >= 3 for w in workers),
                         "three gRPC calls to each worker")
    assert all(calls(leader, w, "link") == 0 for w in workers)


async def test_two_lanes_that_open_a_link_at_once_share_one(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(2, **STEADY)
    leader, (worker,) = workers_of(cluster)
    assert worker._local is not None
    links = leader.dispatch.links
    links.learn(worker.config.address, worker.node_id, worker._local.endpoint)
    first, second = await asyncio.gather(links.link(worker.config.address), links.link(worker.config.address))
    assert first is not None and first is second and links.linked(worker.config.address)
    await poll(lambda: len(worker._local.links) == 1, 5.0, "the worker to serve the link")  # type: ignore[union-attr]


def shake_hands_for_compute(endpoint: pb.LocalEndpoint) -> socket.socket:
    """A raw connection through the handshake, as a leader opening a compute link."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(ABSTRACT_PREFIX + endpoint.name)
    nonce = secrets.token_bytes(16)
    sock.sendall(frame(pb.LocalHello(nonce=nonce, purpose=pb.LOCAL_COMPUTE)))
    welcome = read_blocking(sock, pb.LocalWelcome, MAX_BYTES)
    sock.sendall(frame(pb.LocalProof(proof=client_proof(endpoint.key, nonce, welcome.nonce))))
    return sock


async def test_a_worker_serves_compute_calls_only_to_a_process_of_its_own_user(
    start_cluster: StartCluster, data: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = await start_cluster(2, shard_elems=SHARD_ELEMS, **STEADY)
    _, (worker,) = workers_of(cluster)
    assert worker._local is not None
    endpoint = worker._local.endpoint
    call = pb.ComputeCall(call=1, timeout_s=30, request=pb.ComputeRequest(
        job=pb.JobSpec(job_id="raw", op="sum", source="npy:x.npy"), leader_id=cluster.leader().node_id,
        shards=[pb.Shard(index=0, start=0, stop=SHARD_ELEMS)]))

    def first_event() -> pb.ComputeEvent | None:
        with shake_hands_for_compute(endpoint) as sock:
            try:
                sock.sendall(frame(call))
                return read_blocking(sock, pb.ComputeEvent, MAX_BYTES)
            except ConnectionError:  # closed without a word (BrokenPipeError if before the call)
                return None

    event = await asyncio.to_thread(first_event)
    assert event is not None and event.WhichOneof("event") == "partial" and event.partial.shard == 0
    # The same connection from a process of another user, as the worker sees it:
    monkeypatch.setattr(localsocket, "same_user", lambda sock: False)
    assert await asyncio.to_thread(first_event) is None


async def test_a_leader_links_only_to_a_worker_of_its_own_user(
    start_cluster: StartCluster, data: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(computelink, "same_user", lambda sock: False)
    cluster = await start_cluster(3, shard_elems=SHARD_ELEMS, **STEADY)
    leader, workers = workers_of(cluster)
    async with AsyncClient(leader.config.address, timeout=30) as client:
        await sums_until(client, data, lambda: all(w.config.address in leader.dispatch.links._unreachable
                                                   for w in workers), "each worker's socket found out of reach")
        await sums_until(client, data, lambda: all(calls(leader, w, "grpc") >= 3 for w in workers),
                         "three gRPC calls to each worker")
    assert all(calls(leader, w, "link") == 0 for w in workers)


def link_calls(cluster: LocalCluster, leader: str, worker: str) -> float:
    """The Compute calls `leader` made on `worker`'s link, from its /metrics."""
    want = {"peer": cluster.address(worker), "transport": "link"}
    return sum(sample.value for sample in scraped(cluster.http_addresses[leader])
               if sample.name == "distnode_compute_calls_total" and sample.labels == want)


@pytest.mark.process
def test_a_linked_worker_killed_mid_job_has_its_shards_moved(tmp_path: Path) -> None:
    source = "random:n=6e7,seed=5"
    job = Job(op="sum", source=source)
    expected = float(reduce_all(job, validate_job(job), SHARD_ELEMS).item())
    with LocalCluster(nodes=3, shard_elems=SHARD_ELEMS, http=True, **FAST_TIMING) as cluster:  # type: ignore[arg-type]
        leader = cluster.wait_all_alive(timeout_s=10)
        worker = next(node for node in cluster.ids if node != leader)
        with Client([cluster.address(leader)]) as client:
            # The link is learned from a gRPC call's reply, which a job may end (and cancel) before it
            # comes: sum until the leader has made a call on the worker's link.
            deadline_s = time.monotonic() + 30
            while link_calls(cluster, leader, worker) < 1:
                assert time.monotonic() < deadline_s, "no call went on the worker's link"
                assert client.submit(op="sum", source=source).result == expected
            logged_before = len(cluster.log(leader))
            run = cluster.run_with_fault(lambda: cluster.kill(worker), client=client,
                                         op="sum", source=source, job_id="linked-kill")
        assert run.landed_mid_job, f"the kill did not land mid-job: {run.progress_at_fault}"
        assert run.answer.result == expected
        # Its calls were on the link, which the kill closed at once (no wait for missed beats).
        log = cluster.log(leader)[logged_before:]
        moved = re.search(rf"job linked-kill: worker {worker} failed \(compute link: [^)]*\); "
                          r"reassigning (\d+) shards", log)
        assert moved and int(moved.group(1)) >= 1, log
