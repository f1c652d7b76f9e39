"""Raft's log replication (§5.3, §5.4.2, §7) for the consensus core: pure, no I/O.

`Election` (election.py) owns one `Replication` and calls it at the moments
the paper names: a new leader starts tracking each follower (`start_leading`,
and appends its no-op so that entries of earlier terms can commit, §5.4.2);
each heartbeat is an AppendEntries built by `message_for`; a follower checks
and stores what the leader sent (`on_append`, `on_snapshot`); the leader
counts matches and commits (`on_response`). Every change to the log comes out
as an `AppendLog` or `RestoreSnapshot` output placed before the Send that
acknowledges it, so the caller's fsync happens before the acknowledgement;
committed entries come out as `Apply`, each exactly once per node life.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from node.core.electionconfig import ElectionConfig
from node.core.messages import (
    AppendLog,
    Apply,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Output,
    RestoreSnapshot,
    Send,
)
from node.core.raftlog import Entry, RaftLog

#: Election timeouts (of the longest) a leader waits for a follower to install the snapshot
#: it was sent before sending it again (a big one takes a while to arrive and be written).
SNAPSHOT_WAIT_TIMEOUTS = 4
#: Beats a leader waits for a follower to answer for entries it was sent before sending them
#: again (a lost datagram costs this much); each answer that it is still writing restarts it.
RESEND_BEATS = 2
#: Election timeouts (of the longest) after which they go again even while it says it is writing.
RESEND_WAIT_TIMEOUTS = 1
#: Messages of entries a follower may have unanswered: more wait for its answer (etcd's inflights),
#: so a follower slower than the proposals does not pile them up in its leader's link.
MAX_MESSAGES_IN_FLIGHT = 4
#: What an AppendEntries adds around its one entry, at most (ids, term and indexes, the
#: commit, a beacon key): an entry goes to a peer in one message if its bytes and this fit
#: the peer's bound on a message.
BEAT_ENVELOPE_BYTES = 1 << 10


class _Sent(msgspec.Struct):
    """Entries a follower was sent and has not answered for (all of them, once it has)."""

    #: The last index of each message of them, oldest first.
    lasts: list[int] = msgspec.field(default_factory=list)
    #: Ticks left until they are sent again.
    left: int = 0
    #: Ticks since the wait began: writing answers put it off only so long (RESEND_WAIT_TIMEOUTS).
    age: int = 0


class Replication:
    def __init__(self, config: ElectionConfig, log: RaftLog, snapshot: bytes) -> None:
        self._config = config
        self.log = log
        #: The state machine's snapshot at `log.snapshot_index` (sent to followers that lag behind it).
        self.snapshot = snapshot
        # Volatile state (Figure 2): a restarted node learns the commit index again.
        self.commit = log.snapshot_index
        self.applied = log.snapshot_index
        # Leader state, reset at every election win.
        self._next: dict[str, int] = {}
        self._match: dict[str, int] = {}
        #: Followers sent our snapshot: its index and term, and the ticks left until it is sent again.
        self._snapshot_sent: dict[str, tuple[int, int, int]] = {}
        #: Followers sent entries not yet answered for.
        self._entries_sent: dict[str, _Sent] = {}
        #: The number of the last message sent (Heartbeat.serial), and of each follower's
        #: latest message it took: a refusal of an earlier one is out of date.
        self._serial = 0
        self._took: dict[str, int] = {}
        # The last beat told followers the next comes within `_promised_ticks`; every
        # AppendEntries says how much past `heartbeat_ticks` that is (Heartbeat.slack).
        self._promised_ticks = config.heartbeat_ticks
        self._slack_ticks = 0
        #: Each peer's own bound on a message it takes (its --max-message-bytes), where the
        #: caller learnt it: a smaller one than ours bounds the entries sent to it.
        self.peer_message_bytes: Mapping[str, int] = {}
        #: Followers whose next entry fits no message to them (`snapshot_wanted`): its index.
        self._unfit: dict[str, int] = {}

    # ---- leader ---------------------------------------------------------------

    def start_leading(self, term: int, out: list[Output]) -> None:
        self._next = dict.fromkeys(self._config.peers, self.log.last_index + 1)
        self._match = dict.fromkeys(self._config.peers, 0)
        self._snapshot_sent = {}
        self._entries_sent = {}
        self._took = {}
        self._unfit = {}
        if self._config.replicate:
            self.append(term, "noop", (b"",), out)

    def append(self, term: int, kind: str, data: tuple[bytes, ...], out: list[Output]) -> tuple[Entry, ...]:
        """A leader's new entries, one AppendLog (one fsync) for all; they commit once a
        quorum holds them (at once when alone)."""
        after = self.log.last_index
        entries = tuple(Entry(after + 1 + i, term, kind, item) for i, item in enumerate(data))
        for entry in entries:
            self.log.append(entry)
        out.append(AppendLog(after, entries))
        self._advance_commit(term, out)
        return entries

    def message_for(self, peer: str, term: int) -> Heartbeat | InstallSnapshot:
        """What `peer` needs next: the entries from its next index, or our snapshot.

        Entries go once (etcd's flow control of a follower's progress, by time): until the
        follower answers for them, refuses below its next index, or RESEND_BEATS pass without
        an answer, new entries go after them at once (up to MAX_MESSAGES_IN_FLIGHT messages)
        and beats are otherwise bare, at its next index (or at the last entry sent, once we
        compacted past its next index). A follower writing a
        10.7 MB entry is not sent it again at every beat, and answers the bare beats
        meanwhile (elections.py); one still writing when we compact is not sent the snapshot.
        An entry that fits no message to the follower is not sent either: it gets bare beats
        until a snapshot takes it past the entry (`snapshot_wanted`)."""
        log = self.log
        next_index = held = min(self._next.get(peer, log.last_index + 1), log.last_index + 1)
        sent = self._entries_in_flight(peer)
        full = sent is not None and not self._room(peer)
        if sent is not None and log.term_at(sent) is not None and (
                (sent < log.last_index and not full) or log.term_at(next_index - 1) is None):
            next_index = sent + 1
        prev = next_index - 1
        prev_term = log.term_at(prev)
        if prev_term is None:  # compacted: only the snapshot can bring it along (§7)
            in_flight = self._snapshot_in_flight(peer)
            if in_flight is not None:
                # It is still taking the one sent: a bare beat at that snapshot keeps it following
                # (refused until it is in, accepted after, even if we compacted again since)
                # without building and sending a snapshot at every beat, as etcd's snapshot
                # state of a follower's progress does.
                return Heartbeat(self._config.node_id, peer, term, *in_flight, (), self.commit,
                                 self._slack_ticks, self._next_serial())
            self._snapshot_sent[peer] = (log.snapshot_index, log.snapshot_term, self._snapshot_wait_ticks())
            return InstallSnapshot(self._config.node_id, peer, term, log.snapshot_index, log.snapshot_term,
                                   self.snapshot, self._next_serial())
        last = prev + self._config.max_append_entries
        fresh = sent is None or (next_index > sent and not full)  # not sent and unanswered for
        entries = log.entries(next_index, last) if prev < log.last_index and fresh else ()
        self._unfit.pop(peer, None)
        if entries and not self._fits(peer, entries[0]):
            # The follower would refuse the message, and its stream with it: a bare beat keeps
            # it following until a snapshot takes it past the entry (`snapshot_wanted`).
            self._unfit[peer] = entries[0].index
            entries = ()
            if sent is None:
                self._entries_sent.pop(peer, None)  # a wait that is over: what it was sent never arrived
            elif (held_term := log.term_at(held - 1)) is not None:  # entries before it on their
                prev, prev_term = held - 1, held_term  # way: a beat where it is, as any bare beat
        size, limit = 0, self._append_bytes(peer)
        for count, entry in enumerate(entries):
            size += len(entry.data)
            if size > limit and count > 0:
                entries = entries[:count]
                break
        if entries:
            # Entries sent after others not answered for leave the wait where it is: it runs
            # from the first of them, so a stream of proposals cannot put off their resending.
            if sent is None:
                self._entries_sent[peer] = _Sent(left=self._resend_ticks())
            self._entries_sent[peer].lasts.append(entries[-1].index)
        return Heartbeat(self._config.node_id, peer, term, prev, prev_term, entries, self.commit,
                         self._slack_ticks, self._next_serial())

    def _fits(self, peer: str, entry: Entry) -> bool:
        theirs = self.peer_message_bytes.get(peer, 0)
        return not theirs or len(entry.data) + BEAT_ENVELOPE_BYTES <= theirs

    def snapshot_wanted(self) -> int:
        """The index a leader's snapshot must reach for a follower to take the log again; 0 if
        none needs one. An entry written before the leader heard of a follower's smaller bound
        on a message (a follower restarted with a smaller --max-message-bytes) fits no message
        to it: it passes to that follower only inside a snapshot, which goes in chunks the
        follower takes. The lowest such index: a snapshot is taken at what is applied, which
        covers every index up to it, and one not applied yet may commit only through a
        follower that waits for the snapshot."""
        return min((index for index in self._unfit.values() if index > self.log.snapshot_index), default=0)

    def _append_bytes(self, peer: str) -> int:
        """Bytes of entries past the first in one message to `peer`: `max_append_bytes`, or a
        quarter of the peer's own bound if that is less (as ours makes `max_append_bytes`)."""
        theirs = self.peer_message_bytes.get(peer, 0)
        return min(self._config.max_append_bytes, theirs // 4) if theirs else self._config.max_append_bytes

    def messages_for(self, peer: str, term: int) -> list[Heartbeat | InstallSnapshot]:
        """`message_for`; where that sends entries after others not answered for, a bare beat
        follows it: a follower still writing those defers the new entries, and answers the
        bare beat that it is writing (elections.py), where steady proposals, each of them a
        beat, would leave it nothing to answer."""
        pipelined = self._entries_in_flight(peer) is not None
        message = self.message_for(peer, term)
        if not (pipelined and isinstance(message, Heartbeat) and message.entries):
            return [message]
        bare = Heartbeat(self._config.node_id, peer, term, message.prev_index, message.prev_term, (),
                         self.commit, self._slack_ticks, self._next_serial())
        return [message, bare]

    def _next_serial(self) -> int:
        self._serial += 1
        return self._serial

    @property
    def serial(self) -> int:
        """The number of the last message sent (Heartbeat.serial)."""
        return self._serial

    def beat_ticks(self, quiet: bool) -> int:
        """Ticks between a leader's beats: the idle interval while the caller says nothing
        needs fast failure detection (`quiet`: no job runs) and every entry is committed."""
        idle = self._config.idle_heartbeat_ticks
        return idle if quiet and idle and self.commit == self.log.last_index else self._config.heartbeat_ticks

    def promise_beat(self, quiet: bool) -> None:
        """A beat goes to every peer now; it promises the next within `beat_ticks(quiet)`."""
        self._promised_ticks = self.beat_ticks(quiet)
        self._slack_ticks = self._promised_ticks - self._config.heartbeat_ticks

    def elapse(self, ticks: int) -> None:
        """A leader's clock moved: the waits for snapshots sent run down (ticks, not beats:
        every proposal is a beat too)."""
        for peer, (index, snapshot_term, left) in self._snapshot_sent.items():
            self._snapshot_sent[peer] = (index, snapshot_term, left - ticks)
        for waiting in self._entries_sent.values():
            waiting.left -= ticks
            waiting.age += ticks

    def wait_longer(self, peer: str) -> None:
        """`peer` is taking what it was sent (it says it is writing, or its match moved): that
        waits another RESEND_BEATS before it goes again, up to RESEND_WAIT_TIMEOUTS in all; a
        snapshot it was sent waits SNAPSHOT_WAIT_TIMEOUTS again, as a follower whose write is
        stuck stops saying so (elections.py)."""
        waiting = self._entries_sent.get(peer)
        if waiting is not None and waiting.age < RESEND_WAIT_TIMEOUTS * self._config.election_ticks_max:
            waiting.left = self._resend_ticks()
        snapshot = self._snapshot_sent.get(peer)
        if snapshot is not None and snapshot[2] > 0:
            self._snapshot_sent[peer] = (*snapshot[:2], self._snapshot_wait_ticks())

    def _snapshot_wait_ticks(self) -> int:
        return SNAPSHOT_WAIT_TIMEOUTS * self._config.election_ticks_max

    def _resend_ticks(self) -> int:
        return RESEND_BEATS * self._config.heartbeat_ticks  # while idle, at the next beat after it

    def _entries_in_flight(self, peer: str) -> int | None:
        """The last index of the entries `peer` was sent, while it has not answered for them
        and the wait is not over."""
        waiting = self._entries_sent.get(peer)
        if waiting is None or not waiting.lasts or waiting.left <= 0:
            return None
        return waiting.lasts[-1] if self._match[peer] < waiting.lasts[-1] else None

    def _room(self, peer: str) -> bool:
        """Whether another message of entries may go to `peer` before it answers (MAX_MESSAGES_IN_FLIGHT)."""
        waiting = self._entries_sent.get(peer)
        return waiting is None or len(waiting.lasts) < MAX_MESSAGES_IN_FLIGHT

    def _snapshot_in_flight(self, peer: str) -> tuple[int, int] | None:
        """The index and term of the snapshot `peer` was sent, while its wait is not over."""
        sent = self._snapshot_sent.get(peer)
        return sent[:2] if sent is not None and sent[2] > 0 else None

    def beat_interval(self, quiet: bool) -> int:
        """Ticks from the last beat to the next: what `beat_ticks` asks now, never more
        than the last beat promised (a job or a new entry brings the next one sooner)."""
        return min(self._promised_ticks, self.beat_ticks(quiet))

    def on_response(
        self, response: HeartbeatResponse, term: int, out: list[Output], beat_elapsed: int
    ) -> None:
        """Count a follower's answer; `beat_elapsed`: ticks since the last beat, so a
        catch-up AppendEntries sent now carries the slack left of that beat's promise."""
        self._slack_ticks = max(0, self._promised_ticks - beat_elapsed - self._config.heartbeat_ticks)
        peer = response.src
        if peer not in self._next:
            return
        if response.success:
            self._took[peer] = max(self._took.get(peer, 0), response.serial)
            matched = min(response.match_index, self.log.last_index)  # never count what we never sent
            if matched > self._match[peer]:
                self._match[peer] = matched
                self._advance_commit(term, out)
                waiting = self._entries_sent.get(peer)
                if waiting is not None:  # it is taking what it was sent: a new wait, from now
                    waiting.lasts = [last for last in waiting.lasts if last > matched]
                    waiting.left, waiting.age = self._resend_ticks(), 0
            sent = self._snapshot_sent.get(peer)
            if sent is not None and matched >= sent[0]:
                del self._snapshot_sent[peer]  # installed
            self._next[peer] = max(self._next[peer], matched + 1)
        elif 0 < response.serial < self._took.get(peer, 0):
            # It took a later message since: what it lacked then came (a datagram overtaken by
            # entries on the stream, answered late). Acted on, its hint would take back a match.
            return
        else:
            # Fast back-off: the follower's hint, but always strictly down and
            # never below what it already matched, unless it hints at an entry it
            # acknowledged: it lost its log (a new disk, or its journal moved aside:
            # docs/operations.md), and is caught up from what it has, snapshot or
            # entries. (A stale refusal the serial cannot tell, from a peer that does
            # not number its answers or overtaken the other way round, costs a resend:
            # the entries are then acknowledged again.) A hint of 0 is no hint: a
            # follower whose disk refused the entries says so.
            if response.match_index >= self._next[peer] and self._entries_in_flight(peer) is not None:
                # It holds all before what it was sent and lacks some of that: still on the way (a
                # bare beat or what followed overtook it) or lost, which the wait tells. Acting now
                # would send it again, or the snapshot where we compacted past its next index.
                return
            before = self._next[peer]
            self._entries_sent.pop(peer, None)  # refused: what it was sent goes again, or the hint
            if 0 < response.match_index <= self._match[peer]:
                self._match[peer] = 0
            hint = min(response.match_index, before - 1)
            self._next[peer] = max(self._match[peer] + 1, hint)
            if self._next[peer] == before or self._snapshot_in_flight(peer) is not None:
                # It refused what it must take (its disk?), or refused a bare beat while the
                # snapshot is on its way (each would lower `next` by one and ask again): the
                # next beat tries again.
                return
        unanswered = self._entries_in_flight(peer)
        room = unanswered is not None and unanswered < self.log.last_index and self._room(peer)
        # Not a follower whose next entry fits no message to it: it waits for its snapshot at the
        # beats, and answering its bare beats with more would have the two ping-pong.
        behind = self._next[peer] <= self.log.last_index and unanswered is None and peer not in self._unfit
        if not response.success or room or behind:
            out.extend(Send(m) for m in self.messages_for(peer, term))  # catch up without waiting a beat

    def _advance_commit(self, term: int, out: list[Output]) -> None:
        matched = sorted([self.log.last_index, *self._match.values()], reverse=True)
        index = matched[self._config.quorum - 1]
        if index > self.commit and self.log.term_at(index) == term:  # §5.4.2: only our own term's
            self._commit_to(index, out)

    # ---- follower -------------------------------------------------------------

    def on_append(self, message: Heartbeat, term: int, out: list[Output]) -> HeartbeatResponse:
        """§5.3's receiver rules; the caller has already checked the term and taken the leader."""
        log = self.log
        prev_index, entries = message.prev_index, message.entries
        if prev_index < log.snapshot_index:
            # Everything up to our snapshot is committed, so it matches any leader's log (§5.4.3).
            entries = tuple(e for e in entries if e.index > log.snapshot_index)
            prev_index = log.snapshot_index
        elif log.term_at(prev_index) != message.prev_term:
            hint = log.conflict_hint(prev_index)
            return HeartbeatResponse(self._config.node_id, message.src, term, False, hint, message.serial)
        after, appended = log.merge(entries)
        if appended:
            out.append(AppendLog(after, appended))
        last_new = prev_index + len(entries)
        if min(message.commit, last_new) > self.commit:
            self._commit_to(min(message.commit, last_new), out)
        return HeartbeatResponse(self._config.node_id, message.src, term, True, last_new, message.serial)

    def refuse(self, message: Heartbeat | InstallSnapshot, term: int) -> HeartbeatResponse:
        """Answer without looking at the entries; the leader tries again at once."""
        hint = min(message.index if isinstance(message, InstallSnapshot) else message.prev_index + 1,
                   self.log.last_index + 1)
        return HeartbeatResponse(self._config.node_id, message.src, term, False, hint, message.serial)

    def on_snapshot(self, message: InstallSnapshot, term: int, out: list[Output]) -> HeartbeatResponse:
        if message.index > self.commit:
            kept = self.log.restore(message.index, message.snapshot_term)
            self.snapshot = message.data
            self.commit = self.applied = message.index
            out.append(RestoreSnapshot(message.index, message.snapshot_term, message.data, kept))
        # Our log matches the leader's up to our commit index, which is at least the snapshot's.
        return HeartbeatResponse(self._config.node_id, message.src, term, True, message.index, message.serial)

    # ---- both -----------------------------------------------------------------

    def _commit_to(self, index: int, out: list[Output]) -> None:
        self.commit = index
        if index > self.applied:
            out.append(Apply(self.log.entries(self.applied + 1, index)))
            self.applied = index

    def reset(self, log: RaftLog, snapshot: bytes, applied: int) -> None:
        """Go back to the log the disk holds and to what the caller's state machine has
        applied. The commit index is learnt again from the leader, and the entries an
        Apply dropped with the failed write carried are applied then."""
        if not log.snapshot_index <= applied <= log.last_index:
            raise ValueError(f"applied {applied} is outside the log ({log.snapshot_index}, {log.last_index}]")
        self.log, self.snapshot = log, snapshot
        self.commit = self.applied = applied

    def compact(self, index: int, snapshot: bytes) -> None:
        """The caller's state machine, applied up to `index`, is `snapshot`: forget the entries it holds."""
        if index > self.applied:
            raise ValueError(f"cannot compact to {index}: only {self.applied} applied")
        if index > self.log.snapshot_index:
            self.log.compact(index)
            self.snapshot = snapshot
            self._unfit = {peer: at for peer, at in self._unfit.items() if at > index}
