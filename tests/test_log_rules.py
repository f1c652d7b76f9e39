"""One test per rule of Raft's log replication, on single nodes fed messages by hand.

Each test is named after the section of the Raft paper (or Figure) it checks;
whole clusters under faults are in tests/test_election_sim.py.
"""

from __future__ import annotations

import random

import pytest

from node.core.election import Election
from node.core.electionconfig import ElectionConfig
from node.core.messages import (
    AppendLog,
    Apply,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Output,
    RestoreSnapshot,
    Role,
    Send,
    VoteRequest,
    VoteResponse,
)
from node.core.raftlog import Entry, RaftLog
from node.core.replication import (
    MAX_MESSAGES_IN_FLIGHT,
    RESEND_BEATS,
    RESEND_WAIT_TIMEOUTS,
    SNAPSHOT_WAIT_TIMEOUTS,
)

PEERS = ("b", "c")


def make(node_id: str = "a", *, term: int = 0, log: RaftLog | None = None, peers: tuple[str, ...] = PEERS,
         snapshot: bytes = b"") -> Election:
    config = ElectionConfig(node_id, peers, replicate=True, max_append_entries=2)
    return Election(config, random.Random(0), term=term, log=log, snapshot=snapshot)


def log_of(*terms: int) -> RaftLog:
    return RaftLog(entries=[Entry(i, t, "command", f"e{i}".encode()) for i, t in enumerate(terms, 1)])


def sends(outputs: list[Output]) -> list[object]:
    return [o.message for o in outputs if isinstance(o, Send)]


def elect(node: Election, peers: tuple[str, ...] = PEERS) -> list[Output]:
    """Every peer grants the pre-vote and the vote; the outputs of the winning step."""
    node.campaign()
    term = node.term + 1
    for peer in peers:
        if node.role is Role.PRE_CANDIDATE:
            node.step(VoteResponse(peer, "a", term, granted=True, pre_vote=True))
    out: list[Output] = []
    for peer in peers:
        if node.role is Role.CANDIDATE:
            out = node.step(VoteResponse(peer, "a", term, granted=True))
    assert node.role is Role.LEADER
    return out


def respond(node: Election, peer: str, success: bool, match: int) -> list[Output]:
    return node.step(HeartbeatResponse(peer, "a", node.term, success, match))


# ---- §5.3 AppendEntries, receiver side -----------------------------------------------------


def test_5_3_a_follower_refuses_entries_whose_previous_entry_it_lacks() -> None:
    """§5.3: "If the follower does not find an entry in its log with the same index and
    term, then it refuses the new entries"; its hint points at its own end (fast back-off)."""
    node = make(term=2, log=log_of(1, 1))
    out = node.step(Heartbeat("b", "a", 2, prev_index=5, prev_term=2, entries=(Entry(6, 2),)))
    assert sends(out) == [HeartbeatResponse("a", "b", 2, False, 3)]
    assert node.log.last_index == 2 and not any(isinstance(o, AppendLog) for o in out)


def test_5_3_a_refusal_hints_at_the_first_index_of_the_conflicting_term() -> None:
    """§5.3 (the optimization at the end): the follower names where its conflicting term starts."""
    node = make(term=3, log=log_of(1, 2, 2, 2))
    out = node.step(Heartbeat("b", "a", 3, prev_index=4, prev_term=3))
    assert sends(out) == [HeartbeatResponse("a", "b", 3, False, 2)]


def test_5_3_conflicting_entries_are_replaced_and_stored_before_the_ack() -> None:
    """§5.3: "If an existing entry conflicts with a new one, delete the existing entry and all
    that follow it"; the AppendLog output comes before the Send that acknowledges it."""
    node = make(term=3, log=log_of(1, 2, 2))
    new = (Entry(2, 3, data=b"x"), Entry(3, 3, data=b"y"))
    out = node.step(Heartbeat("b", "a", 3, prev_index=1, prev_term=1, entries=new))
    kinds = [type(o) for o in out if isinstance(o, AppendLog | Send)]
    assert kinds == [AppendLog, Send]
    assert next(o for o in out if isinstance(o, AppendLog)) == AppendLog(1, new)
    assert sends(out)[-1] == HeartbeatResponse("a", "b", 3, True, 3)
    assert [node.log.term_at(i) for i in (1, 2, 3)] == [1, 3, 3]


def test_5_3_a_repeated_append_changes_nothing_and_stores_nothing() -> None:
    """Duplicated or reordered AppendEntries are idempotent: entries already held are kept,
    a stale shorter message does not truncate what a later one appended."""
    node = make(term=2, log=log_of(1, 2, 2))
    out = node.step(Heartbeat("b", "a", 2, prev_index=0, prev_term=0, entries=(Entry(1, 1, data=b"e1"),)))
    assert not any(isinstance(o, AppendLog) for o in out)
    assert node.log.last_index == 3
    assert sends(out)[-1] == HeartbeatResponse("a", "b", 2, True, 1)


def test_5_3_a_follower_commits_up_to_the_leaders_commit_but_not_past_what_it_matched() -> None:
    """Figure 2: "If leaderCommit > commitIndex, set commitIndex = min(leaderCommit, index of
    last new entry)"; the newly committed entries come out as one Apply, in order."""
    node = make(term=2, log=log_of(1, 1, 1, 1))
    out = node.step(Heartbeat("b", "a", 2, prev_index=2, prev_term=1, commit=4))
    assert node.commit_index == 2
    assert [o for o in out if isinstance(o, Apply)] == [Apply(node.log.entries(1, 2))]
    out = node.step(Heartbeat("b", "a", 2, prev_index=4, prev_term=1, commit=4))
    assert node.commit_index == 4 and [o for o in out if isinstance(o, Apply)] == [Apply(node.log.entries(3, 4))]
    assert not [o for o in node.step(Heartbeat("b", "a", 2, prev_index=4, prev_term=1, commit=4))
                if isinstance(o, Apply)], "an entry was applied twice"


def test_5_3_entries_wait_for_the_message_after_the_one_that_moved_the_term() -> None:
    """A term change must be durable before anything else of its step is acted on; if the
    disk refuses it, `rollback` restores term and vote only. So a message that moves the
    term is refused (with a hint, and the leader retries at once) and changes no log."""
    for message in (Heartbeat("b", "a", 3, 2, 1, (Entry(3, 3),), commit=2),
                    InstallSnapshot("b", "a", 3, 2, 1, b"state@2")):
        node = make(term=2, log=log_of(1, 1))
        out = node.step(message)
        assert node.term == 3 and node.leader == "b" and node.log.last_index == 2 and node.commit_index == 0
        assert not [o for o in out if isinstance(o, AppendLog | RestoreSnapshot | Apply)]
        assert sends(out)[-1] == HeartbeatResponse("a", "b", 3, False, 3 if isinstance(message, Heartbeat) else 2)
    out = node.step(Heartbeat("b", "a", 3, 2, 1, (Entry(3, 3),), commit=2))
    assert node.log.last_index == 3 and sends(out)[-1] == HeartbeatResponse("a", "b", 3, True, 3)


# ---- §5.3 AppendEntries, leader side -----------------------------------------------------------


def test_5_3_a_leader_backs_off_to_the_hint_and_resends_at_once() -> None:
    """§5.3: after a rejection the leader decrements nextIndex and retries; with the hint
    it jumps there, and it does not wait for the next heartbeat to try."""
    node = make(term=3, log=log_of(1, 1, 2, 3))
    elect(node)
    out = respond(node, "b", False, 2)
    assert sends(out) == [Heartbeat("a", "b", 4, 1, 1, node.log.entries(2, 3), 0)]
    # A stale hint above the current try never moves it up, nor sends again what is on its way.
    assert not sends(respond(node, "b", False, 9))
    beats = [to("b", node.tick()) for _ in range(RESEND_BEATS * node._config.heartbeat_ticks)]
    assert [(m.prev_index, len(m.entries)) for m in beats[-1]] == [(1, 2)], "not answered for: again"


def test_5_3_a_leader_sends_what_a_follower_lacks_in_batches() -> None:
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)  # appends its no-op at index 4
    respond(node, "b", False, 1)
    out = respond(node, "b", True, 2)
    assert sends(out) == [Heartbeat("a", "b", 2, 2, 1, node.log.entries(3, 4), 0)]
    assert not sends(respond(node, "b", True, 4)), "caught up: nothing more until the heartbeat"


def to(peer: str, outputs: list[Output]) -> list[Heartbeat]:
    return [m for m in sends(outputs) if isinstance(m, Heartbeat) and m.dst == peer]


def entries_to(peer: str, outputs: list[Output]) -> list[list[int]]:
    """The indices each Heartbeat to `peer` carries ([] for a bare beat)."""
    return [[e.index for e in m.entries] for m in to(peer, outputs)]


def test_5_3_a_follower_with_a_smaller_message_bound_is_sent_smaller_batches() -> None:
    """Entries past a message's first fill at most `max_append_bytes`, or a quarter of the
    follower's own bound on a message where the caller knows a smaller one: a follower with
    a smaller --max-message-bytes refuses a larger message, and its log would stop there."""
    config = ElectionConfig("a", PEERS, replicate=True, max_append_entries=100, max_append_bytes=10_000)
    node = Election(config, random.Random(0), term=1)
    node.replication.peer_message_bytes = {"b": 8000, "c": 0}  # 0: c's is not known
    elect(node)  # its no-op at index 1
    respond(node, "b", True, 1)
    respond(node, "c", True, 1)
    _, out = node.propose(*(bytes(1000) for _ in range(8)))
    assert entries_to("b", out) == [[2, 3]]  # 1000 + 1000 bytes: a quarter of 8000 holds no third
    assert entries_to("c", out) == [list(range(2, 10))]
    out = respond(node, "b", True, 3)
    assert entries_to("b", out) == [[4, 5]]


def test_7_an_entry_no_message_to_a_follower_can_carry_reaches_it_in_a_snapshot() -> None:
    """An entry written before the leader heard of a follower's smaller bound on a message (a
    follower restarted with a smaller --max-message-bytes) would be refused with the message
    that carries it, and the follower's stream with it. The follower is sent bare beats
    instead, the leader wants a snapshot past the entry, and once it has compacted that far
    the follower is sent the snapshot (which goes in chunks it takes)."""
    config = ElectionConfig("a", PEERS, replicate=True, max_append_entries=100)
    node = Election(config, random.Random(0), term=1)
    elect(node)  # its no-op at 1
    respond(node, "b", True, 1)
    respond(node, "c", True, 1)
    _, out = node.propose(bytes(4000))  # 2: nobody's bound known yet, so it goes to both
    assert entries_to("b", out) == [[2]] and entries_to("c", out) == [[2]]
    respond(node, "c", True, 2)
    assert node.commit_index == 2 and node.replication.snapshot_wanted() == 0
    node.replication.peer_message_bytes = {"b": 2048, "c": 0}  # b came back with 2 KiB
    beats = [m for _ in range((RESEND_BEATS + 1) * config.heartbeat_ticks) for m in to("b", node.tick())]
    assert beats[-1].entries == () and beats[-1].prev_index == 1, "resent: as a bare beat"
    assert all(m.entries == () for m in beats), "2 never goes to b: it fits no message to b"
    assert node.replication.snapshot_wanted() == 2
    assert not to("b", respond(node, "b", True, 1)), "its answer to a bare beat is not answered at once"
    _, out = node.propose(bytes(100))  # 3 fits b, but b needs 2 first
    assert all(m.entries == () for m in to("b", out)) and entries_to("c", out) == [[3]]
    node.compact(2, b"state@2")
    assert [m for m in sends(node.stalled()) if isinstance(m, InstallSnapshot)] == [
        InstallSnapshot("a", "b", node.term, 2, node.term, b"state@2")]
    assert node.replication.snapshot_wanted() == 0
    assert entries_to("b", respond(node, "b", True, 2)) == [[3]], "installed: the entries after it go"


def test_7_entries_on_their_way_before_one_that_fits_no_message_are_not_sent_again() -> None:
    """Entries that fit, on their way to a follower, were forgotten once the next one did not
    fit it: the bare beat instead went where the follower was not yet (refused: a round
    trip), the next proposal sent the same entries again, and the snapshot wanted came and
    went with every other message."""
    config = ElectionConfig("a", PEERS, replicate=True, max_append_entries=100)
    node = Election(config, random.Random(0), term=1)
    elect(node)  # its no-op at 1
    respond(node, "b", True, 1)
    respond(node, "c", True, 1)
    node.replication.peer_message_bytes = {"b": 4096, "c": 0}  # b's bound, known from the start
    _, out = node.propose(bytes(100), bytes(100), bytes(5000))  # 2, 3 fit b; 4 fits no message to b
    assert entries_to("b", out) == [[2, 3]] and entries_to("c", out) == [[2, 3, 4]]
    respond(node, "c", True, 4)
    for _ in range(3):  # b is slow to answer; more jobs come
        _, out = node.propose(bytes(10))
        beats = to("b", out)
        assert all(m.entries == () for m in beats), "2 and 3 are on their way: not sent again"
        assert all(m.prev_index == 1 for m in beats), "a bare beat where b is, not where it is going"
        assert node.replication.snapshot_wanted() == 4
    out = respond(node, "b", True, 3)  # 2 and 3 arrived
    assert all(m.entries == () for m in to("b", out)) and node.replication.snapshot_wanted() == 4


def test_7_the_snapshot_wanted_first_is_the_one_a_follower_can_take_now() -> None:
    """Two followers each need an entry that fits no message to them: b one committed (through
    c), c one that only b can commit, once b has a snapshot past its own. The snapshot wanted
    is b's, at the lower index: waiting for c's entry to be applied would wait for ever."""
    config = ElectionConfig("a", PEERS, replicate=True, max_append_entries=100)
    node = Election(config, random.Random(0), term=1)
    elect(node)  # its no-op at 1
    respond(node, "b", True, 1)
    respond(node, "c", True, 1)
    node.propose(bytes(4000))  # 2
    respond(node, "c", True, 2)
    node.propose(bytes(4000))  # 3: nobody answers for it
    assert node.commit_index == 2
    node.replication.peer_message_bytes = {"b": 2048, "c": 2048}
    for _ in range((RESEND_BEATS + 1) * config.heartbeat_ticks):
        node.tick()
    assert node.replication.snapshot_wanted() == 2
    node.compact(2, b"state@2")
    assert node.replication.snapshot_wanted() == 3, "c's, once b's is taken"


def test_5_3_entries_go_once_and_bare_beats_follow_until_they_are_answered_for() -> None:
    """Entries go to a follower once; until it answers for them its beats are bare at its
    next index (a follower writing a 10.7 MB entry is not sent it again at every beat, and
    answers bare beats while it writes: elections.py), and entries proposed meanwhile go at
    once, after those sent (etcd's flow control of a follower's progress)."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)  # its no-op at 4
    respond(node, "b", True, 4)
    assert entries_to("b", node.propose(b"big")[1]) == [[5]]
    assert entries_to("b", node.tick()) == [[]] and to("b", node.tick())[0].prev_index == 4
    assert not to("b", respond(node, "b", True, 4)), "an answer to a bare beat: still waiting"
    after, bare = to("b", node.propose(b"next")[1])
    assert (after.prev_index, [e.index for e in after.entries]) == (5, [6])
    assert (bare.prev_index, bare.entries) == (5, ()), "a bare beat after it, for a follower still writing"
    assert not to("b", respond(node, "b", True, 5)), "6 is on its way"
    assert entries_to("b", node.tick()) == [[]]
    assert not to("b", respond(node, "b", True, 6))
    assert entries_to("b", node.tick()) == [[]]


def test_7_a_follower_still_writing_when_its_leader_compacts_is_not_sent_the_snapshot() -> None:
    """The leader compacts up to what it applied, maybe past a follower's next index while
    that follower still writes the entries it was sent: its bare beats then name the last
    entry sent, not the snapshot, and it is caught up with entries once it answers."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)  # its no-op at 4
    respond(node, "b", True, 4)
    respond(node, "c", True, 4)
    node.propose(b"big")  # 5, to b and c
    node.propose(b"next")  # 6, after it
    respond(node, "c", True, 6)
    node.compact(6, b"state@6")
    (beat,) = to("b", node.tick())
    assert (beat.prev_index, beat.entries) == (6, ())
    node.propose(b"more")  # 7
    assert not to("b", respond(node, "b", True, 6))
    assert entries_to("b", respond(node, "b", True, 7)) == []


def test_5_3_entries_not_answered_for_go_again_after_a_wait_that_writing_answers_extend() -> None:
    """Entries lost on the way go again once RESEND_BEATS pass without an answer for them.
    A follower saying it is writing restarts the wait, up to RESEND_WAIT_TIMEOUTS election
    timeouts in all; an answer held by the leader's own write does not, nor do entries
    proposed meanwhile. A refusal saying it lacks them changes nothing during the wait (they
    may still be on their way); one saying its disk refused them (no hint) ends it."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)
    respond(node, "b", True, 4)
    node.propose(b"lost")
    wait = RESEND_BEATS * node._config.heartbeat_ticks
    assert [entries_to("b", node.tick()) for _ in range(wait - 1)] == [[[]]] * (wait - 1)
    node.heard("b", node.term, writing=True)
    assert [entries_to("b", node.tick()) for _ in range(wait - 1)] == [[[]]] * (wait - 1)
    node.heard("b", node.term)  # held, not writing: no longer
    assert entries_to("b", node.propose(b"next")[1]) == [[6], []]
    assert not to("b", respond(node, "b", False, 5)), "it lacks 5: maybe still on its way"
    assert entries_to("b", node.tick()) == [[5, 6]], "never answered for: sent again"
    assert entries_to("b", node.tick()) == [[]]
    respond(node, "b", False, 0)
    assert entries_to("b", node.tick()) == [[5, 6]]
    cap = RESEND_WAIT_TIMEOUTS * node._config.election_ticks_max
    beats = []
    for _ in range(cap + wait):
        node.heard("b", node.term, writing=True)
        beats += entries_to("b", node.tick())
    resent = beats.index([5, 6]) + 1  # the tick it went again, from the last send
    assert wait < resent <= cap + wait, "writing answers put it off, for so long only"


def test_5_3_at_most_max_messages_in_flight_and_a_follower_that_keeps_up_is_sent_nothing_twice() -> None:
    """Entries go after those not answered for, up to MAX_MESSAGES_IN_FLIGHT messages; more
    wait for an answer. A follower answering as the proposals come (its match moving, never
    quite caught up) gets a new wait at each answer, so nothing it was sent goes again, however
    long the proposals last."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)
    respond(node, "b", True, 4)
    sent = [entries_to("b", node.propose(f"job{i}".encode())[1]) for i in range(MAX_MESSAGES_IN_FLIGHT + 2)]
    assert sent[:MAX_MESSAGES_IN_FLIGHT] == [[[5]]] + [[[i], []] for i in range(6, 5 + MAX_MESSAGES_IN_FLIGHT)]
    assert sent[MAX_MESSAGES_IN_FLIGHT:] == [[[]], [[]]], "more wait for an answer"
    assert entries_to("b", respond(node, "b", True, 5)) == [[9, 10], []], "room again: at once"
    assert not to("b", respond(node, "b", True, 9))
    ticks = 4 * RESEND_WAIT_TIMEOUTS * node._config.election_ticks_max
    for _ in range(ticks):
        first = [m.entries[0].index for m in to("b", node.propose(b"more")[1] + node.tick()) if m.entries]
        assert all(index > node.replication._match["b"] + 1 or index == node.log.last_index for index in first)
        respond(node, "b", True, node.log.last_index - 1)  # always one behind


# ---- §5.4.1 election restriction ---------------------------------------------------------------


@pytest.mark.parametrize("pre_vote", [True, False])
def test_5_4_1_no_vote_for_a_candidate_whose_log_is_behind(pre_vote: bool) -> None:
    """§5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the
    candidate" (by last term, then by length); Pre-Vote applies the same check (thesis §9.6)."""
    for last_index, last_term, granted in [(5, 2, False), (1, 3, False), (2, 3, True), (1, 4, True)]:
        voter = make(term=3, log=log_of(1, 3))
        out = voter.step(VoteRequest("b", "a", 4, pre_vote, last_index, last_term))
        assert [m.granted for m in sends(out)] == [granted], (last_index, last_term)  # type: ignore[attr-defined]


def test_5_4_1_pre_candidates_and_candidates_send_their_last_entry() -> None:
    node = make(term=2, log=log_of(1, 2, 2))
    pre = sends(node.campaign())
    real = sends(node.step(VoteResponse("b", "a", 3, granted=True, pre_vote=True)))
    assert node.role is Role.CANDIDATE
    assert [(m.pre_vote, m.last_index, m.last_term) for m in pre + real] == (  # type: ignore[attr-defined]
        [(True, 3, 2)] * 2 + [(False, 3, 2)] * 2
    )


# ---- §5.4.2 committing entries from previous terms ---------------------------------------------


def test_5_4_2_a_new_leader_appends_a_noop_of_its_term() -> None:
    """§5.4.2 / §8: a leader commits an entry of its own term first, which commits the rest."""
    node = make(term=1, log=log_of(1))
    out = elect(node)
    assert node.log.entry(2) == Entry(2, 2, "noop", b"")
    assert AppendLog(1, (Entry(2, 2, "noop", b""),)) in out
    assert all(m.entries[-1].index == 2 for m in sends(out))  # type: ignore[attr-defined]


def test_5_4_2_entries_of_earlier_terms_are_not_committed_by_counting_replicas() -> None:
    """§5.4.2, Figure 8: an entry of an earlier term on a majority is not committed by
    counting; it commits only with an entry of the leader's current term after it."""
    peers = ("b", "c", "d", "e")
    node = make(term=1, log=log_of(1, 1), peers=peers)
    elect(node, peers)  # term 2, no-op at 3
    respond(node, "b", True, 2)
    respond(node, "c", True, 2)
    assert node.commit_index == 0, "a term-1 entry was committed by counting replicas"
    respond(node, "b", True, 3)
    out = respond(node, "c", True, 3)
    assert node.commit_index == 3
    assert [o for o in out if isinstance(o, Apply)] == [Apply(node.log.entries(1, 3))]


def test_5_4_2_a_lone_node_commits_its_entries_at_once() -> None:
    node = make(peers=())
    node.campaign()
    assert node.role is Role.LEADER and node.commit_index == 1
    entries, out = node.propose(b"job", b"job2")
    assert [e.index for e in entries] == [2, 3] and node.commit_index == 3
    assert out == [AppendLog(1, entries), Apply(entries)], "one AppendLog (one fsync) for the batch"


def test_propose_is_refused_off_the_leader_and_without_replicate() -> None:
    assert make().propose(b"job") == ((), [])
    plain = Election(ElectionConfig("a", PEERS), random.Random(0))
    plain.campaign()
    plain.step(VoteResponse("b", "a", 1, granted=True, pre_vote=True))
    plain.step(VoteResponse("b", "a", 1, granted=True))
    assert plain.role is Role.LEADER and plain.log.last_index == 0 and plain.propose(b"job") == ((), [])


# ---- §7 log compaction -------------------------------------------------------------------------


def test_7_a_follower_behind_the_snapshot_gets_the_snapshot() -> None:
    """§7: "the leader uses InstallSnapshot to send snapshots to followers that are too far behind"."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)
    respond(node, "c", True, 4)
    assert node.commit_index == 4
    node.compact(3, b"state@3")
    assert node.log.snapshot_index == 3 and len(node.log) == 1
    out = respond(node, "b", False, 1)  # b lost its disk: it needs entry 1
    assert sends(out) == [InstallSnapshot("a", "b", 2, 3, 1, b"state@3")]
    with pytest.raises(ValueError, match="only 4 applied"):
        node.compact(5, b"")


def test_7_a_follower_that_lost_what_it_acknowledged_is_caught_up_again() -> None:
    """A follower that acknowledged entries, then lost its journal (a new disk, or the journal
    moved aside as docs/operations.md tells an operator to), hints at an entry below what it
    matched: the leader forgets the match and sends what the follower lacks, the snapshot here,
    instead of waiting for an acknowledgement that cannot come (which it did until the next
    election)."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)
    respond(node, "b", True, 4)
    respond(node, "c", True, 4)
    node.compact(3, b"state@3")
    out = respond(node, "b", False, 1)  # b restarted with an empty journal
    assert sends(out) == [InstallSnapshot("a", "b", 2, 3, 1, b"state@3")]
    assert node.commit_index == 4, "nothing committed is taken back"
    out = respond(node, "b", True, 3)  # the snapshot is in: the entry after it follows
    assert sends(out) == [Heartbeat("a", "b", 2, 3, 1, node.log.entries(4, 4), 4)]


def to_b(outputs: list[Output]) -> Heartbeat:
    """The one Heartbeat to "b" among `outputs`."""
    (beat,) = [m for m in sends(outputs) if isinstance(m, Heartbeat) and m.dst == "b"]
    return beat


def test_a_refusal_of_a_message_older_than_one_the_follower_took_is_dropped() -> None:
    """Ours (etcd's `rejected`, by number): every AppendEntries and InstallSnapshot is
    numbered (`serial`) and its answer echoes the number. A refusal of a bare beat that
    a later message's entries overtook (a datagram answered late) says nothing about the
    follower now: it keeps its match and is sent nothing, not the snapshot. A refusal of a
    later message below the match still means it lost its log."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)
    respond(node, "c", True, 4)
    old = to_b(node.tick())
    later = to_b(node.tick())
    assert 0 < old.serial < later.serial
    node.step(HeartbeatResponse("b", "a", node.term, True, 4, later.serial))
    node.compact(3, b"state@3")
    out = node.step(HeartbeatResponse("b", "a", node.term, False, 1, old.serial))
    assert sends(out) == [], "a stale refusal sent something"
    assert to_b(node.tick()) == Heartbeat("a", "b", 2, 4, 2, (), 4), "its match was kept"
    newer = to_b(node.tick())
    out = node.step(HeartbeatResponse("b", "a", node.term, False, 1, newer.serial))  # it lost its log
    assert sends(out) == [InstallSnapshot("a", "b", 2, 3, 1, b"state@3")]


def test_a_follower_echoes_the_number_of_what_it_answers() -> None:
    node = make(term=2, log=log_of(1, 1))
    took = node.step(Heartbeat("b", "a", 2, 2, 1, (Entry(3, 2),), 3, serial=7))
    refused = node.step(Heartbeat("b", "a", 2, 9, 2, (), 3, serial=8))
    snapshot = node.step(InstallSnapshot("b", "a", 2, 5, 2, b"s", serial=9))
    assert [(m.success, m.serial) for m in sends(took + refused + snapshot)
            if isinstance(m, HeartbeatResponse)] == [(True, 7), (False, 8), (True, 9)]
    assert node.replication.refuse(Heartbeat("b", "a", 2, 5, 2, (), 5, serial=10), 2).serial == 10


def test_7_a_snapshot_is_sent_once_and_again_only_when_it_was_not_installed_in_time() -> None:
    """A follower taking the snapshot gets bare beats (it keeps its leader; the leader does
    not build and send the whole table at every beat) until it answers for the snapshot, or
    until SNAPSHOT_WAIT_TIMEOUTS election timeouts pass without that answer (it was lost)."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)
    respond(node, "c", True, 4)
    node.compact(3, b"state@3")
    assert sends(respond(node, "b", False, 1)) == [InstallSnapshot("a", "b", 2, 3, 1, b"state@3")]
    bare = Heartbeat("a", "b", 2, 3, 1, (), 4)
    wait_ticks = SNAPSHOT_WAIT_TIMEOUTS * node._config.election_ticks_max
    to_b: list[object] = []
    for _ in range(wait_ticks - 1):  # one beat a tick here
        to_b += [m for m in sends(node.tick()) if m.dst == "b"]
        respond(node, "c", True, 4)  # the leader keeps its quorum
        assert sends(respond(node, "b", False, 1)) in ([], [bare]), "a refusal of a bare beat resends nothing"
    assert to_b == [bare] * (wait_ticks - 1)
    again = [m for m in sends(node.tick()) if m.dst == "b"]
    assert again == [InstallSnapshot("a", "b", 2, 3, 1, b"state@3")], "never answered: sent again"
    out = respond(node, "b", True, 3)  # installed: the entry after it follows, and no more waiting
    assert sends(out) == [Heartbeat("a", "b", 2, 3, 1, node.log.entries(4, 4), 4)]
    respond(node, "b", True, 4)
    node.compact(4, b"state@4")
    assert sends(respond(node, "b", False, 1)) == [InstallSnapshot("a", "b", 2, 4, 2, b"state@4")]


def test_7_a_follower_still_writing_the_snapshot_is_not_sent_it_again() -> None:
    """A follower that answers a bare beat "writing" is still taking what it was sent: the
    snapshot's wait starts again from that answer (a 42 MB snapshot on a slow disk outlasts
    SNAPSHOT_WAIT_TIMEOUTS, and sending it again would only queue a second copy behind it)."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)
    respond(node, "c", True, 4)
    node.compact(3, b"state@3")
    snapshot = InstallSnapshot("a", "b", 2, 3, 1, b"state@3")
    assert sends(respond(node, "b", False, 1)) == [snapshot]
    wait_ticks = SNAPSHOT_WAIT_TIMEOUTS * node._config.election_ticks_max
    to_b: list[object] = []
    for tick in range(2 * wait_ticks):
        to_b += [m for m in sends(node.tick()) if m.dst == "b"]
        respond(node, "c", True, 4)
        if tick % node._config.election_ticks_max == 0:
            node.heard("b", node.term, writing=True)
    assert snapshot not in to_b, "sent again while it said it was writing"
    node.heard("b", node.term, writing=True)  # its last such answer: then its write is stuck
    to_b = []
    for _ in range(wait_ticks - 1):
        to_b += [m for m in sends(node.tick()) if m.dst == "b"]
        respond(node, "c", True, 4)
    assert snapshot not in to_b
    assert snapshot in [m for m in sends(node.tick()) if m.dst == "b"], "silent a whole wait: sent again"


def test_7_the_bare_beats_of_the_wait_name_the_snapshot_sent_not_a_newer_one() -> None:
    """A follower that took the snapshot sent, its answer lost, while the leader compacted again:
    the bare beats name the snapshot it has, so it accepts one, the wait ends, and the newer
    snapshot goes at once instead of after the rest of the wait."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)  # its no-op at 4
    node.propose(b"job")  # 5
    respond(node, "c", True, 5)
    node.compact(3, b"state@3")
    assert sends(respond(node, "b", False, 1)) == [InstallSnapshot("a", "b", 2, 3, 1, b"state@3")]
    node.compact(5, b"state@5")
    beats = [m for m in sends(node.tick()) if m.dst == "b"]
    assert beats == [Heartbeat("a", "b", 2, 3, 1, (), 5)], "the bare beat names the snapshot sent"
    assert sends(respond(node, "b", True, 3)) == [InstallSnapshot("a", "b", 2, 5, 2, b"state@5")]


def test_7_the_wait_for_a_snapshot_is_counted_in_ticks_and_its_refusals_send_nothing() -> None:
    """Every proposal is a beat too: a busy leader must not use the wait up in a few hundred
    proposals and send the whole table again. And a follower refusing bare beats while the
    snapshot is on its way (its hint above where the leader stands) is not asked again at
    once, one entry lower each time."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)  # its no-op at 4
    node.propose(*[b"job"] * 6)  # 5..10
    respond(node, "c", True, 10)
    node.compact(9, b"state@9")
    snapshot = InstallSnapshot("a", "b", 2, 9, 2, b"state@9")
    assert sends(respond(node, "b", False, 3)) == [snapshot]  # b holds 1..2
    assert not sends(respond(node, "b", False, 3)), "a refused bare beat is not followed by another"
    wait_ticks = SNAPSHOT_WAIT_TIMEOUTS * node._config.election_ticks_max
    for _ in range(2 * wait_ticks):
        _, out = node.propose(b"job")
        assert snapshot not in sends(out)
    respond(node, "c", True, node.log.last_index)
    for _ in range(wait_ticks - 1):
        assert snapshot not in sends(node.tick())
        respond(node, "c", True, node.log.last_index)
    assert snapshot in sends(node.tick())


@pytest.mark.parametrize("hint", [0, 5])
def test_a_follower_that_cannot_store_what_it_must_take_keeps_its_match(hint: int) -> None:
    """A follower whose disk refused the entries answers a refusal with no hint (0,
    ElectionDriver._beat_answer), or one at the very entry the leader sent next: not a lost
    log. The match stands, and the leader tries again at the next beat, not at once (a full
    catch-up from entry 1 would follow every failed write, as fast as the disk fails)."""
    node = make(term=1, log=log_of(1, 1, 1))
    elect(node)  # appends its no-op at 4
    respond(node, "b", True, 4)
    assert node.commit_index == 4
    node.propose(b"job")  # at 5
    out = respond(node, "b", False, hint)
    assert not sends(out)
    respond(node, "c", True, 4)  # c behind: had b's match been forgotten, 4 would not be counted twice
    out = respond(node, "b", True, 5)
    assert node.commit_index == 5 and not sends(out)


def test_7_a_follower_installs_a_snapshot_and_drops_a_conflicting_log() -> None:
    node = make(term=3, log=log_of(1, 2, 2))
    out = node.step(InstallSnapshot("b", "a", 3, 4, 3, b"state@4"))
    assert out.index(RestoreSnapshot(4, 3, b"state@4")) < next(i for i, o in enumerate(out) if isinstance(o, Send))
    assert (node.log.snapshot_index, node.log.last_index, node.commit_index) == (4, 4, 4)
    assert sends(out)[-1] == HeartbeatResponse("a", "b", 3, True, 4)


def test_7_a_follower_keeps_the_entries_after_a_snapshot_it_agrees_with() -> None:
    """§7: "If the follower receives a snapshot that describes a prefix of its log, log
    entries covered by the snapshot are deleted but entries following it are retained"."""
    node = make(term=2, log=log_of(1, 1, 2, 2))
    node.step(InstallSnapshot("b", "a", 2, 2, 1, b"state@2"))
    assert (node.log.snapshot_index, node.log.last_index, node.log.term_at(4)) == (2, 4, 2)
    assert not [o for o in node.step(InstallSnapshot("b", "a", 2, 1, 1, b"old")) if isinstance(o, RestoreSnapshot)]


def test_7_entries_covered_by_a_snapshot_match_any_leader() -> None:
    """A follower whose snapshot is ahead of a leader's prev_index takes the rest after it."""
    node = make(term=2, log=RaftLog(snapshot_index=3, snapshot_term=1))
    out = node.step(Heartbeat("b", "a", 2, 1, 1, (Entry(2, 1), Entry(3, 1), Entry(4, 2)), commit=4))
    assert node.log.last_index == 4 and node.commit_index == 4
    assert sends(out)[-1] == HeartbeatResponse("a", "b", 2, True, 4)


def test_a_leader_never_counts_a_match_past_its_own_log() -> None:
    """A reply claiming entries the leader never sent (a bug, or a confused peer) must not
    commit anything: with one honest follower behind, nothing new commits."""
    node = make(term=1, log=log_of(1))
    elect(node)  # no-op at 2
    respond(node, "b", True, 999)
    assert node.commit_index == 2, "the no-op commits with b (it holds 2), nothing past it"
    entries, _ = node.propose(b"job")
    respond(node, "b", True, 2)
    assert node.commit_index == 2
    respond(node, "c", True, 3)
    assert node.commit_index == 3 and entries[0].index == 3


def test_entries_an_apply_dropped_with_a_refused_append_are_applied_later() -> None:
    """The journal refused an append whose step also committed entries: the caller drops
    that Apply, goes back to the journal's log and to what it applied; the entries come
    out again, once, when the leader's commit arrives again."""
    node = make(term=1, log=log_of(*[1] * 10))
    node.step(Heartbeat("b", "a", 1, 8, 1, commit=8))
    assert node.commit_index == 8
    out = node.step(Heartbeat("b", "a", 1, 10, 1, (Entry(11, 1), Entry(12, 1)), commit=12))
    assert [o for o in out if isinstance(o, Apply)] == [Apply(node.log.entries(9, 12))]
    node.restore_log(log_of(*[1] * 10), b"", applied=8)  # the AppendLog failed: nothing applied past 8
    assert (node.log.last_index, node.commit_index) == (10, 8)
    out = node.step(Heartbeat("b", "a", 1, 10, 1, (Entry(11, 1), Entry(12, 1)), commit=12))
    assert [o for o in out if isinstance(o, Apply)] == [Apply(node.log.entries(9, 12))]
    with pytest.raises(ValueError, match="applied 11 is outside the log"):
        node.restore_log(log_of(*[1] * 10), b"", applied=11)
