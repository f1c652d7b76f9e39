"""One test per rule of the election, on single nodes fed messages by hand.

Each docstring cites the sentence of the Raft paper (§) or Ongaro's thesis it checks.
"""

from __future__ import annotations

import random
import re

import pytest

from node.core.election import Election
from node.core.electionconfig import ElectionConfig
from node.core.messages import (
    Heartbeat,
    HeartbeatResponse,
    Output,
    Persist,
    Role,
    RoleChanged,
    Send,
    VoteRequest,
    VoteResponse,
)

PEERS = ("b", "c")


def make(
    node_id: str = "a",
    peers: tuple[str, ...] = PEERS,
    *,
    term: int = 0,
    voted_for: str | None = None,
    seed: int = 0,
    **kw: object,
) -> Election:
    config = ElectionConfig(node_id, peers, **kw)  # type: ignore[arg-type]
    return Election(config, random.Random(seed), term=term, voted_for=voted_for)


def sends(outputs: list[Output]) -> list[object]:
    return [o.message for o in outputs if isinstance(o, Send)]


def run_until_timeout(node: Election, limit: int = 1000) -> list[Output]:
    for _ in range(limit):
        out = node.tick()
        if out:
            return out
    raise AssertionError("the election timer never fired")


def elect(node: Election) -> list[Output]:
    """Drive a node with pre-vote through both rounds to leadership."""
    node.campaign()
    node.step(VoteResponse("b", "a", node.term + 1, granted=True, pre_vote=True))
    node.step(VoteResponse("b", "a", node.term, granted=True))
    assert node.role is Role.LEADER
    return []


# ---- configuration ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            {"election_ticks_min": 2},
            "election_ticks_min (2) must be greater than 2 * heartbeat_ticks (1)",
        ),
        (
            {"heartbeat_ticks": 5},
            "election_ticks_min (10) must be greater than 2 * heartbeat_ticks (5)",
        ),
        (
            {"election_ticks_max": 9},
            "election_ticks_max (9) must be at least election_ticks_min (10)",
        ),
        ({"heartbeat_ticks": 0}, "heartbeat_ticks (0) must be at least 1"),
        (
            {"heartbeat_ticks": 2, "idle_heartbeat_ticks": 1},
            "idle_heartbeat_ticks (1) must be at least heartbeat_ticks (2) and under half election_ticks_min (10)",
        ),
        (
            {"idle_heartbeat_ticks": 5},
            "idle_heartbeat_ticks (5) must be at least heartbeat_ticks (1) and under half election_ticks_min (10)",
        ),
        ({"peers": ("b", "a")}, "node_id ('a') must not be in peers"),
        ({"peers": ("b", "b")}, "contain duplicates"),
        ({"node_id": ""}, "node_id must be non-empty"),
    ],
)
def test_config_validation_names_both_values(kw: dict[str, object], message: str) -> None:
    """Configuration people can trust: a broken relation names both values."""
    fields: dict[str, object] = {"node_id": "a", "peers": PEERS, **kw}
    config = ElectionConfig(**fields)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(message)):
        Election(config, random.Random(0))


def test_default_config_is_valid_and_quorum_is_a_majority() -> None:
    """Raft §5.2: a candidate wins with votes from a majority of the full cluster."""
    ElectionConfig("a", PEERS).validate()
    assert [ElectionConfig("a", tuple("bcdef"[:n])).quorum for n in range(5)] == [1, 2, 2, 3, 3]


# ---- election timer -------------------------------------------------------------


def test_randomized_timeouts_within_bounds() -> None:
    """Raft §5.2: election timeouts are chosen randomly from a fixed interval."""
    seen = set()
    for seed in range(200):
        node = make(seed=seed, election_ticks_min=10, election_ticks_max=14)
        ticks = 0
        while node.role is Role.FOLLOWER:
            node.tick()
            ticks += 1
        seen.add(ticks)
    assert seen == {10, 11, 12, 13, 14}


def test_follower_timeout_starts_pre_vote_without_changing_term() -> None:
    """Thesis §9.6: a pre-candidate asks for term+1 but does not increment its own term."""
    node = make(term=3, voted_for="b")
    out = run_until_timeout(node)
    assert node.role is Role.PRE_CANDIDATE
    assert (node.term, node.voted_for) == (3, "b")
    assert not any(isinstance(o, Persist) for o in out)
    assert sends(out) == [VoteRequest("a", p, 4, pre_vote=True) for p in PEERS]
    assert RoleChanged(Role.PRE_CANDIDATE, 3, None) in out


def test_pre_vote_quorum_makes_candidate_and_persists_before_sending() -> None:
    """Raft §5.2 + Figure 2: increment term, vote for self, persist before any RPC."""
    node = make(term=3)
    node.campaign()
    out = node.step(VoteResponse("b", "a", 4, granted=True, pre_vote=True))
    assert node.role is Role.CANDIDATE
    assert (node.term, node.voted_for) == (4, "a")
    first_send = next(i for i, o in enumerate(out) if isinstance(o, Send))
    assert out.index(Persist(4, "a")) < first_send
    assert sends(out) == [VoteRequest("a", p, 4) for p in PEERS]


def test_without_pre_vote_timeout_starts_real_election() -> None:
    """Raft §5.2: on timeout a follower increments its term and becomes a candidate."""
    node = make(pre_vote=False, term=1)
    out = run_until_timeout(node)
    assert (node.role, node.term, node.voted_for) == (Role.CANDIDATE, 2, "a")
    assert out[0] == Persist(2, "a")


def test_candidate_timeout_restarts_with_pre_vote() -> None:
    """Raft §5.2: a candidate that neither wins nor loses times out and starts anew."""
    node = make()
    node.campaign()
    node.step(VoteResponse("b", "a", 1, granted=True, pre_vote=True))
    assert node.role is Role.CANDIDATE
    out = run_until_timeout(node)
    assert node.role is Role.PRE_CANDIDATE and node.term == 1
    assert sends(out) == [VoteRequest("a", p, 2, pre_vote=True) for p in PEERS]


def test_votes_from_a_majority_make_a_leader_that_heartbeats_at_once() -> None:
    """Raft §5.2: a winner sends heartbeats to all others to establish its authority."""
    node = make(pre_vote=False)
    node.campaign()
    out = node.step(VoteResponse("c", "a", 1, granted=True))
    assert node.role is Role.LEADER and node.leader == "a"
    assert RoleChanged(Role.LEADER, 1, "a") in out
    assert sends(out) == [Heartbeat("a", p, 1) for p in PEERS]


def test_votes_counted_once_per_peer_key_and_strangers_ignored() -> None:
    """Raft §5.2: a majority of distinct servers; response src is the dialled peer key."""
    node = make("a", ("b", "c", "d", "e"), pre_vote=False)
    node.campaign()
    node.step(VoteResponse("b", "a", 1, granted=True))
    node.step(VoteResponse("b", "a", 1, granted=True))  # duplicate
    node.step(VoteResponse("zz", "a", 1, granted=True))  # not a peer key
    assert node.role is Role.CANDIDATE
    node.step(VoteResponse("c", "a", 1, granted=True))
    assert node.role is Role.LEADER


def test_majority_of_rejections_returns_candidate_to_follower() -> None:
    """Raft §5.2: a candidate that cannot win waits for a new timeout as a follower."""
    node = make(pre_vote=False)
    node.campaign()
    node.step(VoteResponse("b", "a", 1, granted=False))
    node.step(VoteResponse("c", "a", 1, granted=False))
    assert (node.role, node.term, node.voted_for) == (Role.FOLLOWER, 1, "a")


def test_leader_heartbeats_every_heartbeat_ticks() -> None:
    """Raft §5.2: leaders send periodic heartbeats to maintain their authority."""
    node = make(heartbeat_ticks=3, check_quorum=False)
    elect(node)
    beats = [bool(sends(node.tick())) for _ in range(9)]
    assert beats == [False, False, True] * 3


def test_after_a_stall_a_leader_beats_at_once_and_restarts_its_interval() -> None:
    """Ours: the daemon tells the core its loop stalled (clock.py, the stall not fed as time):
    a leader beats at once, its followers' clocks having run, and the next beat follows a
    whole interval later. A follower sends nothing."""
    node = make(heartbeat_ticks=3, check_quorum=False)
    elect(node)
    node.tick()
    beat = sends(node.stalled())
    assert sorted(m.dst for m in beat if isinstance(m, Heartbeat)) == ["b", "c"]
    assert [bool(sends(node.tick())) for _ in range(3)] == [False, False, True]
    follower = make()
    assert follower.stalled() == []


def test_after_a_stall_a_leaders_reads_wait_for_a_quorum_to_answer_what_it_sent_since() -> None:
    """Ours: answers read after a stall may be as old as the stall, which was no time to the
    leader, so they would renew the evidence its reads rest on (a new leader may have been
    elected meanwhile). Reads wait for a quorum to answer a message sent after the stall, or
    for a window of ticks; CheckQuorum still counts every answer."""
    node = make(heartbeat_ticks=3, election_ticks_min=10, election_ticks_max=20)
    elect(node)
    first = [m for m in sends(node.tick() + node.tick() + node.tick()) if isinstance(m, Heartbeat)]
    for beat in first:
        node.step(HeartbeatResponse(beat.dst, "a", node.term, True, 0, beat.serial))
    assert node.may_read() and node.hears_quorum()
    since = [m for m in sends(node.stalled()) if isinstance(m, Heartbeat)]
    assert not node.may_read() and node.hears_quorum()
    for beat in first:  # late answers to what went before the stall
        node.heard(beat.dst, node.term, serial=beat.serial)
        node.step(HeartbeatResponse(beat.dst, "a", node.term, True, 0, beat.serial))
    assert not node.may_read(), "answers to beats sent before the stall renewed the reads"
    node.heard(since[0].dst, node.term, writing=True, serial=since[0].serial)  # one peer + us: a quorum
    assert node.may_read()
    node.stalled()
    for beat in first:  # read just after the stall: counted for CheckQuorum, not for reads
        node.step(HeartbeatResponse(beat.dst, "a", node.term, True, 0, beat.serial))
    for _ in range(10):
        node.tick()
    assert not node.may_read() and node.hears_quorum(), "a window on, the old answers still count"
    node.tick()  # a window and a tick since the stall: the evidence is what it says again
    assert not node.may_read() and not node.hears_quorum()


def test_an_answer_counted_once_is_no_news_when_stepped_again() -> None:
    """Ours: a reply held while the leader's own write is pending is counted when it arrives
    (`heard`) and stepped once the write returns; stepped, it must not count as heard anew,
    or the leader's evidence (CheckQuorum, reads) would look younger by the write's length.
    An answer to an older message than one counted is no news either."""
    node = make(heartbeat_ticks=3, election_ticks_min=10, election_ticks_max=20)
    elect(node)
    beats = {m.dst: m for m in sends(node.tick() + node.tick() + node.tick()) if isinstance(m, Heartbeat)}
    node.heard("b", node.term, serial=beats["b"].serial)  # held: counted on arrival
    for _ in range(6):
        node.tick()
    node.step(HeartbeatResponse("b", "a", node.term, True, 0, beats["b"].serial))  # the write returned
    assert node.peer_ticks_since_heard()["b"] == 6
    newer = [m for m in sends(node.tick() + node.tick() + node.tick()) if isinstance(m, Heartbeat)]
    later = next(m for m in newer if m.dst == "b")
    node.step(HeartbeatResponse("b", "a", node.term, True, 0, later.serial))
    assert node.peer_ticks_since_heard()["b"] == 0
    node.tick()
    node.step(HeartbeatResponse("b", "a", node.term, True, 0, beats["b"].serial))  # overtaken
    assert node.peer_ticks_since_heard()["b"] == 1


def test_a_snapshots_chunks_answered_writing_keep_counting_under_one_serial() -> None:
    """Ours: a snapshot's chunks share its message's serial, and each is answered writing as
    it arrives (beatstream.py). Each such answer is news, or a follower taking a transfer
    longer than an election timeout would drop out of CheckQuorum (and be declared dead)
    while it answers every chunk; a plain answer of that serial again is still none."""
    node = make(heartbeat_ticks=3, election_ticks_min=10, election_ticks_max=20)
    elect(node)
    beat = next(m for m in sends(node.tick() + node.tick() + node.tick()) if m.dst == "b")
    for _ in range(8):  # 32 ticks of chunks, past the window of 10
        for _ in range(4):
            node.tick()
        node.heard("b", node.term, writing=True, serial=beat.serial)
        assert node.peer_ticks_since_heard()["b"] == 0
    assert "b" in node.active_peers() and node.hears_quorum()
    node.tick()
    node.heard("b", node.term, serial=beat.serial)  # not writing: an answer counted before
    assert node.peer_ticks_since_heard()["b"] == 1
    node.heard("b", node.term, serial=beat.serial + 3)  # a later beat's answer, by datagram
    for _ in range(8):  # then the datagrams stop: the chunks' answers, of the older number, still count
        for _ in range(4):
            node.tick()
        node.heard("b", node.term, writing=True, serial=beat.serial)
    assert "b" in node.active_peers() and node.peer_ticks_since_heard()["b"] == 0


def test_a_quiet_leader_with_everything_committed_beats_every_idle_heartbeat_ticks() -> None:
    """Ours, not the paper's: beats are most of what an idle cluster does. While the caller
    says no job runs (`quiet`) and every entry is committed, the leader beats every
    `idle_heartbeat_ticks`; an entry not yet committed, or a job, brings `heartbeat_ticks`
    back at once. A beat promised the next one within its own interval, and that holds:
    the first thinned beat follows the last full-rate one at `heartbeat_ticks`."""
    node = make(heartbeat_ticks=2, idle_heartbeat_ticks=4, check_quorum=False, replicate=True)
    elect(node)
    node.quiet = True
    assert [bool(sends(node.tick())) for _ in range(4)] == [False, True] * 2, "the no-op is uncommitted"
    node.step(HeartbeatResponse("b", "a", node.term, True, node.log.last_index))
    assert node.commit_index == node.log.last_index
    assert [bool(sends(node.tick())) for _ in range(2)] == [False, True], "the last beat promised 2"
    assert [bool(sends(node.tick())) for _ in range(8)] == [False, False, False, True] * 2
    assert node.ticks_until_due() == 4
    node.quiet = False  # a job started
    assert node.ticks_until_due() == 2
    assert [bool(sends(node.tick())) for _ in range(4)] == [False, True] * 2


def test_every_append_entries_says_how_late_the_next_beat_may_be() -> None:
    """Ours: `Heartbeat.slack` is what the next beat may take past `heartbeat_ticks`, so a
    follower waits that much longer. A quiet beat carries the idle interval's extra; a
    catch-up AppendEntries between beats carries what is left of its beat's promise."""
    node = make(heartbeat_ticks=2, idle_heartbeat_ticks=5, election_ticks_min=12, election_ticks_max=20,
                check_quorum=False, replicate=True)
    elect(node)
    node.quiet = True
    for peer in ("b", "c"):
        node.step(HeartbeatResponse(peer, "a", node.term, True, node.log.last_index))
    beats = [m for _ in range(2) for m in sends(node.tick())]
    assert [(m.dst, m.slack) for m in beats] == [("b", 3), ("c", 3)], "when promised; it promises 5"
    beats = [m for _ in range(5) for m in sends(node.tick())]
    assert [(m.dst, m.slack) for m in beats] == [("b", 3), ("c", 3)]
    node.tick()
    # "c" lost its log (its journal moved aside) and refuses: its catch-up goes at once, one
    # tick into a 5-tick promise.
    out = node.step(HeartbeatResponse("c", "a", node.term, False, 1))
    assert [(m.dst, m.slack, len(m.entries)) for m in sends(out)] == [("c", 2, 1)]
    node.quiet = False
    assert [m.slack for _ in range(4) for m in sends(node.tick())] == [0] * 4, "busy: no slack"


def test_a_follower_waits_the_slack_its_leader_promised_before_it_campaigns() -> None:
    """Ours: a beat with slack S moves the follower's election timer and its lease
    (thesis §6.2) S ticks later, so a thinned beat keeps the unthinned stall tolerance;
    the next beat without slack takes it back."""
    node = make(election_ticks_min=10, election_ticks_max=10)
    node.step(Heartbeat("x", "a", 1, slack=3))
    assert node.ticks_until_due() == 13
    for _ in range(12):
        assert node.tick() == []
    # Still in the lease at tick 12: a pre-vote is refused, as at tick 9 without slack.
    assert sends(node.step(VoteRequest("y", "a", 2, pre_vote=True))) == [VoteResponse("a", "y", 1, False, True)]
    assert node.role is Role.PRE_CANDIDATE or sends(node.tick()), "it campaigns at tick 13"
    node = make(election_ticks_min=10, election_ticks_max=10)
    node.step(Heartbeat("x", "a", 1, slack=3))
    node.step(Heartbeat("x", "a", 1))
    assert node.ticks_until_due() == 10
    node = make(election_ticks_min=10, election_ticks_max=10)
    node.step(Heartbeat("x", "a", 1, slack=10**6))
    assert node.ticks_until_due() == 20, "capped at election_ticks_min: a beat never pins a follower"


def test_single_node_elects_itself() -> None:
    """Raft §5.2: a majority of a one-server cluster is the server itself."""
    node = make(peers=())
    out = run_until_timeout(node)
    assert (node.role, node.term, node.voted_for) == (Role.LEADER, 1, "a")
    assert Persist(1, "a") in out and not sends(out)
    # Alone it has nothing to send and no quorum to lose: its clock may sleep long.
    assert node.ticks_until_due() == 20  # election_ticks_max
    for _ in range(100):
        assert node.tick() == []
        assert node.role is Role.LEADER


# ---- terms ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        VoteRequest("x", "a", 7),
        Heartbeat("x", "a", 7),
        HeartbeatResponse("b", "a", 7),
        VoteResponse("b", "a", 7, granted=False),
        VoteResponse("b", "a", 7, granted=False, pre_vote=True),
    ],
)
def test_higher_term_makes_leader_follower_and_persists(message: object) -> None:
    """Raft §5.1: if a server sees a larger term it updates its term and reverts to follower."""
    node = make(check_quorum=False)
    elect(node)
    out = node.step(message)  # type: ignore[arg-type]
    assert node.role is Role.FOLLOWER and node.term == 7
    persists = [o for o in out if isinstance(o, Persist)]
    assert persists == [Persist(7, "x" if isinstance(message, VoteRequest) else None)]


def test_pre_vote_messages_never_change_term() -> None:
    """Thesis §9.6: a pre-vote request and a granted pre-vote carry a future term only."""
    node = make(term=2)
    out = node.step(VoteRequest("x", "a", 9, pre_vote=True))
    assert out == [Send(VoteResponse("a", "x", 9, granted=True, pre_vote=True))]
    assert (node.role, node.term, node.voted_for) == (Role.FOLLOWER, 2, None)
    assert node.step(VoteResponse("b", "a", 9, granted=True, pre_vote=True)) == []
    assert node.term == 2


def test_stale_requests_answered_with_current_term_and_stale_responses_dropped() -> None:
    """Raft §5.1: a request with a stale term is rejected; the reply carries the newer term."""
    node = make(term=5)
    assert node.step(VoteRequest("x", "a", 4)) == [Send(VoteResponse("a", "x", 5, granted=False))]
    assert node.step(Heartbeat("x", "a", 4)) == [Send(HeartbeatResponse("a", "x", 5, success=False))]
    assert node.step(VoteResponse("b", "a", 4, granted=True)) == []
    assert node.step(HeartbeatResponse("b", "a", 4)) == []
    assert (node.role, node.term, node.voted_for, node.leader) == (Role.FOLLOWER, 5, None, None)


def test_stale_leader_steps_down_on_heartbeat_response() -> None:
    """Raft §5.1: a leader that learns its term is out of date reverts to follower."""
    node = make(check_quorum=False)
    elect(node)
    node.step(HeartbeatResponse("b", "a", node.term + 1))
    assert node.role is Role.FOLLOWER and node.leader is None


# ---- voting ---------------------------------------------------------------------


def test_one_vote_per_term_first_come_first_served() -> None:
    """Raft §5.2: each server will vote for at most one candidate in a given term."""
    node = make(check_quorum=False)
    out = node.step(VoteRequest("x", "a", 1))
    assert out == [Persist(1, "x"), Send(VoteResponse("a", "x", 1, granted=True))]
    assert node.step(VoteRequest("y", "a", 1)) == [Send(VoteResponse("a", "y", 1, granted=False))]
    # The same candidate asking again (a retry) gets the same answer, and nothing new to persist.
    assert node.step(VoteRequest("x", "a", 1)) == [Send(VoteResponse("a", "x", 1, granted=True))]


def test_restart_with_persisted_vote_does_not_vote_again() -> None:
    """Raft Figure 2: votedFor is persistent, so a restarted server never votes twice."""
    before = make(check_quorum=False)
    persisted = [o for o in before.step(VoteRequest("x", "a", 3)) if isinstance(o, Persist)][-1]
    after = make(term=persisted.term, voted_for=persisted.voted_for, seed=1)
    assert after.step(VoteRequest("y", "a", 3)) == [Send(VoteResponse("a", "y", 3, granted=False))]
    assert (after.term, after.voted_for) == (3, "x")


def test_granting_a_vote_resets_the_election_timer() -> None:
    """Raft §5.2 (Figure 2): a follower that grants a vote restarts its election timeout."""
    node = make(election_ticks_min=10, election_ticks_max=10, check_quorum=False)
    for _ in range(9):
        node.tick()
    node.step(VoteRequest("x", "a", 1))
    assert all(node.tick() == [] for _ in range(9))
    assert node.tick() != []


def test_pre_vote_granted_only_for_a_later_term() -> None:
    """Thesis §9.6: a pre-vote is granted only if the proposed term is ahead of ours."""
    node = make(term=4, check_quorum=False)
    assert node.step(VoteRequest("x", "a", 4, pre_vote=True)) == [
        Send(VoteResponse("a", "x", 4, granted=False, pre_vote=True))
    ]
    assert node.voted_for is None


def test_granting_a_pre_vote_resets_a_followers_election_timer() -> None:
    """Ours: a follower that grants a pre-vote gives that pre-candidate its
    time to win instead of campaigning on its heels (and splitting the vote)."""
    node = make(election_ticks_min=10, election_ticks_max=10, check_quorum=False)
    for _ in range(9):
        node.tick()
    assert node.step(VoteRequest("x", "a", 1, pre_vote=True)) == [
        Send(VoteResponse("a", "x", 1, granted=True, pre_vote=True))
    ]
    assert all(node.tick() == [] for _ in range(9))
    assert node.tick() != []
    assert node.term == 0 and node.voted_for is None  # still no state changed


def test_refusing_a_pre_vote_leaves_the_timer_alone() -> None:
    node = make(term=4, election_ticks_min=10, election_ticks_max=10, check_quorum=False)
    for _ in range(9):
        node.tick()
    node.step(VoteRequest("x", "a", 4, pre_vote=True))  # not ahead of our term: refused
    assert node.tick() != []


def test_fresh_pre_candidates_the_larger_id_refuses_the_smaller_and_goes_on() -> None:
    """Ours: two pre-candidates for one term, started within a heartbeat of each
    other: the larger id refuses the smaller one's pre-vote and campaigns on."""
    node = make("b", ("a", "c"), heartbeat_ticks=2, check_quorum=False)
    node.campaign()
    assert node.role is Role.PRE_CANDIDATE
    # A refusal carries our own term.
    assert sends(node.step(VoteRequest("a", "b", 1, pre_vote=True))) == [
        VoteResponse("b", "a", 0, granted=False, pre_vote=True)
    ]
    assert node.role is Role.PRE_CANDIDATE and node.term == 0
    node.step(VoteResponse("c", "b", 1, granted=True, pre_vote=True))
    assert node.role is Role.CANDIDATE and node.term == 1


def test_fresh_pre_candidates_the_smaller_id_grants_the_larger_and_stands_down() -> None:
    """...and the smaller grants the larger one's pre-vote and gives up its own
    campaign, so it does not go on to split the vote even if a follower
    granted it too."""
    node = make("a", ("b", "c"), heartbeat_ticks=2, election_ticks_min=10,
                election_ticks_max=10, check_quorum=False)
    node.campaign()
    out = node.step(VoteRequest("b", "a", 1, pre_vote=True))
    assert sends(out) == [VoteResponse("a", "b", 1, granted=True, pre_vote=True)]
    assert RoleChanged(Role.FOLLOWER, 0, None) in out
    assert node.role is Role.FOLLOWER and node.term == 0 and node.voted_for is None
    node.step(VoteResponse("c", "a", 1, granted=True, pre_vote=True))  # a leftover now
    assert node.role is Role.FOLLOWER and node.term == 0
    # Its timer restarted: no campaign for a whole timeout.
    assert all(node.tick() == [] for _ in range(9))
    assert node.tick() != []


def test_a_pre_candidate_past_its_first_heartbeat_grants_like_anyone() -> None:
    """A campaign that cannot finish (its requests cut off) must not keep
    refusing a smaller id whose requests do get through."""
    node = make("b", ("a", "c"), heartbeat_ticks=2, election_ticks_min=10, check_quorum=False)
    node.campaign()
    node.tick()
    node.tick()
    assert node.role is Role.PRE_CANDIDATE
    assert sends(node.step(VoteRequest("a", "b", 1, pre_vote=True))) == [
        VoteResponse("b", "a", 1, granted=True, pre_vote=True)
    ]


# ---- heartbeats and leader lease -------------------------------------------------


def test_heartbeat_makes_candidate_follow_and_resets_the_election_timer() -> None:
    """Raft §5.2: a candidate that hears from a leader of its term returns to follower."""
    node = make(election_ticks_min=10, election_ticks_max=10)
    node.campaign()
    node.step(VoteResponse("b", "a", 1, granted=True, pre_vote=True))
    assert node.role is Role.CANDIDATE
    for _ in range(9):
        node.tick()
    out = node.step(Heartbeat("x", "a", 1))
    assert out == [RoleChanged(Role.FOLLOWER, 1, "x"), Send(HeartbeatResponse("a", "x", 1))]
    assert (node.leader, node.ticks_since_leader) == ("x", 0)
    assert all(node.tick() == [] for _ in range(9))
    assert node.ticks_since_leader == 9


def test_heartbeat_timer_reset_keeps_a_follower_following() -> None:
    """Raft §5.2: followers remain followers as long as they receive heartbeats."""
    node = make()
    for _ in range(100):
        node.step(Heartbeat("x", "a", 1))
        node.tick()
    assert (node.role, node.term, node.leader) == (Role.FOLLOWER, 1, "x")


def test_leader_lease_rejects_votes_without_changing_term() -> None:
    """Thesis §4.2.3/§6.2: a server that heard from a leader within the minimum
    election timeout neither grants a vote nor updates its term."""
    node = make(election_ticks_min=10)
    node.step(Heartbeat("x", "a", 1))
    for _ in range(9):
        node.tick()
    assert node.step(VoteRequest("y", "a", 2)) == [Send(VoteResponse("a", "y", 1, granted=False))]
    assert node.step(VoteRequest("y", "a", 2, pre_vote=True)) == [
        Send(VoteResponse("a", "y", 1, granted=False, pre_vote=True))
    ]
    assert (node.term, node.voted_for, node.leader) == (1, None, "x")
    node.tick()  # lease over
    out = node.step(VoteRequest("y", "a", 2))
    assert Persist(2, "y") in out and node.voted_for == "y"


def test_leader_lease_needs_check_quorum() -> None:
    """Thesis §6.2: without CheckQuorum there is no lease; a higher term always wins."""
    node = make(check_quorum=False)
    node.step(Heartbeat("x", "a", 1))
    node.step(VoteRequest("y", "a", 2))
    assert (node.term, node.voted_for, node.leader) == (2, "y", None)


def test_leader_in_lease_ignores_higher_term_vote_requests() -> None:
    """Thesis §6.2: with CheckQuorum the leader itself holds the lease."""
    node = make()
    elect(node)
    assert sends(node.step(VoteRequest("y", "a", 9))) == [VoteResponse("a", "y", 1, False)]
    assert node.role is Role.LEADER and node.term == 1


# ---- CheckQuorum ------------------------------------------------------------------


def _five_node_leader(**kw: object) -> Election:
    node = make("a", ("b", "c", "d", "e"), election_ticks_min=10, **kw)
    node.campaign()
    for pre_vote in (True, False):
        for peer in ("b", "c"):
            node.step(VoteResponse(peer, "a", 1, granted=True, pre_vote=pre_vote))
    assert node.role is Role.LEADER
    return node


@pytest.mark.parametrize("heartbeat_ticks", [1, 3, 4])
def test_check_quorum_steps_down_leader_that_hears_no_majority(heartbeat_ticks: int) -> None:
    """Thesis §6.2: a leader steps down once an election timeout passes without
    answers from a majority (checked on a beat, so up to a beat interval
    later), and never while a majority answers."""
    node = _five_node_leader(heartbeat_ticks=heartbeat_ticks)
    stepped_down_at = None
    for tick in range(1, 61):
        if tick <= 20:
            node.step(HeartbeatResponse("b", "a", 1))
            node.step(HeartbeatResponse("c", "a", 1))
        elif tick <= 25:
            node.step(HeartbeatResponse("b", "a", 1))  # only two of five now
        out = node.tick()
        if node.role is not Role.LEADER:
            stepped_down_at = tick
            break
    # c's last answer (before tick 20) counts through tick 29: a majority until then;
    # a check comes at most a window and a beat interval after the one before.
    assert stepped_down_at is not None and 30 <= stepped_down_at < 30 + 10 + heartbeat_ticks, stepped_down_at
    assert out == [RoleChanged(Role.FOLLOWER, 1, None)]
    assert (node.term, node.voted_for, node.leader) == (1, "a", None)


def test_answers_held_back_still_count_for_check_quorum_but_only_of_the_leaders_term() -> None:
    """A leader whose own write is pending holds its followers' answers (their log progress
    waits for it), and tells the core it heard them: CheckQuorum counts those, so a slow
    disk does not depose it. One of another term, or told to a follower, counts nothing."""
    node = _five_node_leader(heartbeat_ticks=2)
    for _ in range(60):
        node.heard("b", 1)
        node.heard("c", 1)
        node.tick()
    assert node.role is Role.LEADER, "deposed though a majority answered"
    for _ in range(30):
        node.heard("b", 0)  # late answers of an older term: no evidence the peers are up now
        node.heard("c", 2)
        node.tick()
        if node.role is not Role.LEADER:
            break
    assert node.role is Role.FOLLOWER and node.term == 1, "kept leading on answers of other terms"
    before = node.peer_ticks_since_heard()
    node.heard("b", 1)  # a follower keeps no such record
    assert node.peer_ticks_since_heard() == before


@pytest.mark.parametrize(("heartbeat_ticks", "idle_heartbeat_ticks"), [(1, 0), (1, 4), (2, 4), (3, 3)])
def test_check_quorum_rides_the_beats_so_a_leader_wakes_only_to_beat(
    heartbeat_ticks: int, idle_heartbeat_ticks: int
) -> None:
    """An idle leader's wakes cost more than their work (docs/observability.md): the
    quorum check comes on a beat tick, so the leader is never due for it alone, and
    never sooner than an election timeout after the one before: checking more often
    would depose more leaders on a loaded host. (That it comes is the test above.)"""
    node = _five_node_leader(heartbeat_ticks=heartbeat_ticks, idle_heartbeat_ticks=idle_heartbeat_ticks,
                             replicate=True)
    node.quiet = True
    wakes = last_check = 0
    for tick in range(1, 200):
        for peer in ("b", "c", "d", "e"):
            node.step(HeartbeatResponse(peer, "a", 1, success=True, match_index=node.log.last_index))
        due = node.ticks_until_due() == 1
        out = node.tick()
        if due:
            wakes += 1
            assert any(isinstance(o, Send) for o in out), f"tick {tick}: a wake with no beat"
        if node._peers.since_check == 0:  # checked on this tick
            assert tick - last_check >= 10, f"tick {tick}: checked {tick - last_check} ticks after the last"
            last_check = tick
    assert node.role is Role.LEADER and last_check > 150
    assert wakes == pytest.approx(199 / (idle_heartbeat_ticks or heartbeat_ticks), abs=2)


def test_active_peers_are_the_failure_detector() -> None:
    """Thesis §6.2: the leader tracks which followers answered within an election
    timeout (`election_ticks_min`); a new leader starts with no evidence."""
    node = make()  # election_ticks_min 10
    elect(node)  # b answered during the election: that is no evidence for the new term
    assert node.peer_ticks_since_heard() == {"b": None, "c": None} and node.active_peers() == set()
    node.step(HeartbeatResponse("b", "a", node.term))
    node.tick()
    node.step(HeartbeatResponse("c", "a", node.term))
    node.tick()
    assert node.peer_ticks_since_heard() == {"b": 2, "c": 1}
    for _ in range(8):
        node.tick()
    assert node.peer_ticks_since_heard()["b"] == 10 and node.active_peers() == {"b", "c"}
    node.tick()
    assert node.active_peers() == {"c"}


def test_a_stale_answer_is_no_evidence_of_life() -> None:
    """Raft §5.1: a message of an older term is stale; a late reply says nothing about now."""
    node = make(term=3)
    elect(node)
    node.step(HeartbeatResponse("b", "a", node.term - 1))
    assert node.active_peers() == set()
    node.step(HeartbeatResponse("b", "a", node.term))
    assert node.active_peers() == {"b"}


def test_ticks_until_due_lets_a_caller_sleep_until_the_next_deadline() -> None:
    """Ticks before the reported deadline produce nothing; the one at it does."""
    import random

    from node.core.election import Election
    from node.core.electionconfig import ElectionConfig
    from node.core.messages import Role

    config = ElectionConfig(node_id="a", peers=("b", "c"), heartbeat_ticks=3,
                            election_ticks_min=10, election_ticks_max=20)
    node = Election(config, random.Random(4))
    due = node.ticks_until_due()
    assert 10 <= due <= 20
    for _ in range(due - 1):
        assert node.tick() == []
    assert node.tick() != []  # the election timer fired: a pre-vote goes out
    assert node.role is Role.PRE_CANDIDATE


# ---- boot ---------------------------------------------------------------------------


def test_fast_first_election_campaigns_within_the_spread_after_boot() -> None:
    """etcd's initial election tick advance: the first timer at boot runs only
    its random part (1..max-min+1 ticks); every later one runs min..max."""
    for seed in range(50):
        node = make(seed=seed, election_ticks_min=10, election_ticks_max=20, fast_first_election=True)
        ticks = 0
        while not node.tick():
            ticks += 1
        assert 0 <= ticks <= 10, f"seed={seed}: first campaign after {ticks + 1} ticks"
        assert node.role is Role.PRE_CANDIDATE
    plain = make(seed=0, election_ticks_min=10, election_ticks_max=20)
    assert all(not plain.tick() for _ in range(9))


def test_fast_first_election_needs_pre_vote() -> None:
    with pytest.raises(ValueError, match="fast_first_election needs pre_vote"):
        make(pre_vote=False, fast_first_election=True)


def test_rollback_returns_to_the_durable_term_and_vote_as_a_follower() -> None:
    """A Persist the disk refused leaves memory where the disk is (Raft §5.2:
    nothing is sent on state that is not durable), so the node's next message
    carries the durable term, not one only its memory holds."""
    node = make(term=4, voted_for="b", pre_vote=False)
    out = run_until_timeout(node)
    assert Persist(5, "a") in out and node.role is Role.CANDIDATE
    back = node.rollback(4, "b")
    assert (node.term, node.voted_for, node.role, node.leader) == (4, "b", Role.FOLLOWER, None)
    assert back == [RoleChanged(Role.FOLLOWER, 4, None)]
    assert not node.step(VoteRequest("c", "a", 4))[0].message.granted  # type: ignore[union-attr]
    assert sends(run_until_timeout(node)) == [VoteRequest("a", p, 5) for p in PEERS]


def test_rollback_says_the_role_even_to_a_follower() -> None:
    """The caller drops every output after a failed write, and the step-down it
    dropped may have been the one that made this node a follower: the rollback says
    so again, so whoever follows the role (the daemon) never keeps a stale one."""
    node = make(term=4, voted_for="b")
    assert node.role is Role.FOLLOWER
    assert node.rollback(4, "b") == [RoleChanged(Role.FOLLOWER, 4, None)]


def test_rollback_never_moves_ahead_or_changes_a_vote() -> None:
    """It may forget a vote the disk never held, never invent a term or a vote."""
    node = make(term=4, voted_for="b")
    for term, vote in [(5, None), (4, "c")]:
        with pytest.raises(AssertionError, match="rollback"):
            node.rollback(term, vote)


def test_rollback_forgets_a_vote_the_disk_refused() -> None:
    """Raft §5.2: a vote is cast when it is durable; one the disk refused was never
    sent, so the node may still vote in that term."""
    node = make(term=4)
    node.step(VoteRequest("b", "a", 4))
    assert node.voted_for == "b"
    node.rollback(4, None)
    out = node.step(VoteRequest("c", "a", 4))
    assert VoteResponse("a", "c", 4, granted=True) in sends(out) and node.voted_for == "c"


@pytest.mark.parametrize("seed", range(30))
def test_skipping_the_ticks_before_the_due_one_is_the_same_as_ticking_them(seed: int) -> None:
    """Ours: the daemon passes idle ticks with `skip` (one step) instead of one `tick()`
    each. Two nodes, one ticked one by one and one by skip-then-tick, given the same
    random beats, votes and answers, must say and be the same at every moment."""
    rng = random.Random(seed)
    options = {"heartbeat_ticks": 2, "idle_heartbeat_ticks": 4, "election_ticks_min": 10,
               "election_ticks_max": 20, "replicate": True, "check_quorum": rng.random() < 0.8}
    one, batched = make(seed=seed, **options), make(seed=seed, **options)
    for _ in range(60):
        ticks = rng.randint(1, 25)
        singly = [o for _ in range(ticks) for o in one.tick()]
        grouped: list[Output] = []
        left = ticks
        while left:
            left -= batched.skip(left)
            if left:
                grouped += batched.tick()
                left -= 1
        assert grouped == singly
        quiet = rng.random() < 0.5
        one.quiet = batched.quiet = quiet
        event = rng.choice([
            Heartbeat("x", "a", one.term, slack=rng.randint(0, 3)),
            VoteResponse("b", "a", one.term + 1, granted=True, pre_vote=True),
            VoteResponse("b", "a", one.term, granted=True),
            HeartbeatResponse(rng.choice(PEERS), "a", one.term, True, one.log.last_index),
            VoteRequest("c", "a", one.term + 1, pre_vote=rng.random() < 0.5),
        ])
        assert one.step(event) == batched.step(event)
        for node in (one, batched):
            assert node.ticks_until_due() >= 1
        assert (one.role, one.term, one.voted_for, one.leader, one.ticks_until_due(), one.ticks_since_leader,
                one.peer_ticks_since_heard()) == (
                batched.role, batched.term, batched.voted_for, batched.leader, batched.ticks_until_due(),
                batched.ticks_since_leader, batched.peer_ticks_since_heard())


# ---- a leader known dead (leader_gone) --------------------------------------------


def test_a_follower_told_its_leader_is_dead_campaigns_once_its_beat_is_overdue() -> None:
    """Ours: the leader's process looks dead (its stream closed, its port refuses:
    leaderprobe.py), so waiting out an election timeout only delays the next leader. The
    follower forgets it and campaigns once the beat the leader promised is overdue (here 4
    ticks after the last, of which 1 has passed) plus a random beat of up to 4 ticks; a
    pre-vote changes no term and no vote."""
    seen = set()
    for seed in range(40):
        node = make(term=3, voted_for="x", election_ticks_min=30, election_ticks_max=60,
                    heartbeat_ticks=4, seed=seed)
        node.step(Heartbeat("x", "a", 3))
        node.tick()
        assert node.leader_gone("x", 3) == [RoleChanged(Role.FOLLOWER, 3, None)]
        ticks, out = 0, []
        while not out:
            out = node.tick()
            ticks += 1
        seen.add(ticks)
        assert sends(out) == [VoteRequest("a", p, 4, pre_vote=True) for p in PEERS]
        assert not any(isinstance(o, Persist) for o in out)
        assert (node.term, node.voted_for, node.leader) == (3, "x", None)
    assert seen == {4, 5, 6, 7}


def test_a_beat_before_that_restores_a_live_leader() -> None:
    """The stream closed under a live leader and the dial was wrong (a proxy restarting, say):
    its next beat, due before the follower's timer, makes it the leader again and restarts the
    timer, so no campaign starts."""
    node = make(term=3, election_ticks_min=30, election_ticks_max=60, heartbeat_ticks=4)
    node.step(Heartbeat("x", "a", 3))
    node.leader_gone("x", 3)
    for _ in range(3):
        assert node.tick() == []
    out = node.step(Heartbeat("x", "a", 3))
    assert RoleChanged(Role.FOLLOWER, 3, "x") in out and node.leader == "x"
    assert all(node.tick() == [] for _ in range(29))


def test_once_its_leader_is_dead_a_follower_grants_as_its_lease_is_over() -> None:
    """The lease of §4.2.3 protects a live leader: a follower told its leader is dead grants
    another survivor's pre-vote (and stays a follower, its timer restarted)."""
    node = make(election_ticks_min=10)
    node.step(Heartbeat("x", "a", 1))
    request = VoteRequest("c", "a", 2, pre_vote=True)
    assert sends(node.step(request)) == [VoteResponse("a", "c", 1, granted=False, pre_vote=True)]
    node.leader_gone("x", 1)
    assert sends(node.step(request)) == [VoteResponse("a", "c", 2, granted=True, pre_vote=True)]
    assert node.role is Role.FOLLOWER and node.ticks_until_due() >= 10


@pytest.mark.parametrize("case", ["another leader", "another term", "a leader", "no pre-vote"])
def test_a_dead_node_that_is_not_our_leader_changes_nothing(case: str) -> None:
    """A former leader, an older term, this node itself leading, or a core without Pre-Vote
    (whose timer firing early would move its term): no output, no state change."""
    node = make(term=2, election_ticks_min=10, pre_vote=case != "no pre-vote")
    node.step(Heartbeat("x", "a", 2))
    leader, term = {"another leader": ("y", 2), "another term": ("x", 1)}.get(case, ("x", 2))
    if case == "a leader":
        elect(node)
        leader, term = "a", node.term
    before = (node.role, node.term, node.voted_for, node.leader, node.ticks_until_due())
    assert node.leader_gone(leader, term) == []
    assert (node.role, node.term, node.voted_for, node.leader, node.ticks_until_due()) == before
