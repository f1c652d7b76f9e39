"""Detached jobs and the job table in real daemons (in-process, real gRPC and UDP):
acknowledged only once committed, resumed by a new leader, readable from any node,
kept across a restart of every node, cancelled, refused when the disk is full."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inproc import InProcessCluster, StartCluster, poll
from msgspec.structs import replace

from node import AsyncClient, Client
from node.core.jobtable import decode_command
from node.core.limits import Limits
from node.core.raftlog import Entry
from node.errors import (
    InvalidJob,
    JobCancelled,
    JobError,
    JobFinished,
    JobPending,
    LimitExceeded,
    NotLeader,
    UnknownJob,
)
from node.server import compaction, ledger
from node.server.daemon import Daemon

#: Jobs of many shards (shard_elems below): long enough to be caught running.
SHARDS = {"shard_elems": 1 << 16}
BIG = "range:n=4e7"


def records_in_journal(daemon: Daemon, job_id: str) -> list[str]:
    """The states of `job_id` in what this node's journal holds (fsync'd), in log order."""
    raft_log = daemon.journal.log
    states = []
    for entry in raft_log.entries(raft_log.snapshot_index + 1) if raft_log.last_index > raft_log.snapshot_index else ():
        if entry.kind == "command" and decode_command(entry.data).job_id == job_id:
            states.append(decode_command(entry.data).state)
    return states


def leader_running(cluster: InProcessCluster, job_id: str) -> Daemon | None:
    """The leader, once its record of `job_id` says running (a little after the run begins)
    and a shard of it has been merged; else None."""
    leader = cluster.leader()
    record = leader.ledger.table.get(job_id) if leader is not None else None
    if leader is None or record is None or record.state != "running":
        return None
    return leader if leader.jobs.progress(job_id)[1] > 0 else None


async def other_client(cluster: InProcessCluster, but: Daemon) -> AsyncClient:
    return AsyncClient([d.config.address for d in cluster.daemons if d is not but], timeout=20)


async def test_a_detached_job_is_acknowledged_only_once_a_majority_has_it_on_disk(
    start_cluster: StartCluster,
) -> None:
    cluster = await start_cluster(3, **SHARDS)
    async with AsyncClient(cluster.addresses, timeout=20) as client:
        job_id = await client.submit(op="sum", source=BIG, detach=True)
        holders = [d.node_id for d in cluster.daemons if records_in_journal(d, job_id)[:1] == ["queued"]]
        assert len(holders) >= 2, f"acknowledged with the record on disk at {holders} only"
        answer = await client.result(job_id, wait=20)
        attached = await client.submit(op="sum", source=BIG)
    assert answer.array.tobytes() == attached.array.tobytes() and answer.result == 4e7 * (4e7 - 1) / 2
    for daemon in cluster.daemons:  # every node applied the same states, forward only
        await poll(lambda d=daemon: d.ledger.table.get(job_id) is not None
                   and d.ledger.table.get(job_id).state == "done", what="done everywhere")  # type: ignore[union-attr]
    leader = cluster.leader()
    assert leader is not None and records_in_journal(leader, job_id) == ["queued", "running", "done"]


async def test_a_new_leader_resumes_every_queued_and_running_job_without_a_client(
    start_cluster: StartCluster,
) -> None:
    # max-jobs 2: detached jobs run one at a time, so most are still queued when the leader dies.
    cluster = await start_cluster(3, limits=Limits(max_jobs=2), **SHARDS)
    leader = cluster.leader()
    assert leader is not None
    async with AsyncClient(leader.config.address, timeout=20) as client:
        ids = [await client.submit(op="sum", source=f"range:n={30_000_000 + i}", detach=True) for i in range(8)]
    # Under load the leader may have changed meanwhile (its follower then relayed the submits), and a
    # new one applies what it inherited only once its own no-op commits: ask the leader of now.
    leader = await cluster.wait_for_leader()
    await poll(lambda: all(leader.ledger.table.get(i) is not None for i in ids), 10.0, "every job in its table")
    states = {leader.ledger.table.get(i).state for i in ids}  # type: ignore[union-attr]
    assert "queued" in states, states
    leader.stop()
    async with await other_client(cluster, leader) as client:
        answers = [await client.result(i, wait=60) for i in ids]
    assert [a.result for a in answers] == [(30_000_000 + i) * (29_999_999 + i) // 2 for i in range(8)]
    assert any(d.is_leader for d in cluster.daemons if d is not leader), "answered without a new leader"


@pytest.mark.parametrize("trigger", ["entries", "bytes"])
async def test_finished_jobs_survive_a_restart_of_every_node_with_snapshots(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch, trigger: str
) -> None:
    # Several snapshots within this test, taken for either reason.
    monkeypatch.setattr(compaction, "COMPACT_ENTRIES", 16 if trigger == "entries" else 1 << 30)
    monkeypatch.setattr(compaction, "COMPACT_BYTES", 2_000 if trigger == "bytes" else 1 << 30)
    cluster = await start_cluster(3)
    async with AsyncClient(cluster.addresses, timeout=20) as client:
        detached = [await client.submit(op="mean", source=f"values:{i},2,3", detach=True) for i in range(30)]
        for i in range(30):
            await client.submit(op="max", source=f"values:{i},7", job_id=f"a{i}")
        answers = [await client.result(i, wait=10) for i in detached]
    # Under load the leader may change meanwhile (two nodes may both think they lead for a moment).
    leader = await cluster.wait_for_leader()
    await poll(lambda: all(d.ledger.table.get("a29") is not None for d in cluster.daemons),
               what="the attached jobs' records everywhere")
    assert leader.journal.snapshot.index > 0, "no snapshot was taken"
    configs = [d.config for d in cluster.daemons]
    for daemon, task in zip(cluster.daemons, cluster.tasks, strict=True):
        daemon.stop()
        await task
    restarted = [Daemon(replace(c)) for c in configs]
    cluster.daemons[:] = restarted
    cluster.tasks[:] = [asyncio.create_task(d.serve(handle_signals=False)) for d in restarted]
    await cluster.wait_for_leader()
    async with AsyncClient(cluster.addresses, timeout=20) as client:
        again = [await client.result(i) for i in detached]
        assert [a.result for a in again] == [a.result for a in answers] == [(i + 5) / 3 for i in range(30)]
        assert (await client.result("a7")).result == 7
        listed = await client.jobs(limit=1000)
    assert {j.job_id for j in listed} >= {*detached, *(f"a{i}" for i in range(30))}
    assert all(j.state == "done" for j in listed)


async def test_any_node_answers_result_and_jobs_and_a_reused_id_is_refused_on_any_leader(
    start_cluster: StartCluster,
) -> None:
    cluster = await start_cluster(3)
    leader = cluster.leader()
    assert leader is not None
    async with AsyncClient(leader.config.address, timeout=20) as client:
        await client.submit(op="sum", source="values:1,2,3", job_id="j1")
    # Recorded after the answer, batched: a leader that dies within ATTACHED_FLUSH_S may not have.
    await poll(lambda: all(d.ledger.table.get("j1") is not None for d in cluster.daemons), what="j1's record")
    leader.stop()
    async with await other_client(cluster, leader) as client:
        for daemon in cluster.daemons:
            if daemon is not leader:
                async with AsyncClient(daemon.config.address, timeout=20) as one:
                    assert (await one.result("j1", wait=5)).result == 6
        with pytest.raises(InvalidJob, match=r"ALREADY_EXISTS.*j1"):
            await client.submit(op="max", source="values:1,2,3", job_id="j1")
        with pytest.raises(InvalidJob, match=r"ALREADY_EXISTS.*j1"):
            await client.submit(op="sum", source="values:1,2,3", map="square", job_id="j1", detach=True)
        assert (await client.submit(op="sum", source="values:1,2,3", job_id="j1")).result == 6
        assert await client.submit(op="sum", source="values:1,2,3", job_id="j1", detach=True) == "j1"


async def test_cancel_ends_the_run_and_what_cannot_be_cancelled_is_refused(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3, shard_elems=1 << 22)  # 4,768 shards of 4 M elements: seconds of work
    async with AsyncClient(cluster.addresses, timeout=20) as client:
        job_id = await client.submit(op="sum", source="range:n=2e10", detach=True)
        await poll(lambda: leader_running(cluster, job_id) is not None, timeout_s=30, what="the job running")
        leader = leader_running(cluster, job_id)
        assert leader is not None
        status = await client.cancel(job_id)
        assert status.state == "cancelled"
        await poll(lambda: not leader.jobs.progress(job_id)[0], what="the run to end")
        with pytest.raises(JobCancelled, match=job_id):
            await client.result(job_id)
        again = await client.cancel(job_id)  # a retry whose first answer was lost finds it so
        assert again.state == "cancelled" and again.job_id == job_id
        with pytest.raises(UnknownJob, match=r"NOT_FOUND.*nope"):
            await client.cancel("nope")
        with pytest.raises(UnknownJob, match=r"NOT_FOUND.*nope"):
            await client.result("nope", wait=1)
        with pytest.raises(JobPending, match=r"queued|running") as pending:
            await client.result(await client.submit(op="sum", source="range:n=2e10", detach=True), wait=0.2)
        assert pending.value.state in ("queued", "running")
        done = await client.submit(op="sum", source="values:1", detach=True)
        await client.result(done, wait=5)
        with pytest.raises(JobFinished, match="already done"):
            await client.cancel(done)
    await asyncio.sleep(0)
    assert leader.ledger.table.get(job_id).state == "cancelled"  # type: ignore[union-attr]


async def test_a_running_job_says_its_progress_out_of_its_shards_on_every_node(
    start_cluster: StartCluster,
) -> None:
    """`result` of a running job says "running, D/T shards" and `jobs` lists T: the leader's
    total while it runs, where the record holds the count only once the job is done (both
    said 0 shards in all, so the progress was never shown), asked of the leader and of a
    follower, which relays the leader's view."""
    cluster = await start_cluster(3, shard_elems=1 << 22)
    async with AsyncClient(cluster.addresses, timeout=20) as client:
        job_id = await client.submit(op="sum", source="range:n=2e10", detach=True)
        await poll(lambda: leader_running(cluster, job_id) is not None, timeout_s=30, what="the job running")
        leader = leader_running(cluster, job_id)
        assert leader is not None
        total = leader.jobs.progress(job_id)[2]
        assert total == 4769, total  # 2e10 / 2^22, rounded up
        follower = next(d for d in cluster.daemons if d is not leader)
        for address in (leader.config.address, follower.config.address):
            async with AsyncClient(address, timeout=20) as one:
                with pytest.raises(JobPending, match=rf"running, \d+/{total} shards") as pending:
                    await one.result(job_id, wait=0.1)
                assert 0 < pending.value.shards_done < total and pending.value.shards == total
                listed = [job for job in await one.jobs(state="running") if job.job_id == job_id]
                assert [(job.shards, 0 < job.shards_done < total) for job in listed] == [(total, True)], listed
        await client.cancel(job_id)


async def test_bad_requests_name_the_field(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    async with AsyncClient(cluster.addresses, timeout=5) as client:
        with pytest.raises(InvalidJob, match="INVALID_ARGUMENT: op"):
            await client.submit(op="sums", source="values:1", detach=True)
        with pytest.raises(InvalidJob, match="INVALID_ARGUMENT: state"):
            await client.jobs(state="lost")
        with pytest.raises(InvalidJob, match="INVALID_ARGUMENT: limit"):
            await client.jobs(limit=10**6)
        with pytest.raises(InvalidJob, match="INVALID_ARGUMENT: job_id"):
            await client.result("")
        assert await client.jobs() == [], "a refused job leaves no record"


async def test_a_full_disk_refuses_detached_jobs_and_keeps_serving_attached_ones(
    start_cluster: StartCluster,
) -> None:
    cluster = await start_cluster(3)
    leader = cluster.leader()
    assert leader is not None
    leader.ledger.room.disk_free = lambda: 4096
    async with AsyncClient(leader.config.address, timeout=5) as client:
        with pytest.raises(LimitExceeded, match="RESOURCE_EXHAUSTED: data-dir: 4096 bytes free"):
            await client.submit(op="sum", source="values:1,2", detach=True)
        answers = [await client.submit(op="sum", source=f"values:1,{i}") for i in range(20)]
        assert [a.result for a in answers] == [1 + i for i in range(20)]
        # Their records are sized, and skipped, at the next flush.
        await poll(lambda: leader.ledger.skipped_records == 20, what="the 20 records skipped")
        assert leader.is_leader and all(leader.ledger.table.get(a.job_id) is None for a in answers)
        leader.ledger.room.disk_free = lambda: 1 << 30  # room again: detached jobs are taken at once
        leader.ledger.room.forget()  # (the attached path asks the disk once a second)
        job_id = await client.submit(op="sum", source="values:1,2", detach=True)
        assert (await client.result(job_id, wait=5)).result == 3
        # A skipped record is not taken for one on its way: the job submitted again is recorded.
        again = await client.submit(op="sum", source="values:1,3", job_id=answers[3].job_id)
        assert again.result == 4
        await poll(lambda: leader.ledger.table.get(again.job_id) is not None, what="the record")


async def test_a_disk_that_cannot_be_asked_skips_the_records_not_the_answers(start_cluster: StartCluster) -> None:
    """Free space is asked of the disk as a job's record is made; an error there (a data dir
    gone) failed the job's submit after the job had run."""
    cluster = await start_cluster(3)
    leader = cluster.leader()
    assert leader is not None

    def gone() -> int:
        raise FileNotFoundError("no such data dir")

    leader.ledger.room.disk_free = gone
    leader.ledger.room.forget()
    async with AsyncClient(leader.config.address, timeout=5) as client:
        answers = [await client.submit(op="sum", source=f"values:2,{i}") for i in range(5)]
        assert [a.result for a in answers] == [2 + i for i in range(5)]
        await poll(lambda: leader.ledger.skipped_records == 5, what="the 5 records skipped")
        leader.ledger.room.disk_free = lambda: 1 << 30
        leader.ledger.room.forget()
        later = await client.submit(op="sum", source="values:2,9")
        await poll(lambda: leader.ledger.table.get(later.job_id) is not None, what="the next job's record")
    assert leader.is_leader and all(leader.ledger.table.get(a.job_id) is None for a in answers)


async def test_the_sources_of_live_detached_jobs_are_bounded_in_bytes(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `values:` source may be 1 MiB, and a queued or running job's record keeps it on every
    node: MAX_LIVE_JOBS of them would be 10 GiB. Their bytes together are bounded too."""
    monkeypatch.setattr(ledger, "MAX_LIVE_SOURCE_BYTES", 40)
    cluster = await start_cluster(1)
    async with AsyncClient(cluster.addresses, timeout=5) as client:
        source = "values:" + "1," * 20 + "1"
        with pytest.raises(LimitExceeded, match=f"RESOURCE_EXHAUSTED: source: .* hold 0 bytes of sources, "
                                                f"and {len(source)} more would pass 40"):
            await client.submit(op="sum", source=source, detach=True)
        assert (await client.submit(op="sum", source=source)).result == 21, "attached jobs still run"
        job_id = await client.submit(op="sum", source="values:1,2", detach=True)
        assert (await client.result(job_id, wait=5)).result == 3


async def test_attached_jobs_are_recorded_after_their_answer_in_batches(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    cluster = await start_cluster(3)
    leader = cluster.leader()
    assert leader is not None
    appends: list[list[str]] = []
    command_entries = 0
    real_append = leader.journal.append

    def counted(after: int, entries: tuple[Entry, ...]) -> None:
        nonlocal command_entries
        commands = [e for e in entries if e.kind == "command"]
        command_entries += len(commands)
        appends.append([decode_command(line).job_id for e in commands for line in e.data.split(b"\n")])
        real_append(after, entries)

    leader.journal.append = counted  # type: ignore[method-assign]
    async with AsyncClient(leader.config.address, timeout=5) as client:
        answers = await asyncio.gather(*(client.submit(op="sum", source=f"values:{i}", job_id=f"b{i}")
                                         for i in range(50)))
        big = await client.submit(op="sum", source="random:n=40000,seed=1", axis=None, job_id="v")
        await poll(lambda: all(d.ledger.table.get("v") is not None for d in cluster.daemons), what="records")
        assert [a.result for a in answers] == list(range(50))
        recorded = [job_id for batch in appends for job_id in batch]
        assert sorted(set(recorded)) == sorted([f"b{i}" for i in range(50)] + ["v"]), recorded
        assert len([batch for batch in appends if batch]) < 25, f"about one fsync per job: {appends}"
        assert command_entries < 25, f"about one log entry per job: {command_entries} for 51 jobs"
        for daemon in cluster.daemons:
            record = daemon.ledger.table.get("b7")
            assert record is not None and record.state == "done" and record.result is not None
            assert np.frombuffer(record.result.data, record.result.dtype).item() == 7
        assert (await client.result("v")).array.tobytes() == big.array.tobytes()
        np.save(tmp_path / "wide.npy", np.ones((3, 20_000)))  # a 160-kB vector answer
        wide = await client.submit(op="sum", source="npy:wide.npy", axis=0, job_id="w")
        assert wide.array.shape == (20_000,)
        await poll(lambda: leader.ledger.table.get("w") is not None, what="the wide job's record")
        assert "160000 bytes" in (await client.jobs())[0].error  # not kept: over what a record keeps
        with pytest.raises(JobError, match=r"job w is done, but the result \(160000 bytes\) was not kept"):
            await client.result("w")
        again = await client.submit(op="sum", source="npy:wide.npy", axis=0, job_id="w")
        assert again.array.tobytes() == wide.array.tobytes(), "a job whose bytes were not kept runs again"


async def test_a_leader_answers_reads_only_once_caught_up_and_heard_by_a_quorum(
    start_cluster: StartCluster,
) -> None:
    """Raft §8: a new leader's table may lack entries committed before its term until its
    no-op is applied, and a deposed leader may not know it is; either must not answer."""
    cluster = await start_cluster(3)
    await poll(lambda: cluster.leader() is not None and cluster.leader().ledger.caught_up_term > 0,  # type: ignore[union-attr]
               what="the leader's no-op applied")
    leader = cluster.leader()
    assert leader is not None
    async with AsyncClient(leader.config.address, timeout=5) as client:
        await client.submit(op="sum", source="values:1", job_id="r1")
        await poll(lambda: leader.ledger.table.get("r1") is not None, what="r1 recorded")
        assert (await leader.result("r1", 0, forwarded=True)).record.state == "done"
        leader.ledger.caught_up_term -= 1  # as if its no-op were not applied yet
        with pytest.raises(NotLeader, match="not caught up"):
            await leader.result("r1", 0, forwarded=True)
        with pytest.raises(NotLeader, match="not caught up"):
            await leader.list_jobs(None, 10, forwarded=True)
        with pytest.raises(NotLeader, match="not caught up"):  # it said NOT_FOUND, which no client retries
            await leader.cancel("committed-before-its-term", forwarded=True)
        leader.ledger.caught_up_term += 1
        # As if no peer had answered it lately: it may be deposed without knowing yet.
        leader.election.active_peers = lambda: set()  # type: ignore[method-assign]
        with pytest.raises(NotLeader, match="quorum"):
            await leader.list_jobs(None, 10, forwarded=True)
        del leader.election.active_peers
        assert len(await leader.list_jobs(None, 10, forwarded=True)) == 1


async def test_only_a_leader_says_a_job_id_is_unknown(start_cluster: StartCluster) -> None:
    """A job acknowledged just before its leader died may be in no follower's table yet
    (they learn the commit index from the next beat): a follower with no leader to ask
    answers UNAVAILABLE for an id it does not hold, never NOT_FOUND, and the client
    goes on asking until a leader that has caught up answers."""
    cluster = await start_cluster(3)
    leader = cluster.leader()
    assert leader is not None
    follower = next(d for d in cluster.daemons if d is not leader)
    async with AsyncClient(follower.config.address, timeout=5) as client:
        with pytest.raises(UnknownJob, match=r"NOT_FOUND.*no job 'nope'.*" + leader.node_id):
            await client.result("nope")  # the leader's NOT_FOUND, passed on
    follower.relay.leader_address = lambda: ""  # type: ignore[method-assign]  # as if it had none
    with pytest.raises(NotLeader, match=r"no leader to ask.*nope"):
        await follower.result("nope", 0, forwarded=False)
    with pytest.raises(NotLeader, match=r"no leader to ask.*nope"):
        await follower.result("nope", 0, forwarded=True)


async def test_a_detached_job_keeps_the_shard_size_of_the_leader_that_took_it(start_cluster: StartCluster) -> None:
    """Nodes with different --shard-elems: the leader that takes a detached job writes its
    shard size into the record, and the leader that resumes the job cuts those shards,
    not its own (so the answer's bits do not depend on who finished it)."""
    sizes = {"n1": 1000, "n2": 3000, "n3": 7000}
    cluster = await start_cluster(3, node_overrides={n: {"shard_elems": v} for n, v in sizes.items()})
    hold = asyncio.Event()

    async def never_ends(job_id: str, job: object) -> Any:
        await hold.wait()  # the job stays running on its leader until that one dies
        raise AssertionError("unreachable")

    runs = {d.node_id: d.ledger._run for d in cluster.daemons}
    for daemon in cluster.daemons:
        daemon.ledger._run = never_ends  # type: ignore[assignment]
    async with AsyncClient(cluster.addresses, timeout=20) as client:
        job_id = await client.submit(op="sum", source="random:n=20000,seed=3", detach=True)
    await poll(lambda: cluster.leader() is not None and cluster.leader().ledger.table.get(job_id) is not None,  # type: ignore[union-attr]
               what="the record on the leader")
    leader = cluster.leader()
    assert leader is not None
    record = leader.ledger.table.get(job_id)
    assert record is not None and record.state in ("queued", "running")
    size = record.spec["shard_elems"]
    stamper = next(n for n, v in sizes.items() if v == size)
    leader.stop()
    for daemon in cluster.daemons:
        if daemon is not leader:
            daemon.ledger._run = runs[daemon.node_id]  # type: ignore[method-assign]
    async with await other_client(cluster, leader) as client:
        answer = await client.result(job_id, wait=30)
        again = await client.submit(op="sum", source="random:n=20000,seed=3")  # the new leader's own cut
    successor = next(d for d in cluster.daemons if d is not leader and d.is_leader)
    assert stamper == leader.node_id or successor.node_id != stamper
    assert answer.shards == -(-20000 // size), "resumed with the successor's shard size"
    assert again.shards == -(-20000 // sizes[successor.node_id]) != answer.shards


async def test_a_client_goes_straight_to_the_leader_once_a_job_reply_named_it(start_cluster: StartCluster) -> None:
    """A follower relays Enqueue, Result and Cancel; each reply names the leader's address,
    so a client relays through it once, not on every call."""
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    follower = next(d for d in cluster.daemons if d is not leader)
    relayed: list[str] = []
    follower.relay.on_relay = lambda: relayed.append("call")
    addresses = [follower.config.address, leader.config.address]  # the follower is tried first
    async with AsyncClient(addresses) as client:
        jobs = [await client.submit(op="sum", source="values:1,2,3", detach=True) for _ in range(3)]
        assert relayed == ["call"], "the first submit reached the follower and was relayed"
        assert [(await client.result(job, wait=10)).result for job in jobs] == [6] * 3
    with Client(addresses) as blocking:
        await asyncio.to_thread(blocking.submit, op="sum", source="values:1", detach=True)
        await asyncio.to_thread(blocking.submit, op="sum", source="values:1", detach=True)
    assert relayed == ["call", "call"], "each client went through the follower once"
