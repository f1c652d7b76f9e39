"""A follower's side of its leader's `Heartbeat` stream: beats read and stepped in order,
each answered as soon as its answer is ready.

While the node writes a large entry or a snapshot, the answer to the beat that brought it
waits for the disk (stepgate.py), and the bare beats behind it are answered at once that it
is writing (elections.py), so its leader keeps counting it for CheckQuorum. Answered in
order, as the stream once answered them, those answers waited behind the held one, and a
follower reached on gRPC alone (`--no-udp-heartbeats`, or UDP filtered) fell silent for
the whole write. A leader takes answers in any order: each is stepped on its own, and a
late one is told apart by its `serial` (replication.py). A snapshot sent in chunks is
stepped once, when its last chunk is in (`snapshots_whole`, snapshotchunks.py); each chunk
before it is answered that this node is taking it (`_taking`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from node._proto import distnode_pb2 as pb
from node.wire.snapshotchunks import Reassembly, as_snapshot, bare_beat, in_chunks

Reply = Callable[[pb.HeartbeatReply], None]
#: Admits and steps one beat; calls its second argument with the reply, at once or later.
Step = Callable[[pb.HeartbeatRequest, Reply], Awaitable[None]]
#: A Step told a snapshot's bytes put together from its chunks (None: the request's own).
StepWhole = Callable[[pb.HeartbeatRequest, bytes | None, Reply], Awaitable[None]]


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


def snapshots_whole(step: StepWhole) -> Step:
    """A Step for one stream that hands `step` every beat, the snapshot once its last chunk
    is in (snapshotchunks.py), and each chunk before it as the bare beat it reads as, its
    answer said as taking (`_taking`); a chunk that does not continue the snapshot raises
    (InvalidField), which ends the stream."""
    reassembly = Reassembly()

    async def each(request: pb.HeartbeatRequest, reply: Reply) -> None:
        snapshot = None
        if in_chunks(request):
            parts = reassembly.add(request)
            if parts is None:
                await step(bare_beat(request), None, _taking(request, reply))
                return
            # bytes.join drops the GIL past a MiB: in a thread, 42 MB cost the loop ~nothing.
            snapshot = await asyncio.to_thread(b"".join, parts) if len(parts) > 1 else parts[0]
            request = as_snapshot(request)
        await step(request, snapshot, reply)

    return each


def _taking(chunk: pb.HeartbeatRequest, reply: Reply) -> Reply:
    """The answer to a chunk but the last, stepped as the bare beat it reads as: the contact
    restarts this node's election timer, as any beat of its leader does, and the answer
    says it is taking what it was sent, as a writing one does (elections.py), whatever the
    bare beat's own (its log lacks the snapshot's last entry). So its leader's stream is
    answered (heartbeats.py tears down one unanswered for an election timeout) and the
    snapshot's wait restarts (replication.py), however long the transfer takes on a slow
    link, with no beat but the chunks on gRPC alone. An answer of a later term goes as it
    is: the sender is not this node's leader, and learns so. A leader that does not ask for
    these answers (`answer_chunks`) is not sent them."""

    term, serial, asked = chunk.term, chunk.serial, chunk.answer_chunks  # not the chunk's MiB

    def said(answer: pb.HeartbeatReply) -> None:
        if not asked:  # a leader that clears its stream's clock at any answer: see the .proto
            return
        if answer.term == term and answer.role == "follower":  # it follows the sender
            answer.refused, answer.match_index, answer.writing = True, 0, True
            answer.serial = serial
        reply(answer)

    return said
