"""The AsyncClient on a node's local socket (client/async_local_stream.py).

Against in-process daemons: once a node has named its socket, the client
connects in the background and that node's jobs go there, the jobs sent in
one turn of the loop as one frame; a job left on the gRPC stream it replaced
is still answered there; a socket it cannot reach, or whose node cannot
prove the key, leaves it on gRPC; a connection the node closes under a
waiting job fails the job's attempt, and the client gets the answer
another way (a socket that never answered: unary Submit to that node, as
for a gRPC stream). The leader killed
under a job on its local socket is test_submit_stream.py's.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest
from inproc import StartCluster, poll
from test_local_socket import Impostor, endpoint_of

from node import AsyncClient
from node._proto import distnode_pb2 as pb
from node.client.async_local_stream import AsyncLocalStream, open_local
from node.client.streams import SubmitStream
from node.core.limits import Limits
from node.errors import AttemptFailed


async def moved_to_socket(client: AsyncClient, address: str) -> AsyncLocalStream:
    """The client's stream to the node at `address` once it is on the node's local socket (a
    job on gRPC first: the stream's first message names the socket)."""
    await client.submit(op="sum", source="values:1")
    await poll(lambda: isinstance(client._streams._open.get(address), AsyncLocalStream), 5, "the socket")
    stream = client._streams._open[address]
    assert isinstance(stream, AsyncLocalStream)
    return stream


async def test_a_nodes_jobs_move_to_its_local_socket_and_go_together_in_frames(
    start_cluster: StartCluster,
) -> None:
    cluster = await start_cluster(3)
    leader = cluster.leader()
    assert leader is not None
    address = leader.config.address
    async with AsyncClient(address, timeout=30) as client:
        assert (await client.submit(op="sum", source="values:1,2")).result == 3  # on gRPC: names the socket
        await poll(lambda: isinstance(client._streams._open.get(address), AsyncLocalStream), 5, "the socket")
        stream = client._streams._open[address]
        assert isinstance(stream, AsyncLocalStream) and stream.node_id == leader.node_id
        frames: list[bytes] = []
        write = stream._writer.write

        def counted(data: bytes | bytearray | memoryview) -> None:
            frames.append(bytes(data))
            write(data)

        stream._writer.write = counted  # type: ignore[method-assign]
        answers = await asyncio.gather(*(client.submit(op="sum", source=f"range:n={n}") for n in range(1, 41)))
        assert [a.result for a in answers] == [n * (n - 1) // 2 for n in range(1, 41)]
        assert stream.replied == 40 and len(frames) == 1  # sent in one turn: one frame
        # The gRPC stream had no job left: it is half-closed, and leaves once the node has ended
        # it (a round trip of its own, which a loaded host may answer after the 40 jobs).
        await poll(lambda: not client._streams._retired, 10, "the replaced gRPC stream to end")
    assert stream.ended is not None


async def test_a_job_on_the_grpc_stream_a_socket_replaced_is_still_answered(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    address = cluster.daemons[0].config.address
    async with AsyncClient(address, timeout=30) as client:
        slow = asyncio.ensure_future(client.submit(op="sum", source="random:n=60000000,seed=3"))
        await poll(lambda: isinstance(client._streams._open.get(address), AsyncLocalStream), 10, "the socket")
        [retired] = client._streams._retired
        assert isinstance(retired, SubmitStream) and not slow.done()
        answer = await slow
        assert answer.retries == 0  # answered where it was sent
        # Half-closed when it was replaced: it ends after its last answer, and is let go.
        await poll(lambda: not client._streams._retired and retired.ended is not None, 5, "the stream let go")
        assert (await client.submit(op="sum", source="values:4")).result == 4


@pytest.mark.parametrize("where", ["nobody listens", "impostor"])
async def test_a_socket_the_async_client_cannot_use_leaves_it_on_grpc(
    start_cluster: StartCluster, where: str
) -> None:
    cluster = await start_cluster(1)
    told = endpoint_of(cluster.daemons[0])
    impostor = Impostor()
    server = await impostor.start()
    told.name = impostor.name if where == "impostor" else f"distnode-test-{secrets.token_hex(8)}"
    address = cluster.daemons[0].config.address
    try:
        async with AsyncClient(address, timeout=30) as client:
            assert (await client.submit(op="sum", source="values:5")).result == 5
            await poll(lambda: told.name in client._streams._unusable, 5, "the socket found unusable")
            answers = [await client.submit(op="sum", source=f"range:n={n}") for n in range(1, 6)]
            assert [a.result for a in answers] == [n * (n - 1) // 2 for n in range(1, 6)]
            assert isinstance(client._streams._open[address], SubmitStream)
    finally:
        server.close()
        await server.wait_closed()
    if where == "impostor":
        assert len(impostor.hellos) == 1 and impostor.frames_after == 0


async def test_a_socket_closed_under_a_job_fails_it_for_the_retry_loop(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    daemon = cluster.daemons[0]
    address = daemon.config.address
    async with AsyncClient(address, timeout=30) as client:
        stream = await moved_to_socket(client, address)
        job = asyncio.ensure_future(client.submit(op="sum", source="random:n=60000000,seed=4", job_id="cut"))
        await poll(lambda: "cut" in stream._waiting, 5, "the job on the socket")
        assert daemon._local is not None
        await daemon._local.close()  # every connection ends; the node itself serves on
        answer = await job
        assert answer.result == pytest.approx(30_000_000, rel=1e-3)
        assert stream.ended is not None and "local socket: closed by the node" in str(stream.ended)
        assert (await client.submit(op="sum", source="values:7")).result == 7  # on gRPC again
        assert client._streams._open[address] is not stream


async def test_an_async_client_told_not_to_keeps_grpc(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    address = cluster.daemons[0].config.address
    async with AsyncClient(address, timeout=30, local_socket=False) as client:
        answers = [await client.submit(op="sum", source=f"range:n={n}") for n in range(1, 6)]
        await asyncio.sleep(0)  # a connection, had one been started, would have its turn
        assert [a.result for a in answers] == [n * (n - 1) // 2 for n in range(1, 6)]
        assert isinstance(client._streams._open[address], SubmitStream) and not client._streams._connecting


async def test_a_refused_frame_fails_the_jobs_waiting_on_it_with_the_nodes_status(
    start_cluster: StartCluster,
) -> None:
    cluster = await start_cluster(1, limits=Limits(max_message_bytes=64 * 1024))
    stream = await open_local(endpoint_of(cluster.daemons[0]), 1 << 20)
    try:
        big = pb.SubmitRequest(job=pb.JobSpec(job_id="big", op="sum", source="values:" + ",".join(["1"] * 40_000)))
        waiting = await stream.send(big)
        with pytest.raises(AttemptFailed, match=r"RESOURCE_EXHAUSTED.*over the limit of 65536"):
            await waiting
        assert stream.ended is not None
    finally:
        await stream.close()
