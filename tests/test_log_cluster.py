"""The replicated log in real daemons (in-process, real gRPC and UDP): every leader's
no-op reaches every node's journal, survives a restart and a leader's death, and a
journal that refuses a write makes its node refuse, never fail."""

from __future__ import annotations

import asyncio
import collections
import errno
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from inproc import CALM, InProcessCluster, StartCluster, poll

from node import AsyncClient
from node._proto import distnode_pb2 as pb
from node.core.limits import Limits
from node.core.messages import Heartbeat, InstallSnapshot, Role
from node.core.raftlog import Entry
from node.server import beatsend, compaction, heartbeats, logwriter, service
from node.server.daemon import Daemon
from node.server.journal import Journal, Snapshot
from node.server.ledger import JobLedger
from node.wire.snapshotchunks import in_chunks


def log_of(daemon: Daemon) -> list[tuple[int, str]]:
    raft_log = daemon.election.log
    return [(e.term, e.kind) for e in raft_log.entries(raft_log.snapshot_index + 1)]


def slow_disk(daemon: Daemon, gate: threading.Event) -> None:
    """`daemon`'s journal appends wait until `gate` is set (20 s at most: then the test failed)."""
    real_append = daemon.journal.append

    def append(after: int, entries: tuple[Entry, ...]) -> None:
        assert gate.wait(20), "the test never opened the gate"
        real_append(after, entries)

    daemon.journal.append = append  # type: ignore[method-assign]


def settled(daemons: list[Daemon]) -> bool:
    """One of `daemons` leads, and all of them hold, have committed and have written its
    whole log (appends are written in the journal's thread, so memory may be ahead)."""
    leaders = [d for d in daemons if d.is_leader]
    if len(leaders) != 1:
        return False
    leader = leaders[0]
    want = leader.election.log.last_index
    return want >= 1 and all(
        d.election.log.last_index == want and d.election.commit_index == want
        and not d.elections.writer.in_flight for d in daemons
    )


async def with_slow_followers(
    start_cluster: StartCluster, **overrides: Any,
) -> tuple[InProcessCluster, Daemon, list[Daemon], threading.Event]:
    """A settled 3-node cluster (`overrides` to its settings) whose followers' appends wait
    until the gate is set: the cluster, its leader, its followers and the gate."""
    cluster = await start_cluster(3, **overrides)
    await poll(lambda: settled(cluster.daemons), what="the first no-op on every node")
    leader = cluster.leader()
    assert leader is not None
    followers = [d for d in cluster.daemons if d is not leader]
    gate = threading.Event()
    for follower in followers:
        slow_disk(follower, gate)
    return cluster, leader, followers, gate


async def test_every_node_journals_the_leaders_log_and_keeps_it_across_a_leader_kill(
    start_cluster: StartCluster,
) -> None:
    """Raft §5.3 in the daemon: the new leader's no-op is committed on every node and
    stored in each journal (the disk's log equals memory's); after the leader dies, the
    next leader's no-op follows it and log matching holds across the survivors."""
    cluster = await start_cluster(3)
    await poll(lambda: settled(cluster.daemons), what="the first no-op on every node")
    first = log_of(cluster.daemons[0])
    assert first and first[0][1] == "noop"
    assert all(log_of(d) == first for d in cluster.daemons)
    assert all(d.journal.log.entries(1) == d.election.log.entries(1) for d in cluster.daemons)
    assert all(d.ledger.applied == d.election.commit_index for d in cluster.daemons)

    leader = cluster.leader()
    assert leader is not None
    leader.stop()
    survivors = [d for d in cluster.daemons if d is not leader]
    await poll(lambda: settled(survivors) and survivors[0].election.log.last_index > len(first),
               what="a new leader's no-op on both survivors")
    logs = [log_of(d) for d in survivors]
    assert logs[0] == logs[1] and logs[0][: len(first)] == first and logs[0][-1][1] == "noop"
    status = await cluster.stub(survivors[0].config.address).Status(pb.StatusRequest())
    assert (status.log_index, status.commit_index) == (len(logs[0]), len(logs[0]))
    async with AsyncClient([d.config.address for d in survivors]) as client:
        assert (await client.submit(op="sum", source="range:n=100", timeout=10)).result == 4950


async def test_a_restarted_node_reads_its_journal_back(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3, **CALM)
    await poll(lambda: settled(cluster.daemons), what="the first no-op on every node")
    leader = cluster.leader()
    follower = next(d for d in cluster.daemons if d is not leader)
    before = log_of(follower)
    restarted = await cluster.restart(follower.node_id)
    assert log_of(restarted)[: len(before)] == before, "the restarted node lost entries it had stored"
    await poll(lambda: settled(cluster.daemons), what="the restarted node to catch up")


async def test_a_journal_that_refuses_a_write_makes_its_node_refuse_and_heal(
    start_cluster: StartCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The same as for the term and vote: an append the disk refuses is not acknowledged,
    memory goes back to what the journal holds, one ERROR line names the directory, and
    the node catches up by itself once the disk takes writes again."""
    cluster = await start_cluster(3)
    await poll(lambda: settled(cluster.daemons), what="the first no-op on every node")
    leader = cluster.leader()
    assert leader is not None
    broken = next(d for d in cluster.daemons if d is not leader)
    real_append = broken.journal.append
    refused: list[int] = []

    def full_disk(after: int, entries: object) -> None:
        refused.append(after)
        raise OSError(errno.ENOSPC, "No space left on device")

    broken.journal.append = full_disk  # type: ignore[method-assign]
    durable = broken.journal.log.last_index
    leader.stop()  # the next leader's no-op must be appended everywhere
    # Appends are written in the journal's thread: memory is back to the disk once they return.
    await poll(lambda: len(refused) >= 3 and not broken.elections.writer.in_flight,
               what="the broken node to be asked to append")
    assert broken.election.log.last_index == durable, "memory ran ahead of the journal"
    start, count = time.monotonic(), len(refused)
    await asyncio.sleep(0.5)  # a window to measure a rate in, not a wait for a condition
    rate = (len(refused) - count) / (time.monotonic() - start)
    assert rate < 4 * 1000 / broken.config.heartbeat_ms, f"{rate:.0f} refused appends a second: a hot loop"
    lines = [r for r in caplog.records if "cannot write the journal" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "ERROR" and "No space left on device" in lines[0].getMessage()
    broken.journal.append = real_append  # type: ignore[method-assign]
    survivors = [d for d in cluster.daemons if d is not leader]
    await poll(lambda: settled(survivors), what="the broken node to catch up")
    assert log_of(survivors[0]) == log_of(survivors[1])


async def test_a_leader_sends_its_entries_while_writing_them_and_counts_itself_once_they_are_durable(
    start_cluster: StartCluster,
) -> None:
    """Raft thesis §10.2.1: the leader's own append runs beside its AppendEntries (the
    followers hold the entry while the leader's write is still pending), and the entry
    commits only after that write returned, however early the followers answered."""
    cluster = await start_cluster(3)
    await poll(lambda: settled(cluster.daemons), what="the first no-op on every node")
    leader = cluster.leader()
    assert leader is not None
    gate = threading.Event()
    slow_disk(leader, gate)
    index = leader.election.log.last_index + 1
    followers = [d for d in cluster.daemons if d is not leader]
    async with AsyncClient(leader.config.address, timeout=20) as client:
        submit = asyncio.create_task(client.submit(op="sum", source="values:1,2,3", detach=True))
        try:
            await poll(lambda: all(f.journal.log.last_index >= index for f in followers),
                       what="the followers to store the entry before the leader's write returned")
            await poll(lambda: len(leader.elections._held_replies) >= 2 or leader.election.commit_index >= index,
                       what="both followers' answers")
            assert leader.election.commit_index < index and not submit.done(), "counted before its own fsync"
        finally:
            gate.set()
        job_id = await submit
        assert (await client.result(job_id, wait=10)).result == 6
    assert leader.journal.log.last_index >= index and leader.is_leader


async def test_a_leader_whose_own_write_outlasts_election_timeouts_keeps_leading(
    start_cluster: StartCluster,
) -> None:
    """The followers' answers wait while the leader's own write is pending, but they still
    count for CheckQuorum: a leader whose fsync takes two election timeouts is slow, not
    cut off, and is not deposed; the entry commits once the write returns. (Timeouts of
    300-600 ms: a stall of the three daemons' shared event loop must not depose it.)"""
    cluster = await start_cluster(3, election_ms_min=300, election_ms_max=600)
    await poll(lambda: settled(cluster.daemons), what="the first no-op on every node")
    leader = cluster.leader()
    assert leader is not None
    term, gate = leader.election.term, threading.Event()
    slow_disk(leader, gate)
    index = leader.election.log.last_index + 1
    async with AsyncClient(leader.config.address, timeout=20) as client:
        submit = asyncio.create_task(client.submit(op="sum", source="values:1,2,3", detach=True))
        try:
            await poll(lambda: leader.elections.writer.in_flight, what="the leader's write to hang")
            # Two election timeouts (four CheckQuorum windows) with the write pending: less
            # than STUCK_WRITE_WINDOWS, past which the disk counts as stuck (the test below).
            until_s = time.monotonic() + 2 * leader.config.election_ms_max / 1000
            await poll(lambda: time.monotonic() >= until_s or not leader.is_leader, what="two timeouts")
            assert leader.is_leader and leader.election.term == term, "deposed by its own slow disk"
            assert leader.election.commit_index < index and len(leader.elections._held_replies) >= 2
        finally:
            gate.set()
        job_id = await submit
        assert (await client.result(job_id, wait=10)).result == 6
    assert leader.is_leader and leader.election.term == term


async def test_a_leader_whose_own_write_is_stuck_steps_down_and_the_job_lands_elsewhere(
    start_cluster: StartCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Past STUCK_WRITE_WINDOWS election timeouts of one pending append, the leader's disk
    counts as stuck: its held answers no longer count, CheckQuorum deposes it, a follower
    whose disk works leads, and the job commits there; the old leader catches up once
    its write returns."""
    cluster = await start_cluster(3, **CALM)  # a stall must not depose it before its disk does
    await poll(lambda: settled(cluster.daemons), what="the first no-op on every node")
    leader = cluster.leader()
    assert leader is not None
    term, gate = leader.election.term, threading.Event()
    slow_disk(leader, gate)
    try:
        async with AsyncClient(cluster.addresses, timeout=30) as client:
            submit = asyncio.create_task(client.submit(op="sum", source="values:1,2,3", detach=True))
            await poll(lambda: leader.elections.writer.in_flight, what="the leader's write to hang")
            await poll(lambda: not leader.is_leader, what="the leader to step down")
            await poll(lambda: (new := cluster.leader()) is not None and new is not leader
                       and new.election.term > term, what="a follower to lead")
            assert leader.elections.writer.in_flight, "stepped down before its write returned: not the case"
            job_id = await submit
            assert (await client.result(job_id, wait=10)).result == 6
    finally:
        gate.set()
    assert any("a journal write has been pending" in r.getMessage() for r in caplog.records)
    await poll(lambda: settled(cluster.daemons), what="the old leader to catch up")


async def test_a_leader_whose_own_write_fails_steps_down_and_the_job_still_lands(
    start_cluster: StartCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = await start_cluster(3)
    await poll(lambda: settled(cluster.daemons), what="the first no-op on every node")
    leader = cluster.leader()
    assert leader is not None
    real_append = leader.journal.append

    def full_disk(after: int, entries: tuple[Entry, ...]) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    leader.journal.append = full_disk  # type: ignore[method-assign]
    durable = leader.journal.log.last_index
    async with AsyncClient(cluster.addresses, timeout=30) as client:
        submit = asyncio.create_task(client.submit(op="sum", source="values:4,5", detach=True))
        await poll(lambda: not leader.is_leader, what="the leader to step down")
        assert leader.election.log.last_index <= durable or leader.election.leader != leader.node_id
        assert leader.election.commit_index <= durable, "committed what its own disk refused"
        leader.journal.append = real_append  # type: ignore[method-assign]
        job_id = await submit
        assert (await client.result(job_id, wait=20)).result == 9
    lines = [r for r in caplog.records if "cannot write the journal" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "ERROR"
    await poll(lambda: settled(cluster.daemons), what="the old leader to catch up")


async def test_a_follower_on_a_slow_disk_keeps_serving_and_acknowledges_only_what_is_durable(
    start_cluster: StartCluster,
) -> None:
    """A follower's append is written in the journal's thread: while its disk is slow its
    event loop keeps answering (here it shares one loop with the test, which a write on
    the loop would block), and its answer to the beat, which counts the entry, waits
    for the write, so the leader commits only once a follower's disk holds the entry."""
    cluster, leader, followers, gate = await with_slow_followers(start_cluster)
    index = leader.election.log.last_index + 1
    async with AsyncClient(leader.config.address, timeout=20) as client:
        submit = asyncio.create_task(client.submit(op="sum", source="values:1,2,3", detach=True))
        try:
            await poll(lambda: all(f.election.log.last_index >= index for f in followers),
                       what="the followers to take the entry while their disks are slow")
            for follower in followers:
                status = await cluster.stub(follower.config.address).Status(pb.StatusRequest(), timeout=5)
                assert status.node_id == follower.node_id
                assert follower.journal.log.last_index < index
            assert leader.election.commit_index < index and not submit.done(), "acknowledged before durable"
        finally:
            gate.set()
        job_id = await submit
        assert (await client.result(job_id, wait=10)).result == 6
    assert all(f.journal.log.last_index >= index for f in followers)


async def test_a_follower_steps_nothing_while_its_append_is_written(
    start_cluster: StartCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """While one follower's disk is slow, the leader commits with the other one and its
    next beats tell the slow follower so; those beats wait for the write, so the slow
    follower neither learns the commit nor applies the entry before its disk holds it
    (it answers them "writing" and steps none), then applies it in order once the write
    returns. The clock's ticks are dropped
    meanwhile: a write longer than an election timeout does not make the slow
    follower think its leader went silent; the write's delay is said (a WARNING, and
    the node's disk error) once it outlasts an election timeout, and unsaid after."""
    cluster = await start_cluster(3)
    await poll(lambda: settled(cluster.daemons), what="the first no-op on every node")
    leader = cluster.leader()
    assert leader is not None
    slow, quick = [d for d in cluster.daemons if d is not leader]
    gate = threading.Event()
    slow_disk(slow, gate)
    roles: list[str] = []
    report = slow.elections.on_role_changed

    def watched(role: Role, term: int, leader_id: str | None) -> None:
        roles.append(role.value)
        report(role, term, leader_id)

    slow.elections.on_role_changed = watched
    term = slow.election.term
    index = leader.election.log.last_index + 1
    async with AsyncClient(leader.config.address, timeout=20) as client:
        try:
            job_id = await client.submit(op="sum", source="values:1,2,3", detach=True)
            await poll(lambda: quick.elections.applied >= index, what="the quick follower to apply the entry")
            await poll(lambda: slow.elections.gate.closed, what="the slow follower to be writing")
            await poll(lambda: leader.election.commit_index >= index, what="the leader to have committed")
            answered = slow.elections.writing_answers
            await poll(lambda: slow.elections.writing_answers >= answered + 2,
                       what="beats sent after the commit to reach the slow follower")
            assert slow.election.log.last_index >= index, "the entry is in the slow follower's memory"
            assert slow.journal.log.last_index < index
            assert slow.election.commit_index < index, "a beat was stepped while the append was written"
            assert slow.elections.applied < index, "applied before its disk held the entry"
            closed_s = time.monotonic()
            longer_s = 2 * slow.config.election_ms_max / 1000
            await poll(lambda: time.monotonic() - closed_s > longer_s, timeout_s=longer_s + 10,
                       what="the write to outlast two election timeouts")
            assert "a journal write has been pending for" in slow.elections.disk_error
            assert any("a journal write has been pending" in r.getMessage() for r in caplog.records)
        finally:
            gate.set()
        await poll(lambda: slow.elections.applied >= index, what="the slow follower to apply it")
        assert slow.journal.log.last_index >= index
        assert roles == [] and slow.election.term == term, f"the slow follower became {roles}"
        assert slow.elections.disk_error == ""
        assert (await client.result(job_id, wait=10)).result == 6


@pytest.mark.parametrize("udp", [True, False], ids=["udp", "grpc-only"])
async def test_followers_writing_at_once_keep_answering_and_their_leader_keeps_leading(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch, udp: bool
) -> None:
    """Both followers' disks slow at once, for longer than two election timeouts (the
    leader's CheckQuorum window): each answers its leader's bare beats "writing" while it
    writes, so the leader keeps leading in its term and its failure detector keeps both
    alive, where two silences at once deposed it. The entry went to each follower once,
    not at every beat (again each election timeout at most).
    Once the disks return, it commits. (The stuck-write limit is raised so a loaded host's
    slower beats cannot reach it.) On gRPC alone too: the stream reads on past the beat
    whose answer waits for the disk (beatstream.py)."""
    monkeypatch.setattr(logwriter, "STUCK_WRITE_WINDOWS", 10)
    _, leader, followers, gate = await with_slow_followers(start_cluster, udp_heartbeats=udp)
    term, index = leader.election.term, leader.election.log.last_index + 1
    sent: collections.Counter[str] = collections.Counter()
    send = leader.elections.beats.send

    def counted(message: Heartbeat | InstallSnapshot) -> None:
        if isinstance(message, Heartbeat) and any(entry.index == index for entry in message.entries):
            sent[message.dst] += 1
        send(message)

    leader.elections.beats.send = counted  # type: ignore[method-assign]
    beats = 2 * leader.config.election_ms_max // leader.config.heartbeat_ms + 2
    before = {f.node_id: f.elections.writing_answers for f in followers}
    async with AsyncClient(leader.config.address, timeout=20) as client:
        started_s = time.monotonic()
        submit = asyncio.create_task(client.submit(op="sum", source="values:1,2,3", detach=True))
        try:
            await poll(lambda: all(f.elections.writing_answers - before[f.node_id] >= beats for f in followers),
                       timeout_s=20, what=f"each follower to answer {beats} beats while it writes")
            assert all(f.elections.gate.closed and f.journal.log.last_index < index for f in followers)
            assert leader.is_leader and leader.election.term == term, "deposed while its followers wrote"
            assert all(p.alive for p in leader.peers), "a writing follower was declared dead"
            assert not submit.done()
            # Once, and again each election timeout at most (writing answers put a resend off for
            # so long), once more if a loop stall ran a wait out before the write began; at every
            # beat it would be `beats` times, and every RESEND_BEATS without writing answers.
            allowed = 2 + int((time.monotonic() - started_s) / (leader.config.election_ms_max / 1000))
            assert set(sent) == {f.config.address for f in followers} and max(sent.values()) <= allowed, sent
        finally:
            gate.set()
        job_id = await submit
        assert (await client.result(job_id, wait=10)).result == 6
    assert leader.election.term == term


async def test_a_snapshot_over_the_message_limit_is_said_once_and_never_built(
    start_cluster: StartCluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower that does not take snapshots in chunks (an earlier version) needs one whole,
    in one message: one over --max-message-bytes can never arrive. Built anew at every beat, it kept the leader's
    loop busy for nothing; now it is not built, an ERROR names the flags once, and a bare
    beat goes instead, so the follower keeps its leader rather than campaign."""
    cluster = await start_cluster(1, limits=Limits(max_message_bytes=64 << 10))
    leader = cluster.daemons[0]
    sent: list[pb.HeartbeatRequest] = []
    monkeypatch.setattr(leader.heartbeats, "send", lambda address, request, reliable=False: sent.append(request))
    term = leader.election.term
    for _ in range(3):
        leader.elections._send(InstallSnapshot("n1", "127.0.0.1:9", term, 7, term, b"x" * (64 << 10)))
    leader.elections._send(InstallSnapshot("n1", "127.0.0.1:9", term, 7, term, b"x" * (32 << 10)))
    said = [r for r in caplog.records if "over --max-message-bytes" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR", [r.getMessage() for r in said]
    assert "127.0.0.1:9" in said[0].getMessage() and "--keep-result-bytes" in said[0].getMessage()
    assert [len(r.snapshot_data) for r in sent if r.is_snapshot] == [32 << 10], "only the one that fits"
    bare = [r for r in sent if not r.is_snapshot]  # in place of the others: the follower keeps its leader
    assert [(r.prev_index, r.prev_term, len(r.entries)) for r in bare] == [(7, term, 0)] * 3


def chunks_cut(monkeypatch: pytest.MonkeyPatch) -> list[pb.HeartbeatRequest]:
    """Every chunk the leaders' links make from now on, in order (they are made as sent)."""
    real_chunks, cut = heartbeats.chunks, []

    def counted(head: pb.HeartbeatRequest, data: bytes, chunk_bytes: int) -> Iterator[pb.HeartbeatRequest]:
        for chunk in real_chunks(head, data, chunk_bytes):
            cut.append(chunk)
            yield chunk

    monkeypatch.setattr(heartbeats, "chunks", counted)
    return cut


async def behind_a_snapshot(
    cluster: InProcessCluster, source: Callable[[int], str] = lambda n: f"values:{n},1"
) -> tuple[Daemon, str, list[str]]:
    """Stop a follower, run six detached jobs (job n sums `source(n)`), and wait for the leader
    to compact past them (with compaction.COMPACT_ENTRIES small): the leader, the stopped node,
    the jobs."""
    await poll(lambda: settled(cluster.daemons), what="the first no-op on every node")
    leader = cluster.leader()
    assert leader is not None
    lagging = next(d for d in cluster.daemons if d is not leader).node_id
    await cluster.stop_node(lagging)
    async with AsyncClient([d.config.address for d in cluster.daemons if d.node_id != lagging]) as client:
        jobs = [await client.submit(op="sum", source=source(n), detach=True) for n in range(6)]
        for job_id in jobs:
            await client.result(job_id, wait=10)
    await poll(lambda: leader.election.log.snapshot_index > 4, what="the leader's snapshot")
    return leader, lagging, jobs


async def test_a_snapshot_over_the_message_limit_reaches_its_follower_in_chunks(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent in one message, a snapshot over --max-message-bytes could never arrive, and its
    follower was never caught up (the test above). In chunks under the limit it arrives
    (snapshotchunks.py): the follower takes the whole snapshot, and the leader its term."""
    monkeypatch.setattr(compaction, "COMPACT_ENTRIES", 4)
    cut = chunks_cut(monkeypatch)
    limit = 64 << 10
    cluster = await start_cluster(3, limits=Limits(max_message_bytes=limit), **CALM)
    ones = ",".join(["1"] * 9000)  # 18 KB a source, kept in its job's record: 6 of them pass the limit
    leader, lagging, jobs = await behind_a_snapshot(cluster, lambda n: f"values:{n},{ones}")
    term = leader.election.term
    await cluster.start_node(lagging)
    await poll(lambda: settled(cluster.daemons), what="the follower to catch up")
    restarted = next(d for d in cluster.daemons if d.node_id == lagging)
    held = [restarted.ledger.table.get(job_id) for job_id in jobs]
    assert all(r is not None and r.state == "done" for r in held)
    assert held == [leader.ledger.table.get(job_id) for job_id in jobs]
    last = [c for c in cut if c.serial == cut[-1].serial]  # the last snapshot sent, should there be more
    assert len(last) > 1 and all(c.ByteSize() <= limit for c in cut)
    assert [c.snapshot_offset for c in last] == [sum(len(c.snapshot_data) for c in last[:i]) for i in range(len(last))]
    assert sum(len(c.snapshot_data) for c in last) == last[0].snapshot_size > limit
    assert restarted.election.log.snapshot_index >= last[0].snapshot_index
    assert leader.is_leader and leader.election.term == term


async def test_a_snapshot_in_chunks_slower_than_an_election_timeout_arrives_on_grpc_alone(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On gRPC alone, the chunks are all the follower hears while they go, and they went
    unanswered: a transfer longer than an election timeout had its stream torn down as
    stale and started over, so on a slow link the follower was never caught up. Each chunk
    before the last is now answered that the follower is taking it (beatstream.py), which
    keeps the stream, restarts the snapshot's wait and counts for CheckQuorum: here chunks
    of 5 KB, each arriving up to 0.3 s after the one before (a slow link), 3.4 s in all,
    past the stream's stale time (0.7 s) and the snapshot's wait (2.8 s), go once, the
    leader never counts the follower dead (after 0.5 s without an answer), and the follower
    is caught up in the leader's term.
    And at once in chunks: its link kept the word of its replies before the restart (not
    whole, which over --max-message-bytes is refused with an ERROR, and waits)."""
    monkeypatch.setattr(compaction, "COMPACT_ENTRIES", 4)
    monkeypatch.setattr(beatsend, "CHUNK_BYTES", 5_000)
    cut = chunks_cut(monkeypatch)
    real_whole, taken_s = service.snapshots_whole, []

    def slow_link(step: Any) -> Any:
        each = real_whole(step)

        async def slowly(request: pb.HeartbeatRequest, reply: Any) -> None:
            if in_chunks(request):
                # The link's speed, the stream read no faster: the whole transfer 3.4 s (past
                # the wait), however many jobs the table holds, and 0.3 s at most a chunk.
                gaps = max(1, math.ceil(request.snapshot_size / 5_000) - 1)
                await asyncio.sleep(min(0.3, 3.4 / gaps))
                taken_s.append(time.monotonic())
            await each(request, reply)
        return slowly

    monkeypatch.setattr(service, "snapshots_whole", slow_link)
    timings = {"heartbeat_ms": 30, "election_ms_min": 500, "election_ms_max": 700}
    cluster = await start_cluster(3, limits=Limits(max_message_bytes=64 << 10), udp_heartbeats=False, **timings)
    ones = ",".join(["1"] * 9000)  # 18 KB a source, kept in its job's record: a 110 KB table
    leader, lagging, jobs = await behind_a_snapshot(cluster, lambda n: f"values:{n},{ones}")
    stopped = next(p for p in leader.peers if p.node_id == lagging)
    await poll(lambda: not stopped.alive, what="the leader to count the stopped node dead")
    term, before, logged = leader.election.term, len(cut), len(caplog.records)
    await cluster.start_node(lagging)
    await poll(lambda: settled(cluster.daemons), timeout_s=30, what="the follower to catch up")
    restarted = next(d for d in cluster.daemons if d.node_id == lagging)
    assert [restarted.ledger.table.get(j) for j in jobs] == [leader.ledger.table.get(j) for j in jobs]
    by_serial: dict[int, list[int]] = collections.defaultdict(list)
    for chunk in cut[before:]:  # a send to the node still starting may fail at its first chunk
        by_serial[chunk.serial].append(chunk.snapshot_offset)
    delivered = [offsets for offsets in by_serial.values() if len(offsets) > 1]
    assert len(delivered) == 1, f"one copy went past its first chunk: {dict(by_serial)}"
    assert delivered[0] == list(range(0, cut[-1].snapshot_size, 5_000))
    said = [r.getMessage() for r in caplog.records[logged:]]
    assert not [m for m in said if "over --max-message-bytes" in m], "not whole first"
    assert not [m for m in said if "missed heartbeats" in m], "declared dead while it answered every chunk"
    stale_s, wait_s = leader.config.election_ms_max / 1000, 4 * leader.config.election_ms_max / 1000
    assert taken_s[-1] - taken_s[0] > max(stale_s, wait_s), "as slow as meant"
    assert leader.is_leader and leader.election.term == term == restarted.election.term


async def test_a_followers_copy_of_its_leaders_snapshot_is_written_beside_its_event_loop(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower behind its leader's snapshot writes it in the journal's thread (it is as large
    as the job table: 42-85 MB with large answers), with its gate closed as for an append: the
    event loop goes on meanwhile, and the records are taken once the snapshot is durable."""
    monkeypatch.setattr(compaction, "COMPACT_ENTRIES", 4)
    cluster = await start_cluster(3, **CALM)
    _, lagging, jobs = await behind_a_snapshot(cluster)
    release, writes = threading.Event(), []
    real_save = Journal.save_snapshot

    def held_save(journal: Journal, snapshot: Snapshot, keep_log: bool = True) -> None:
        write = [journal.dir, threading.get_ident(), None]
        writes.append(write)
        write[2] = release.wait(10)
        real_save(journal, snapshot, keep_log)

    monkeypatch.setattr(Journal, "save_snapshot", held_save)
    task = asyncio.create_task(cluster.start_node(lagging))
    try:
        await poll(lambda: bool(writes), what="the leader's snapshot to be written")
        restarted = next(d for d in cluster.daemons if d.node_id == lagging)
        assert writes[0][0] == restarted.journal.dir and writes[0][1] != threading.get_ident()
        assert restarted.elections.gate.closed and restarted.ledger.table.get(jobs[0]) is None
    finally:
        release.set()
    await task
    await poll(lambda: settled(cluster.daemons), what="the follower to catch up")
    assert writes[0][2], "the write waited for the whole 10 s: the loop was blocked"
    assert all(restarted.ledger.table.get(job_id) is not None for job_id in jobs)


async def test_a_leaders_snapshot_the_disk_refuses_is_not_taken_and_comes_again(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The write fails in the journal's thread: the node goes back to the log its disk holds,
    takes none of the snapshot's records, says so once, and takes the snapshot the leader sends
    again after its wait (replication.py's SNAPSHOT_WAIT_TIMEOUTS)."""
    monkeypatch.setattr(compaction, "COMPACT_ENTRIES", 4)
    cluster = await start_cluster(3, **CALM)
    _, lagging, jobs = await behind_a_snapshot(cluster)
    real_save, refused = Journal.save_snapshot, []

    def full_disk(journal: Journal, snapshot: Snapshot, keep_log: bool = True) -> None:
        if not refused:
            refused.append(snapshot.index)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(journal, snapshot, keep_log)

    monkeypatch.setattr(Journal, "save_snapshot", full_disk)
    restarted = await cluster.start_node(lagging)
    await poll(lambda: bool(refused), what="the refused write")
    await poll(lambda: not restarted.elections.writer.in_flight, what="the refusal to come back")
    assert restarted.ledger.table.get(jobs[0]) is None
    assert restarted.election.log.snapshot_index < refused[0], "memory kept what the disk refused"
    await poll(lambda: settled(cluster.daemons), what="the snapshot sent again, and taken")
    assert all(restarted.ledger.table.get(job_id) is not None for job_id in jobs)
    said = [r for r in caplog.records if "cannot write the journal" in r.getMessage()]
    assert len(said) == 1 and "No space left on device" in said[0].getMessage()


async def test_a_snapshot_the_table_cannot_take_leaves_its_node_out_of_the_cluster(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Durable on disk, but the job table raised taking it: acknowledging it would leave a table
    that is not the log's, so the node answers nothing more (its gate stays closed), says so
    once, and the other two go on."""
    monkeypatch.setattr(compaction, "COMPACT_ENTRIES", 4)
    cluster = await start_cluster(3, **CALM)
    leader, lagging, _ = await behind_a_snapshot(cluster)

    def broken(ledger: JobLedger, data: bytes, index: int) -> None:
        raise RuntimeError("a bug in the table")

    monkeypatch.setattr(JobLedger, "restore", broken)
    await cluster.start_node(lagging)  # the leader hears it: its first beats are answered
    restarted = next(d for d in cluster.daemons if d.node_id == lagging)
    await poll(lambda: any("cannot take the leader's snapshot" in r.getMessage() for r in caplog.records),
               what="the node to say it cannot take the snapshot")
    assert restarted.elections.gate.closed and restarted.election.commit_index > 4
    async with AsyncClient([d.config.address for d in cluster.daemons if d is not restarted]) as client:
        assert (await client.submit(op="sum", source="values:1,2")).result == 3
    peer = leader.peers.get(restarted.config.address)
    await poll(lambda: peer is not None and not peer.alive, what="the leader to count it out")
