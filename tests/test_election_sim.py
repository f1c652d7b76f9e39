"""Whole elections on the simulated network of `tests/simnet.py`.

The network checks Raft's safety invariants after every step (one leader per
term, one vote per node per term, terms never go back) and raises with the
seed. 10,000 randomized schedules (drops, duplicates, reordering, symmetric
and one-way partitions, pauses, crashes and restarts) run in a few seconds.
To replay one of them:

    DISTNODE_SEED=1234 pytest -q tests/test_election_sim.py -k replay
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest
from simnet import InvariantError, SimNet

from node.core.messages import Role, VoteRequest

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


@pytest.mark.parametrize("seed", range(20))
def test_a_quiet_cluster_beating_at_the_idle_interval_keeps_its_leader(seed: int) -> None:
    """Idle beats (`quiet`, every entry committed): with the idle interval under half the
    election minimum, messages late by up to three ticks never start an election."""
    net = SimNet(ids(3), seed, replicate=True, idle_heartbeat_ticks=4, quiet=True, max_delay=3)
    leader = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert leader is not None, f"seed={seed}: no leader"
    term = net.nodes[leader].term
    net.run(400)
    node = net.nodes[leader]
    assert node.quiet and node.commit_index == node.log.last_index, "the leader would not thin its beats"
    net.run(2000)
    assert net.stable_leader() == leader and net.nodes[leader].term == term


@pytest.mark.parametrize("thinned", [False, True])
@pytest.mark.parametrize("seed", range(10))
def test_a_quiet_leader_survives_the_stalls_a_busy_one_survives(seed: int, thinned: bool) -> None:
    """A thinned beat says how late the next may be (`Heartbeat.slack`) and followers wait
    that much longer: a leader paused for 7 ticks, ten times, keeps its term whether it
    beats every 2 ticks or every 4 (without the slack, 4 + 7 ticks of silence would
    outlast a follower's timer of 10 or 11 ticks, about one pause in five)."""
    net = SimNet(ids(3), seed, replicate=True, idle_heartbeat_ticks=4 if thinned else 0, quiet=True)
    leader = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert leader is not None, f"seed={seed}: no leader"
    term = net.nodes[leader].term
    net.run(50)
    for _ in range(10):
        net.pause(leader)
        net.run(7)
        net.resume(leader)
        net.run(net.rng.randint(20, 30))
        assert net.stable_leader() == leader and net.nodes[leader].term == term, f"seed={seed}"


@pytest.mark.parametrize("seed", range(20))
def test_a_node_rebooting_fast_into_a_live_cluster_disturbs_no_one(seed: int) -> None:
    """A restarted node campaigns early (fast_first_election), but its peers are
    inside the leader's lease: the Pre-Vote fails and the term stays."""
    net = SimNet(ids(3), seed)
    leader = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert leader is not None
    term = net.nodes[leader].term
    follower = next(n for n in net.ids if n != leader)
    net.crash(follower)
    net.run(1)
    net.restart(follower)
    net.campaign(follower)  # its fast first timer fired before any heartbeat came
    net.run(net.election_ticks_max * 5)
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


def survivors_elect_after(seed: int, n: int, max_delay: int) -> int:
    """Ticks from a stable leader's crash until a survivor leads, at the
    daemon's default timing (10 ms ticks: heartbeat 5, election 25-50)."""
    net = SimNet(ids(n), seed=seed, heartbeat_ticks=5, election_ticks_min=25,
                 election_ticks_max=50, max_delay=max_delay)
    old = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert old is not None
    net.run(net.rng.randrange(5))  # crash anywhere in the heartbeat cycle
    net.crash(old)
    for ticks in range(1, ELECTION_BOUND_TICKS + 1):
        net.step_tick()
        if [leader for leader in net.leaders() if leader != old]:
            return ticks
    raise AssertionError(f"seed {seed}: no new leader within {ELECTION_BOUND_TICKS} ticks")


@pytest.mark.parametrize(("n", "max_delay"), [(3, 0), (3, 1), (5, 0), (5, 1)])
def test_survivors_of_a_dead_leader_rarely_split_the_vote(n: int, max_delay: int) -> None:
    """A split vote among the survivors costs a second election timeout. Raft's
    randomized timeouts alone leave a few percent of failovers needing one; a
    follower waiting after it grants a pre-vote, and the larger id going on
    when two pre-candidates start together (node/core/election.py), leave at
    most one in these 600 seeds."""
    # One round: the last heartbeat up to 5 ticks before the crash, the longest
    # timeout, then pre-vote and vote there and back, one tick of tick order.
    one_round = 5 + 50 + 4 * (1 + max_delay) + 1
    times = [survivors_elect_after(seed, n, max_delay) for seed in range(600)]
    slow = [t for t in times if t > one_round]
    assert len(slow) <= len(times) // 100, sorted(slow)


def survivors_told_elect_after(seed: int, n: int, max_delay: int, spread: int) -> int:
    """As `survivors_elect_after`, but the survivors learn that the leader died
    (`Election.leader_gone`: its stream closed, its port refuses), each at a random tick of
    the first `spread` after the dead leader's last messages arrived, as a stream closes after
    the beats it carried."""
    net = SimNet(ids(n), seed=seed, heartbeat_ticks=5, election_ticks_min=25,
                 election_ticks_max=50, max_delay=max_delay)
    old = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert old is not None
    net.run(net.rng.randrange(5))
    term = net.nodes[old].term
    net.crash(old)
    ticks = 0
    while net.in_flight_from(old):
        net.step_tick()
        ticks += 1
    told_at = {node: ticks + net.rng.randint(0, spread) for node in net.ids if node != old}
    while ticks < ELECTION_BOUND_TICKS:
        for survivor, at in told_at.items():
            if at == ticks:
                net.execute(survivor, net.nodes[survivor].leader_gone(old, term))
        net.step_tick()
        ticks += 1
        if [leader for leader in net.leaders() if leader != old]:
            return ticks
    raise AssertionError(f"seed {seed}: no new leader within {ELECTION_BOUND_TICKS} ticks")


@pytest.mark.parametrize("spread", [0, 3])
@pytest.mark.parametrize(("n", "max_delay"), [(3, 0), (3, 1), (5, 0), (5, 1)])
def test_survivors_told_their_leader_died_elect_within_a_beat_and_two_round_trips(
    n: int, max_delay: int, spread: int
) -> None:
    """No election timeout to wait out: the dead leader's last messages, the survivors told
    over `spread` ticks, the rest of the beat the leader owed and a random beat (up to 5 + 5
    ticks), then pre-vote and vote there and back (four messages of up to 1 + max_delay
    ticks) and a tick of tick order, where waiting takes 25 ticks or more. The first to
    campaign wins, as no survivor holds a lease; the larger id going on settles a tie.
    With messages late by a tick, campaigns can still cross (one survivor may refuse
    another's while it holds its lease, and the two then refuse each other): at most one
    seed in a hundred waits for a timer, which is where every failover stood before (one of
    the 4,800 did, at 5 nodes)."""
    bound = (1 + max_delay) + spread + 5 + 5 + 4 * (1 + max_delay) + 1
    times = [survivors_told_elect_after(seed, n, max_delay, spread) for seed in range(600)]
    slow = [t for t in times if t > bound]
    assert bound < 30 and len(slow) <= (0 if max_delay == 0 else len(times) // 100), sorted(slow)


@pytest.mark.parametrize("max_delay", [0, 1])
@pytest.mark.parametrize("n", [3, 5])
@pytest.mark.parametrize("seed", range(20))
def test_followers_wrongly_told_their_live_leader_died_keep_it(n: int, max_delay: int, seed: int) -> None:
    """Every follower at once is told a live leader died (all its streams reset, a proxy in
    front of it refusing the dial for a moment): each forgets it, but waits out the beat the
    leader owes it, and that beat restores it before any timer fires. Nobody's term moves."""
    net = SimNet(ids(n), seed=seed, heartbeat_ticks=5, election_ticks_min=25, election_ticks_max=50,
                 max_delay=max_delay)
    leader = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert leader is not None
    net.run(net.rng.randrange(5))
    term = net.nodes[leader].term
    for follower in [node for node in net.ids if node != leader]:
        net.execute(follower, net.nodes[follower].leader_gone(leader, term))
        assert net.nodes[follower].leader is None
    net.run(200)
    assert net.stable_leader() == leader
    assert {node.term for node in net.nodes.values()} == {term}


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


# ---- full disks ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_a_node_with_a_full_disk_neither_votes_nor_drags_terms(seed: int) -> None:
    """Raft §5.2 (persist before you answer) with a disk that refuses: the node's
    memory stays at its durable term, the others elect without it and their
    term does not climb, and once the disk has room it follows the leader."""
    net = SimNet(ids(5), seed=seed)
    leader = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert leader is not None
    full = next(n for n in net.ids if n != leader)
    term = net.persisted[full][0]
    net.fill_disk(full)
    net.crash(leader)
    new_leader = net.run_until_stable(ELECTION_BOUND_TICKS, without=frozenset({full}))
    net.run(20 * net.election_ticks_max)
    assert new_leader not in (None, full, leader)
    assert net.stable_leader(without=frozenset({full})) == new_leader
    assert net.nodes[full].term == net.persisted[full][0] == term
    assert net.nodes[new_leader].term <= term + 2, f"terms climbed to {net.nodes[new_leader].term}"
    net.disk_full.clear()
    net.run(2 * net.election_ticks_max)
    assert net.nodes[full].leader == new_leader
    assert net.persisted[full][0] == net.nodes[new_leader].term


# ---- one-way cuts and pauses ------------------------------------------------------------


def test_leader_that_cannot_send_is_replaced_and_follows_the_new_one() -> None:
    """A one-way cut from the leader (its RPCs fail, the others' reach it): the
    followers stop hearing heartbeats, win pre-votes among themselves although
    the old leader refuses (it still leads), and elect a new leader in a higher
    term (Raft §5.2); its heartbeats reach the old leader, which follows (§5.1)."""
    net = SimNet(ids(5), seed=21)
    old = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert old is not None
    old_term = net.nodes[old].term
    for other in net.ids:
        if other != old:
            net.cut(old, other, both=False)
    new = None
    for _ in range(ELECTION_BOUND_TICKS):
        net.step_tick()
        leaders = [n for n in net.leaders() if n != old]
        if leaders:
            new = leaders[0]
            break
    assert new is not None and net.nodes[new].term > old_term
    net.run(net.election_ticks_max)
    assert net.nodes[old].role is Role.FOLLOWER and net.nodes[old].leader == new


def test_one_way_cut_into_the_leader_changes_nothing() -> None:
    """The others' RPCs to the leader fail, but the leader's own RPCs carry their
    replies back: heartbeats still flow and CheckQuorum is satisfied."""
    net = SimNet(ids(3), seed=22)
    leader = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert leader is not None
    term = net.nodes[leader].term
    for other in net.ids:
        if other != leader:
            net.cut(other, leader, both=False)
    net.run(10 * net.election_ticks_max)
    assert net.stable_leader() == leader and net.nodes[leader].term == term


def test_paused_leader_resumes_and_steps_down() -> None:
    """A leader stopped for longer than the election timeout is replaced; on resume
    it handles its stale backlog, sees the higher term and follows (Raft §5.1)."""
    net = SimNet(ids(3), seed=23)
    old = net.run_until_stable(ELECTION_BOUND_TICKS)
    assert old is not None
    net.pause(old)
    net.run(5 * net.election_ticks_max)
    others = [n for n in net.leaders() if n != old]
    assert len(others) == 1 and net.nodes[others[0]].term > net.nodes[old].term
    net.resume(old)
    assert net.nodes[old].role is Role.FOLLOWER  # the backlog alone deposes it
    assert net.run_until_stable(ELECTION_BOUND_TICKS) == others[0]


# ---- randomized schedules ----------------------------------------------------------

#: (heartbeat_ticks, election_ticks_min) per schedule; the maximum is twice the minimum.
#: Short timeouts pack many elections into few ticks, which is what keeps 10,000
#: schedules within seconds.
TIMINGS = ((1, 4), (1, 6), (2, 10))


def random_schedule(seed: int, **overrides: Any) -> SimNet:
    """One chaotic schedule: loss, duplicates, reordering, symmetric and one-way
    partitions, pauses, crashes (also mid-output), restarts and full disks; then a heal.

    Invariants are checked inside SimNet after every step; liveness is checked
    here, once the network is healthy again: no loss, and delays well under
    the election timeout (Raft §5.6's broadcastTime << electionTimeout).
    """
    rng = random.Random(seed)
    heartbeat_ticks, election_min = rng.choice(TIMINGS)
    # Half the schedules thin their beats while quiet (the largest idle interval allowed).
    idle = max(t for t in range(heartbeat_ticks, election_min) if 2 * t < election_min)
    net = SimNet(
        ids(rng.choice((3, 5))),
        seed,
        replicate=True,
        heartbeat_ticks=heartbeat_ticks,
        election_ticks_min=election_min,
        election_ticks_max=2 * election_min,
        drop=rng.choice((0.0, 0.05, 0.2)),
        duplicate=rng.choice((0.0, 0.1)),
        max_delay=rng.choice((0, 1, election_min // 2)),
        pre_vote=rng.random() < 0.5,
        check_quorum=rng.random() < 0.8,
        crash_mid_outputs=rng.choice((0.0, 0.05, 0.1)),
        idle_heartbeat_ticks=idle if rng.random() < 0.5 else 0,
        quiet=rng.random() < 0.5,
        **overrides,
    )
    for _ in range(rng.randint(20, 70)):
        event = rng.random()
        node = rng.choice(net.ids)
        if event < 0.02:
            net.isolate(node)
        elif event < 0.05:
            net.cut(node, rng.choice(net.ids), both=rng.random() < 0.5)
        elif event < 0.10:
            net.heal()
        elif event < 0.12 and node not in net.down:
            net.crash(node)
        elif event < 0.20 and node in net.down:
            net.restart(node)
        elif event < 0.22:
            net.pause(node)
        elif event < 0.30 and node in net.paused:
            net.resume(node)
        elif event < 0.32:
            net.fill_disk(node)
        elif event < 0.36:
            net.disk_full.discard(node)
        elif event < 0.38:
            net.compact(node)
        elif event < 0.42:
            net.set_quiet(not net.quiet)  # a job starts, or the last one ends
        if rng.random() < 0.3:
            net.submit(f"job-{len(net.submitted)}")
        net.step_tick()
    net.heal()
    net.disk_full.clear()
    net.drop = net.duplicate = net.crash_mid_outputs = 0.0
    net.max_delay = min(net.max_delay, election_min // 4)
    for node in sorted(net.paused):
        net.resume(node)
    for node in sorted(net.down):
        net.restart(node)
    settle_every_job(net, seed, ELECTION_BOUND_TICKS)
    return net


def settle_every_job(net: SimNet, seed: int, settle_ticks: int) -> None:
    """Once the network is healthy: a leader within ELECTION_BOUND_TICKS, then the clients
    resubmit what was never acknowledged (same job ids), until it is: a leader elected
    before the heal may still be deposed by CheckQuorum for the silence before it, and
    what it took unreplicated is then gone, as for any leader. Then every node must hold
    the same jobs, each once, and every acknowledged one (`check_jobs`)."""
    assert net.run_until_stable(ELECTION_BOUND_TICKS) is not None, (
        f"seed={seed}: no leader {ELECTION_BOUND_TICKS} ticks after healing"
    )
    for _ in range(3):
        for job_id in sorted(set(net.submitted) - net.acknowledged):
            net.submit(job_id)
        assert net.settle(settle_ticks) is not None, f"seed={seed}: the log did not settle"
        if net.acknowledged == set(net.submitted):
            break
    check_jobs(net, seed)


def check_jobs(net: SimNet, seed: int) -> None:
    """Every live node did the same jobs in the same order, each once, all of them."""
    done = {tuple(net.done[n]) for n in net.ids if n not in net.down}
    assert len(done) == 1, f"seed={seed}: nodes disagree on the jobs done: {done}"
    order = done.pop()
    assert len(order) == len(set(order)), f"seed={seed}: a job was done twice: {order}"
    assert set(order) == set(net.submitted), f"seed={seed}: lost {set(net.submitted) - set(order)}"


SCHEDULES = 10_000
BLOCKS = 10


def run_schedule(seed: int) -> SimNet:
    """`random_schedule`, with the seed and the replay command on any failure."""
    try:
        return random_schedule(seed)
    except Exception as exc:  # InvariantError, liveness, or the core's own guard
        raise AssertionError(
            f"seed={seed} failed: {exc}\nreplay: DISTNODE_SEED={seed} pytest -q tests/test_election_sim.py -k replay"
        ) from exc


@pytest.mark.parametrize("block", range(BLOCKS))
def test_randomized_schedules_keep_invariants_and_elect(block: int) -> None:
    """Raft §5.2 Election Safety and liveness over 10,000 seeded chaotic schedules."""
    per_block = SCHEDULES // BLOCKS
    for seed in range(block * per_block, (block + 1) * per_block):
        run_schedule(seed)


def test_schedules_replay_exactly() -> None:
    """The same seed gives the same run: same leaders by term, same traffic."""
    for seed in (3, 77, 4242):
        first, second = random_schedule(seed), random_schedule(seed)
        assert (first.leader_of_term, first.delivered, first.now) == (
            second.leader_of_term, second.delivered, second.now
        )


def test_randomized_schedules_catch_a_forgetful_restart() -> None:
    """Control: with restarts that forget the persisted vote, schedules must fail."""
    caught = 0
    for seed in range(300):
        try:
            random_schedule(seed, restore_on_restart=False)
        except InvariantError:
            caught += 1
    assert caught >= 10, f"only {caught} of 300 schedules caught a forgetful restart"


def test_schedules_cover_every_fault() -> None:
    """The schedules actually exercise what they claim: elections under every fault kind."""
    seen = {"one-way": 0, "paused": 0, "crashed": 0, "disk": 0, "elections": 0}
    for seed in range(200):
        net = random_schedule(seed)
        seen["elections"] += len(net.leader_of_term)
        seen["one-way"] += net.stats["one-way"]
        seen["paused"] += net.stats["pause"]
        seen["crashed"] += net.stats["crash"]
        seen["disk"] += net.stats["disk"]
    assert all(count > 50 for count in seen.values()), seen


def test_replay() -> None:
    """Replay one randomized schedule: DISTNODE_SEED=<seed> pytest -k replay (seed 0 if unset)."""
    net = run_schedule(int(os.environ.get("DISTNODE_SEED", "0")))
    assert net.leader_of_term, "the schedule elected nobody"
    print(f"leaders by term: {net.leader_of_term}, delivered {net.delivered} messages")
