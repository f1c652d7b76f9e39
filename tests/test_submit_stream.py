"""`SubmitStream`: many attached jobs on one stream, answered by job id as each ends.

The node's side against real in-process daemons (a raw stub): each job is
run as a unary Submit would run it, a failed job is its own reply and the
stream goes on, a follower relays, the per-client limit holds per job. The
client's side: AsyncClient sends scalar jobs on one stream per node, and a
stream that breaks under a job (its node stopped) sends the job elsewhere,
from either client.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from inproc import StartCluster

from node import AsyncClient, Client, LocalCluster
from node._proto import distnode_pb2 as pb
from node.client.answer import Answer
from node.core.limits import Limits
from node.errors import ClusterUnavailable, JobError
from node.wire.stubs import NodeStub
from node.wire.tensors import tensor_from_proto


def request(job_id: str, op: str, source: str) -> pb.SubmitRequest:
    return pb.SubmitRequest(job=pb.JobSpec(job_id=job_id, op=op, source=source))


async def exchange(address: str, requests: list[pb.SubmitRequest]) -> dict[str, pb.SubmitStreamReply]:
    """Send every request on one stream, half-close, and collect the replies by job id."""
    async def feed() -> AsyncIterator[pb.SubmitRequest]:
        for one in requests:
            yield one

    async with grpc.aio.insecure_channel(address) as channel:
        call = NodeStub(channel).SubmitStream(feed(), timeout=60)
        replies = {reply.job_id: reply async for reply in call}
        assert await call.code() == grpc.StatusCode.OK
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


async def test_the_per_client_limit_holds_for_each_job_on_a_stream(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3, limits=Limits(max_jobs_per_client=2))
    leader = cluster.leader()
    assert leader is not None
    jobs = [request(f"slow-{i}", "sum", f"random:n=30000000,seed={i}") for i in range(6)]
    replies = await exchange(leader.config.address, jobs)
    refused = [r for r in replies.values() if r.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]]
    done = [r for r in replies.values() if r.code == 0]
    assert len(refused) + len(done) == 6 and len(done) >= 2 and refused, [r.message for r in replies.values()]
    assert all("max-jobs-per-client" in r.message for r in refused)


async def test_the_async_client_sends_scalar_jobs_on_one_stream_per_node(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3)
    leader = cluster.leader()
    assert leader is not None
    async with AsyncClient(leader.config.address, timeout=30) as client:
        answers = await asyncio.gather(*(client.submit(op="sum", source=f"range:n={n}") for n in range(1, 41)))
        assert [a.result for a in answers] == [n * (n - 1) // 2 for n in range(1, 41)]
        assert list(client._streams._open) == [leader.config.address] and not client._streams.unsupported
        again = await client.submit(op="sum", source="values:1,2,3")  # the same stream, no new one
        assert again.result == 6 and len(client._streams._open) == 1


JOB = {"op": "sum", "source": "range:n=1000000000", "job_id": "x"}


def crossing_async(cluster: LocalCluster, first: list[str], leader: str) -> Answer:
    """The AsyncClient's job, its leader killed once the job is under way."""
    async def crossing() -> Answer:
        async with AsyncClient(first, timeout=120) as client:
            job = asyncio.create_task(client.submit(**JOB))
            deadline = time.monotonic() + 60
            while (await client.progress("x") or (0, 0))[0] == 0:  # under way on the leader
                assert time.monotonic() < deadline and not job.done(), "the job never started"
                await asyncio.sleep(0.01)
            cluster.kill(leader)  # its stream breaks mid-job
            return await job

    return asyncio.run(crossing())


def crossing_blocking(cluster: LocalCluster, first: list[str], leader: str) -> Answer:
    """The blocking Client's job, from a thread of its own, on that thread's stream."""
    with Client(first, timeout=120) as client:
        answers: list[Answer] = []
        job = threading.Thread(target=lambda: answers.append(client.submit(**JOB)))
        job.start()
        deadline = time.monotonic() + 60
        while (client.progress("x") or (0, 0))[0] == 0:  # under way on the leader
            assert time.monotonic() < deadline and job.is_alive(), "the job never started"
            time.sleep(0.01)
        assert any(stream.replied == 0 for stream in client._streams._open.values())  # on a stream
        cluster.kill(leader)  # its stream breaks mid-job
        job.join(timeout=120)
    [answer] = answers
    return answer


@pytest.mark.process
@pytest.mark.parametrize("crossing", [crossing_async, crossing_blocking], ids=["async", "blocking"])
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
