"""`SubmitBatches`: many attached jobs on one stream, answered by job id as each ends.

The node's side against real in-process daemons (a raw stub): each job is
run as a unary Submit would run it, a failed job is its own reply and the
stream goes on, a follower relays, the per-client and per-stream limits hold
per job, and replies that are ready together go as one message, within a
size. The client's side: AsyncClient sends scalar jobs on one stream per
node, the jobs that wait while one message is written go in the next, and a
stream that breaks under a job (its node stopped) sends the job elsewhere,
from either client.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from inproc import StartCluster, poll

from node import AsyncClient, Client, LocalCluster
from node._proto import distnode_pb2 as pb
from node.client.answer import Answer
from node.client.async_local_stream import AsyncLocalStream
from node.client.local_stream import LocalStream
from node.core.limits import Limits
from node.errors import ClusterUnavailable, InvalidJob, JobError
from node.server.daemon import Daemon
from node.server.jobstream import START_CHUNK_JOBS, JobStream
from node.wire.stubs import NodeStub
from node.wire.tensors import tensor_from_proto


def request(job_id: str, op: str, source: str) -> pb.SubmitRequest:
    return pb.SubmitRequest(job=pb.JobSpec(job_id=job_id, op=op, source=source))


async def exchange_batches(
    address: str, batches: list[list[pb.SubmitRequest]]
) -> tuple[dict[str, pb.SubmitStreamReply], list[int]]:
    """Send each batch as one message, half-close; the replies by job id, and how many
    replies each reply message held."""
    async def feed() -> AsyncIterator[pb.SubmitBatch]:
        for batch in batches:
            yield pb.SubmitBatch(jobs=batch)

    replies: dict[str, pb.SubmitStreamReply] = {}
    sizes = []
    async with grpc.aio.insecure_channel(address) as channel:
        call = NodeStub(channel).SubmitBatches(feed(), timeout=60)
        async for message in call:
            sizes.append(len(message.replies))
            replies.update((reply.job_id, reply) for reply in message.replies)
        assert await call.code() == grpc.StatusCode.OK
    return replies, sizes


async def exchange(address: str, requests: list[pb.SubmitRequest]) -> dict[str, pb.SubmitStreamReply]:
    """Send every request as a message of its own, half-close, and collect the replies by job id."""
    replies, _ = await exchange_batches(address, [[one] for one in requests])
    return replies


def value(reply: pb.SubmitStreamReply) -> object:
    return tensor_from_proto(reply.reply.result, reply.reply.result.data).tolist()


async def test_each_job_is_answered_by_id_and_a_bad_one_stops_nothing(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3)
    leader = cluster.leader()
    assert leader is not None
    follower = next(d for d in cluster.daemons if d is not leader)
    jobs = [request("good-sum", "sum", "range:n=1000"), request("bad-op", "sums", "range:n=10"),
            request("good-max", "max", "values:3,9,4"), request("", "sum", "range:n=10")]
    for daemon in (leader, follower):  # straight, and relayed job by job
        replies = await exchange(daemon.config.address, jobs)
        assert set(replies) == {"good-sum", "bad-op", "good-max", ""}
        assert replies["good-sum"].code == 0 and value(replies["good-sum"]) == 499500
        assert replies["good-max"].code == 0 and value(replies["good-max"]) == 9
        assert replies["good-sum"].reply.leader == leader.node_id
        bad = replies["bad-op"]
        assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and bad.message.startswith("op:")
        assert replies[""].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "job_id" in replies[""].message
        assert all(reply.node_id == daemon.node_id for reply in replies.values()), "signed by who answered"


async def test_jobs_sent_together_are_each_answered_and_replies_ready_together_go_together(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = await start_cluster(3, local_socket=False)  # no first message naming a socket
    leader = cluster.leader()
    assert leader is not None
    follower = next(d for d in cluster.daemons if d is not leader)
    jobs = [request(f"j{n}", "sum", f"range:n={n}") for n in range(1, 41)] + [request("bad", "sums", "range:n=1")]
    for daemon in (leader, follower):  # a follower relays each job, and answers each as it comes back
        replies, sizes = await exchange_batches(daemon.config.address, [jobs[:20], jobs[20:]])
        assert [value(replies[f"j{n}"]) for n in range(1, 41)] == [n * (n - 1) // 2 for n in range(1, 41)]
        assert replies["bad"].code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and sum(sizes) == 41
        if daemon is leader:  # tiny jobs end in the turn they start: a group's replies go as one message
            assert sizes[0] == START_CHUNK_JOBS and len(sizes) <= 4, f"not one message per group: {sizes}"

    # A batch of replies stops growing at its size limit: here, every reply goes alone.
    monkeypatch.setattr("node.server.jobstream.REPLY_BATCH_BYTES", 1)
    replies, sizes = await exchange_batches(leader.config.address, [jobs[:10]])
    assert len(replies) == 10 and sizes == [1] * 10


async def test_a_large_batch_is_answered_group_by_group_the_first_before_the_next_group_runs() -> None:
    """A batch's jobs start START_CHUNK_JOBS at a time: the first group's replies go out
    before a job of the next group has run, so the client can work on them meanwhile."""
    ran: list[str] = []

    async def run(request: pb.SubmitRequest) -> pb.SubmitStreamReply:
        ran.append(request.job.job_id)  # a tiny job: it ends in the turn it starts
        return pb.SubmitStreamReply(job_id=request.job.job_id)

    async def one_batch() -> AsyncIterator[pb.SubmitBatch]:
        yield pb.SubmitBatch(jobs=[request(f"j{n}", "sum", "range:n=1") for n in range(40)])

    stream = JobStream(run, lambda job_id, exc: pb.SubmitStreamReply(job_id=job_id))
    messages = []
    async for message in stream.replies(one_batch()):
        messages.append(([reply.job_id for reply in message.replies], len(ran)))
    first, ran_by_then = messages[0]
    assert first == [f"j{n}" for n in range(START_CHUNK_JOBS)] and ran_by_then == START_CHUNK_JOBS
    assert sorted(job_id for replies, _ in messages for job_id in replies) == sorted(f"j{n}" for n in range(40))


async def test_a_stream_refuses_jobs_beyond_its_limit_one_by_one(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("node.server.jobstream.MAX_STREAM_JOBS", 2)
    cluster = await start_cluster(1)
    jobs = [request(f"slow-{i}", "sum", f"random:n=20000000,seed={i}") for i in range(5)]
    replies, _ = await exchange_batches(cluster.daemons[0].config.address, [jobs])
    refused = [r for r in replies.values() if r.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]
    assert len(replies) == 5 and len(refused) == 3, [r.message for r in replies.values()]
    assert all("2 jobs already in flight on this stream" in r.message for r in refused)


async def test_the_per_client_limit_holds_for_each_job_on_a_stream(start_cluster: StartCluster) -> None:
    # One node: its six big sums on the event loop three in-process nodes share moved the
    # leadership of three on FAST timing in two loaded full runs, and jobs failed as "not the
    # leader any more" instead of being refused or done. The limit is the leader's alone.
    cluster = await start_cluster(1, limits=Limits(max_jobs_per_client=2))
    leader = cluster.leader()
    assert leader is not None
    jobs = [request(f"slow-{i}", "sum", f"random:n=30000000,seed={i}") for i in range(6)]
    replies = await exchange(leader.config.address, jobs)
    refused = [r for r in replies.values() if r.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]
    done = [r for r in replies.values() if r.code == 0]
    assert len(refused) + len(done) == 6 and len(done) >= 2 and refused, [r.message for r in replies.values()]
    assert all("max-jobs-per-client" in r.message for r in refused)


async def test_the_async_client_sends_scalar_jobs_on_one_stream_per_node(start_cluster: StartCluster) -> None:
    # One node: a stall of the shared event loop (over 100 ms in a loaded full run) can move
    # the leadership of three on FAST timing, and the client's jobs to other nodes' streams.
    cluster = await start_cluster(1, local_socket=False)  # the local socket: test_local_socket_async.py
    leader = cluster.leader()
    assert leader is not None
    async with AsyncClient(leader.config.address, timeout=30) as client:
        answers = await asyncio.gather(*(client.submit(op="sum", source=f"range:n={n}") for n in range(1, 41)))
        assert [a.result for a in answers] == [n * (n - 1) // 2 for n in range(1, 41)]
        assert list(client._streams._open) == [leader.config.address] and not client._streams.unsupported
        again = await client.submit(op="sum", source="values:1,2,3")  # the same stream, no new one
        assert again.result == 6 and len(client._streams._open) == 1

        # The jobs sent while a message is written go in the next one.
        stream = client._streams._open[leader.config.address]
        written: list[int] = []
        write = stream._call.write

        async def counted(batch: pb.SubmitBatch) -> None:
            written.append(len(batch.jobs))
            await write(batch)

        stream._call.write = counted  # type: ignore[method-assign]
        answers = await asyncio.gather(*(client.submit(op="sum", source=f"range:n={n}") for n in range(1, 41)))
        assert [a.result for a in answers] == [n * (n - 1) // 2 for n in range(1, 41)]
        assert sum(written) == 40 and len(written) <= 2, written


JOB = {"op": "sum", "source": "range:n=1000000000", "job_id": "x"}


def crossing_async(cluster: LocalCluster, first: list[str], leader: str, local: bool = False) -> Answer:
    """The AsyncClient's job, its leader killed once the job is under way; with `local`, on the
    leader's local socket, once a first job named it."""
    async def crossing() -> Answer:
        async with AsyncClient(first, timeout=120) as client:
            if local:
                await client.submit(op="sum", source="values:1")
                address = cluster.address(leader)
                deadline = time.monotonic() + 10
                while not isinstance(client._streams._open.get(address), AsyncLocalStream):
                    assert time.monotonic() < deadline, "never moved to the local socket"
                    await asyncio.sleep(0.01)
            job = asyncio.create_task(client.submit(**JOB))
            deadline = time.monotonic() + 60
            while (await client.progress("x") or (0, 0))[0] == 0:  # under way on the leader
                assert time.monotonic() < deadline and not job.done(), "the job never started"
                await asyncio.sleep(0.01)
            cluster.kill(leader)  # its stream (or socket) breaks mid-job
            return await job

    return asyncio.run(crossing())


def crossing_blocking(cluster: LocalCluster, first: list[str], leader: str, local: bool = False) -> Answer:
    """The blocking Client's job, from a thread of its own, on that thread's stream; with
    `local`, on the leader's local socket: the thread's second job (the first, on gRPC,
    tells it the socket)."""
    with Client(first, timeout=120) as client:
        answers: list[Answer] = []

        def run() -> None:
            if local:
                client.submit(op="sum", source="values:1")
            answers.append(client.submit(**JOB))

        job = threading.Thread(target=run)
        job.start()
        deadline = time.monotonic() + 60
        while (client.progress("x") or (0, 0))[0] == 0:  # under way on the leader
            assert time.monotonic() < deadline and job.is_alive(), "the job never started"
            time.sleep(0.01)
        if local:
            [on] = client._streams._open.values()
            assert isinstance(on, LocalStream) and on.replied == 0
        else:
            assert any(stream.replied == 0 for stream in client._streams._open.values())  # on a stream
        cluster.kill(leader)  # its stream (or socket) breaks mid-job
        job.join(timeout=120)
    [answer] = answers
    return answer


@pytest.mark.process
@pytest.mark.parametrize("crossing", [
    crossing_async, functools.partial(crossing_async, local=True),
    crossing_blocking, functools.partial(crossing_blocking, local=True),
], ids=["async", "async-local", "blocking", "blocking-local"])
def test_a_job_whose_stream_breaks_is_sent_again_elsewhere(
    tmp_path: Path, crossing: Callable[[LocalCluster, list[str], str], Answer]
) -> None:
    with LocalCluster(nodes=3, shard_elems=1 << 16, workdir=tmp_path) as cluster:
        cluster.wait_all_alive(timeout_s=30)
        leader = cluster.leader()
        first = [cluster.address(leader)] + [cluster.address(n) for n in cluster.ids if n != leader]
        answer = crossing(cluster, first, leader)
    assert answer.result == 1000000000 * 999999999 // 2
    assert answer.retries >= 1 and answer.leader != leader


async def test_a_jobs_deadline_on_a_stream_is_its_own(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    address = cluster.daemons[0].config.address
    async with AsyncClient(address, timeout=0.3) as client:
        with pytest.raises((ClusterUnavailable, JobError), match=r"in time"):
            await client.submit(op="sum", source="random:n=2000000000,seed=1")
        # The stream is still usable for the next job.
        client.timeout = 30
        assert (await client.submit(op="sum", source="range:n=10")).result == 45


async def test_one_caller_giving_up_on_a_job_id_leaves_another_of_the_same_id_its_answer(
    start_cluster: StartCluster,
) -> None:
    """Two submits of one job id at once share a stream: the one with a short timeout
    gives up, the other gets the answer (both waited on one future, and the first one's
    cancellation raised CancelledError in the second)."""
    cluster = await start_cluster(1)
    async with AsyncClient(cluster.daemons[0].config.address) as client:
        job = {"op": "sum", "source": "random:n=6e7,seed=3", "job_id": "nightly"}
        patient = asyncio.create_task(client.submit(**job, timeout=60))  # type: ignore[arg-type]
        with pytest.raises((ClusterUnavailable, JobError), match=r"in time"):
            await client.submit(**job, timeout=0.1)  # type: ignore[arg-type]
        answer = await patient
        assert answer.job_id == "nightly" and answer.shards > 1


async def test_a_refusal_of_one_request_for_a_job_id_is_not_anothers_answer(start_cluster: StartCluster) -> None:
    """Replies are matched to requests by their number on the stream: a second submit of a
    running job's id with another job is ALREADY_EXISTS for it alone (it was everyone's)."""
    cluster = await start_cluster(1)
    for local_socket in (False, True):  # both on the gRPC stream, then both on the socket
        async with AsyncClient(cluster.daemons[0].config.address, local_socket=local_socket) as client:
            await client.submit(op="sum", source="values:1")  # the stream (and the socket) open
            await refused_alone(client, cluster.daemons[0], f"mine-{local_socket}")


async def refused_alone(client: AsyncClient, leader: Daemon, job_id: str) -> None:
    for _ in range(3):
        running = asyncio.create_task(client.submit(op="sum", source="random:n=6e7,seed=5", job_id=job_id,
                                                    timeout=60))
        await poll(lambda: leader.jobs.progress(job_id)[0], what="the first job taken")  # noqa: B023
        with pytest.raises(InvalidJob, match="ALREADY_EXISTS"):
            await client.submit(op="max", source="random:n=6e7,seed=5", job_id=job_id, timeout=60)
        answer = await running
        assert answer.job_id == job_id and answer.op == "sum"
        job_id += "-again"
