"""A leader's gRPC heartbeat stream to one follower while a write is pending (a follower
that is not reading): bare beats are skipped, beats with entries wait their turn. And a
snapshot in chunks: one write, sent so only to a follower that said it takes them.

The leader sends entries once (replication.py): one skipped would leave a gap the
follower refuses until the leader's wait runs out, so they queue behind the pending
write, up to MAX_QUEUED, and go in order once it returns."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inproc import poll

from node._proto import distnode_pb2 as pb
from node.core.limits import MAX_MESSAGE_BYTES, Limits
from node.core.messages import InstallSnapshot
from node.core.raftlog import Entry
from node.server import heartbeats
from node.server.beatsend import BeatSender
from node.server.config import NodeConfig
from node.server.heartbeats import HeartbeatLink
from node.server.peers import PeerTable
from node.wire.log import LargeBeat


class HeldCall:
    """A Heartbeat stream whose writes wait until `release` is set; it never answers."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.written: list[pb.HeartbeatRequest] = []
        self.cancelled = False

    async def write(self, request: pb.HeartbeatRequest) -> None:
        await self.release.wait()
        self.written.append(request)

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self) -> HeldCall:
        return self

    async def __anext__(self) -> pb.HeartbeatReply:
        await asyncio.Event().wait()
        raise StopAsyncIteration


class Stubs:
    def __init__(self, call: HeldCall) -> None:
        self.call = call

    def stub(self, address: str) -> Any:
        stubs = self

        class Stub:
            def Heartbeat(self) -> HeldCall:
                return stubs.call

        return Stub()


def beat(prev_index: int, entries: int = 0) -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(term=1, leader_id="n1", prev_index=prev_index,
                               entries=[pb.LogEntry(index=prev_index + 1 + i, term=1) for i in range(entries)])


async def test_entries_wait_behind_a_pending_write_and_bare_beats_are_skipped() -> None:
    call = HeldCall()
    link = HeartbeatLink("127.0.0.1:1", Stubs(call), lambda address, reply: None, stale_s=60.0)  # type: ignore[arg-type]
    link.send(beat(4, entries=1), reliable=True)
    await poll(lambda: link._pending is call, what="the first write to be pending")
    link.send(beat(5))  # bare: skipped
    link.send(beat(5, entries=1), reliable=True)
    link.send(beat(6, entries=2), reliable=True)
    call.release.set()
    await poll(lambda: len(call.written) == 3, what="the queued entries to be written")
    assert [(r.prev_index, len(r.entries)) for r in call.written] == [(4, 1), (5, 1), (6, 2)]
    link.close()


async def test_at_most_max_queued_wait_and_a_closed_stream_forgets_them() -> None:
    call = HeldCall()
    link = HeartbeatLink("127.0.0.1:1", Stubs(call), lambda address, reply: None, stale_s=60.0)  # type: ignore[arg-type]
    link.send(beat(0, entries=1), reliable=True)
    await poll(lambda: link._pending is call, what="the first write to be pending")
    for prev in range(1, 1 + 2 * heartbeats.MAX_QUEUED):
        link.send(beat(prev, entries=1), reliable=True)
    assert len(link._queued) == heartbeats.MAX_QUEUED
    link.close_stream()
    assert not link._queued and call.cancelled
    link.close()


class AnsweringCall(HeldCall):
    """A Heartbeat stream that answers with whatever the test puts in `replies`."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: asyncio.Queue[pb.HeartbeatReply] = asyncio.Queue()

    async def __anext__(self) -> pb.HeartbeatReply:
        return await self.replies.get()


def snapshot_head() -> pb.HeartbeatRequest:
    return pb.HeartbeatRequest(term=1, leader_id="n1", is_snapshot=True, snapshot_index=9, snapshot_term=1)


async def test_a_snapshot_in_chunks_is_one_write_that_entries_wait_behind() -> None:
    call = HeldCall()
    link = HeartbeatLink("127.0.0.1:1", Stubs(call), lambda address, reply: None, stale_s=60.0)  # type: ignore[arg-type]
    link.send(beat(0))  # opens the stream; its write is pending until released
    await poll(lambda: link._pending is call, what="the first write to be pending")
    link.send_chunks(snapshot_head(), b"s" * 2500, 1000)
    link.send(beat(9, entries=1), reliable=True)
    call.release.set()
    await poll(lambda: len(call.written) == 5, what="the chunks and the entries behind them")
    snapshot = [(r.snapshot_offset, len(r.snapshot_data), r.snapshot_size) for r in call.written[1:4]]
    assert snapshot == [(0, 1000, 2500), (1000, 1000, 2500), (2000, 500, 2500)]
    assert (call.written[4].prev_index, len(call.written[4].entries)) == (9, 1), "after every chunk"
    link.close()


class Clock:
    """time.monotonic for heartbeats.py, moved by the test."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def monotonic(self) -> float:
        return self.now_s


async def test_answers_during_a_long_write_keep_its_stream_and_a_stuck_one_is_still_torn_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A snapshot's chunks are answered as they come (beatstream.py): each answer restarts the
    stream's stale clock, so a transfer longer than `stale_s` keeps its stream; a write still
    pending once the answers stop is torn down `stale_s` after the last one, as before."""
    clock = Clock()
    monkeypatch.setattr(heartbeats, "time", clock)
    call, failures, rtts = AnsweringCall(), [], []
    link = HeartbeatLink("127.0.0.1:1", Stubs(call), lambda address, reply: None, stale_s=0.5,  # type: ignore[arg-type]
                         on_failure=lambda address, why: failures.append(why), on_rtt=rtts.append)
    link.send_chunks(snapshot_head(), b"s" * 5000, 1000)  # opens the stream; the write stays pending
    await poll(lambda: link._pending is call, what="the chunks' write to be pending")
    for _ in range(10):  # 3 s of chunks, an answer every 0.3 s, a beat between
        clock.now_s += 0.3
        call.replies.put_nowait(pb.HeartbeatReply(term=1, node_id="n2", writing=True, refused=True))
        await poll(lambda: call.replies.empty() and link._unanswered_since_s == clock.now_s,
                   what="the answer to be read")
        link.send(beat(9))  # bare: skipped behind the pending write, after the stale check
    assert not failures and not call.cancelled and link._pending is call
    assert rtts == [pytest.approx(0.3)], "one round trip: the gaps between answers are none"
    clock.now_s += 0.4
    link.send(beat(9))
    assert not failures, "within stale_s of the last answer"
    clock.now_s += 0.2
    link.send(beat(9))
    assert call.cancelled and len(failures) == 1 and "unanswered for 600 ms" in failures[0]
    link.close()


async def test_a_write_whose_clock_was_not_kept_is_judged_from_the_first_beat_that_finds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While datagrams are answered the stream's clock is not kept (the follower is heard);
    once they are not, a write still under way is judged from the first beat that finds it
    pending, and torn down `stale_s` later, not left until TCP gives up."""
    clock = Clock()
    monkeypatch.setattr(heartbeats, "time", clock)
    call, failures = HeldCall(), []
    link = HeartbeatLink("127.0.0.1:1", Stubs(call), lambda address, reply: None, stale_s=0.5,  # type: ignore[arg-type]
                         on_failure=lambda address, why: failures.append(why))
    link.send_chunks(snapshot_head(), b"s" * 5000, 1000)
    await poll(lambda: link._pending is call, what="the chunks' write to be pending")
    link._unanswered_since_s = None  # as `send` leaves it while datagrams are answered
    clock.now_s += 5.0
    link.send(beat(9))  # datagrams no longer answered: a bare beat goes to the stream, finds it pending
    assert not failures and link._unanswered_since_s == clock.now_s
    clock.now_s += 0.6
    link.send(beat(9))
    assert call.cancelled and len(failures) == 1 and "unanswered for 600 ms" in failures[0]
    link.close()


async def test_a_link_trusts_its_follower_with_chunks_while_its_last_reply_says_so_across_streams() -> None:
    call = AnsweringCall()
    call.release.set()
    link = HeartbeatLink("127.0.0.1:1", Stubs(call), lambda address, reply: None, stale_s=60.0)  # type: ignore[arg-type]
    link.send(beat(0))
    call.replies.put_nowait(pb.HeartbeatReply(term=1, node_id="n2"))  # an earlier version says nothing
    await poll(call.replies.empty, what="the first reply to be read")
    assert not link.takes_chunks
    link.send(beat(0))
    call.replies.put_nowait(pb.HeartbeatReply(term=1, node_id="n2", takes_snapshot_chunks=True))
    await poll(lambda: link.takes_chunks, what="the reply that says so")
    link.send(beat(0))
    call.replies.put_nowait(pb.HeartbeatReply(term=1, node_id="n2"))  # restarted as an earlier version
    await poll(lambda: not link.takes_chunks, what="the reply that does not")
    link._on_beacon_reply(pb.HeartbeatReply(term=1, node_id="n2", takes_snapshot_chunks=True))  # by UDP
    assert link.takes_chunks
    link._on_beacon_reply(pb.HeartbeatReply(term=1, node_id="n2"))
    assert not link.takes_chunks
    link._on_beacon_reply(pb.HeartbeatReply(term=1, node_id="n2", takes_snapshot_chunks=True))
    link.close_stream()  # a follower back from a restart is caught up in chunks at once
    link.send(beat(0))
    assert link._call is not None and link.takes_chunks, "the last reply's word, on a new stream"
    call.replies.put_nowait(pb.HeartbeatReply(term=1, node_id="n2"))  # it came back as an earlier version
    await poll(lambda: not link.takes_chunks, what="its first reply to take the word back")
    link.close()


class Links:
    """HeartbeatLinks' surface that BeatSender uses: one link, and what went whole."""

    def __init__(self, link: HeartbeatLink | None) -> None:
        self._link = link
        self.whole: list[pb.HeartbeatRequest] = []

    def link(self, address: str) -> HeartbeatLink | None:
        return self._link

    def send(self, address: str, request: pb.HeartbeatRequest, reliable: bool = False) -> None:
        self.whole.append(request)


@pytest.mark.parametrize("takes_chunks, size, limit, in_chunks", [
    (True, 3 << 20, MAX_MESSAGE_BYTES, 3),  # 1 MiB chunks
    (True, 3 << 20, 1 << 20, 4),  # under the limit: 1 MiB less the envelope
    (True, 1 << 20, MAX_MESSAGE_BYTES, 0),  # no larger than a chunk: whole
    (False, 3 << 20, MAX_MESSAGE_BYTES, 0),  # a follower of an earlier version: whole
])
def test_a_leader_sends_a_snapshot_in_chunks_only_where_they_help_and_are_taken(
    takes_chunks: bool, size: int, limit: int, in_chunks: int, tmp_path: Path
) -> None:
    call = HeldCall()
    link = HeartbeatLink("127.0.0.1:2", Stubs(call), lambda address, reply: None, stale_s=60.0)  # type: ignore[arg-type]
    link.takes_chunks = takes_chunks
    sent: list[Iterator[pb.HeartbeatRequest]] = []
    link._send_grpc = lambda write, queue=False: sent.append(write)  # type: ignore[assignment,method-assign,misc]
    links = Links(link)
    config = NodeConfig(node_id="n1", listen="127.0.0.1:1", peers=("127.0.0.1:2",), data_dir=tmp_path,
                        limits=Limits(max_message_bytes=limit))
    sender = BeatSender(links, PeerTable(config.peers), config)  # type: ignore[arg-type]
    data = os.urandom(size)
    sender.send(InstallSnapshot("n1", "127.0.0.1:2", 1, 9, 1, data, serial=4))
    if not in_chunks:
        assert not sent and [len(r.snapshot_data) for r in links.whole] == [size]
        return
    assert not links.whole and len(sent) == 1
    cut = list(sent[0])
    assert len(cut) == in_chunks and b"".join(c.snapshot_data for c in cut) == data
    assert all(c.ByteSize() <= limit and c.serial == 4 and c.snapshot_index == 9 for c in cut)


async def test_a_beat_with_large_entries_is_framed_off_the_loop_and_keeps_its_turn(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    framed_in: list[int] = []
    real_frame = LargeBeat.frame

    def frame(beat: LargeBeat) -> bytes:
        framed_in.append(threading.get_ident())
        return real_frame(beat)

    monkeypatch.setattr(LargeBeat, "frame", frame)
    call = HeldCall()
    link = HeartbeatLink("127.0.0.1:1", Stubs(call), lambda address, reply: None, stale_s=60.0,  # type: ignore[arg-type]
                         key=b"k" * 32)
    link.send(beat(3, entries=1), reliable=True)
    await poll(lambda: link._pending is call, what="the first write to be pending")
    entries = (Entry(5, 1, "command", b"x" * (2 << 20)),)
    link.send(LargeBeat(pb.HeartbeatRequest(term=1, leader_id="n1", prev_index=4, prev_term=1), entries))
    link.send(beat(5, entries=1), reliable=True)
    call.release.set()
    await poll(lambda: len(call.written) == 3, what="the three writes")
    first, large, last = call.written
    assert isinstance(large, bytes) and framed_in and framed_in[0] != threading.get_ident()
    parsed = pb.HeartbeatRequest.FromString(large)
    assert (parsed.prev_index, [e.data for e in parsed.entries], parsed.beacon_key) == (4, [entries[0].data], b"k" * 32)
    assert (first.prev_index, last.prev_index) == (3, 5), "in the order sent"  # type: ignore[union-attr]
    link.close()


async def test_a_udp_socket_that_could_not_be_had_is_asked_for_again_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first connect that failed (the follower's name did not resolve yet, as a container
    restarts) kept every beat of the leadership on gRPC: it was never tried again."""
    from node.server import beacons

    asked: list[int] = []

    async def connect(address: str, key: bytes, on_reply: Any, level: int = 0) -> beacons.BeaconSender | None:
        asked.append(level)
        return None if len(asked) == 1 else beacons.BeaconSender(key, on_reply)

    now = [100.0]
    monkeypatch.setattr(heartbeats.beacons, "connect", connect)
    monkeypatch.setattr(heartbeats.time, "monotonic", lambda: now[0])
    link = HeartbeatLink("127.0.0.1:1", Stubs(HeldCall()), lambda address, reply: None, stale_s=60.0,  # type: ignore[arg-type]
                         key=b"k" * 32)
    for seq in range(1, 11):
        link.send(beat(0), seq)
        await asyncio.sleep(0)
    assert len(asked) == 1 and link._beacon is None, "asked once, and not again at every beat"
    now[0] += heartbeats.UDP_RETRY_S
    for seq in range(11, 14):
        link.send(beat(0), seq)
        await asyncio.sleep(0)
    assert len(asked) == 2 and link._beacon is not None, "asked again once the wait is over"
    assert asked[1] < asked[0], "the second failure would be said at a lower level than the first"
    link.close()
