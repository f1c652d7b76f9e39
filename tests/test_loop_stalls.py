"""A stalled event loop is not an election timeout: real daemons (in-process, real gRPC and
UDP) whose loop blocks for longer than an election timeout keep their leader and term.

Every in-process daemon shares the test's event loop, so blocking it stalls them all at
once, as a frozen VM or a host that stops scheduling them does. Fed as time, the stall
would time out the leader's quorum (its followers' answers unread) and every follower's
leader, and the cluster would elect again for nothing (clock.py).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from inproc import FAST, StartCluster, poll
from msgspec.structs import replace

from node import AsyncClient
from node.core.jobtable import JobRecord
from node.core.messages import Output
from node.errors import NotLeader

#: Far past an election timeout and past the clock's replay cap (election maximum + 1 tick).
STALL_S = 3 * FAST["election_ms_max"] / 1000


def block_the_loop(seconds: float) -> None:
    """The stall under test: called from the test's coroutine, it holds every daemon's loop."""
    time.sleep(seconds)


async def test_a_stall_of_every_node_longer_than_an_election_timeout_elects_no_one(
    start_cluster: StartCluster,
) -> None:
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    term = leader.election.term
    await poll(lambda: all(d.election.leader == leader.node_id for d in cluster.daemons),
               what="every node following the leader")
    for _ in range(2):
        block_the_loop(STALL_S)
        # Three election timeouts of running loop: a stall fed as time would have
        # deposed the leader within the first.
        calm_until = time.monotonic() + 3 * FAST["election_ms_max"] / 1000
        while time.monotonic() < calm_until:
            roles = {d.node_id: (d.election.term, d.election.leader) for d in cluster.daemons}
            assert set(roles.values()) == {(term, leader.node_id)}, f"after a stall: {roles}"
            await asyncio.sleep(0.005)


async def test_a_leader_beats_as_soon_as_its_loop_runs_again_and_reads_only_on_fresh_answers(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stall is not time to the leader, so its next beat would come a beat interval after
    it, while its followers' clocks (other processes, in a real cluster) ran through it: it
    beats at the wake that finds the stall. Its reads, which rest on a quorum hearing it,
    wait for answers to what it sent since (answers read after a stall may be as old as it)."""
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    told: list[tuple[float, bool]] = []
    stalled = leader.election.stalled

    def spied() -> list[Output]:
        out = stalled()
        if out:
            told.append((time.monotonic(), leader.election.may_read()))
        return out

    monkeypatch.setattr(leader.election, "stalled", spied)
    await poll(lambda: leader.election.may_read(), what="the leader's reads")
    told.clear()  # a loaded host may have stalled the loop already
    block_the_loop(STALL_S)
    resumed = time.monotonic()
    await poll(lambda: bool(told), timeout_s=5.0, what="the leader's beat after the stall")
    beat_s, could_read = told[0]
    assert beat_s - resumed < FAST["election_ms_min"] / 1000, f"{(beat_s - resumed) * 1000:.1f} ms"
    assert not could_read, "reads right after the stall, on evidence from before it"
    await poll(lambda: leader.election.may_read(), what="reads again once the followers answered")


async def test_a_read_that_finds_the_stall_first_is_refused(start_cluster: StartCluster) -> None:
    """A read's handler may run before the clock's overdue wake-up: it feeds the ticks itself,
    finds the stall, and is refused (clients retry) until a quorum answered anew."""
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    await poll(lambda: leader.election.may_read(), what="the leader's reads")
    listed = await leader.desk.list_jobs(None, 10, forwarded=False)  # reads before the stall
    block_the_loop(STALL_S)
    with pytest.raises(NotLeader, match="has not caught up with a quorum"):
        await leader.desk.list_jobs(None, 10, forwarded=False)
    await poll(lambda: leader.election.may_read(), what="reads again once the followers answered")
    assert await leader.desk.list_jobs(None, 10, forwarded=False) == listed


async def test_a_read_that_waited_through_a_stall_is_refused(
    start_cluster: StartCluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`Result` with a wait checks again after it: the loop may have stalled meanwhile, and a
    job still running in this table may have ended under a leader elected during the stall."""
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    async with AsyncClient(leader.config.address, timeout=10) as client:
        job_id = await client.submit(op="sum", source="values:1,2,3", detach=True)
        await client.result(job_id, wait=10)
    await poll(lambda: leader.election.may_read(), what="the leader's reads")
    done = leader.ledger.table.get(job_id)
    assert done is not None
    running = replace(done, state="running")

    async def wait_through_a_stall(job_id: str, wait_s: float) -> JobRecord:
        block_the_loop(STALL_S)
        return running

    monkeypatch.setattr(leader.ledger, "wait", wait_through_a_stall)
    with pytest.raises(NotLeader, match="has not caught up with a quorum"):
        await leader.desk.result(job_id, 5.0, forwarded=False)
