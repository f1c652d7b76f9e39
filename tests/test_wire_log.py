"""node/wire/log.py: the core's AppendEntries and InstallSnapshot, and their answers, keep
what the core reads across the wire, the leader's message number (`serial`) included."""

from __future__ import annotations

from node.core.messages import Heartbeat, HeartbeatResponse, InstallSnapshot
from node.core.raftlog import Entry
from node.server.api import BeatAnswer
from node.server.service import beat_reply
from node.wire.log import beat_from_proto, beat_to_proto, response_from_reply

TICK_MS = 10


def test_a_beat_and_a_snapshot_keep_their_number_across_the_wire() -> None:
    beat = Heartbeat("n1", "n2", 3, 4, 2, (Entry(5, 3, "command", b"x"),), 4, 2, serial=41)
    back = beat_from_proto(beat_to_proto(beat, "127.0.0.1:1", TICK_MS), "n2", TICK_MS)
    assert back == beat and back.serial == 41
    snapshot = InstallSnapshot("n1", "n2", 3, 9, 2, b"state", serial=42)
    back_snapshot = beat_from_proto(beat_to_proto(snapshot, "127.0.0.1:1", TICK_MS), "n2", TICK_MS)
    assert back_snapshot == snapshot and back_snapshot.serial == 42


def test_an_answer_echoes_the_number_across_the_wire() -> None:
    reply = beat_reply("n2", BeatAnswer(3, "follower", refused=True, match_index=5, serial=43))
    answer = response_from_reply(reply, "127.0.0.1:2", "n1")
    assert answer == HeartbeatResponse("127.0.0.1:2", "n1", 3, False, 5) and answer.serial == 43
