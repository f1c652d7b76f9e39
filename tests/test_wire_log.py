"""node/wire/log.py: the core's AppendEntries and InstallSnapshot, and their answers, keep
what the core reads across the wire, the leader's message number (`serial`) included; large
entries framed by hand are the bytes protobuf would write."""

from __future__ import annotations

import os

from node._proto import distnode_pb2 as pb
from node.core.messages import Heartbeat, HeartbeatResponse, InstallSnapshot
from node.core.raftlog import Entry
from node.server.api import BeatAnswer
from node.server.service import beat_reply
from node.wire.log import (
    LARGE_ENTRIES_BYTES,
    LargeBeat,
    beat_from_proto,
    beat_to_proto,
    beat_to_wire,
    response_from_reply,
)

TICK_MS = 10


def test_a_beat_and_a_snapshot_keep_their_number_across_the_wire() -> None:
    beat = Heartbeat("n1", "n2", 3, 4, 2, (Entry(5, 3, "command", b"x"),), 4, 2, serial=41)
    back = beat_from_proto(beat_to_proto(beat, "127.0.0.1:1", TICK_MS), "n2", TICK_MS)
    assert back == beat and back.serial == 41
    snapshot = InstallSnapshot("n1", "n2", 3, 9, 2, b"state", serial=42)
    back_snapshot = beat_from_proto(beat_to_proto(snapshot, "127.0.0.1:1", TICK_MS), "n2", TICK_MS)
    assert back_snapshot == snapshot and back_snapshot.serial == 42


def test_an_answer_echoes_the_number_across_the_wire_and_states_the_nodes_limit() -> None:
    reply = beat_reply("n2", BeatAnswer(3, "follower", refused=True, match_index=5, serial=43), 1 << 20)
    answer = response_from_reply(reply, "127.0.0.1:2", "n1")
    assert answer == HeartbeatResponse("127.0.0.1:2", "n1", 3, False, 5) and answer.serial == 43
    assert reply.max_message_bytes == 1 << 20  # what its leader sends it, at most


def large(entries: tuple[Entry, ...], serial: int = 44) -> Heartbeat:
    return Heartbeat("n1", "n2", 3, 4, 2, entries, 4, 2, serial=serial)


def test_large_entries_framed_by_hand_are_the_message_protobuf_writes() -> None:
    entries = (Entry(5, 2, "noop"), Entry(6, 3, "command", os.urandom(LARGE_ENTRIES_BYTES)),
               Entry(7, 3, "command", b""), Entry(8, 3, "command", b"\n" * 300))
    beat = large(entries)
    wire = beat_to_wire(beat, "127.0.0.1:1", TICK_MS)
    assert isinstance(wire, LargeBeat) and wire.entries == entries and not wire.head.entries
    wire.head.beacon_key, wire.head.seq = b"key", 0  # as the link sets them
    framed = pb.HeartbeatRequest.FromString(wire.frame())
    expected = beat_to_proto(beat, "127.0.0.1:1", TICK_MS)
    expected.beacon_key = b"key"
    assert framed == expected
    assert beat_from_proto(framed, "n2", TICK_MS) == beat


def test_only_large_entries_are_framed_by_hand() -> None:
    small = large((Entry(5, 3, "command", b"x" * (LARGE_ENTRIES_BYTES - 1)),))
    assert isinstance(beat_to_wire(small, "127.0.0.1:1", TICK_MS), pb.HeartbeatRequest)
    many = large(tuple(Entry(5 + i, 3, "command", b"x" * (LARGE_ENTRIES_BYTES // 4)) for i in range(4)))
    assert isinstance(beat_to_wire(many, "127.0.0.1:1", TICK_MS), LargeBeat), "counted over all entries"
    snapshot = InstallSnapshot("n1", "n2", 3, 9, 2, b"s" * LARGE_ENTRIES_BYTES)
    assert isinstance(beat_to_wire(snapshot, "127.0.0.1:1", TICK_MS), pb.HeartbeatRequest)
