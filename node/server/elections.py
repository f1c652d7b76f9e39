"""The election's I/O: the pure core (node/core/election.py) wired to the clock, the disk and the network.

Every input reaches the core through here, after the clock has fed it the
ticks elapsed (`catch_up`; dropped while the gate is closed, stepgate.py).
Its outputs are executed in list order: `Persist` is written and fsync'd
(statestore.py) before any later `Send` leaves ("persist before you send").
An `AppendLog` is written in the journal's thread (logwriter.py): a leader's
AppendEntries go out meanwhile and the replies wait for it; a follower
steps nothing else until it has returned (stepgate.py). Vote requests go
out as RPCs whose replies are stepped back in, heartbeats on the leader's
links (heartbeats.py); `RoleChanged` is logged and passed on to the daemon.

The core is also the failure detector: `judge_peers` copies its verdict into
the peer table that the job scheduler reads. A leader found dead when its
Heartbeat stream closes (leaderprobe.py) is not waited out: `leader_gone`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.core.election import Election
from node.core.messages import (
    AppendLog,
    Apply,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    Output,
    Persist,
    RestoreSnapshot,
    Role,
    RoleChanged,
    Send,
    VoteRequest,
    VoteResponse,
)
from node.core.raftlog import Entry
from node.server.api import BeatAnswer, StatusView, VoteAnswer
from node.server.beatsend import BeatSender
from node.server.clock import Clock
from node.server.compaction import Compactor
from node.server.config import NodeConfig
from node.server.heartbeats import HeartbeatLinks
from node.server.journal import Journal
from node.server.logwriter import LogWriter
from node.server.peers import Peer, PeerTable
from node.server.peerview import peer_view
from node.server.statestore import ElectionState, StateStore, TermKeeper
from node.server.stepgate import StepGate
from node.server.voterpc import ask_vote
from node.wire.log import response_from_reply

log = logging.getLogger("distnode")

R = TypeVar("R", VoteResponse, HeartbeatResponse)
CLOSED_GATE_TICKS = 1 << 20  # the clock sleeps its longest; the write that opens the gate wakes it
OnRoleChanged = Callable[[Role, int, "str | None"], None]
#: Committed entries, in order, for the state machine.
OnApply = Callable[[tuple[Entry, ...]], None]


class ElectionDriver:
    def __init__(
        self, election: Election, store: StateStore, journal: Journal, clock: Clock, peers: PeerTable,
        stubs: StubCache, heartbeats: HeartbeatLinks, config: NodeConfig,
        spawn: Callable[[Coroutine[Any, Any, None]], None], on_role_changed: OnRoleChanged,
        on_apply: OnApply, records: Callable[[], Sequence[bytes]], on_restore: Callable[[bytes, int], None],
    ) -> None:
        self.election = election
        self.store = store
        self.journal = journal
        self.writer = LogWriter(journal)
        #: Followers' replies held while an append is being written.
        self._held_replies: list[tuple[str, pb.HeartbeatReply]] = []
        #: Steps waiting for a follower's append, and answers waiting for appends to be durable.
        self.gate = StepGate()
        #: The first background append that failed, until the writes pending behind it return.
        self._write_error: OSError | None = None
        #: Leader only: when each entry it proposed left (index -> perf_counter), for on_committed.
        self._proposed_at: dict[int, float] = {}
        self.on_committed: Callable[[float], None] = lambda seconds: None
        self.clock = clock
        self.peers = peers
        self.stubs = stubs
        self.heartbeats = heartbeats
        self.config = config
        self.spawn = spawn
        self.on_role_changed = on_role_changed
        self.on_apply = on_apply
        #: Our snapshots of the state machine (its records); replacing it with the leader's.
        self.compactor = Compactor(journal, self.writer, election, records, lambda: (  # a leader's only
            election.replication.snapshot_wanted() if election.role is Role.LEADER else 0))
        self.on_restore = on_restore
        #: Term and vote as the disk holds them (memory goes back to them when a save fails).
        self.terms = TermKeeper(store, ElectionState(election.term, election.voted_for),
                                config.election_ticks[0])
        #: The last index handed to the state machine (`on_apply`) or restored from a snapshot.
        self.applied = election.commit_index
        self.beats = BeatSender(heartbeats, peers, config)
        #: The last role change carried out, so a rollback to it is not logged twice.
        self._reported = (election.role, election.term, election.leader)
        #: The leader's address as this node dials it (its own --peers entry), or "".
        self.leader_address = ""
        #: Bare beats answered "writing" while the gate was closed (`_answer_writing`).
        self.writing_answers = 0

    @property
    def node_id(self) -> str:
        return self.config.node_id

    def catch_up(self) -> None:
        """Feed the core every tick that has elapsed on the wall clock. While the gate is
        closed they are dropped: a node busy writing its leader's entries has not lost
        touch with it, and one whose own are pending must not campaign (stepgate.py).
        After a stall (not fed as time, clock.py) a leader beats at once, its followers'
        clocks having run, and holds its reads (Election.stalled), before the message
        whose handler found the stall is stepped."""
        ticks = left = self.clock.due_ticks()
        stalled = self.clock.take_stall()
        if self.gate.closed:
            self._write_overdue_s()  # says so, once, if the write is slow
            return
        while left > 0 and not self.gate.closed:  # a step-down with appends pending closes it
            left -= self.election.skip(left)  # idle, most of them only move counters
            if left > 0:
                self._execute(self.election.tick())
                left -= 1
        if stalled and not self.gate.closed:
            self._execute(self.election.stalled())
        self.terms.retry(ticks)

    def ticks_until_due(self) -> int:
        """Ticks until the core needs the clock (while the gate is closed, the write wakes it)."""
        return CLOSED_GATE_TICKS if self.gate.closed else self.election.ticks_until_due()

    def judge_peers(self, deaths: bool = True) -> list[Peer]:
        """Copy the failure detector's verdict into the peer table; the peers that just died."""
        return self.peers.sync(self.election.active_peers(), deaths)

    # -- inbound ----------------------------------------------------------

    def vote(self, request: VoteRequest, answer: Callable[[VoteAnswer], None]) -> None:
        """Step a vote request; `answer` gets the reply (once the gate is open)."""
        if self.gate.defer(functools.partial(self.vote, request, answer)):
            return
        if request.pre_vote and self.terms.error:
            # It could not back the pre-vote with a real one: a grant would
            # only move the candidate's term, one failed election at a time.
            answer(VoteAnswer(self.election.term, False))
            return
        response = self._step_request(request, VoteResponse)
        answer(VoteAnswer(self.election.term, False) if response is None
               else VoteAnswer(response.term, response.granted))

    def heartbeat(self, beat: Heartbeat | InstallSnapshot, answer: Callable[[BeatAnswer], None]) -> None:
        """Step a beat; `answer` gets the reply once the gate is open and the entries it
        counts are durable (a refusal if a write failed), or at once (`_answer_writing`)."""
        if self.gate.closed:
            if not self._answer_writing(beat, answer):
                self.gate.defer(functools.partial(self.heartbeat, beat, answer), beat.carried_bytes)
            return
        leader_id, term = beat.src, beat.term
        response = self._step_request(beat, HeartbeatResponse)
        if self.follows(leader_id, term):
            # Our own --peers entry for the leader; "" until discovery maps its id
            # (then Submit answers UNAVAILABLE for a moment and the client retries).
            self.leader_address = self.peers.address_of(leader_id) or ""
            peer = self.peers.get(self.leader_address)
            if peer is not None:
                peer.role, peer.term = "leader", term
        if self.writer.in_flight:
            self.gate.hold(lambda durable: answer(self._beat_answer(response if durable else None)))
        else:
            answer(self._beat_answer(response))

    def _answer_writing(
        self, beat: Heartbeat | InstallSnapshot, answer: Callable[[BeatAnswer], None]
    ) -> bool:
        """While our write is pending, our leader's bare beat is answered at once ("writing")
        and never stepped: it carries nothing a later beat does not (its commit waits for the
        write anyway), and the answer keeps the leader's CheckQuorum counting this node, which
        the write of a large entry or a snapshot would otherwise silence (two such silences at
        once deposed leaders). Only while a write is pending, and not once it is stuck: the
        node then falls silent, as a leader's own stuck write stops counting its replies (a
        gate left closed by a snapshot the table could not take answers nothing)."""
        if (isinstance(beat, InstallSnapshot) or beat.entries or not self.follows(beat.src, beat.term)
                or not self.writer.in_flight or self.writer.stuck(self.config.election_ms_max / 1000)):
            return False
        self.writing_answers += 1
        # Refused with no hint, for a leader of the previous version: it then waits for its next beat.
        term, role = self.election.term, self.election.role.value
        answer(BeatAnswer(term, role, self.disk_error, True, 0, writing=True, serial=beat.serial))
        return True

    def leader_gone(self, leader_id: str, term: int) -> None:
        """`leader_id` of `term` looks dead (leaderprobe.py): if it leads us, campaign once it is late."""
        if self.gate.defer(functools.partial(self.leader_gone, leader_id, term)):
            return
        self.catch_up()
        if self._execute(outputs := self.election.leader_gone(leader_id, term)) and outputs:
            log.info("leader %s is gone (its stream closed, nothing serves its port): campaigning", leader_id)
            self.clock.wake_now()  # the timer now fires sooner than the clock planned

    def _beat_answer(self, response: HeartbeatResponse | None) -> BeatAnswer:
        refused = response is None or not response.success
        match, serial = (0, 0) if response is None else (response.match_index, response.serial)
        return BeatAnswer(self.election.term, self.election.role.value, self.disk_error, refused, match,
                          serial=serial)

    @property
    def disk_error(self) -> str:
        """Why this node cannot write its durable state (term and vote, or journal); "" if it can."""
        slow_s = self._write_overdue_s()
        slow = f"{self.journal.dir}: a journal write has been pending for {slow_s:.1f} s" if slow_s else ""
        return self.terms.error or self.writer.error or slow

    def _write_overdue_s(self) -> float:
        """While the gate is closed: how long the write it waits for has been pending, once
        that is longer than an election timeout."""
        return self.writer.overdue(self.config.election_ms_max / 1000) if self.gate.closed else 0.0

    def follows(self, leader_id: str, term: int) -> bool:
        """True if this node takes `leader_id` as its leader in `term`."""
        return self.election.leader == leader_id and term == self.election.term

    def on_heartbeat_reply(self, address: str, reply: pb.HeartbeatReply) -> None:
        if self.gate.defer(functools.partial(self.on_heartbeat_reply, address, reply)):
            return
        peer = self.peers.heard(address, reply.node_id, reply.role, reply.term, reply.storage_error,
                                reply.max_message_bytes)
        if reply.writing or self.writer.in_flight:
            if not reply.writing:  # a follower writing says only that it is alive: nothing to step
                self._held_replies.append((address, reply))  # see _wrote
            if not self.writer.stuck(self.config.election_ms_max / 1000):  # a slow disk, not a stuck one:
                self.election.heard(address, reply.term, reply.writing, reply.serial)  # CheckQuorum counts it
        else:
            self._step_reply(address, reply)
        if peer is not None and not peer.alive:  # a reply can only bring a peer back
            self.judge_peers(deaths=False)

    def _step_reply(self, address: str, reply: pb.HeartbeatReply) -> None:
        self.catch_up()
        self._execute(self.election.step(response_from_reply(reply, address, self.node_id)))

    def _step_request(self, message: Message, reply_type: type[R]) -> R | None:
        """Step a request; the core's reply to it, once everything else is executed."""
        self.catch_up()
        reply: R | None = None
        rest: list[Output] = []
        for out in self.election.step(message):
            if (reply is None and isinstance(out, Send) and isinstance(out.message, reply_type)
                    and out.message.dst == message.src):
                reply = out.message
            else:
                rest.append(out)
        # Persist outputs come first in `rest`, so the reply leaves after the
        # fsync; if the fsync failed, memory went back to the disk's term and
        # the reply is a refusal at that term (the caller's default).
        if not self._execute(rest):
            return None
        return reply

    def propose(self, data: tuple[bytes, ...]) -> tuple[Entry, ...]:
        """On the leader: append commands (one fsync) and send them; () if not leading,
        or if the journal refused them (then this node steps down)."""
        if self.gate.closed:  # a follower's append is being written: not leading
            return ()
        self.catch_up()
        entries, outputs = self.election.propose(*data)
        proposed = time.perf_counter()
        for entry in entries:
            self._proposed_at[entry.index] = proposed
        return entries if self._execute(outputs) else ()

    # -- outbound ---------------------------------------------------------

    def _execute(self, outputs: list[Output]) -> bool:
        """Carry out outputs in order; False if a Persist or a write failed (the rest is dropped).

        An append is written in the background (logwriter.py). A leader's Sends
        right after it go at once, what else follows waits for the write; a
        leader alone has nobody to send to while it writes: it writes at once.
        A follower's append, or its leader's snapshot, closes the gate: all that follows waits for it."""
        for position, out in enumerate(outputs):
            if isinstance(out, RestoreSnapshot):  # a follower's, from its leader
                rest = outputs[position + 1:]
                self.writer.restore_later(out, functools.partial(self._restored, out, rest))
                self.gate.close()
                return True
            if isinstance(out, AppendLog) and self.config.peers:
                rest = outputs[position + 1:]
                if self.election.role is not Role.LEADER:
                    self.writer.append_later(out.after, out.entries, functools.partial(self._wrote, rest))
                    self.gate.close()
                    return True
                sends = 0
                while sends < len(rest) and isinstance(rest[sends], Send):
                    sends += 1
                later = rest[sends:]
                self.writer.append_later(out.after, out.entries, functools.partial(self._wrote, later))
                self._execute(rest[:sends])
                return True
            if isinstance(out, Persist):
                if not self.terms.save(out.term, out.voted_for):
                    self._roll_back()
                    return False
            elif isinstance(out, AppendLog):  # a lone node's: it writes at once
                if not self.writer.store(out):
                    self._refused()
                    return False
            elif isinstance(out, Send):
                self._send(out.message)
            elif isinstance(out, RoleChanged):
                self._role_changed(out)
            elif isinstance(out, Apply):
                self._timed(out.entries)
                self.on_apply(out.entries)
                self.applied = out.entries[-1].index
                self.compactor.applied(out.entries)
        self.compactor.step(self.applied)
        return True

    def _timed(self, entries: tuple[Entry, ...]) -> None:
        """Proposal to commit, for each entry this leader proposed (the metrics' histogram)."""
        if self._proposed_at:
            now = time.perf_counter()
            for entry in entries:
                proposed = self._proposed_at.pop(entry.index, None)
                if proposed is not None:
                    self.on_committed(now - proposed)

    def _restored(self, out: RestoreSnapshot, later: list[Output], error: OSError | None) -> None:
        """A leader's snapshot returned: if durable, the state machine takes it; then as `_wrote`.
        One it cannot take leaves the gate closed: answering on a table that is not the log's
        would let it diverge, so the node takes no further part (said once; restart it)."""
        if error is None and self._write_error is None:
            try:
                self.on_restore(out.data, out.index)
                self.applied = out.index
                self.compactor.restored(out.data)
            except Exception:
                log.exception("cannot take the leader's snapshot at %d into the job table: this node "
                              "takes no further part in the cluster until it is restarted", out.index)
                return
        self._wrote(later, error)

    def _wrote(self, later: list[Output], error: OSError | None) -> None:
        """An append returned; once none is pending, `_settle`."""
        try:
            if error is not None:
                self._write_error = self._write_error or error
            elif self._write_error is None:
                self.writer.wrote()
                self._execute(later)
        finally:  # whatever happened here, nothing may wait for the writes any longer
            if not self.writer.in_flight:
                self._settle()

    def _settle(self) -> None:
        """No write is pending. Held replies and answers counted entries this disk had not
        got: if a write failed, memory goes back to the disk, the replies are dropped and
        the answers are refusals. The gate opens (what waited runs); a leader steps the replies."""
        held, self._held_replies = self._held_replies, []
        failed, self._write_error = self._write_error, None
        reopen = self.gate.closed
        if reopen:
            self.clock.due_ticks()  # those since the last wake: dropped too (catch_up)
        try:
            if failed is not None:
                self.writer.refused(failed)
                self._refused()
        finally:
            self.gate.open(failed is None)
        if failed is None and self.election.role is Role.LEADER:
            for address, reply in held:
                self._step_reply(address, reply)
        if reopen:
            self.clock.wake_now()  # ticks again

    def _refused(self) -> None:
        """Back to the journal's log; the leader sends the entries again. A leader that
        cannot hold its own entries steps down, and a candidate stops campaigning on a
        log its disk does not hold (its vote requests named the longer one)."""
        durable = self.journal.log.copy()
        self.election.restore_log(durable, self.journal.snapshot.data, self.applied)
        self.writer.reset()
        if self.election.role is not Role.FOLLOWER:
            self._roll_back()

    def _roll_back(self) -> None:
        """Memory back to the term and vote the disk holds (a save or a write failed)."""
        durable = self.terms.durable
        self._execute(self.election.rollback(durable.term, durable.voted_for))

    def _send(self, message: Message) -> None:
        if isinstance(message, VoteRequest):
            self.spawn(self._send_vote(message))
        elif isinstance(message, Heartbeat | InstallSnapshot):
            self.beats.send(message)
        # Responses go back through the RPC handlers: the core emits them only from `step`.

    async def _send_vote(self, message: VoteRequest) -> None:
        response = await ask_vote(self.stubs, self.peers, self.config, message)
        if response is not None:
            self._step_vote_reply(response)

    def _step_vote_reply(self, response: VoteResponse) -> None:
        if self.gate.defer(functools.partial(self._step_vote_reply, response)):
            return
        self.catch_up()
        self._execute(self.election.step(response))

    def _role_changed(self, change: RoleChanged) -> None:
        if change.role is not Role.LEADER and self.writer.in_flight:
            self.gate.close()  # a leader's appends are pending: as for a follower's own (stepgate.py)
        reported = (change.role, change.term, change.leader)
        if reported == self._reported:
            return  # a rollback back to where this node already was
        self._reported = reported
        self.clock.wake_now()  # the next deadline may now be earlier
        leader = f" leader={change.leader}" if change.leader else ""
        log.info("became %s term=%d%s", change.role.value, change.term, leader, extra={"term": change.term})
        if change.role is Role.LEADER:
            self.leader_address = self.config.address
            self.judge_peers()  # a new leader starts with no evidence: no worker is alive yet
        else:
            self.heartbeats.close()
            self._proposed_at.clear()
            if change.leader is None or change.leader == self.node_id:
                self.leader_address = ""
        self.on_role_changed(change.role, change.term, change.leader)

    # -- ids and status ---------------------------------------------------

    def status(self) -> StatusView:
        """What this node knows, and nothing it does not (peerview.py)."""
        self.catch_up()
        return peer_view(self.election, self.peers, self.config, self.leader_address, self.disk_error)

