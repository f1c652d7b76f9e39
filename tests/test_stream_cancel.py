"""A job on a SubmitBatches stream whose caller stops waiting ends on the node.

An AsyncClient's caller that is cancelled (or whose timeout or watchdog ends
its wait) used to leave its job running on the node until the job's own
deadline, holding one of the client's `--max-jobs-per-client` slots: the
stream carried jobs, not their cancellation. Now the client names the
request (its `seq`) in the stream's next batch (`SubmitBatch.cancel`), and
the node ends that job as gRPC ends a cancelled call (jobstream.py). On a
local socket a batch without jobs used to mean "no more jobs", so the client
sends cancels there only to a node whose welcome says it reads them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from inproc import StartCluster, poll
from test_local_socket_async import moved_to_socket

from node import AsyncClient
from node._proto import distnode_pb2 as pb
from node.client.async_local_stream import AsyncLocalStream
from node.client.streams import SubmitStream
from node.core.limits import Limits
from node.server.jobstream import JobStream
from node.wire.localframes import HEADER

#: A sum that runs for minutes: only a cancel ends it within a test.
ENDLESS = "range:n=100000000000"


def recorded(stream: AsyncLocalStream) -> list[pb.SubmitBatch]:
    """The batches `stream` writes from now on, as the node reads them."""
    written: list[pb.SubmitBatch] = []
    write = stream._writer.write

    def decoded(data: bytes | bytearray | memoryview) -> None:
        written.append(pb.SubmitBatch.FromString(bytes(data)[HEADER.size:]))
        write(data)

    stream._writer.write = decoded  # type: ignore[method-assign]
    return written


def numbered(seq: int, job_id: str) -> pb.SubmitRequest:
    return pb.SubmitRequest(job=pb.JobSpec(job_id=job_id, op="sum", source="values:1"), seq=seq)


async def test_a_cancel_ends_the_named_job_unanswered_and_the_stream_goes_on() -> None:
    started: set[int] = set()
    cancelled: set[int] = set()

    async def run(request: pb.SubmitRequest) -> pb.SubmitStreamReply:
        started.add(request.seq)
        if request.job.job_id == "slow":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.add(request.seq)
                raise
        return pb.SubmitStreamReply(job_id=request.job.job_id)

    def failed(job_id: str, exc: Exception) -> pb.SubmitStreamReply:
        return pb.SubmitStreamReply(job_id=job_id, message=str(exc))

    batches: asyncio.Queue[pb.SubmitBatch | None] = asyncio.Queue()

    async def read() -> AsyncIterator[pb.SubmitBatch]:
        while (batch := await batches.get()) is not None:
            yield batch

    answered: list[tuple[str, int]] = []

    async def collect() -> None:
        async for batch in JobStream(run, failed).replies(read()):
            answered.extend((reply.job_id, reply.seq) for reply in batch.replies)

    collecting = asyncio.create_task(collect())
    batches.put_nowait(pb.SubmitBatch(jobs=[numbered(1, "slow"), numbered(2, "slow")]))
    await poll(lambda: started == {1, 2}, 5, "both jobs started")
    batches.put_nowait(pb.SubmitBatch(cancel=[1, 99]))  # 99: never sent, nothing to end
    await poll(lambda: cancelled == {1}, 5, "the named job's end")
    batches.put_nowait(pb.SubmitBatch(jobs=[numbered(3, "fast")]))
    await poll(lambda: bool(answered), 5, "the next job's answer")
    assert answered == [("fast", 3)]
    assert cancelled == {1}, "the other job of the same id was ended too"
    batches.put_nowait(pb.SubmitBatch(cancel=[2]))
    batches.put_nowait(None)  # the client half-closes: the stream ends once its jobs have
    await asyncio.wait_for(collecting, 5)
    assert answered == [("fast", 3)] and cancelled == {1, 2}


@pytest.mark.parametrize("local_socket", [False, True], ids=["grpc-stream", "local-socket"])
async def test_a_cancelled_callers_job_ends_on_the_node_and_frees_its_slot(
    start_cluster: StartCluster, local_socket: bool,
) -> None:
    # One job per client, and one on the leader: the cancelled job's slot in each is the next one's.
    cluster = await start_cluster(1, limits=Limits(max_jobs_per_client=1, max_jobs=1))
    leader = cluster.daemons[0]
    address = leader.config.address
    async with AsyncClient(address, timeout=120, local_socket=local_socket) as client:
        assert (await client.submit(op="sum", source="values:1")).result == 1  # the stream opens
        kind = AsyncLocalStream if local_socket else SubmitStream
        await poll(lambda: isinstance(client._streams._open.get(address), kind), 5, "the stream")
        stream = client._streams._open[address]
        job = asyncio.create_task(client.submit(op="sum", source=ENDLESS))
        await poll(lambda: leader.jobs_running() == 1, 10, "the long job running")
        job.cancel()
        # At once, on the same stream: the cancel goes in the new job's batch, and the node
        # ends the cancelled job first, so its slots are the new job's.
        assert (await client.submit(op="sum", source="range:n=10")).result == 45
        with pytest.raises(asyncio.CancelledError):
            await job
        await poll(lambda: leader.jobs_running() == 0, 10, "the cancelled job's end on the node")
        assert client._streams._open[address] is stream  # a batch of cancels is not the stream's end


async def test_a_job_left_on_a_stream_the_local_socket_replaced_is_cancelled_there(
    start_cluster: StartCluster,
) -> None:
    """A new client's first job goes on gRPC, whose first message names the node's socket;
    the client moves there, and the gRPC stream, retired, ends once its last job does. Its
    job's caller that stops waiting cancels it there too (a half-closed stream could not)."""
    cluster = await start_cluster(1)
    leader = cluster.daemons[0]
    address = leader.config.address
    async with AsyncClient(address, timeout=120) as client:
        job = asyncio.create_task(client.submit(op="sum", source=ENDLESS))
        await poll(lambda: leader.jobs_running() == 1, 10, "the long job running")
        await poll(lambda: isinstance(client._streams._open.get(address), AsyncLocalStream), 5, "the socket")
        assert client._streams._retired, "the job's gRPC stream was not kept for it"
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        await poll(lambda: leader.jobs_running() == 0, 10, "the cancelled job's end on the node")
        await poll(lambda: not client._streams._retired, 5, "the retired stream's end")


async def test_no_cancel_goes_to_a_local_socket_whose_node_does_not_read_them(start_cluster: StartCluster) -> None:
    """A node of an earlier version says nothing of cancels in its welcome, and would read a
    batch of cancels alone as the client's end: the client sends none there."""
    cluster = await start_cluster(1)
    address = cluster.daemons[0].config.address
    async with AsyncClient(address, timeout=120) as client:
        stream = await moved_to_socket(client, address)
        assert stream._takes_cancels  # this version's node
        stream._takes_cancels = False  # as an earlier version's welcome
        written = recorded(stream)
        job = asyncio.create_task(client.submit(op="sum", source=ENDLESS, job_id="left"))
        await poll(lambda: bool(written), 5, "the job written")
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        assert (await client.submit(op="sum", source="range:n=10")).result == 45
        assert [list(batch.cancel) for batch in written] == [[], []] and len(written[1].jobs) == 1


async def test_nothing_follows_a_local_sockets_last_frame(start_cluster: StartCluster) -> None:
    """Once a closing client has written "no more jobs" (an empty batch), a caller that then
    stops waiting sends nothing: the node would not read it, and its close would reset the
    connection. The close itself ends what is left on the node (the socket's end)."""
    cluster = await start_cluster(1)
    leader = cluster.daemons[0]
    address = leader.config.address
    async with AsyncClient(address, timeout=120) as client:
        stream = await moved_to_socket(client, address)
        written = recorded(stream)
        job = asyncio.create_task(client.submit(op="sum", source=ENDLESS))
        await poll(lambda: leader.jobs_running() == 1, 10, "the long job running")
        closing = asyncio.create_task(stream.close())
        await poll(lambda: len(written) == 2, 5, "the end frame")
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        await closing
        assert written[-1] == pb.SubmitBatch(), written  # the end frame was the last
        await poll(lambda: leader.jobs_running() == 0, 10, "the job's end with the socket's")
