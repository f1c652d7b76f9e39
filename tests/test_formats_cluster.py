"""File formats on in-process clusters (real gRPC on 127.0.0.1).

1. Every layout and op gives the same bits on 1 node and on 3.
2. Nodes advertise what they read; a node that cannot read a format gets
   none of its shards, and one that is asked anyway (or leads) answers
   FAILED_PRECONDITION naming the extra.
3. Hostile files are refused with the right status while another job runs,
   which is not disturbed.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from formats_data import write
from inproc import CALM, InProcessCluster, StartCluster, poll

from node import AsyncClient, InvalidJob, JobError
from node._proto import distnode_pb2 as pb
from node.core.job import OPS
from node.formats import LIBRARIES

SHARD_ELEMS = 2000
#: Layouts with 2-D data (Parquet holds one column).
LAYOUTS_2D = ("zarr3", "zarr3-sharded", "zarr2-blosc", "hdf5-chunked", "hdf5-contiguous")


def jobs_for(data: Any) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = [{"op": op} for op in OPS if op != "histogram"]
    jobs.append({"op": "histogram", "bins": 7, "range": (-3.0, 3.0)})
    jobs += [{"op": "std", "map": "exp"}, {"op": "sum", "map": "square"}]
    if data.ndim == 2:
        jobs += [{"op": op, "axis": 0} for op in ("sum", "mean", "argmax", "var")]
    return jobs


async def test_one_node_and_three_nodes_give_the_same_bits(start_cluster: StartCluster, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    matrix = rng.standard_normal((6000, 3))
    sources = {layout: (write(layout, tmp_path, layout, matrix, 250), matrix) for layout in LAYOUTS_2D}
    column = rng.standard_normal(20_000)
    sources["parquet-dir"] = (write("parquet-dir", tmp_path, "pq", column, 900), column)
    one = await start_cluster(1, shard_elems=SHARD_ELEMS)
    three = await start_cluster(3, shard_elems=SHARD_ELEMS)
    async with AsyncClient(one.addresses) as alone, AsyncClient(three.addresses) as together:
        for layout, (spec, data) in sources.items():
            for job in jobs_for(data):
                first = await alone.submit(source=spec, **job)
                second = await together.submit(source=spec, **job)
                what = f"{layout} {job}"
                assert first.array.dtype == second.array.dtype, what
                assert first.array.tobytes() == second.array.tobytes(), what
                assert first.shards == second.shards > 1, what
            assert len(second.nodes) > 1, f"{layout}: the 3-node cluster did not spread the job"


async def submit_raw(cluster: InProcessCluster, address: str, spec: str) -> pb.SubmitReply:
    return await cluster.stub(address).Submit(pb.SubmitRequest(job=pb.JobSpec(job_id="raw", op="sum", source=spec)))


async def test_a_node_restarted_without_a_format_is_given_none_of_its_shards(
    start_cluster: StartCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = np.arange(40_000, dtype=np.float64)
    spec = write("zarr3", tmp_path, "z", data, 500)
    # CALM: a stall of the shared event loop while the node restarts must
    # not let the restarted node win an election (it would lead without zarr).
    cluster = await start_cluster(3, shard_elems=SHARD_ELEMS, **CALM)
    leader = await cluster.wait_for_leader()
    others = [d for d in cluster.daemons if d is not leader]
    # A worker gets lanes once the leader has heard it: the first job must not race that.
    await poll(lambda: len(leader.peers.alive_addresses()) == 2, what="the leader hearing both workers")
    async with AsyncClient([leader.config.address]) as client:
        with caplog.at_level(logging.INFO, logger="distnode.jobs"):
            before = await client.submit(op="sum", source=spec)
        assert set(before.nodes) == {"n1", "n2", "n3"}, caplog.text  # all three read zarr at first

        plain = await cluster.restart(others[0].node_id, formats=("hdf5", "parquet"))
        status = await cluster.stub(plain.config.address).Status(pb.StatusRequest())
        assert "zarr" not in status.sources and {"npy", "hdf5", "parquet"} <= set(status.sources)

        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="distnode.jobs"):
            after = await client.submit(op="sum", source=spec)
        assert after.array.tobytes() == before.array.tobytes()
        assert set(after.nodes) == {leader.node_id, others[1].node_id}, after.nodes
        assert "failed" not in caplog.text, caplog.text  # not tried and refused: never asked
        known = leader.peers.get(plain.config.address)
        assert known is not None and known.sources is not None and "zarr" not in known.sources
        # Other sources still go to it.
        assert plain.node_id in (await client.submit(op="sum", source="random:n=1e5,seed=1")).nodes

    # Asked anyway (a leader that did not know), it refuses, naming the extra.
    request = pb.ComputeRequest(job=pb.JobSpec(job_id="direct", op="sum", source=spec),
                                shards=[pb.Shard(index=0, start=0, stop=500)],
                                term=leader.election.term, leader_id=leader.node_id)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cluster.stub(plain.config.address).Compute(request)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "does not read zarr" in (info.value.details() or "")
    assert "pip install 'distnode[formats]'" in (info.value.details() or "")


async def test_a_leader_without_the_format_answers_failed_precondition(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    spec = write("parquet-file", tmp_path, "p", np.arange(100.0), 10)
    cluster = await start_cluster(1, formats=())
    async with AsyncClient(cluster.addresses) as client:
        with pytest.raises(JobError, match=r"FAILED_PRECONDITION: source: this node does not read parquet"):
            await client.submit(op="sum", source=spec)
        assert (await client.submit(op="sum", source="values:1,2")).result == 3
    status = await cluster.stub(cluster.addresses[0]).Status(pb.StatusRequest())
    assert not set(status.sources) & set(LIBRARIES)


async def test_hostile_files_are_refused_and_disturb_no_other_job(
    start_cluster: StartCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import h5py

    caplog.set_level(logging.INFO, logger="distnode")  # a failure's report shows who led when

    good = np.random.default_rng(3).standard_normal(2_000_000)
    good_spec = write("zarr3-zstd", tmp_path, "good", good, 4000)
    bad_chunk = tmp_path / write("zarr3", tmp_path, "bad", np.arange(10_000.0), 1000).partition(":")[2] / "c" / "4"
    bad_chunk.write_bytes(bad_chunk.read_bytes()[:13])
    with h5py.File(tmp_path / "links.h5", "w") as handle:
        handle.create_group("loop")
        handle["loop/again"] = h5py.SoftLink("/loop")
    (tmp_path / "text.parquet").write_text("not parquet at all")
    hostile = {
        "zarr:bad.zarr": (InvalidJob, "INVALID_ARGUMENT: source: zarr: bad.zarr: cannot read rows [4000, 5000): the chunk holds 13 bytes"),
        "hdf5:links.h5#/loop/again/x": (InvalidJob, "'again' is a soft link"),
        "parquet:text.parquet#x": (InvalidJob, "text.parquet: not a readable Parquet file"),
        "zarr:../outside.zarr": (InvalidJob, "outside the data root"),
    }
    cluster = await start_cluster(3, shard_elems=SHARD_ELEMS)
    async with AsyncClient(cluster.addresses) as client:
        running = asyncio.create_task(client.submit(op="var", source=good_spec, job_id="good"))
        await cluster.wait_for_leader()
        # On whichever node leads: a stall of the shared loop may move the leadership, and
        # the client's retry then runs the job on the new leader.
        await poll(lambda: any(d.shard_progress("good")[0] > 0 for d in cluster.daemons), what="the good job under way")
        for spec, (error, message) in hostile.items():
            with pytest.raises(error) as info:
                await client.submit(op="sum", source=spec)
            assert message in str(info.value), str(info.value)
        assert not running.done()  # a thousand shards: the refusals came while it ran
        answer = await running
        assert answer.result == pytest.approx(float(np.var(good)), rel=1e-12)
        assert (await client.submit(op="sum", source=good_spec)).array.tobytes() == (
            await client.submit(op="sum", source=good_spec)
        ).array.tobytes()
