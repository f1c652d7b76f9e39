"""A node's local socket (node/server/localsocket.py) and the blocking Client on it.

Against in-process daemons, with the blocking Client in worker threads: a
thread's jobs move to the node's local socket after the first, and answer
as on gRPC; a stream's first reply alone names the socket; a connection
without the key gets nothing; a frame over the limit, or not a batch, is
refused with a status and costs the node nothing; the per-client limit
counts a process's local jobs; a socket the Client cannot reach, or whose
node cannot prove the key, leaves it on gRPC; the Client's timeout ends a
job whose node never answers on the socket. The leader killed under a job
on its local socket is test_submit_stream.py's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from inproc import StartCluster

from node import Client
from node._proto import distnode_pb2 as pb
from node.client.blocking_stream import ThreadStream
from node.client.local_stream import LocalStream
from node.client.streams import stream_answer
from node.core.limits import Limits
from node.errors import ClusterUnavailable, JobError, LimitExceeded
from node.server.daemon import Daemon
from node.wire.answers import SERVICE
from node.wire.localframes import ABSTRACT_PREFIX, HEADER, frame, proof, proves, read_async, read_blocking
from node.wire.stubs import BlockingNodeStub
from node.wire.tensors import tensor_from_proto

MAX_READ = 1 << 20


def job(job_id: str, source: str, op: str = "sum") -> pb.SubmitRequest:
    return pb.SubmitRequest(job=pb.JobSpec(job_id=job_id, op=op, source=source))


def value(reply: pb.SubmitStreamReply) -> object:
    return tensor_from_proto(reply.reply.result, reply.reply.result.data).tolist()


def endpoint_of(daemon: Daemon) -> pb.LocalEndpoint:
    assert daemon._local is not None
    return daemon._local.endpoint


def shake_hands(endpoint: pb.LocalEndpoint, key: bytes | None = None) -> socket.socket:
    """A raw connection that has said hello (with `key`, the right one by default)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(ABSTRACT_PREFIX + endpoint.name)
    sock.sendall(frame(pb.LocalHello(key=endpoint.key if key is None else key, nonce=b"n" * 16)))
    return sock


def closed_unanswered(sock: socket.socket) -> bool:
    """The node closed the connection without writing anything."""
    return sock.recv(1) == b""


async def test_after_its_first_job_each_thread_sends_its_jobs_on_the_nodes_local_socket(
    start_cluster: StartCluster,
) -> None:
    cluster = await start_cluster(3)
    leader = cluster.leader()
    assert leader is not None
    client = Client(leader.config.address, timeout=30)
    threads_seen: set[int] = set()

    def lane(first: int) -> list[object]:
        threads_seen.add(threading.get_ident())
        return [client.submit(op="sum", source=f"range:n={n}").result for n in range(first + 1, first + 11)]

    try:
        lanes = await asyncio.gather(*(asyncio.to_thread(lane, 10 * k) for k in range(4)))
        assert lanes == [[n * (n - 1) // 2 for n in range(10 * k + 1, 10 * k + 11)] for k in range(4)]
        streams = dict(client._streams._open)
        assert {thread for thread, _ in streams} == threads_seen
        assert {address for _, address in streams} == {leader.config.address}
        # The first job of each thread went on gRPC, and told it the socket; the other nine went there.
        assert all(isinstance(stream, LocalStream) for stream in streams.values())
        assert [stream.replied for stream in streams.values()] == [9] * 4
        assert {stream.node_id for stream in streams.values()} == {leader.node_id}  # type: ignore[union-attr]
    finally:
        await asyncio.to_thread(client.close)
    assert all(stream.ended is not None for stream in streams.values())


async def test_a_stream_names_the_socket_first_and_alone_and_a_node_without_one_names_none(
    start_cluster: StartCluster,
) -> None:
    with_socket = await start_cluster(1)
    without = await start_cluster(1, local_socket=False)
    assert without.daemons[0]._local is None

    def messages(address: str) -> list[pb.SubmitBatchReply]:
        channel = grpc.insecure_channel(address)
        try:
            batches = iter([pb.SubmitBatch(jobs=[job("a", "values:1")]), pb.SubmitBatch(jobs=[job("b", "values:2")])])
            replies = list(BlockingNodeStub(channel, None).SubmitBatches(batches))
        finally:
            channel.close()
        assert sorted(r.job_id for batch in replies for r in batch.replies) == ["a", "b"]
        return replies

    named = await asyncio.to_thread(messages, with_socket.daemons[0].config.address)
    assert named[0].local == endpoint_of(with_socket.daemons[0]) and not named[0].replies
    assert not any(batch.HasField("local") for batch in named[1:])
    unnamed = await asyncio.to_thread(messages, without.daemons[0].config.address)
    assert not any(batch.HasField("local") for batch in unnamed)


async def test_a_connection_without_the_key_is_closed_unanswered_and_the_node_serves_on(
    start_cluster: StartCluster,
) -> None:
    cluster = await start_cluster(1)
    endpoint = endpoint_of(cluster.daemons[0])

    def run() -> tuple[bool, bool, object]:
        wrong = shake_hands(endpoint, key=secrets.token_bytes(32))
        # A job where the hello should be: read as a hello, it holds no key.
        jumped = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        jumped.settimeout(10)
        jumped.connect(ABSTRACT_PREFIX + endpoint.name)
        jumped.sendall(frame(pb.SubmitBatch(jobs=[job("j", "values:1")])))
        refused = closed_unanswered(wrong), closed_unanswered(jumped)
        with shake_hands(endpoint) as good:
            welcome = read_blocking(good, pb.LocalWelcome, MAX_READ)
            assert welcome.proof == proof(endpoint.key, b"n" * 16)
            good.sendall(frame(pb.SubmitBatch(jobs=[job("k", "values:4,5")])))
            [reply] = read_blocking(good, pb.SubmitBatchReply, MAX_READ).replies
        wrong.close()
        jumped.close()
        return *refused, value(reply)

    assert await asyncio.to_thread(run) == (True, True, 9)


@pytest.mark.parametrize("what, code, message", [
    (HEADER.pack(1 << 31), grpc.StatusCode.RESOURCE_EXHAUSTED, "over the limit of"),
    (HEADER.pack(2) + b"\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "not a SubmitBatch"),
])
async def test_a_frame_the_node_cannot_take_is_refused_with_a_status_and_costs_nothing(
    start_cluster: StartCluster, what: bytes, code: grpc.StatusCode, message: str
) -> None:
    cluster = await start_cluster(1)
    endpoint = endpoint_of(cluster.daemons[0])

    def run() -> tuple[list[pb.SubmitStreamReply], bool, object]:
        with shake_hands(endpoint) as sock:
            read_blocking(sock, pb.LocalWelcome, MAX_READ)
            sock.sendall(what)
            replies = list(read_blocking(sock, pb.SubmitBatchReply, MAX_READ).replies)
            closed = sock.recv(1) == b""
        with Client(cluster.daemons[0].config.address, timeout=30) as client:
            after = [client.submit(op="sum", source="range:n=100").result for _ in range(3)]
        return replies, closed, after

    replies, closed, after = await asyncio.to_thread(run)
    [refusal] = replies
    assert refusal.job_id == "" and refusal.code == code.value[0] and message in refusal.message
    assert refusal.node_id == cluster.daemons[0].node_id
    assert closed and after == [4950] * 3


async def test_the_client_gets_a_refused_frames_status_as_its_jobs_error(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1, limits=Limits(max_message_bytes=64 * 1024))
    daemon = cluster.daemons[0]

    def run() -> str:
        channel = grpc.insecure_channel(daemon.config.address)
        stream = LocalStream(endpoint_of(daemon), channel, MAX_READ)
        try:
            big = job("big", "values:" + ",".join(["1"] * 40_000))  # 80 KB: over the node's 64 KiB
            reply = stream.run(big)
            assert reply.job_id == "big" and stream.ended is not None
            with pytest.raises(LimitExceeded):
                stream_answer(reply, False)
            return reply.message
        finally:
            stream.close()
            channel.close()

    assert "over the limit of 65536" in await asyncio.to_thread(run)


async def test_the_per_client_limit_counts_a_process_s_local_jobs(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1, limits=Limits(max_jobs_per_client=1))
    endpoint = endpoint_of(cluster.daemons[0])

    def run() -> dict[str, pb.SubmitStreamReply]:
        with shake_hands(endpoint) as sock:
            read_blocking(sock, pb.LocalWelcome, MAX_READ)
            sock.sendall(frame(pb.SubmitBatch(jobs=[
                job("slow", "random:n=100000000,seed=1"), job("second", "values:1"),
            ])))
            replies: dict[str, pb.SubmitStreamReply] = {}
            while len(replies) < 2:
                for reply in read_blocking(sock, pb.SubmitBatchReply, MAX_READ).replies:
                    replies[reply.job_id] = reply
            return replies

    replies = await asyncio.to_thread(run)
    assert replies["slow"].code == 0
    assert replies["second"].code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert f"from local:pid={os.getpid()}" in replies["second"].message


class Impostor:
    """An abstract socket that takes a hello and answers with a welcome it cannot prove."""

    def __init__(self) -> None:
        self.name = f"distnode-test-{secrets.token_hex(8)}"
        self.hellos: list[pb.LocalHello] = []
        self.frames_after = 0

    async def start(self) -> asyncio.Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                hello = await read_async(reader, pb.LocalHello, MAX_READ)
                assert hello is not None
                self.hellos.append(hello)
                writer.write(frame(pb.LocalWelcome(node_id="n1", proof=proof(b"not the key", hello.nonce))))
                while await read_async(reader, pb.SubmitBatch, MAX_READ) is not None:
                    self.frames_after += 1
            finally:
                writer.close()

        return await asyncio.start_unix_server(serve, path=ABSTRACT_PREFIX + self.name)


@pytest.mark.parametrize("where", ["nobody listens", "impostor"])
async def test_a_socket_the_client_cannot_use_leaves_it_on_grpc(start_cluster: StartCluster, where: str) -> None:
    cluster = await start_cluster(1)
    told = endpoint_of(cluster.daemons[0])  # the message the servicer sends: changed in place
    impostor = Impostor()
    server = await impostor.start()
    told.name = impostor.name if where == "impostor" else f"distnode-test-{secrets.token_hex(8)}"
    try:
        def run() -> tuple[list[object], list[type], set[str]]:
            with Client(cluster.daemons[0].config.address, timeout=30) as client:
                results = [client.submit(op="sum", source=f"range:n={n}").result for n in range(1, 6)]
                kinds = [type(stream) for stream in client._streams._open.values()]
                return results, kinds, set(client._streams._unusable)

        results, kinds, unusable = await asyncio.to_thread(run)
    finally:
        server.close()
        await server.wait_closed()
    assert results == [n * (n - 1) // 2 for n in range(1, 6)]
    assert kinds == [ThreadStream] and unusable == {told.name}
    if where == "impostor":  # it was asked once, and never sent a job
        assert len(impostor.hellos) == 1 and impostor.frames_after == 0


async def test_the_clients_timeout_ends_a_job_on_a_local_socket_whose_node_never_answers() -> None:
    """The node answers the first job on gRPC and names its socket; there it takes the
    next job and never answers, while its Progress says it holds it."""
    key = secrets.token_bytes(32)
    name = f"distnode-test-{secrets.token_hex(8)}"
    taken: list[str] = []

    async def local(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await read_async(reader, pb.LocalHello, MAX_READ)
        assert hello is not None and hello.key == key
        writer.write(frame(pb.LocalWelcome(node_id="n1", proof=proof(key, hello.nonce))))
        try:
            while (batch := await read_async(reader, pb.SubmitBatch, MAX_READ)) is not None:
                taken.extend(request.job.job_id for request in batch.jobs)  # answers none
        finally:
            writer.close()

    async def stream(batches: AsyncIterator[pb.SubmitBatch], context: Any) -> AsyncIterator[Any]:
        async for batch in batches:
            for request in batch.jobs:
                reply = pb.SubmitReply(result=pb.Tensor(dtype="<i8", shape=[], data=(7).to_bytes(8, "little")))
                yield pb.SubmitBatchReply(
                    replies=[pb.SubmitStreamReply(job_id=request.job.job_id, reply=reply, node_id="n1")],
                    local=pb.LocalEndpoint(name=name, key=key),
                )

    async def progress(request: pb.ProgressRequest, context: Any) -> pb.ProgressReply:
        return pb.ProgressReply(known=True, shards_done=0, shards_total=1)

    unix = await asyncio.start_unix_server(local, path=ABSTRACT_PREFIX + name)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "SubmitBatches": grpc.stream_stream_rpc_method_handler(
            stream, request_deserializer=pb.SubmitBatch.FromString,
            response_serializer=pb.SubmitBatchReply.SerializeToString),
        "Progress": grpc.unary_unary_rpc_method_handler(
            progress, request_deserializer=pb.ProgressRequest.FromString,
            response_serializer=pb.ProgressReply.SerializeToString),
    }),))
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    try:
        def run() -> tuple[object, str, float, type]:
            with Client(address, timeout=1.0) as client:
                first = client.submit(op="sum", source="range:n=10").result
                started = time.monotonic()
                with pytest.raises((JobError, ClusterUnavailable)) as failed:
                    client.submit(op="sum", source="range:n=10")
                took_s = time.monotonic() - started
                [stream] = client._streams._open.values()
                return first, str(failed.value), took_s, type(stream)

        first, message, took_s, kind = await asyncio.to_thread(run)
        assert first == 7 and kind is LocalStream and len(taken) == 1
        assert "in time" in message
        assert took_s < 10.0  # without the watchdog's cancel the read never returns
    finally:
        unix.close()
        await unix.wait_closed()
        await server.stop(grace=None)


def test_frames_read_back_whole_and_a_frame_over_the_limit_is_refused_unread() -> None:
    left, right = socket.socketpair()
    with left, right:
        message = pb.SubmitBatch(jobs=[job("a", "values:1,2")])
        left.sendall(frame(message) + frame(message))
        assert read_blocking(right, pb.SubmitBatch, MAX_READ) == message
        with pytest.raises(LimitExceeded, match="frame of 24 bytes is over the limit of 10"):
            read_blocking(right, pb.SubmitBatch, 10)  # its body is left unread: the reader closes
    left, right = socket.socketpair()
    with left, right:
        left.sendall(frame(message)[:5])
        left.close()
        with pytest.raises(ConnectionError, match="closed by the node"):
            read_blocking(right, pb.SubmitBatch, MAX_READ)


def test_a_welcome_proves_the_key_for_this_nonce_only() -> None:
    key, nonce = secrets.token_bytes(32), secrets.token_bytes(16)
    assert proves(key, nonce, proof(key, nonce))
    assert not proves(key, secrets.token_bytes(16), proof(key, nonce))
    assert not proves(secrets.token_bytes(32), nonce, proof(key, nonce))


async def test_a_client_told_not_to_keeps_grpc(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)

    def run() -> tuple[list[object], list[type]]:
        with Client(cluster.daemons[0].config.address, timeout=30, local_socket=False) as client:
            results = [client.submit(op="sum", source=f"range:n={n}").result for n in range(1, 6)]
            return results, [type(stream) for stream in client._streams._open.values()]

    assert await asyncio.to_thread(run) == ([n * (n - 1) // 2 for n in range(1, 6)], [ThreadStream])
