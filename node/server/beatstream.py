"""A follower's side of its leader's `Heartbeat` stream: beats read and stepped in order,
each answered as soon as its answer is ready.

While the node writes a large entry or a snapshot, the answer to the beat that brought it
waits for the disk (stepgate.py), and the bare beats behind it are answered at once that it
is writing (elections.py), so its leader keeps counting it for CheckQuorum. Answered in
order, as the stream once answered them, those answers waited behind the held one, and a
follower reached on gRPC alone (`--no-udp-heartbeats`, or UDP filtered) fell silent for
the whole write. A leader takes answers in any order: each is stepped on its own, and a
late one is told apart by its `serial` (replication.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from node._proto import distnode_pb2 as pb

#: Admits and steps one beat; calls its second argument with the reply, at once or later.
Step = Callable[[pb.HeartbeatRequest, Callable[[pb.HeartbeatReply], None]], Awaitable[None]]


async def answers_as_ready(
    requests: AsyncIterator[pb.HeartbeatRequest], step: Step, refusal: list[Exception]
) -> AsyncIterator[pb.HeartbeatReply]:
    """The replies to `requests`, as they are ready. A beat `step` refuses (it raises) ends
    them, the exception in `refusal`, once the replies ready by then are out; so does the
    end of `requests`. Replies held past that are dropped: the stream is over."""
    replies: asyncio.Queue[pb.HeartbeatReply | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for request in requests:
                await step(request, replies.put_nowait)
        except Exception as exc:
            refusal.append(exc)
        finally:
            replies.put_nowait(None)

    reader = asyncio.get_running_loop().create_task(read())
    try:
        while (reply := await replies.get()) is not None:
            yield reply
    finally:
        reader.cancel()
