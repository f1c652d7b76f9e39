"""Raft's log on the wire: the core's AppendEntries / InstallSnapshot <-> `HeartbeatRequest`.

A beat comes from a member, but it is still checked here before the core sees
it: entries must follow `prev_index` one by one with terms that never go down
and never pass the beat's own term, so a malformed beat is INVALID_ARGUMENT,
never an exception inside the consensus core.
"""

from __future__ import annotations

import dataclasses

import msgspec

from node._proto import distnode_pb2 as pb
from node.core.messages import Heartbeat, HeartbeatResponse, InstallSnapshot
from node.core.raftlog import KINDS, Entry
from node.errors import InvalidField
from node.wire.protowire import delimited_key, varint

#: The most slack a beat may claim: far past any idle interval a leader accepts
#: (under half the election minimum), near enough to never pin a follower.
MAX_IDLE_SLACK_MS = 60_000
#: Entries carrying at least this many bytes in all are framed by hand (`LargeBeat`).
LARGE_ENTRIES_BYTES = 1 << 20
_ENTRIES_KEY = delimited_key(pb.HeartbeatRequest.ENTRIES_FIELD_NUMBER)
_DATA_KEY = delimited_key(pb.LogEntry.DATA_FIELD_NUMBER)


class LargeBeat(msgspec.Struct):
    """An AppendEntries whose entries are large (an 8 MB answer's record is 10.7 MB): its
    request without them, `head`, and the entries themselves, framed into the message's
    bytes by `frame`.

    In a `HeartbeatRequest` each entry's data was copied into the message and serialized
    again for every follower, on the leader's event loop (about 20 ms per follower for
    10.7 MB here). `frame` writes the same bytes around the entries' own, in one
    `bytes.join`, which releases the GIL past a MiB: called in a thread (heartbeats.py),
    it costs the loop nothing. A parser reads the `entries` fields after the head's
    others as it would in order.
    """

    head: pb.HeartbeatRequest
    entries: tuple[Entry, ...]

    def frame(self) -> bytes:
        pieces = [self.head.SerializeToString()]
        for entry in self.entries:
            fields = pb.LogEntry(index=entry.index, term=entry.term, kind=entry.kind).SerializeToString()
            data = [_DATA_KEY, varint(len(entry.data)), entry.data] if entry.data else []
            size = len(fields) + sum(len(piece) for piece in data)
            pieces += [_ENTRIES_KEY, varint(size), fields, *data]
        return b"".join(pieces)


def beat_to_wire(
    message: Heartbeat | InstallSnapshot, leader_address: str, tick_ms: int
) -> pb.HeartbeatRequest | LargeBeat:
    """`beat_to_proto`, or a LargeBeat where the entries carry LARGE_ENTRIES_BYTES or more."""
    if isinstance(message, Heartbeat) and message.carried_bytes >= LARGE_ENTRIES_BYTES:
        head = beat_to_proto(dataclasses.replace(message, entries=()), leader_address, tick_ms)
        return LargeBeat(head, message.entries)
    return beat_to_proto(message, leader_address, tick_ms)


def beat_to_proto(
    message: Heartbeat | InstallSnapshot, leader_address: str, tick_ms: int
) -> pb.HeartbeatRequest:
    request = pb.HeartbeatRequest(term=message.term, leader_id=message.src, leader_address=leader_address,
                                  serial=message.serial)
    if isinstance(message, InstallSnapshot):
        request.is_snapshot = True
        request.snapshot_index, request.snapshot_term = message.index, message.snapshot_term
        request.snapshot_data = message.data
        return request
    request.prev_index, request.prev_term = message.prev_index, message.prev_term
    request.commit = message.commit
    request.idle_slack_ms = message.slack * tick_ms
    request.entries.extend(
        pb.LogEntry(index=e.index, term=e.term, kind=e.kind, data=e.data) for e in message.entries
    )
    return request


def beat_from_proto(
    request: pb.HeartbeatRequest, dst: str, tick_ms: int, snapshot_data: bytes | None = None
) -> Heartbeat | InstallSnapshot:
    """The core's message for a beat, in this node's ticks; InvalidField if it could not
    come from a leader's log. `snapshot_data`: a snapshot's bytes put together from its
    chunks (snapshotchunks.py), in place of the request's own."""
    if request.is_snapshot:
        if request.snapshot_term > request.term:
            problem = f"{request.snapshot_term} is past the beat's term {request.term}"
            raise InvalidField("snapshot_term", problem)
        data = request.snapshot_data if snapshot_data is None else snapshot_data
        return InstallSnapshot(request.leader_id, dst, request.term, request.snapshot_index,
                               request.snapshot_term, data, request.serial)
    if request.idle_slack_ms > MAX_IDLE_SLACK_MS:
        raise InvalidField("idle_slack_ms", f"{request.idle_slack_ms} is over {MAX_IDLE_SLACK_MS}")
    if request.prev_term > request.term:
        raise InvalidField("prev_term", f"{request.prev_term} is past the beat's term {request.term}")
    entries = []
    previous = request.prev_term
    for position, entry in enumerate(request.entries):
        where = f"entries[{position}]"
        if entry.index != request.prev_index + 1 + position:
            raise InvalidField(where, f"index {entry.index} does not follow {request.prev_index + position}")
        if not previous <= entry.term <= request.term:
            raise InvalidField(where, f"term {entry.term} is not within [{previous}, {request.term}]")
        if entry.kind not in KINDS:
            raise InvalidField(where, f"kind {entry.kind!r} is not one of {', '.join(KINDS)}")
        previous = entry.term
        entries.append(Entry(entry.index, entry.term, entry.kind, entry.data))
    return Heartbeat(request.leader_id, dst, request.term, request.prev_index, request.prev_term,
                     tuple(entries), request.commit, request.idle_slack_ms // tick_ms, request.serial)


def response_from_reply(reply: pb.HeartbeatReply, src: str, dst: str) -> HeartbeatResponse:
    return HeartbeatResponse(src, dst, reply.term, not reply.refused, reply.match_index, reply.serial)
