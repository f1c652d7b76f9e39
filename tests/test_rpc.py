"""The in-process RPC layer: servicer and client over 127.0.0.1, real gRPC, real clock.

Covers the job contract end to end without processes: answers, bad input
(status code and a message naming the field), job id semantics, forwarding,
bit-identity across node counts, and hostile peer messages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inproc import StartCluster

from node import AsyncClient, InvalidJob
from node._proto import distnode_pb2 as pb
from node.core.compute import reduce_all, validate_job
from node.core.job import Job

SMALL_SHARDS = 1 << 12


async def heartbeat_once(stub: Any, request: Any) -> list[Any]:
    """One request on the Heartbeat stream; the replies (or the stream's error)."""
    return [reply async for reply in stub.Heartbeat(iter([request]))]


async def test_single_node_answers_sum_exactly(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    async with AsyncClient(cluster.addresses) as client:
        answer = await client.submit(op="sum", source="range:n=1000000")
    assert answer.result == 999999 * 1000000 // 2
    assert isinstance(answer.result, int)
    assert answer.leader == "n1" and answer.retries == 0 and answer.shards == 1


async def test_three_nodes_split_a_job_and_merge_in_order(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3, shard_elems=SMALL_SHARDS)
    source = "random:n=200000,seed=7"
    async with AsyncClient(cluster.addresses) as client:
        answer = await client.submit(op="var", source=source)
    job = Job(op="var", source=source)
    expected = reduce_all(job, validate_job(job), SMALL_SHARDS)
    assert answer.result == expected.item()  # bit for bit
    assert answer.shards == -(-200000 // SMALL_SHARDS)
    reference = np.var(validate_job(job).read(0, 200000))
    assert answer.result == pytest.approx(float(reference), rel=1e-12)


@pytest.mark.parametrize(
    ("op", "options"),
    [
        ("sum", {}), ("mean", {"map": "square"}), ("std", {}), ("argmax", {}), ("min", {"map": "negative"}),
        ("histogram", {"bins": 16, "range": (-3.0, 3.0)}),
    ],
)
async def test_answers_bit_identical_on_1_and_3_nodes(
    start_cluster: StartCluster, op: str, options: dict[str, Any]
) -> None:
    source = "random:n=100000,seed=11,dist=normal"
    answers = []
    for nodes in (1, 3):
        cluster = await start_cluster(nodes, shard_elems=SMALL_SHARDS)
        async with AsyncClient(cluster.addresses) as client:
            answers.append((await client.submit(op=op, source=source, **options)).result)
    assert answers[0] == answers[1]


async def test_axis0_vector_reduce(start_cluster: StartCluster, tmp_path: Path) -> None:
    data = np.arange(3 * 1000, dtype=np.float64).reshape(3, 1000)
    path = tmp_path / "m.npy"
    np.save(path, data)
    cluster = await start_cluster(3, shard_elems=1000)
    async with AsyncClient(cluster.addresses) as client:
        answer = await client.submit(op="sum", source=f"npy:{path}", axis=0)
    assert answer.result == data.sum(axis=0).tolist()
    assert answer.shards == 3


async def test_submit_to_a_follower_is_forwarded(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    follower = next(d for d in cluster.daemons if d is not leader)
    async with AsyncClient([follower.config.address]) as client:
        answer = await client.submit(op="count", source="values:1,2,3,4")
    assert answer.result == 4
    assert answer.leader == leader.node_id


async def test_same_job_id_returns_the_same_answer(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    async with AsyncClient(cluster.addresses) as client:
        first = await client.submit(op="sum", source="random:n=1000,seed=1", job_id="j1")
        second = await client.submit(op="sum", source="random:n=1000,seed=1", job_id="j1")
        with pytest.raises(InvalidJob, match="job_id: 'j1' was already used for a different job"):
            await client.submit(op="max", source="random:n=1000,seed=1", job_id="j1")
    assert first.result == second.result
    assert cluster.daemons[0].jobs.progress("j1") == (True, 1, 1)


def _write_text_npy(tmp_path: Path) -> str:
    path = tmp_path / "text.npy"
    path.write_text("not numpy at all")
    return str(path)


def _write_object_npy(tmp_path: Path) -> str:
    path = tmp_path / "strings.npy"
    np.save(path, np.array(["a", "b"]))
    return str(path)


BAD_JOBS: list[tuple[dict[str, Any], grpc.StatusCode, str]] = [
    ({"op": "sums", "source": "range:n=3"}, grpc.StatusCode.INVALID_ARGUMENT, "op:"),
    ({"op": "sum", "source": "range:n=3", "map": "cube"}, grpc.StatusCode.INVALID_ARGUMENT, "map:"),
    ({"op": "sum", "source": "bogus:n=3"}, grpc.StatusCode.INVALID_ARGUMENT, "source:"),
    ({"op": "sum", "source": "range:count=3"}, grpc.StatusCode.INVALID_ARGUMENT, "source:"),
    ({"op": "sum", "source": "range:n=0"}, grpc.StatusCode.INVALID_ARGUMENT, "source: n must be a positive"),
    ({"op": "sum", "source": "range:n=-5"}, grpc.StatusCode.INVALID_ARGUMENT, "source:"),
    ({"op": "sum", "source": "random:n=10"}, grpc.StatusCode.INVALID_ARGUMENT, "source:"),
    ({"op": "sum", "source": "values:"}, grpc.StatusCode.INVALID_ARGUMENT, "source:"),
    ({"op": "sum", "source": "npy:no/such/file.npy"}, grpc.StatusCode.NOT_FOUND, "source: no such file"),
    ({"op": "sum", "source": "npy:/etc/passwd"}, grpc.StatusCode.PERMISSION_DENIED, "outside the data root"),
    ({"op": "sum", "source": "npy:../../x.npy"}, grpc.StatusCode.PERMISSION_DENIED, "outside the data root"),
    ({"op": "sum", "source": "values:" + "1," * 600_000 + "1"}, grpc.StatusCode.RESOURCE_EXHAUSTED, "max-inline-bytes"),
    ({"op": "sum", "source": "range:n=1e12"}, grpc.StatusCode.RESOURCE_EXHAUSTED, "max-elements"),
    ({"op": "sum", "source": "npy:{text}"}, grpc.StatusCode.INVALID_ARGUMENT, "source:"),
    ({"op": "sum", "source": "npy:{objects}"}, grpc.StatusCode.INVALID_ARGUMENT, "source:"),
    ({"op": "sum", "source": "range:n=10", "axis": 0}, grpc.StatusCode.INVALID_ARGUMENT, "axis:"),
    ({"op": "histogram", "source": "range:n=10"}, grpc.StatusCode.INVALID_ARGUMENT, "bins:"),
    ({"op": "histogram", "source": "range:n=10", "bins": 4}, grpc.StatusCode.INVALID_ARGUMENT, "range:"),
    ({"op": "sum", "source": "range:n=1e30"}, grpc.StatusCode.INVALID_ARGUMENT, "source:"),
]


async def test_bad_jobs_get_a_status_naming_the_field_and_cost_nothing(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    cluster = await start_cluster(3, shard_elems=SMALL_SHARDS)
    leader = await cluster.wait_for_leader()
    term = leader.election.term
    stub = cluster.stub(cluster.addresses[0])
    files = {"text": _write_text_npy(tmp_path), "objects": _write_object_npy(tmp_path)}
    for i, (fields, code, needle) in enumerate(BAD_JOBS):
        fields = {**fields, "source": fields["source"].format(**files)}
        spec = pb.JobSpec(job_id=f"bad{i}", **fields)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Submit(pb.SubmitRequest(job=spec), timeout=5)
        assert info.value.code() == code, (fields, info.value.details())
        assert needle in (info.value.details() or ""), (fields, info.value.details())
    async with AsyncClient(cluster.addresses) as client:
        answer = await client.submit(op="sum", source="range:n=100000")
    assert answer.result == sum(range(100000))
    assert cluster.leader() is leader and leader.election.term == term  # nobody was disturbed


async def test_client_maps_statuses_to_typed_errors(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    async with AsyncClient(cluster.addresses) as client:
        with pytest.raises(InvalidJob) as invalid:
            await client.submit(op="sum", source="range:n=0")
        assert invalid.value.field == "source"
        with pytest.raises(InvalidJob, match="NOT_FOUND: source: no such file") as missing:
            await client.submit(op="sum", source="npy:definitely/missing.npy")
        assert missing.value.field == "source"


async def test_health_service_reports_serving(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    channel = grpc.aio.insecure_channel(cluster.addresses[0])
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "distnode.v1.Node"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()


async def test_hostile_peer_messages_are_rejected(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    stub = cluster.stub(cluster.addresses[0])
    job = pb.JobSpec(job_id="x", op="sum", source="range:n=10")
    cases = [
        (stub.RequestVote(pb.VoteRequest(term=99)), "candidate_id"),
        (heartbeat_once(stub, pb.HeartbeatRequest(term=99)), "leader_id"),
        (stub.Compute(pb.ComputeRequest(job=job, shards=[pb.Shard(index=0, start=5, stop=50)],
                                        reduce_to=cluster.addresses[0], leader_id="n1")), "own id"),
        (stub.RequestVote(pb.VoteRequest(term=2**63, candidate_id="n1")), "own id"),
        (stub.Compute(pb.ComputeRequest(job=job, reduce_to=cluster.addresses[0])), "leader_id"),
        (stub.Submit(pb.SubmitRequest(job=pb.JobSpec(op="sum", source="range:n=3"))), "job_id"),
    ]
    for call, needle in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED)
        assert needle in (info.value.details() or "")
    bad_tensor = pb.Partial(job_id="x", shard=0, node_id="evil")
    bad_tensor.state["sum"].CopyFrom(pb.Tensor(dtype="<f8", shape=[4], data=b"123"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Reduce(iter([bad_tensor]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown_job = pb.Partial(job_id="nobody", shard=0, node_id="evil")
    unknown_job.state["sum"].CopyFrom(pb.Tensor(dtype="<f8", shape=[], data=b"\0" * 8))
    reply = await stub.Reduce(iter([unknown_job]))
    assert (reply.accepted, reply.dropped) == (0, 1)
    assert cluster.daemons[0].is_leader  # a vote request at term 99 without an id changed nothing


async def test_outsiders_cannot_vote_lead_or_send_partials(start_cluster: StartCluster) -> None:
    """A node with the right token but not in --peers changes nothing (rogue peer)."""
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    term = leader.election.term
    follower = next(d for d in cluster.daemons if d is not leader)
    stub = cluster.stub(follower.config.address)
    forged = [
        stub.RequestVote(pb.VoteRequest(term=term + 50, candidate_id="rogue")),
        stub.RequestVote(pb.VoteRequest(term=term + 50, candidate_id="rogue", pre_vote=True)),
        heartbeat_once(stub, pb.HeartbeatRequest(term=term + 50, leader_id="rogue", leader_address="127.0.0.1:1")),
        stub.Compute(pb.ComputeRequest(job=pb.JobSpec(job_id="r", op="sum", source="range:n=10"),
                                       shards=[pb.Shard(index=0, start=0, stop=10)],
                                       reduce_to="127.0.0.1:1", leader_id="rogue")),
    ]
    for call in forged:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'rogue' is not a member" in (info.value.details() or "")
    partial = pb.Partial(job_id="any", shard=0, node_id="rogue")
    partial.state["sum"].CopyFrom(pb.Tensor(dtype="<i8", shape=[], data=b"\0" * 8))
    reply = await cluster.stub(leader.config.address).Reduce(iter([partial]))
    assert reply.dropped == 1
    assert all(d.election.term == term for d in cluster.daemons)
    assert cluster.leader() is leader
    async with AsyncClient(cluster.addresses) as client:
        assert (await client.submit(op="sum", source="range:n=10")).result == 45


def test_worker_rejects_shards_outside_the_source() -> None:
    from node.core.compute import InvalidField, open_source
    from node.server.worker import check_ranges

    source = open_source("range:n=10")
    check_ranges([(0, 0, 5), (1, 5, 10)], source)
    for bad in [(0, 5, 50), (0, 5, 5), (0, 7, 3)]:
        with pytest.raises(InvalidField, match="shards: shard 0 rows"):
            check_ranges([bad], source)


async def test_a_node_that_cannot_persist_refuses_newer_terms_says_why_and_heals(
    start_cluster: StartCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Raft §5.2 with a full disk: a vote that cannot be made durable is refused, not
    an error; memory stays at the disk's term so the survivor's term does not climb;
    one ERROR line per episode names the file and the errno, and Status carries it;
    once the disk takes writes again the node clears it by itself and votes."""
    import errno

    from inproc import poll

    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    broken, healthy = (d for d in cluster.daemons if d is not leader)
    drivers = broken.elections
    term = drivers.election.term
    attempts: list[object] = []
    real_save = drivers.store.save

    def full_disk(state: object) -> None:
        attempts.append(state)
        raise OSError(errno.ENOSPC, "No space left on device")

    drivers.store.save = full_disk  # type: ignore[method-assign]
    leader.stop()  # the survivor campaigns, and needs the broken node's vote
    await poll(lambda: len(attempts) >= 10, timeout_s=20, what="the broken node to try its disk again and again")
    assert (drivers.election.term, drivers.terms.durable.term) == (term, term)
    assert healthy.election.term <= term + 2, "the survivor's term climbed"
    assert drivers.election.role.value != "leader" and healthy.election.role.value != "leader"
    lines = [r for r in caplog.records if "cannot persist term" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "ERROR"
    assert "election.json" in lines[0].getMessage() and "No space left on device" in lines[0].getMessage()
    status = await cluster.stub(broken.config.address).Status(pb.StatusRequest())
    assert status.nodes[0].storage_error.endswith("election.json: No space left on device")
    vote = await cluster.stub(broken.config.address).RequestVote(
        pb.VoteRequest(term=term + 9, candidate_id=healthy.node_id, pre_vote=False))
    assert (vote.granted, vote.term) == (False, term)

    drivers.store.save = real_save  # type: ignore[method-assign]
    await poll(lambda: not drivers.terms.error and any(d.is_leader for d in (broken, healthy)),
               timeout_s=10, what="the healed node to clear its error and a leader to be elected")
    assert "is writable again" in caplog.text
    async with AsyncClient([broken.config.address, healthy.config.address]) as client:
        assert (await client.submit(op="sum", source="range:n=10", timeout=10)).result == 45


async def test_the_leaders_status_shows_a_followers_storage_error(start_cluster: StartCluster) -> None:
    """A follower's disk trouble travels in its heartbeat replies, so the leader's
    status (the one clients print) names it, and drops it once the follower's
    retry finds the disk writable again."""
    from inproc import poll

    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    follower = next(d for d in cluster.daemons if d is not leader)
    async with AsyncClient([leader.config.address]) as client:

        async def row() -> Any:
            status = await client.status(timeout=2)
            assert status.answered_by == leader.node_id
            return next(n for n in status.nodes if n.id == follower.node_id)

        real_save = follower.elections.store.save

        def full_disk(state: object) -> None:
            raise OSError(28, "No space left on device")

        # An episode as a failed vote starts it (a follower inside its leader's
        # lease writes nothing, so the test opens the episode itself).
        follower.elections.store.save = full_disk  # type: ignore[method-assign]
        follower.elections.terms.error = "data/election.json: No space left on device"
        await poll(lambda: leader.peers.get(follower.config.address).storage_error != "",  # type: ignore[union-attr]
                   what="the leader to hear the follower's error")
        assert (await row()).storage_error.endswith("election.json: No space left on device")
        follower.elections.store.save = real_save  # type: ignore[method-assign]
        await poll(lambda: leader.peers.get(follower.config.address).storage_error == "",  # type: ignore[union-attr]
                   what="the leader to hear it is gone")
        assert (await row()).storage_error is None
