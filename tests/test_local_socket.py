"""A node's local socket (node/server/localsocket.py) and the blocking Client on it.

Against in-process daemons, with the blocking Client in worker threads: a
thread's jobs move to the node's local socket after the first, and answer
as on gRPC; a stream names the socket first and alone; a connection that
does not prove the key, or does not say hello, gets nothing, and costs the
node no error; a frame over the limit, or not a batch, is refused with a
status; the per-client limit counts a process's local jobs, and a client
gone mid-job has them cancelled; a socket the Client cannot reach, or whose
node cannot prove the key (a process on a dead node's name), leaves it on
gRPC and learns nothing; the Client's timeout ends a job whose node never
answers on the socket. The leader killed under a job on its local socket
is test_submit_stream.py's.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from inproc import StartCluster, poll
from test_blocking_stream import ten_jobs_in_each_of_four_threads

from node import Client
from node._proto import distnode_pb2 as pb
from node.client.blocking_stream import ThreadStream
from node.client.local_stream import LocalStream
from node.client.streams import unary_instead
from node.core.limits import Limits
from node.errors import AttemptFailed, ClusterUnavailable, JobError, LimitExceeded
from node.server import localsocket
from node.server.daemon import Daemon
from node.wire import localframes
from node.wire.answers import SERVICE
from node.wire.localframes import (
    ABSTRACT_PREFIX,
    HEADER,
    client_proof,
    frame,
    node_proof,
    read_async,
    read_blocking,
)
from node.wire.stubs import BlockingNodeStub
from node.wire.tensors import tensor_from_proto

MAX_READ_BYTES = 1 << 20


def job(job_id: str, source: str, op: str = "sum") -> pb.SubmitRequest:
    return pb.SubmitRequest(job=pb.JobSpec(job_id=job_id, op=op, source=source))


def value(reply: pb.SubmitStreamReply) -> object:
    return tensor_from_proto(reply.reply.result, reply.reply.result.data).tolist()


def endpoint_of(daemon: Daemon) -> pb.LocalEndpoint:
    assert daemon._local is not None
    return daemon._local.endpoint


def raw(endpoint: pb.LocalEndpoint) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(ABSTRACT_PREFIX + endpoint.name)
    return sock


def shake_hands(endpoint: pb.LocalEndpoint, key: bytes | None = None) -> socket.socket:
    """A raw connection through the handshake, proving `key` (the right one by default);
    the node's own proof is checked against the right key."""
    sock = raw(endpoint)
    nonce = secrets.token_bytes(16)
    sock.sendall(frame(pb.LocalHello(nonce=nonce)))
    welcome = read_blocking(sock, pb.LocalWelcome, MAX_READ_BYTES)
    assert welcome.proof == node_proof(endpoint.key, nonce, welcome.nonce)
    proof = client_proof(endpoint.key if key is None else key, nonce, welcome.nonce)
    sock.sendall(frame(pb.LocalProof(proof=proof)))
    return sock


def closed_unanswered(sock: socket.socket, then_sent: bytes = b"") -> bool:
    """The node closed the connection without writing anything (more), whether or not it
    had closed before `then_sent` went."""
    try:
        sock.sendall(then_sent)
        return sock.recv(1) == b""
    except (BrokenPipeError, ConnectionResetError):  # closed with what we sent unread
        return True


async def test_after_its_first_job_each_thread_sends_its_jobs_on_the_nodes_local_socket(
    start_cluster: StartCluster,
) -> None:
    cluster = await start_cluster(3)
    leader = cluster.leader()
    assert leader is not None
    client = Client(leader.config.address, timeout=30)
    try:
        threads_seen = await ten_jobs_in_each_of_four_threads(client)
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


async def test_a_connection_without_the_key_gets_nothing_and_the_node_serves_on(
    start_cluster: StartCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = await start_cluster(1)
    endpoint = endpoint_of(cluster.daemons[0])

    def run() -> tuple[bool, bool, bool, object]:
        with shake_hands(endpoint, key=secrets.token_bytes(32)) as wrong:
            wrong_closed = closed_unanswered(wrong, frame(pb.SubmitBatch(jobs=[job("w", "values:1")])))
        with raw(endpoint) as jumped:  # a job where the hello should be
            jumped_closed = closed_unanswered(jumped, frame(pb.SubmitBatch(jobs=[job("j", "values:1")])))
        with raw(endpoint) as huge:  # a hello far over any hello's size
            huge_closed = closed_unanswered(huge, HEADER.pack(10 << 20) + b"x" * 64)
        with shake_hands(endpoint) as good:
            good.sendall(frame(pb.SubmitBatch(jobs=[job("k", "values:4,5")])))
            [reply] = read_blocking(good, pb.SubmitBatchReply, MAX_READ_BYTES).replies
        return wrong_closed, jumped_closed, huge_closed, value(reply)

    assert await asyncio.to_thread(run) == (True, True, True, 9)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # refused, not crashed
    assert any("connections refused: 1 without the key" in r.getMessage() for r in caplog.records)


async def test_connections_in_their_handshake_are_bounded_and_clients_are_served_meanwhile(
    start_cluster: StartCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Any process of the host could open connections and say nothing: each held a descriptor
    of the node for the handshake's timeout, with no bound on how many. Past MAX_HANDSHAKES a
    new one is closed unread; a client then keeps gRPC, and the socket takes it again after."""
    cluster = await start_cluster(1)
    daemon = cluster.daemons[0]
    local = daemon._local
    assert local is not None
    silent = [await asyncio.to_thread(raw, local.endpoint) for _ in range(localsocket.MAX_HANDSHAKES)]
    try:
        await poll(lambda: local.handshaking == localsocket.MAX_HANDSHAKES, what="every silent one in its handshake")
        extra = await asyncio.to_thread(raw, local.endpoint)
        with extra:
            assert await asyncio.to_thread(closed_unanswered, extra), "past the bound: closed unread"
        assert local.handshaking == localsocket.MAX_HANDSHAKES
        with Client([daemon.config.address], timeout=10) as client:
            assert [(await asyncio.to_thread(client.submit, op="sum", source="values:1,2")).result
                    for _ in range(3)] == [3, 3, 3]
    finally:
        for sock in silent:
            sock.close()
    await poll(lambda: local.handshaking == 0, what="the silent ones to be gone")

    def through_the_socket() -> object:
        with shake_hands(local.endpoint) as good:
            good.sendall(frame(pb.SubmitBatch(jobs=[job("k", "values:4,5")])))
            [reply] = read_blocking(good, pb.SubmitBatchReply, MAX_READ_BYTES).replies
            return value(reply)

    assert await asyncio.to_thread(through_the_socket) == 9
    assert any(f"connections refused: 1 past {localsocket.MAX_HANDSHAKES} in their handshake" in r.getMessage()
               for r in caplog.records)


async def test_a_socket_closed_before_its_welcome_is_busy_not_a_stranger() -> None:
    """A node at its bound of handshakes closes a new connection unread. The async clients and a
    leader's compute link took that for a node that cannot prove the key, and never used its
    socket again until it restarted; it is a connection reset now, and tried again later."""
    async def closes_unanswered(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # the hello read, so the close is an end of stream, not a reset
        writer.close()

    name = f"distnode-test-{secrets.token_hex(8)}"
    server = await asyncio.start_unix_server(closes_unanswered, path=ABSTRACT_PREFIX + name)
    try:
        with pytest.raises(ConnectionResetError, match="closed before the node's welcome"):
            await localframes.shake_hands(pb.LocalEndpoint(name=name, key=secrets.token_bytes(32)))
    finally:
        server.close()
        await server.wait_closed()


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
            sock.sendall(what)
            replies = list(read_blocking(sock, pb.SubmitBatchReply, MAX_READ_BYTES).replies)
            closed = sock.recv(1) == b""
        with Client(cluster.daemons[0].config.address, timeout=30) as client:
            after = [client.submit(op="sum", source="range:n=100").result for _ in range(3)]
        return replies, closed, after

    replies, closed, after = await asyncio.to_thread(run)
    [refusal] = replies
    assert refusal.job_id == "" and refusal.code == code.value[0] and message in refusal.message
    assert refusal.node_id == cluster.daemons[0].node_id
    assert closed and after == [4950] * 3


async def test_a_refused_frame_fails_the_clients_attempt_with_the_nodes_status(start_cluster: StartCluster) -> None:
    """As a gRPC stream whose message is over the limit: the attempt fails with the status,
    for the retry loop (every node has its own limit)."""
    cluster = await start_cluster(1, limits=Limits(max_message_bytes=64 * 1024))
    daemon = cluster.daemons[0]

    def run() -> str:
        channel = grpc.insecure_channel(daemon.config.address)
        stream = LocalStream(endpoint_of(daemon), channel, MAX_READ_BYTES)
        try:
            big = job("big", "values:" + ",".join(["1"] * 40_000))  # 80 KB: over the node's 64 KiB
            with pytest.raises(AttemptFailed) as failed:
                stream.run(big)
            assert stream.ended is failed.value
            return str(failed.value)
        finally:
            stream.close()
            channel.close()

    message = await asyncio.to_thread(run)
    assert "RESOURCE_EXHAUSTED" in message and "over the limit of 65536" in message


async def test_the_per_client_limit_counts_a_process_s_local_jobs(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1, limits=Limits(max_jobs_per_client=1))
    endpoint = endpoint_of(cluster.daemons[0])

    def run() -> dict[str, pb.SubmitStreamReply]:
        with shake_hands(endpoint) as sock:
            sock.sendall(frame(pb.SubmitBatch(jobs=[
                job("slow", "random:n=100000000,seed=1"), job("second", "values:1"),
            ])))
            replies: dict[str, pb.SubmitStreamReply] = {}
            while len(replies) < 2:
                for reply in read_blocking(sock, pb.SubmitBatchReply, MAX_READ_BYTES).replies:
                    replies[reply.job_id] = reply
            return replies

    replies = await asyncio.to_thread(run)
    assert replies["slow"].code == 0
    assert replies["second"].code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert f"from local:pid={os.getpid()}" in replies["second"].message


class Impostor:
    """An abstract socket, as a process that took the name of a node that died: it answers a
    hello with the best proof it can make without the key."""

    def __init__(self) -> None:
        self.name = f"distnode-test-{secrets.token_hex(8)}"
        self.hellos: list[pb.LocalHello] = []
        self.frames_after = 0

    async def start(self) -> asyncio.Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                hello = await read_async(reader, pb.LocalHello, MAX_READ_BYTES)
                assert hello is not None
                self.hellos.append(hello)
                nonce = secrets.token_bytes(16)
                guess = node_proof(hello.SerializeToString(), hello.nonce, nonce)  # all it was sent
                writer.write(frame(pb.LocalWelcome(node_id="n1", nonce=nonce, proof=guess)))
                while await read_async(reader, pb.SubmitBatch, MAX_READ_BYTES) is not None:
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
    if where == "impostor":  # asked once, told nothing of the key, never sent a job
        assert len(impostor.hellos) == 1 and impostor.frames_after == 0
        assert told.key not in impostor.hellos[0].SerializeToString()


async def test_the_clients_timeout_ends_a_job_on_a_local_socket_whose_node_never_answers() -> None:
    """The node answers the first job on gRPC and names its socket; there it takes the
    next job and never answers, while its Progress says it holds it."""
    key = secrets.token_bytes(32)
    name = f"distnode-test-{secrets.token_hex(8)}"
    taken: list[str] = []

    async def local(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = await read_async(reader, pb.LocalHello, MAX_READ_BYTES)
        assert hello is not None
        nonce = secrets.token_bytes(16)
        writer.write(frame(pb.LocalWelcome(node_id="n1", nonce=nonce, proof=node_proof(key, hello.nonce, nonce))))
        claimed = await read_async(reader, pb.LocalProof, MAX_READ_BYTES)
        assert claimed is not None and claimed.proof == client_proof(key, hello.nonce, nonce)
        try:
            while (batch := await read_async(reader, pb.SubmitBatch, MAX_READ_BYTES)) is not None:
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
        assert read_blocking(right, pb.SubmitBatch, MAX_READ_BYTES) == message
        with pytest.raises(LimitExceeded, match="frame of 24 bytes is over the limit of 10"):
            read_blocking(right, pb.SubmitBatch, 10)  # its body is left unread: the reader closes
    left, right = socket.socketpair()
    with left, right:
        left.sendall(frame(message)[:5])
        left.close()
        with pytest.raises(ConnectionError, match="closed by the node"):
            read_blocking(right, pb.SubmitBatch, MAX_READ_BYTES)


def test_each_proof_holds_for_its_own_end_and_nonces_only() -> None:
    key, mine, theirs = secrets.token_bytes(32), secrets.token_bytes(16), secrets.token_bytes(16)
    assert node_proof(key, mine, theirs) == node_proof(key, mine, theirs)
    assert node_proof(key, mine, theirs) != client_proof(key, mine, theirs)  # no reflecting one as the other
    assert node_proof(key, mine, theirs) != node_proof(key, theirs, mine)
    assert node_proof(key, mine, theirs) != node_proof(secrets.token_bytes(32), mine, theirs)


async def test_a_client_gone_mid_job_has_its_jobs_cancelled_and_its_slot_back(start_cluster: StartCluster) -> None:
    """As when gRPC cancels a stream: with one job in flight allowed per client, a process
    whose connection ended mid-job may send the next job at once."""
    cluster = await start_cluster(1, limits=Limits(max_jobs_per_client=1))
    daemon = cluster.daemons[0]
    endpoint = endpoint_of(daemon)

    def gone() -> None:
        with shake_hands(endpoint) as sock:
            sock.sendall(frame(pb.SubmitBatch(jobs=[job("long", "random:n=2000000000,seed=5")])))
            deadline = time.monotonic() + 10
            while daemon.clients.held(f"local:pid={os.getpid()}") == 0:
                assert time.monotonic() < deadline, "the job never took its slot"
                time.sleep(0.005)
        # closed without the empty batch that says "no more jobs"

    await asyncio.to_thread(gone)
    await poll(lambda: daemon.clients.held(f"local:pid={os.getpid()}") == 0, 10, "the slot given back")

    def next_job() -> object:
        with shake_hands(endpoint) as sock:
            sock.sendall(frame(pb.SubmitBatch(jobs=[job("next", "values:2,3")])))
            [reply] = read_blocking(sock, pb.SubmitBatchReply, MAX_READ_BYTES).replies
            return value(reply) if reply.code == 0 else reply.message

    assert await asyncio.to_thread(next_job) == 5


async def test_a_client_told_not_to_keeps_grpc(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)

    def run() -> tuple[list[object], list[type]]:
        with Client(cluster.daemons[0].config.address, timeout=30, local_socket=False) as client:
            results = [client.submit(op="sum", source=f"range:n={n}").result for n in range(1, 6)]
            return results, [type(stream) for stream in client._streams._open.values()]

    assert await asyncio.to_thread(run) == ([n * (n - 1) // 2 for n in range(1, 6)], [ThreadStream])


async def test_a_job_failed_on_a_local_socket_is_retried_elsewhere_not_sent_unary_to_that_node(
    start_cluster: StartCluster,
) -> None:
    """A gRPC stream that ended before the node ever answered on it sends its job unary to
    the same node, to find out whether it is there; on a local socket the handshake was that
    answer, so a hung node costs the job one watchdog cycle, not two."""
    cluster = await start_cluster(1)
    address = cluster.daemons[0].config.address
    endpoint = endpoint_of(cluster.daemons[0])

    def run() -> tuple[bool, bool]:
        channel = grpc.insecure_channel(address)
        try:
            local = LocalStream(endpoint, channel, MAX_READ_BYTES)
            local.close()  # ended, no reply read
            grpc_stream = ThreadStream(BlockingNodeStub(channel, None), channel)
            grpc_stream.ended = AttemptFailed("ended before any reply")
            failure, deadline_s = AttemptFailed("ended"), time.monotonic() + 10
            unary_after = tuple(unary_instead(stream, set(), address, failure, deadline_s) is not None
                                for stream in (grpc_stream, local))
            grpc_stream.close()
            return unary_after
        finally:
            channel.close()

    assert await asyncio.to_thread(run) == (True, False)


class _Credentials:
    """A socket whose SO_PEERCRED names `pid` (0: a process in another pid namespace)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        assert (level, option) == (socket.SOL_SOCKET, socket.SO_PEERCRED)
        if self.pid is None:
            raise OSError(92, "Protocol not available")
        return localframes._PEERCRED.pack(self.pid, 1000, 1000)


class _Writer:
    def __init__(self, sock: object) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None


@pytest.mark.parametrize(("sock", "expected"), [
    (_Credentials(4242), "local:pid=4242"),
    (_Credentials(0), "local:conn=7"),  # another pid namespace: every process there reads 0
    (_Credentials(None), "local:conn=7"),
    (None, "local:conn=7"),
])
def test_the_per_client_key_is_the_process_or_else_the_connection(sock: object, expected: str) -> None:
    assert localsocket._peer_of(_Writer(sock), 7) == expected  # type: ignore[arg-type]


def test_a_welcome_sent_a_byte_at_a_time_cannot_stretch_the_handshake_past_its_timeout() -> None:
    """The blocking client bounded each recv of the handshake, not the whole: a process that
    took a dead node's socket name and sent a byte just before each timeout held the client
    for minutes (a 512-byte welcome, 2 s a byte) before any deadline of its job applied."""
    import threading

    name = "distnode-" + secrets.token_hex(16)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(localframes.ABSTRACT_PREFIX + name)
        server.listen()
        stop = threading.Event()

        def drip() -> None:
            peer, _ = server.accept()
            with peer:
                data = localframes.frame(pb.LocalWelcome(node_id="n1", nonce=b"x" * 16, proof=b"y" * 32))
                for byte in data:
                    if stop.wait(0.1):  # well within the client's timeout, every time
                        return
                    peer.send(bytes([byte]))

        dripping = threading.Thread(target=drip)
        dripping.start()
        started = time.monotonic()
        try:
            with pytest.raises(TimeoutError):
                LocalStream(pb.LocalEndpoint(name=name, key=b"k" * 32), None, 1 << 20, timeout_s=0.5)  # type: ignore[arg-type]
            elapsed_s = time.monotonic() - started
        finally:
            stop.set()
            dripping.join()
    assert elapsed_s < 1.5, f"the handshake took {elapsed_s:.1f} s for a timeout of 0.5 s"
