"""beatstream.py: a follower's Heartbeat stream steps beats in order and answers each as
soon as its answer is ready; a refusal ends it after the answers ready by then."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from node._proto import distnode_pb2 as pb
from node.errors import InvalidField
from node.server.beatstream import answers_as_ready


async def beats(*indexes: int) -> AsyncIterator[pb.HeartbeatRequest]:
    for index in indexes:
        yield pb.HeartbeatRequest(term=1, prev_index=index)


async def test_a_held_answer_does_not_hold_the_answers_behind_it() -> None:
    stepped: list[int] = []
    held: list[Callable[[pb.HeartbeatReply], None]] = []

    async def step(request: pb.HeartbeatRequest, reply: Callable[[pb.HeartbeatReply], None]) -> None:
        stepped.append(request.prev_index)
        if request.prev_index == 1:  # its entries are being written: answered later
            held.append(reply)
        else:
            reply(pb.HeartbeatReply(match_index=request.prev_index))

    done = asyncio.Event()

    async def open_stream() -> AsyncIterator[pb.HeartbeatRequest]:  # a leader never half-closes
        async for beat in beats(1, 2, 3):
            yield beat
        await done.wait()

    refusal: list[Exception] = []
    answers = answers_as_ready(open_stream(), step, refusal)
    got = [(await anext(answers)).match_index, (await anext(answers)).match_index]
    assert got == [2, 3] and stepped == [1, 2, 3]
    held[0](pb.HeartbeatReply(match_index=1))
    assert (await anext(answers)).match_index == 1
    done.set()
    assert [a async for a in answers] == [] and not refusal


async def test_a_refused_beat_ends_the_answers_after_those_ready() -> None:
    async def step(request: pb.HeartbeatRequest, reply: Callable[[pb.HeartbeatReply], None]) -> None:
        if request.prev_index == 2:
            raise InvalidField("term", "is beyond the limit")
        reply(pb.HeartbeatReply(match_index=request.prev_index))

    refusal: list[Exception] = []
    got = [a.match_index async for a in answers_as_ready(beats(1, 2, 3), step, refusal)]
    assert got == [1] and [type(e) for e in refusal] == [InvalidField]


async def test_a_closed_stream_stops_reading() -> None:
    read: list[int] = []

    async def endless() -> AsyncIterator[pb.HeartbeatRequest]:
        index = 0
        while True:
            index += 1
            read.append(index)
            yield pb.HeartbeatRequest(term=1, prev_index=index)
            await asyncio.sleep(0.001)

    async def step(request: pb.HeartbeatRequest, reply: Callable[[pb.HeartbeatReply], None]) -> None:
        reply(pb.HeartbeatReply(match_index=request.prev_index))

    answers = answers_as_ready(endless(), step, [])
    assert (await anext(answers)).match_index == 1
    await answers.aclose()  # what gRPC does when the leader cancels the stream
    count = len(read)
    for _ in range(5):
        await asyncio.sleep(0.005)
    assert len(read) <= count + 1, "still reading after the stream closed"
