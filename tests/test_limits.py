"""Limits: exceeding one gives RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED naming it, and costs nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from inproc import StartCluster, poll

from node import AsyncClient, JobError
from node._proto import distnode_pb2 as pb
from node.core.job import Job
from node.core.limits import Limits
from node.errors import LimitExceeded, NotLeader

LONG_JOB = {"op": "sum", "source": "random:n=3e7,seed=1"}


async def test_message_size_limit(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1, limits=Limits(max_message_bytes=64 << 10))
    stub = cluster.stub(cluster.addresses[0])
    big = pb.JobSpec(job_id="big", op="sum", source="values:" + ",".join(["1"] * 40_000))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Submit(pb.SubmitRequest(job=big), timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    async with AsyncClient(cluster.addresses) as client:
        assert (await client.submit(op="sum", source="values:1,2")).result == 3


async def test_one_message_size_setting_reaches_server_peers_and_clients(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    """--max-message-bytes sets the server's limit and the node's own channels to its
    peers; a client's `max_message_bytes` bounds what it accepts."""
    limit = 1 << 20
    cluster = await start_cluster(2, limits=Limits(max_message_bytes=limit))
    for daemon in cluster.daemons:
        options = dict(daemon.stubs.factory.options())
        assert options["grpc.max_receive_message_length"] == limit
        assert options["grpc.max_send_message_length"] == limit
    np.save(tmp_path / "wide.npy", np.ones((2, 1000)))  # an 8,000-byte answer
    async with AsyncClient(cluster.addresses, max_message_bytes=4096) as client:
        with pytest.raises(JobError, match="RESOURCE_EXHAUSTED"):
            await client.submit(op="sum", source="npy:wide.npy", axis=0)
    async with AsyncClient(cluster.addresses) as client:
        assert (await client.submit(op="sum", source="npy:wide.npy", axis=0)).result == [2.0] * 1000


async def test_vector_limit(start_cluster: StartCluster, tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", np.ones((2, 100)))
    cluster = await start_cluster(1, limits=Limits(max_vector=50))
    stub = cluster.stub(cluster.addresses[0])
    spec = pb.JobSpec(job_id="wide", op="sum", source="npy:wide.npy", axis=0)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Submit(pb.SubmitRequest(job=spec), timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max-vector (50)" in (info.value.details() or "")


async def test_concurrent_job_limits_and_job_deadline(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(
        1, shard_elems=1 << 16, limits=Limits(max_jobs=1, max_jobs_per_client=1, job_timeout_s=60)
    )
    leader = cluster.daemons[0]
    stub = cluster.stub(cluster.addresses[0])
    first = asyncio.ensure_future(stub.Submit(pb.SubmitRequest(job=pb.JobSpec(job_id="long", **LONG_JOB))))
    await poll(lambda: leader.jobs.progress("long")[0], what="the long job to start")
    for job_id in ("second", "third"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Submit(pb.SubmitRequest(job=pb.JobSpec(job_id=job_id, op="sum", source="range:n=5")))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max-jobs-per-client: 1" in (info.value.details() or "")
    other = cluster.stub(cluster.addresses[0])  # another connection: per-client limit is fine...
    other.__dict__.clear()
    async with AsyncClient(cluster.addresses) as client:  # ...but the node-wide limit is not
        with pytest.raises(JobError, match="RESOURCE_EXHAUSTED: max-jobs: 1 jobs already running"):
            await client.submit(op="sum", source="range:n=5")
    assert (await first).shards > 1
    async with AsyncClient(cluster.addresses) as client:
        assert (await client.submit(op="sum", source="range:n=5")).result == 10


async def test_job_deadline_and_leader_stays(start_cluster: StartCluster) -> None:
    # Three daemons share this process's GIL with the job's threads: give the
    # election the slack a real deployment has (5+ heartbeats per timeout).
    cluster = await start_cluster(
        3, shard_elems=1 << 16, limits=Limits(job_timeout_s=0.2),
        heartbeat_ms=20, election_ms_min=200, election_ms_max=400,
    )
    leader = await cluster.wait_for_leader()
    term = leader.election.term
    async with AsyncClient(cluster.addresses) as client:
        with pytest.raises(JobError, match="DEADLINE_EXCEEDED: job-timeout-s"):
            await client.submit(**LONG_JOB)
        assert (await client.submit(op="count", source="range:n=7")).result == 7
    assert cluster.leader() is leader and leader.election.term == term


async def test_detached_jobs_count_against_their_client_where_it_calls(start_cluster: StartCluster) -> None:
    """Enqueue through a follower took no slot there and one of the follower's own connection on
    the leader: a follower's clients were not limited at all where they called, and all shared
    one limit at the leader. Now, as for Submit, the node a client calls counts its jobs."""
    cluster = await start_cluster(3, limits=Limits(max_jobs_per_client=1))
    leader = cluster.leader()
    assert leader is not None
    follower = next(d for d in cluster.daemons if d is not leader)
    relayed, release = asyncio.Event(), asyncio.Event()

    async def held(*args: object) -> object:
        relayed.set()
        await release.wait()  # the leader has not answered yet: the client's slot is held
        raise NotLeader("released")

    follower.relay.enqueue = held  # type: ignore[assignment,method-assign]
    first = asyncio.ensure_future(follower.enqueue("a", Job("sum", "values:1"), "client-1", forwarded=False))
    await relayed.wait()
    try:
        with pytest.raises(LimitExceeded, match="max-jobs-per-client: 1"):
            await asyncio.wait_for(follower.enqueue("b", Job("sum", "values:2"), "client-1", forwarded=False), 5)
    finally:
        release.set()
    with pytest.raises(NotLeader):
        await first
    for job_id in ("c", "d"):  # relayed ones take none on the leader: their client was counted
        with leader.clients.take("one-follower-connection"):
            view = await leader.enqueue(job_id, Job("sum", "values:3"), "one-follower-connection", forwarded=True)
        assert view.record.state == "queued"
