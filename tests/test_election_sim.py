"""Whole elections on the simulated network of `tests/simnet.py`.

The network checks Raft's safety invariants after every step (one leader per
term, one vote per node per term, terms never go back) and raises with the
seed. To replay one randomized schedule:

    DISTNODE_SEED=1234 pytest -q tests/test_election_sim.py -k replay
"""

from __future__ import annotations

import os
import random

import pytest
from simnet import InvariantError, SimNet

from node.election import Role, VoteRequest

ELECTION_BOUND_TICKS = 300  # a leader must emerge this soon after the network is healthy


def ids(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


# ---- healthy clusters -------------------------------------------------------------


@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("seed", range(20))
def test_healthy_cluster_elects_one_leader_quickly(n: int, seed: int) -> None:
    """Raft §5.2: randomized timeouts make a leader emerge quickly, and it stays."""
    net = SimNet(ids(n), seed)
    leader = net.run_until_stable(net.election_ticks_max * 3)
    assert leader is not None, f"seed={seed}: no leader"
    term = net.nodes[leader].term
    net.run(200)
    assert net.stable_leader() == leader and net.nodes[leader].term == term


def test_dueling_candidates_resolve() -> None:
    """Raft §5.2: a split vote ends when one candidate times out first and wins."""
    net = SimNet(ids(4), seed=7, pre_vote=False)
    a, b, c, d = net.ids
    net.cut(a, d)
    net.cut(b, c)
    net.campaign(a)
    net.campaign(b)
    net.run(3)
    assert net.leaders() == [] and net.vote_of == {(c, 1): a, (d, 1): b}
    net.heal()
    leader = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert leader is not None and net.nodes[leader].term >= 2


# ---- partitions ---------------------------------------------------------------------


def test_partitioned_leader_steps_down_and_majority_elects_another() -> None:
    """Thesis §6.2 CheckQuorum: a leader cut off from a majority steps down,
    while the majority elects a new leader in a later term."""
    net = SimNet(ids(5), seed=3)
    old = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert old is not None
    old_term = net.nodes[old].term
    net.isolate(old)
    stepped_down_at = None
    for tick in range(ELECTION_BOUND_TICKS):
        net.step_tick()
        if stepped_down_at is None and net.nodes[old].role is not Role.LEADER:
            stepped_down_at = tick
    assert stepped_down_at is not None and stepped_down_at <= 2 * net.election_ticks_min
    new = net.leaders()
    assert len(new) == 1 and new[0] != old and net.nodes[new[0]].term > old_term
    assert net.nodes[old].term == old_term  # Pre-Vote: the loner never bumped its term
    net.heal()
    assert net.run_until_stable(ELECTION_BOUND_TICKS) == new[0]


def _rejoin(pre_vote: bool) -> tuple[str, int, str | None, int]:
    net = SimNet(ids(3), seed=11, pre_vote=pre_vote)
    leader = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert leader is not None
    term = net.nodes[leader].term
    loner = next(n for n in net.ids if n != leader)
    net.isolate(loner)
    net.run(500)
    assert net.stable_leader() is None and net.leaders() == [leader]  # loner is out
    net.heal()
    net.campaign(loner)  # worst case: its timer fires the moment it is back
    after = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert after is not None
    return leader, term, after, net.nodes[after].term


def test_rejoining_node_does_not_depose_the_leader_with_pre_vote() -> None:
    """Thesis §9.6: a server rejoining after a partition cannot disrupt the cluster,
    because it never won a pre-vote and so never incremented its term."""
    leader, term, after, after_term = _rejoin(pre_vote=True)
    assert (after, after_term) == (leader, term)


def test_rejoining_node_deposes_the_leader_without_pre_vote() -> None:
    """Thesis §9.6 (the problem Pre-Vote solves): without it the loner's inflated
    term forces a new election. This is the control that proves the test above can fail."""
    _, term, _, after_term = _rejoin(pre_vote=False)
    assert after_term > term + 10


# ---- restarts ----------------------------------------------------------------------


@pytest.mark.parametrize("crash_after", [None, 0, 1, 2])
def test_restart_does_not_double_vote(crash_after: int | None) -> None:
    """Raft Figure 2: votedFor is persisted before the vote is answered, so a voter
    that crashes at any point of granting and restarts never votes for a second candidate."""
    net = SimNet(ids(3), seed=5, pre_vote=False)
    a, b, c = net.ids
    net.isolate(c)
    net.campaign(a)
    net.campaign(b)  # two candidates in term 1
    outputs = net.nodes[c].step(VoteRequest(a, c, 1))
    assert crash_after is None or crash_after <= len(outputs)
    net.execute(c, outputs, crash_after=crash_after)
    answered_a = net.vote_of.get((c, 1)) == a
    remembers_a = net.persisted[c] == (1, a)
    net.restart(c)
    net.execute(c, net.nodes[c].step(VoteRequest(b, c, 1)))  # raises on a double vote
    assert net.vote_of.get((c, 1)) == (a if answered_a else None if remembers_a else b)


def test_forgetful_restart_is_caught() -> None:
    """Control for the checker: a restart that ignores Persist double-votes, and is reported."""
    net = SimNet(ids(3), seed=5, pre_vote=False, restore_on_restart=False)
    a, b, c = net.ids
    net.campaign(a)
    net.run(2)
    with pytest.raises(InvariantError, match=r"seed=5 .* term went back from 1 to 0"):
        net.restart(c)
    with pytest.raises(InvariantError, match=r"seed=5 .* voted for n0 and n1 in term 1"):
        net.execute(c, net.nodes[c].step(VoteRequest(b, c, 1)))


# ---- randomized schedules ----------------------------------------------------------


def random_schedule(seed: int) -> SimNet:
    """One chaotic schedule: loss, delays, duplicates, partitions and restarts, then a heal.

    Invariants are checked inside SimNet after every step; liveness is checked here.
    """
    rng = random.Random(seed)
    net = SimNet(
        ids(rng.choice((3, 5))),
        seed,
        drop=rng.choice((0.0, 0.05, 0.2)),
        duplicate=rng.choice((0.0, 0.1)),
        max_delay=rng.choice((0, 1, 3)),
        pre_vote=rng.random() < 0.5,
        check_quorum=rng.random() < 0.8,
        crash_mid_outputs=rng.choice((0.0, 0.05, 0.1)),
    )
    for _ in range(rng.randint(100, 250)):
        event = rng.random()
        node = rng.choice(net.ids)
        if event < 0.03:
            net.isolate(node)
        elif event < 0.06:
            net.cut(node, rng.choice(net.ids))
        elif event < 0.09:
            net.heal()
        elif event < 0.11 and node not in net.down:
            net.crash(node)
        elif event < 0.16 and node in net.down:
            net.restart(node)
        net.step_tick()
    net.heal()
    net.drop = net.duplicate = net.crash_mid_outputs = 0.0
    for node in sorted(net.down):
        net.restart(node)
    assert net.run_until_stable(ELECTION_BOUND_TICKS) is not None, (
        f"seed={seed}: no leader {ELECTION_BOUND_TICKS} ticks after healing; "
        f"replay with DISTNODE_SEED={seed} pytest -k replay"
    )
    return net


SCHEDULES = 1000


@pytest.mark.parametrize("block", range(4))
def test_randomized_schedules_keep_invariants_and_elect(block: int) -> None:
    """Raft §5.2 Election Safety and liveness over 1,000 seeded chaotic schedules."""
    per_block = SCHEDULES // 4
    for seed in range(block * per_block, (block + 1) * per_block):
        random_schedule(seed)


@pytest.mark.skipif("DISTNODE_SEED" not in os.environ, reason="set DISTNODE_SEED to replay")
def test_replay() -> None:
    """Replay one randomized schedule: DISTNODE_SEED=<seed> pytest -k replay."""
    net = random_schedule(int(os.environ["DISTNODE_SEED"]))
    print(f"leaders by term: {net.leader_of_term}, delivered {net.delivered} messages")
