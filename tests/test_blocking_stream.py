"""The blocking Client's SubmitBatches streams: one per calling thread and node.

Against in-process daemons (the blocking Client runs in worker threads, so
the daemons' loop keeps running): scalar jobs go on the thread's own stream
and vector answers on unary Submit, a failed job leaves its stream open, a
finished thread's stream is closed, a node without the method is served by
unary Submit and remembered. These clusters have no local socket, so every
job stays on gRPC; the move to a node's local socket is test_local_socket.py's.
A stream that breaks under a job (its leader killed) is
test_submit_stream.py's, for both clients.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from inproc import StartCluster
from test_async_watch import FakeNode, quick, unknown

from node import Client
from node._proto import distnode_pb2 as pb
from node.errors import ClusterUnavailable, InvalidJob, JobError
from node.wire.answers import SERVICE


async def ten_jobs_in_each_of_four_threads(client: Client) -> set[int]:
    """Each thread's answers checked; the threads that submitted."""
    threads_seen: set[int] = set()

    def lane(first: int) -> list[object]:
        threads_seen.add(threading.get_ident())
        return [client.submit(op="sum", source=f"range:n={n}").result for n in range(first + 1, first + 11)]

    lanes = await asyncio.gather(*(asyncio.to_thread(lane, 10 * k) for k in range(4)))
    assert lanes == [[n * (n - 1) // 2 for n in range(10 * k + 1, 10 * k + 11)] for k in range(4)]
    return threads_seen


async def test_scalar_jobs_go_on_each_threads_own_stream(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3, local_socket=False)
    leader = cluster.leader()
    assert leader is not None
    client = Client(leader.config.address, timeout=30)
    try:
        threads_seen = await ten_jobs_in_each_of_four_threads(client)
        streams = dict(client._streams._open)
        # One stream per thread that submitted, all to the leader, each carrying its own jobs.
        assert {thread for thread, _ in streams} == threads_seen
        assert {address for _, address in streams} == {leader.config.address}
        assert sum(stream.replied for stream in streams.values()) == 40
        assert not client._streams.unsupported
    finally:
        await asyncio.to_thread(client.close)
    assert all(stream.ended is not None for stream in streams.values())  # closed with the client


async def test_a_failed_job_is_its_own_error_and_the_stream_goes_on(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1, local_socket=False)
    address = cluster.daemons[0].config.address

    def run() -> tuple[object, object, bool]:
        with Client(address, timeout=30) as client:
            first = client.submit(op="sum", source="values:1,2").result
            stream = next(iter(client._streams._open.values()))
            with pytest.raises(InvalidJob, match="op"):
                client.submit(op="sums", source="values:1,2")
            after = client.submit(op="max", source="values:3,9,4").result
            same = list(client._streams._open.values()) == [stream] and stream.ended is None
            return first, after, same and stream.replied == 3

    assert await asyncio.to_thread(run) == (3, 9, True)


async def test_a_vector_answer_keeps_the_unary_submit(start_cluster: StartCluster, tmp_path: Path) -> None:
    cluster = await start_cluster(1)
    matrix = tmp_path / "m.npy"
    np.save(matrix, np.arange(12, dtype=np.float64).reshape(4, 3))

    def run() -> tuple[list[float], int]:
        with Client(cluster.daemons[0].config.address, timeout=30) as client:
            answer = client.submit(op="sum", source=f"npy:{matrix}", axis=0)
            return list(answer.result), len(client._streams._open)

    assert await asyncio.to_thread(run) == ([18.0, 22.0, 26.0], 0)


async def test_a_finished_threads_stream_is_closed_when_the_next_opens(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1, local_socket=False)
    client = Client(cluster.daemons[0].config.address, timeout=30)
    try:
        first = threading.Thread(target=lambda: client.submit(op="sum", source="values:1"))
        first.start()
        await asyncio.to_thread(first.join)
        [old] = client._streams._open.values()
        assert old.ended is None and old.thread is first
        assert (await asyncio.to_thread(client.submit, op="sum", source="values:2")).result == 2
        [new] = client._streams._open.values()
        assert new is not old and old.ended is not None
    finally:
        await asyncio.to_thread(client.close)


async def test_a_node_without_the_stream_is_served_by_unary_submit_and_remembered() -> None:
    fake = await FakeNode(quick, unknown).start()  # Submit and Progress only: an older node
    try:
        def run() -> tuple[list[object], set[str]]:
            with Client(fake.address, timeout=10) as client:
                results = [client.submit(op="sum", source="range:n=10").result for _ in range(5)]
                return results, set(client._streams.unsupported)

        assert await asyncio.to_thread(run) == ([42] * 5, {fake.address})
        assert fake.submits == 5
    finally:
        await fake.server.stop(grace=None)


async def test_the_clients_timeout_ends_a_job_on_a_stream_whose_node_never_answers() -> None:
    """A job on a stream has no gRPC deadline; a node that holds the job (its Progress says
    so, so the watchdog keeps the call) but never answers must not hold the caller past
    its timeout."""
    taken: list[str] = []

    async def stream(batches: AsyncIterator[pb.SubmitBatch], context: Any) -> AsyncIterator[Any]:
        async for batch in batches:
            taken.extend(job.job.job_id for job in batch.jobs)  # takes every job, answers none
        await asyncio.Event().wait()
        yield pb.SubmitBatchReply()  # unreachable: makes this an async generator

    async def progress(request: pb.ProgressRequest, context: Any) -> pb.ProgressReply:
        return pb.ProgressReply(known=True, shards_done=0, shards_total=1)

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
        def run() -> tuple[str, float, bool]:
            with Client(address, timeout=1.0) as client:
                started = time.monotonic()
                with pytest.raises((JobError, ClusterUnavailable)) as failed:
                    client.submit(op="sum", source="range:n=10")
                took_s = time.monotonic() - started
                return str(failed.value), took_s, bool(client._streams._open)

        message, took_s, streamed = await asyncio.to_thread(run)
        assert streamed and len(taken) == 1 and "in time" in message
        assert took_s < 10.0  # without the deadline the call never returns (pytest-timeout ends it)
    finally:
        await server.stop(grace=None)


class Interrupted(BaseException):
    """A Ctrl-C in the middle of a thread's wait (a BaseException, as KeyboardInterrupt is)."""


class ScriptedReplies:
    """A SubmitBatches reply iterator: raises Interrupted first, then the scripted batches."""

    def __init__(self, batches: list[pb.SubmitBatchReply]) -> None:
        self.batches, self.interrupted = list(batches), False

    def __iter__(self) -> ScriptedReplies:
        return self

    def __next__(self) -> pb.SubmitBatchReply:
        if not self.interrupted:
            self.interrupted = True
            raise Interrupted
        if not self.batches:
            raise StopIteration
        return self.batches.pop(0)


def late_and_own(job_id: str) -> list[pb.SubmitBatchReply]:
    """The first request's late refusal, then the second request's answer."""
    late = pb.SubmitStreamReply(job_id=job_id, seq=1, code=grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
                                message="max-jobs-per-client: 1")
    own = pb.SubmitStreamReply(job_id=job_id, seq=2, node_id="n1")
    return [pb.SubmitBatchReply(replies=[late]), pb.SubmitBatchReply(replies=[own])]


def test_a_late_reply_is_not_taken_for_the_next_request_of_its_job_id() -> None:
    """A thread interrupted while it waited, then submitting the same job id again on its
    stream, got the first request's late reply (here a refusal) as the second's."""
    from node.client.blocking_stream import ThreadStream
    from node.client.local_stream import LocalStream
    from node.wire.localframes import frame

    replies = ScriptedReplies(late_and_own("j"))

    class Stub:
        def SubmitBatches(self, feed: Any) -> ScriptedReplies:
            return replies

    stream = ThreadStream(Stub(), channel=None)  # type: ignore[arg-type]
    request = pb.SubmitRequest(job=pb.JobSpec(job_id="j", op="sum", source="range:n=5"))
    with pytest.raises(Interrupted):
        stream.run(request)
    again = pb.SubmitRequest(job=pb.JobSpec(job_id="j", op="sum", source="range:n=5"))
    assert stream.run(again).seq == 2
    stream.close()

    import socket

    ours, node = socket.socketpair()
    local = LocalStream.__new__(LocalStream)  # its connection made here, without a node's handshake
    local.__dict__.update(_sock=ours, _max_bytes=1 << 20, ended=None, replied=0)
    local._numbers = iter(range(2, 100))  # the first request (seq 1) was interrupted
    for batch in late_and_own("j"):
        node.sendall(frame(batch))
    assert local.run(again).seq == 2
    ours.close()
    node.close()


def test_a_node_that_echoes_no_number_is_still_answered_by_job_id() -> None:
    """A node of the previous version sends replies without `seq`: they are the request's."""
    from node.client.blocking_stream import ThreadStream

    reply = pb.SubmitStreamReply(job_id="j", node_id="n1")  # seq 0
    replies = ScriptedReplies([pb.SubmitBatchReply(replies=[reply])])
    replies.interrupted = True  # no interrupt here

    class Stub:
        def SubmitBatches(self, feed: Any) -> ScriptedReplies:
            return replies

    stream = ThreadStream(Stub(), channel=None)  # type: ignore[arg-type]
    request = pb.SubmitRequest(job=pb.JobSpec(job_id="j", op="sum", source="range:n=5"))
    assert stream.run(request).node_id == "n1" and request.seq == 1
    stream.close()


def test_an_interrupted_threads_job_is_cancelled_on_its_stream() -> None:
    """A thread interrupted while it waits (Ctrl-C) leaves its job to nobody: the stream's
    next message names it (`SubmitBatch.cancel`), and the node ends it (test_stream_cancel.py),
    where it used to run on to its deadline; the stream goes on for the thread's next job."""
    from node.client.blocking_stream import ThreadStream

    replies = ScriptedReplies(late_and_own("j"))

    class Stub:
        def SubmitBatches(self, feed: Any) -> ScriptedReplies:
            return replies

    def written() -> list[Any]:  # what the stream's feed would send next (gRPC's thread reads it)
        found = []
        while not stream._requests.empty():
            found.append(stream._requests.get_nowait())
        return found

    stream = ThreadStream(Stub(), channel=None)  # type: ignore[arg-type]
    request = pb.SubmitRequest(job=pb.JobSpec(job_id="j", op="sum", source="range:n=5"))
    with pytest.raises(Interrupted):
        stream.run(request)
    assert written() == [pb.SubmitBatch(jobs=[request]), pb.SubmitBatch(cancel=[1])]
    again = pb.SubmitRequest(job=pb.JobSpec(job_id="j", op="sum", source="range:n=5"))
    assert stream.run(again).seq == 2
    assert written() == [pb.SubmitBatch(jobs=[again])]
    stream.close()
