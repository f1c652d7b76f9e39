"""What goes into the election core and what comes out: data, no behaviour.

Inputs are messages between nodes (`step(message)`); outputs are what the
caller must do, in list order (node/core/election.py explains the contract).
All are frozen value types, so a simulated network can copy, delay, reorder
and compare them freely (tests/simnet.py): msgspec Structs, which cost a
daemon ~12 us each to define where a dataclass costs ~500 us of its start
(docs/design.md, "Start-up"), except the three that carry a `serial`, which
is not part of what the message says and so is left out of equality (a
dataclass field's `compare=False`; a Struct compares every field).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeAlias

import msgspec

from node.core.raftlog import Entry


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


# Messages. For a pre-vote request `term` is the candidate's *future* term.


class VoteRequest(msgspec.Struct, frozen=True):
    src: str
    dst: str
    term: int
    pre_vote: bool = False
    #: The candidate's last log entry, for the up-to-date check of §5.4.1.
    last_index: int = 0
    last_term: int = 0


class VoteResponse(msgspec.Struct, frozen=True):
    src: str
    dst: str
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True)
class Heartbeat:
    """AppendEntries (§5.3); with no entries, the leader's heartbeat."""

    src: str
    dst: str
    term: int
    #: The entry just before `entries`, which the follower's log must hold.
    prev_index: int = 0
    prev_term: int = 0
    entries: tuple[Entry, ...] = ()
    #: The leader's commit index.
    commit: int = 0
    #: Ticks past `heartbeat_ticks` the leader's next beat may take (an idle
    #: leader's promise, Replication.beat_ticks); the follower waits that much
    #: longer before it campaigns, so a thinned beat keeps the stall tolerance.
    slack: int = 0
    #: The leader's number for this message, growing through its term; the answer echoes
    #: it, so an answer overtaken by a later one is known (Replication.on_response). 0:
    #: not numbered (a leader of an earlier version). Not part of what the message says.
    serial: int = field(default=0, compare=False)

    @property
    def carried_bytes(self) -> int:
        """The bytes of the entries' data: what the message weighs in a queue or on the wire."""
        return sum(len(entry.data) for entry in self.entries)


@dataclass(frozen=True)
class HeartbeatResponse:
    src: str
    dst: str
    term: int
    #: False: the follower's log did not hold the leader's `prev_index` entry.
    success: bool = True
    #: On success the last index known to match the leader's log; on failure
    #: the index the leader should try next (fast back-off, §5.3).
    match_index: int = 0
    #: The `serial` of the Heartbeat or InstallSnapshot answered (0: not numbered).
    serial: int = field(default=0, compare=False)


@dataclass(frozen=True)
class InstallSnapshot:
    """§7: the leader's snapshot, for a follower that needs compacted entries.
    Answered with a HeartbeatResponse whose `match_index` is `index`."""

    src: str
    dst: str
    term: int
    index: int
    snapshot_term: int
    data: bytes
    #: As Heartbeat.serial.
    serial: int = field(default=0, compare=False)

    @property
    def carried_bytes(self) -> int:
        """As Heartbeat.carried_bytes: the snapshot's."""
        return len(self.data)


Message: TypeAlias = VoteRequest | VoteResponse | Heartbeat | HeartbeatResponse | InstallSnapshot


# Outputs, executed by the caller in list order.


class Persist(msgspec.Struct, frozen=True):
    """Make (term, voted_for) durable before executing any later Send in the list."""

    term: int
    voted_for: str | None


class Send(msgspec.Struct, frozen=True):
    message: Message


class RoleChanged(msgspec.Struct, frozen=True):
    """The role or the known leader changed (for logs and leader-only duties)."""

    role: Role
    term: int
    leader: str | None


class AppendLog(msgspec.Struct, frozen=True):
    """Make durable, before executing any later Send in the list: drop the log's
    entries after index `after`, then append `entries` (possibly none)."""

    after: int
    entries: tuple[Entry, ...]


class RestoreSnapshot(msgspec.Struct, frozen=True):
    """Replace the state machine with this snapshot and keep it durable (with the
    log cut at `index`) before executing any later Send."""

    index: int
    term: int
    data: bytes
    #: The log after `index` agreed with the snapshot and is kept (§7).
    keep_log: bool = False


class Apply(msgspec.Struct, frozen=True):
    """These entries are committed: apply them to the state machine, in order."""

    entries: tuple[Entry, ...]


Output: TypeAlias = Persist | Send | RoleChanged | AppendLog | RestoreSnapshot | Apply


def drop_unsent_persist(out: list[Output]) -> None:
    """A Persist with no Send after it yet is superseded by the next: one fsync instead of two."""
    for i in range(len(out) - 1, -1, -1):
        if isinstance(out[i], Send):
            return
        if isinstance(out[i], Persist):
            del out[i]
            return
