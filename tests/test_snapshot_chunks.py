"""A snapshot cut into chunks at the leader and put back together at the follower
(node/wire/snapshotchunks.py), and a follower's stream stepping it once, whole, and answering
each chunk before the last that it is taking them (node/server/beatstream.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

import pytest

from node._proto import distnode_pb2 as pb
from node.core.messages import Heartbeat, InstallSnapshot
from node.errors import InvalidField
from node.server.beatstream import answers_as_ready, snapshots_whole
from node.wire.log import beat_from_proto
from node.wire.snapshotchunks import Reassembly, as_snapshot, bare_beat, chunks, in_chunks

DATA = os.urandom(10_000)


def head(serial: int = 7, index: int = 9) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(term=3, leader_id="n1", leader_address="127.0.0.1:1", beacon_key=b"k",
                               is_snapshot=True, snapshot_index=index, snapshot_term=2, serial=serial)


def test_chunks_carry_the_head_each_slice_and_where_it_goes() -> None:
    cut = list(chunks(head(), DATA, 4096))
    assert [(c.snapshot_offset, len(c.snapshot_data), c.snapshot_size) for c in cut] == [
        (0, 4096, 10_000), (4096, 4096, 10_000), (8192, 1808, 10_000)]
    assert b"".join(c.snapshot_data for c in cut) == DATA
    for chunk in cut:
        assert in_chunks(chunk)
        assert (chunk.term, chunk.leader_id, chunk.snapshot_index, chunk.snapshot_term, chunk.serial,
                chunk.beacon_key) == (3, "n1", 9, 2, 7, b"k")


def test_a_node_that_does_not_know_chunks_reads_one_as_a_bare_beat_not_a_snapshot() -> None:
    """A chunk that reached a node of an earlier version (one back from a restart as such)
    must not be installed there as the whole snapshot: it reads a bare AppendEntries whose
    previous entry is the snapshot's last, which it answers truly."""
    for chunk in chunks(head(), DATA, 3000):
        message = beat_from_proto(chunk, "n2", 10)  # what that node's parser makes of it
        assert isinstance(message, Heartbeat) and not isinstance(message, InstallSnapshot)
        assert (message.prev_index, message.prev_term, message.entries, message.commit) == (9, 2, (), 0)


def test_chunks_are_made_as_they_are_taken() -> None:
    cut = chunks(head(), DATA, 1000)
    first = next(cut)
    assert first.snapshot_offset == 0 and len(first.snapshot_data) == 1000
    assert sum(1 for _ in cut) == 9


def test_a_whole_snapshot_is_not_in_chunks() -> None:
    whole = head()
    whole.snapshot_data = DATA
    assert not in_chunks(whole) and not in_chunks(pb.HeartbeatRequest(term=3))


def test_the_chunks_put_back_together_are_the_snapshot() -> None:
    reassembly = Reassembly()
    cut = list(chunks(head(), DATA, 3000))
    assert [reassembly.add(c) for c in cut[:-1]] == [None, None, None]
    assert reassembly.received_bytes == 9000
    parts = reassembly.add(cut[-1])
    assert parts is not None and b"".join(parts) == DATA
    assert reassembly.received_bytes == 0, "the next snapshot starts afresh"
    again = [reassembly.add(c) for c in chunks(head(serial=8), DATA, 6000)]
    assert again[0] is None and again[1] is not None and b"".join(again[1]) == DATA


@pytest.mark.parametrize("bad, problem", [
    (lambda c: c.__setattr__("snapshot_offset", 4000), "snapshot_offset"),  # a gap
    (lambda c: c.__setattr__("serial", 8), "snapshot_offset"),  # another snapshot's chunk
    (lambda c: c.__setattr__("snapshot_index", 10), "snapshot_offset"),
    (lambda c: c.__setattr__("snapshot_data", b""), "snapshot_data"),  # no bytes
    (lambda c: c.__setattr__("snapshot_data", b"x" * 8000), "snapshot_data"),  # past the size
])
def test_a_chunk_that_does_not_continue_the_snapshot_is_invalid(
    bad: Callable[[pb.HeartbeatRequest], None], problem: str
) -> None:
    reassembly = Reassembly()
    cut = list(chunks(head(), DATA, 3000))
    reassembly.add(cut[0])
    bad(cut[1])
    with pytest.raises(InvalidField) as raised:
        reassembly.add(cut[1])
    assert raised.value.field == problem, raised.value
    assert reassembly.received_bytes == 0, "what was under way is dropped"
    # The leader's next stream starts from the first chunk: that works.
    parts = [reassembly.add(c) for c in chunks(head(), DATA, 3000)][-1]
    assert parts is not None and b"".join(parts) == DATA


def test_a_chunk_with_no_snapshot_under_way_is_invalid() -> None:
    with pytest.raises(InvalidField, match="no such snapshot under way"):
        Reassembly().add(list(chunks(head(), DATA, 3000))[1])


def test_a_snapshot_put_back_together_becomes_the_cores_message() -> None:
    last = list(chunks(head(), DATA, 3000))[-1]
    message = beat_from_proto(as_snapshot(last), "n2", 10, snapshot_data=DATA)
    assert isinstance(message, InstallSnapshot)
    assert (message.index, message.snapshot_term, message.serial, message.data) == (9, 2, 7, DATA)


async def beats(requests: list[pb.HeartbeatRequest]) -> AsyncIterator[pb.HeartbeatRequest]:
    for request in requests:
        yield request
        await asyncio.sleep(0)


async def test_a_stream_steps_a_snapshot_once_whole_and_answers_each_chunk_before_it_as_taking() -> None:
    big = os.urandom(3 << 20)  # past bytes.join's GIL threshold: joined in a thread
    bare = pb.HeartbeatRequest(term=3, leader_id="n1", prev_index=4, serial=6)
    stepped: list[tuple[int, str, bytes | None]] = []

    async def step(request: pb.HeartbeatRequest, snapshot: bytes | None,
                   reply: Callable[[pb.HeartbeatReply], None]) -> None:
        message = beat_from_proto(request, "n2", 10, snapshot)
        assert isinstance(message, InstallSnapshot) == (snapshot is not None)
        stepped.append((request.serial, type(message).__name__, snapshot))
        if not request.is_snapshot and (in_chunks(request) or request.snapshot_data):
            raise AssertionError("a chunk's bytes stepped as a beat")
        # The core's true answers: a bare beat refused with a hint, the snapshot taken.
        taken = isinstance(message, InstallSnapshot)
        reply(pb.HeartbeatReply(term=3, role="follower", serial=request.serial, refused=not taken,
                                match_index=2 + 7 * taken))

    requests = [bare, *chunks(head(), big, 1 << 20), pb.HeartbeatRequest(term=3, leader_id="n1", serial=8)]
    refusal: list[Exception] = []
    replies = [r async for r in answers_as_ready(beats(requests), snapshots_whole(step), refusal)]
    assert not refusal
    said = [(r.serial, r.writing, r.refused, r.match_index) for r in replies]
    assert said == [(6, False, True, 2), (7, True, True, 0), (7, True, True, 0), (7, False, False, 9),
                    (8, False, True, 2)], "each chunk before the last answered as taking; the snapshot's own"
    assert [(serial, kind) for serial, kind, _ in stepped] == [
        (6, "Heartbeat"), (7, "Heartbeat"), (7, "Heartbeat"), (7, "InstallSnapshot"), (8, "Heartbeat")]
    assert [snapshot for _, _, snapshot in stepped] == [None, None, None, big, None], "whole, once"
    chunk_beat = beat_from_proto(requests[1], "n2", 10)  # what a chunk is stepped as
    assert isinstance(chunk_beat, Heartbeat) and (chunk_beat.prev_index, chunk_beat.entries) == (9, ())


@pytest.mark.parametrize("term, role", [(4, "follower"), (3, "pre-candidate")])
async def test_a_chunks_answer_from_a_node_not_following_its_sender_goes_as_it_is(term: int, role: str) -> None:
    """A node of a later term does not follow the chunk's sender: its refusal, which tells
    the sender so, is not made a taking answer; nor one built once the node stopped
    following (an answer held until a write returned)."""
    async def step(request: pb.HeartbeatRequest, snapshot: bytes | None,
                   reply: Callable[[pb.HeartbeatReply], None]) -> None:
        reply(pb.HeartbeatReply(term=term, role=role, serial=3, refused=True))

    first = next(chunks(head(), DATA, 3000))
    replies = [r async for r in answers_as_ready(beats([first]), snapshots_whole(step), [])]
    assert [(r.term, r.writing, r.serial) for r in replies] == [(term, False, 3)]


async def test_a_leader_that_does_not_ask_is_not_answered_its_chunks() -> None:
    """A leader of the version before clears its stream's stale clock at any answer, so one
    answer to a chunk would leave a transfer that stops never torn down: it does not set
    `answer_chunks`, and its chunks before the last are stepped (the contact) but not
    answered, as then."""
    stepped: list[int] = []

    async def step(request: pb.HeartbeatRequest, snapshot: bytes | None,
                   reply: Callable[[pb.HeartbeatReply], None]) -> None:
        stepped.append(request.serial)
        reply(pb.HeartbeatReply(term=3, role="follower", serial=request.serial))

    cut = list(chunks(head(), DATA, 3000))
    for chunk in cut:
        chunk.answer_chunks = False
    replies = [r async for r in answers_as_ready(beats(cut), snapshots_whole(step), [])]
    assert stepped == [7] * len(cut) and [(r.serial, r.writing) for r in replies] == [(7, False)]


def test_a_chunk_marked_as_a_whole_snapshot_is_invalid() -> None:
    """Read as a snapshot, a chunk's slice would stand for the whole table."""
    first = next(chunks(head(), DATA, 3000))
    first.is_snapshot = True
    with pytest.raises(InvalidField) as caught:
        Reassembly().add(first)
    assert caught.value.field == "is_snapshot"


def test_the_beat_a_chunk_is_stepped_as_holds_none_of_its_bytes() -> None:
    first = next(chunks(head(), DATA, 3000))
    beat = bare_beat(first)
    assert beat.ByteSize() < 100 and not beat.snapshot_data and not in_chunks(beat)
    message = beat_from_proto(beat, "n2", 10)
    assert isinstance(message, Heartbeat)
    assert (message.src, message.term, message.prev_index, message.prev_term, message.serial,
            message.entries) == ("n1", 3, 9, 2, 7, ())


async def test_a_stream_whose_chunks_do_not_follow_ends_with_the_reason() -> None:
    stepped: list[tuple[int, bool]] = []

    async def step(request: pb.HeartbeatRequest, snapshot: bytes | None,
                   reply: Callable[[pb.HeartbeatReply], None]) -> None:
        stepped.append((request.snapshot_offset, snapshot is None))

    cut = list(chunks(head(), DATA, 3000))
    refusal: list[Exception] = []
    replies = [r async for r in answers_as_ready(beats([cut[0], cut[2]]), snapshots_whole(step), refusal)]
    assert replies == [] and stepped == [(0, True)], "the first chunk as a bare beat; nothing past the gap"
    assert isinstance(refusal[0], InvalidField) and refusal[0].field == "snapshot_offset"
