# The consensus core: Raft's election, tick-driven and pure, with its log (replication.py).
#
# No network, disk or clock here: the daemon drives it with `tick()` (one unit of logical time) and
# `step(message)`, and executes the outputs (messages.py) in order, each `Persist`, `AppendLog` and
# `RestoreSnapshot` durable before a later `Send` leaves (for an append, what the Send would count waits for
# it: elections.py, `heard`), so a restarted node never votes twice in a term nor forgets an entry it
# acknowledged (Raft §5.2, §5.3, Figure 2).
#
# The protocol is Raft's election (§5.2) and up-to-date check (§5.4.1), plus Ongaro's thesis: Pre-Vote
# (§9.6: "would you vote for me at term+1?" before changing its term, so a node that was cut off cannot
# depose a healthy leader) and CheckQuorum (§6.2: a leader that has not heard from a quorum within an
# election timeout steps down; a follower that heard from its leader within that time refuses votes, the
# lease of §4.2.3). Who answered lately (`active_peers`) is also the daemon's failure detector. Heartbeats
# are AppendEntries; with `replicate` off the log stays empty.
#
# Three rules of ours speed up the survivors of a dead leader; they touch only pre-votes and timers (no
# term, no vote), so none affects safety.
# - A follower that grants a pre-vote restarts its election timer (as §5.2 has it do for a real vote),
#   instead of starting a rival campaign.
# - Of two pre-candidates that start within a heartbeat of each other, the larger id refuses the smaller's
#   pre-vote, and the smaller grants the larger's and stands down. After that heartbeat a pre-candidate
#   grants like anybody, so a cut-off campaign never blocks another.
# - A follower told its leader's process is gone (`leader_gone`) forgets it, and campaigns once the beat a
#   live leader owes it is overdue, not a timeout.
#
# `src`: a request's sender id; a response's peer key (the address dialled): votes and liveness count by it.

from __future__ import annotations

import random

from node.core.electionconfig import ElectionConfig
from node.core.liveness import Liveness
from node.core.messages import (
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    Output,
    Persist,
    Role,
    RoleChanged,
    Send,
    VoteRequest,
    VoteResponse,
    drop_unsent_persist,
)
from node.core.raftlog import Entry, RaftLog
from node.core.replication import Replication


class Election:
    def __init__(
        self,
        config: ElectionConfig,
        rng: random.Random,
        term: int = 0,
        voted_for: str | None = None,
        log: RaftLog | None = None,
        snapshot: bytes = b"",
    ) -> None:
        config.validate()
        self._config, self._rng = config, rng
        # Persistent state (Raft Figure 2), restored by the caller after a restart.
        self._term, self._voted_for = term, voted_for
        self._role = Role.FOLLOWER
        self._leader: str | None = None
        self._election_elapsed = self._election_timeout = self._heartbeat_elapsed = 0
        self._ticks_since_leader = 0
        self._granted, self._rejected = set[str](), set[str]()
        self.quiet = False  # set by the caller while no job runs: beats may thin (beat_ticks)
        self._lease_slack = 0  # a follower's lease and timer run longer by its leader's Heartbeat.slack
        # Ticks since each peer last answered us; None: not since we became leader.
        self._peers = Liveness(config.peers, config.election_ticks_min)  # and when CheckQuorum asks
        self.replication = Replication(config, log if log is not None else RaftLog(), snapshot)
        self._reset_election_timer()
        if config.fast_first_election:
            self._election_elapsed = config.election_ticks_min - 1

    @property
    def role(self) -> Role:
        return self._role

    @property
    def term(self) -> int:
        return self._term

    @property
    def voted_for(self) -> str | None:
        return self._voted_for

    @property
    def leader(self) -> str | None:
        return self._leader

    @property
    def log(self) -> RaftLog:
        return self.replication.log

    @property
    def commit_index(self) -> int:
        return self.replication.commit

    def propose(self, *data: bytes) -> tuple[tuple[Entry, ...], list[Output]]:
        """On a leader (with `replicate`): append commands; none if not leading."""
        out: list[Output] = []
        if self._role is not Role.LEADER or not self._config.replicate or not data:
            return (), out
        entries = self.replication.append(self._term, "command", data, out)
        self._broadcast_heartbeats(out)  # AppendEntries now; it also counts as the heartbeat
        return entries, out

    def stalled(self) -> list[Output]:
        """Our loop stalled (clock.py): a leader beats now; its reads wait for answers (liveness.py)."""
        out: list[Output] = []
        if self._role is Role.LEADER:
            self._peers.stalled(self.replication.serial)
            self._broadcast_heartbeats(out)
        return out

    def compact(self, index: int, snapshot: bytes) -> None:
        """The caller's state machine, applied through `index`, is `snapshot` (§7)."""
        self.replication.compact(index, snapshot)

    def restore_log(self, log: RaftLog, snapshot: bytes, applied: int) -> None:
        """The journal refused an append: back to its log and the state applied through `applied`."""
        self.replication.reset(log, snapshot, applied)

    @property
    def ticks_since_leader(self) -> int:  # a follower's, since its leader's last beat (or since it followed)
        return self._ticks_since_leader

    def peer_ticks_since_heard(self) -> dict[str, int | None]:
        """Ticks since each peer last answered us (None: never, or not since we became leader)."""
        return self._peers.ticks_since_heard()

    def active_peers(self) -> set[str]:
        """Peers that answered within the last `election_ticks_min` ticks (liveness.py)."""
        return self._peers.active(self._peers.window)

    def hears_quorum(self) -> bool:
        """The active peers and this node are a quorum (what CheckQuorum asks of a leader)."""
        return len(self.active_peers()) + 1 >= self._config.quorum

    def may_read(self) -> bool:
        """A leader may answer from its state: a quorum hears it, by evidence newer than a stall."""
        return self.hears_quorum() and self._peers.current(self._config.quorum)

    def ticks_until_due(self) -> int:
        """`tick()` calls until one can produce output (at least 1); any `step()` can move it."""
        if self._role is Role.LEADER and not self._config.peers:
            due = self._config.election_ticks_max  # alone: no beat to send, no quorum to lose
        elif self._role is Role.LEADER:
            due = self.replication.beat_interval(self.quiet) - self._heartbeat_elapsed  # CheckQuorum rides it
        else:
            due = self._election_timeout - self._election_elapsed
        return max(1, due)

    # ---- inputs -------------------------------------------------------------

    def skip(self, ticks: int) -> int:
        """Pass up to `ticks` output-less ticks (before the due one) at once; how many passed."""
        n = max(0, min(ticks, self.ticks_until_due() - 1))
        self._count_ticks(n)
        return n

    def tick(self) -> list[Output]:
        self._count_ticks(1)
        if self._role is Role.LEADER:
            return self._tick_leader()
        return self.campaign() if self._election_elapsed >= self._election_timeout else []

    def campaign(self) -> list[Output]:
        """Start a (pre-)election now, as if the election timer had fired."""
        out: list[Output] = []
        if self._role is not Role.LEADER:
            (self._become_pre_candidate if self._config.pre_vote else self._become_candidate)(out)
        return out

    def leader_gone(self, leader: str, term: int) -> list[Output]:
        """`leader` of `term` looks dead (its stream closed, its port refuses): if it leads us, forget
        it (the lease ends); campaign once its promised beat is overdue, plus a random beat."""
        if (not self._config.pre_vote or self._role is not Role.FOLLOWER
                or (self._leader, self._term) != (leader, term)):
            return []
        out: list[Output] = []
        self._set_role(Role.FOLLOWER, None, out)
        beat = self._config.heartbeat_ticks  # a beat that does come (it lives) restores it and the timer
        owed = max(0, beat + self._lease_slack - self._ticks_since_leader) + self._rng.randint(1, beat)
        self._election_elapsed = self._election_timeout - owed
        return out

    def step(self, message: Message) -> list[Output]:
        out: list[Output] = []
        # Rules for every role first (Raft §5.1): terms order everything.
        if message.term > self._term and not self._step_higher_term(message, out):
            return out
        if message.term < self._term:
            self._step_stale(message, out)  # a late answer is no evidence the peer is up now
            return out
        if isinstance(message, VoteResponse | HeartbeatResponse):
            self._peers.heard(message.src, message.serial if isinstance(message, HeartbeatResponse) else 0)
        if isinstance(message, VoteRequest):
            self._step_vote_request(message, out)
        elif self._role is Role.LEADER:
            self._step_leader(message, out)
        elif self._role is Role.FOLLOWER:
            self._step_follower(message, out)
        else:
            self._step_candidate(message, out)
        return out

    def heard(self, peer: str, term: int, writing: bool = False, serial: int = 0) -> None:
        """An answer of this leader's term not stepped (held while our write is pending, §10.2.1, or
        `writing`): CheckQuorum counts it; a writing peer's entries wait (Replication.wait_longer)."""
        if self._role is Role.LEADER and term == self._term:
            self._peers.heard(peer, serial, again=writing)  # a snapshot's chunks share a serial
            if writing:
                self.replication.wait_longer(peer)

    def rollback(self, term: int, voted_for: str | None) -> list[Output]:
        """A write failed: back to the durable (term, vote), a follower with no leader (else the
        next message could carry a term no disk holds); nothing after the write is sent."""
        if term > self._term or (term == self._term and voted_for not in (None, self._voted_for)):
            raise AssertionError(f"rollback to ({term}, {voted_for}) from ({self._term}, {self._voted_for})")
        self._term, self._voted_for = term, voted_for
        self._role, self._leader = Role.FOLLOWER, None
        self._reset_election_timer()
        self._ticks_since_leader = self._lease_slack = 0
        # Said even to a follower: the outputs dropped after the failed write may have held it.
        return [RoleChanged(Role.FOLLOWER, term, None)]

    # ---- rules for every role -----------------------------------------------

    def _bumps_term(self, message: Message) -> bool:
        """False for a pre-vote request or grant: its term is the one the candidate *would*
        use (thesis §9.6), not the sender's, and moves nobody's term."""
        if isinstance(message, VoteRequest | VoteResponse) and message.pre_vote:
            return not isinstance(message, VoteRequest) and not message.granted
        return True

    def _step_higher_term(self, message: Message, out: list[Output]) -> bool:
        """Raft §5.1: a higher term makes us a follower. Returns False if the message is done."""
        if not self._bumps_term(message):
            return True
        if isinstance(message, VoteRequest) and self._in_lease(message.src):
            # Thesis §4.2.3/§6.2: a node that hears from a live leader ignores disruptive candidates.
            self._respond_vote(message, False, out)
            return False
        leader = message.src if isinstance(message, Heartbeat | InstallSnapshot) else None
        self._become_follower(message.term, leader, out)
        return True

    def _step_stale(self, message: Message, out: list[Output]) -> None:
        """Raft §5.1: answer stale requests with our term so the sender catches up."""
        if isinstance(message, VoteRequest):
            self._respond_vote(message, False, out)
        elif isinstance(message, Heartbeat | InstallSnapshot):
            # A deposed leader learns the new term from this and steps down.
            self._send(HeartbeatResponse(self._config.node_id, message.src, self._term, False), out)

    def _step_vote_request(self, message: VoteRequest, out: list[Output]) -> None:
        if message.pre_vote:
            # Thesis §9.6: grant if the term is ahead of ours and we know no live leader.
            grant = message.term > self._term and not self._in_lease(message.src)
            grant = grant and self._up_to_date(message)
            if grant and self._role is Role.FOLLOWER:
                self._reset_election_timer()  # no rival campaign on its heels
            elif grant and self._concurrent_pre_candidate(message):
                if message.src < self._config.node_id:
                    grant = False  # we go on; the requester yields to us
                else:
                    self._become_follower(self._term, None, out)  # we yield to it
            self._respond_vote(message, grant, out)
            return
        # Raft §5.2: one vote per term, first come first served; §5.4.1: only for a log as up to date.
        grant = (self._voted_for in (None, message.src) and not self._in_lease(message.src)
                 and self._up_to_date(message))
        if grant:
            self._set_hard_state(self._term, message.src, out)
            self._reset_election_timer()
        self._respond_vote(message, grant, out)

    def _up_to_date(self, request: VoteRequest) -> bool:
        return self.replication.log.up_to_date(request.last_index, request.last_term)

    def _concurrent_pre_candidate(self, request: VoteRequest) -> bool:
        """We are a pre-candidate for the requester's term and started within a heartbeat."""
        return (self._role is Role.PRE_CANDIDATE and request.term == self._term + 1
                and self._election_elapsed < self._config.heartbeat_ticks)

    def _in_lease(self, src: str) -> bool:
        """CheckQuorum lease: we know of a live leader other than `src` (thesis §6.2)."""
        if not self._config.check_quorum or self._leader is None or src == self._leader:
            return False
        if self._role is Role.LEADER:
            return True  # CheckQuorum steps us down when we lose the quorum
        return self._ticks_since_leader < self._config.election_ticks_min + self._lease_slack

    # ---- role-specific steps ------------------------------------------------

    def _step_leader(self, message: Message, out: list[Output]) -> None:
        # Responses were counted as evidence in `step`; they also carry the log's progress.
        if isinstance(message, HeartbeatResponse):
            self.replication.on_response(message, self._term, out, self._heartbeat_elapsed)
        elif isinstance(message, Heartbeat | InstallSnapshot):
            # Two leaders in one term would break Raft §5.2; answer, change nothing.
            self._send(HeartbeatResponse(self._config.node_id, message.src, self._term, False), out)

    def _step_follower(self, message: Message, out: list[Output]) -> None:
        if isinstance(message, Heartbeat | InstallSnapshot):
            self._accept_heartbeat(message, out)

    def _step_candidate(self, message: Message, out: list[Output]) -> None:
        """Pre-candidate and candidate: count votes, yield to a leader of our term (Raft §5.2)."""
        if isinstance(message, Heartbeat | InstallSnapshot):
            self._accept_heartbeat(message, out)
            return
        if not isinstance(message, VoteResponse) or message.src not in self._peers:
            return
        pre = self._role is Role.PRE_CANDIDATE
        expected_term = self._term + 1 if pre and message.granted else self._term
        if message.pre_vote != pre or message.term != expected_term:
            return  # a leftover from another phase or campaign
        (self._granted if message.granted else self._rejected).add(message.src)
        self._count_votes(out)

    def _accept_heartbeat(self, message: Heartbeat | InstallSnapshot, out: list[Output]) -> None:
        self._become_follower(self._term, message.src, out)
        if isinstance(message, Heartbeat) and message.slack > 0:
            # Capped: an honest idle beat is under half the election minimum.
            self._lease_slack = min(message.slack, self._config.election_ticks_min)
            self._election_elapsed = -self._lease_slack
        if any(isinstance(o, Persist) for o in out):
            # It moved our term: its entries wait a beat, so a refused Persist never changes the log.
            response = self.replication.refuse(message, self._term)
        elif isinstance(message, Heartbeat):
            response = self.replication.on_append(message, self._term, out)
        else:
            response = self.replication.on_snapshot(message, self._term, out)
        self._send(response, out)  # after any AppendLog: stored before acknowledged

    def _count_votes(self, out: list[Output]) -> None:
        quorum = self._config.quorum
        if len(self._granted) + 1 >= quorum:
            if self._role is Role.PRE_CANDIDATE:
                self._become_candidate(out)
            else:
                self._become_leader(out)
        elif len(self._rejected) >= quorum:
            self._become_follower(self._term, None, out)  # lost; wait for a new timeout

    def _count_ticks(self, n: int) -> None:
        """The counters `n` ticks move, before anything acts on them."""
        self._peers.tick(n)
        if self._role is Role.LEADER:
            self._heartbeat_elapsed += n
            self.replication.elapse(n)
        else:
            self._ticks_since_leader += n
            self._election_elapsed += n

    def _tick_leader(self) -> list[Output]:
        out: list[Output] = []
        beat = self._heartbeat_elapsed >= self.replication.beat_interval(self.quiet)
        if self._config.check_quorum and self._peers.check_due(beat):
            self._peers.since_check = 0
            if not self.hears_quorum():
                # Thesis §6.2: a leader cut off from a quorum steps down.
                self._become_follower(self._term, None, out)
                return out
        if beat:
            self._broadcast_heartbeats(out)
        return out

    # ---- transitions --------------------------------------------------------

    def _become_follower(self, term: int, leader: str | None, out: list[Output]) -> None:
        self._set_hard_state(term, self._voted_for if term == self._term else None, out)
        self._set_role(Role.FOLLOWER, leader, out)
        self._reset_election_timer()
        self._ticks_since_leader = self._lease_slack = 0

    def _become_pre_candidate(self, out: list[Output]) -> None:
        """Thesis §9.6: ask for votes at term+1 without touching term or vote."""
        self._set_role(Role.PRE_CANDIDATE, None, out)
        self._start_count()
        self._broadcast_vote_requests(self._term + 1, True, out)
        self._count_votes(out)

    def _become_candidate(self, out: list[Output]) -> None:
        """Raft §5.2: increment the term, vote for self, persist, then ask the others."""
        self._set_hard_state(self._term + 1, self._config.node_id, out)
        self._set_role(Role.CANDIDATE, None, out)
        self._start_count()
        self._broadcast_vote_requests(self._term, False, out)
        self._count_votes(out)

    def _become_leader(self, out: list[Output]) -> None:
        self._set_role(Role.LEADER, self._config.node_id, out)
        self._peers.forget()  # no evidence yet of this term
        self.replication.start_leading(self._term, out)
        self._broadcast_heartbeats(out)  # Raft §5.2: assert authority at once

    def _start_count(self) -> None:
        self._granted.clear()
        self._rejected.clear()
        self._reset_election_timer()

    def _set_role(self, role: Role, leader: str | None, out: list[Output]) -> None:
        if role is not self._role or leader != self._leader:
            out.append(RoleChanged(role, self._term, leader))
        self._role, self._leader = role, leader

    def _set_hard_state(self, term: int, voted_for: str | None, out: list[Output]) -> None:
        if term < self._term or (term == self._term and self._voted_for not in (None, voted_for)):
            # The invariant guard of Raft §5.2: never move back, never change a vote.
            raise AssertionError(f"refusing ({term}, {voted_for}) over ({self._term}, {self._voted_for})")
        if (term, voted_for) != (self._term, self._voted_for):
            self._term, self._voted_for = term, voted_for
            drop_unsent_persist(out)
            out.append(Persist(term, voted_for))

    def _reset_election_timer(self) -> None:
        self._election_elapsed = 0
        cfg = self._config
        self._election_timeout = self._rng.randint(cfg.election_ticks_min, cfg.election_ticks_max)

    # ---- sending ------------------------------------------------------------

    def _broadcast_vote_requests(self, term: int, pre_vote: bool, out: list[Output]) -> None:
        last_index, last_term = self.replication.log.last_index, self.replication.log.last_term
        for peer in self._config.peers:
            self._send(VoteRequest(self._config.node_id, peer, term, pre_vote, last_index, last_term), out)

    def _broadcast_heartbeats(self, out: list[Output]) -> None:
        self._heartbeat_elapsed = 0
        self.replication.promise_beat(self.quiet)
        for peer in self._config.peers:
            for message in self.replication.messages_for(peer, self._term):
                self._send(message, out)

    def _respond_vote(self, request: VoteRequest, granted: bool, out: list[Output]) -> None:
        # A granted pre-vote echoes the proposed term (thesis §9.6); else ours, for the candidate.
        term = request.term if request.pre_vote and granted else self._term
        self._send(VoteResponse(self._config.node_id, request.src, term, granted, request.pre_vote), out)

    def _send(self, message: Message, out: list[Output]) -> None:
        out.append(Send(message))
