"""A leader's gRPC heartbeat stream to one follower while a write is pending (a follower
that is not reading): bare beats are skipped, beats with entries wait their turn.

The leader sends entries once (replication.py): one skipped would leave a gap the
follower refuses until the leader's wait runs out, so they queue behind the pending
write, up to MAX_QUEUED, and go in order once it returns."""

from __future__ import annotations

import asyncio
from typing import Any

from inproc import poll

from node._proto import distnode_pb2 as pb
from node.server import heartbeats
from node.server.heartbeats import HeartbeatLink


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
