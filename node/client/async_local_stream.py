"""The AsyncClient's jobs on a node's local socket (node/server/localsocket.py).

The AsyncClient's twin of client/local_stream.py: once a node has named its
local socket on a SubmitBatches stream, the client connects
in the background and, once connected, sends that node's jobs there
(`SubmitStreams`, client/streams.py). It keeps `SubmitStream`'s interface
and its batching: every job sent in one turn of the event loop goes in one
frame, and replies are matched to requests by job id and number (`Waiting`).
"""

from __future__ import annotations

import asyncio
import contextlib

from google.protobuf.message import DecodeError

from node._proto import distnode_pb2 as pb
from node.client.local_stream import CONNECT_TIMEOUT_S
from node.client.streams import Waiting, close_wait_s, stream_refused, withdraw
from node.errors import AttemptFailed, LimitExceeded
from node.wire.localframes import frame, read_async, shake_hands

#: Wait for the socket to drain once this much is written and not yet sent.
HIGH_WATER_BYTES = 1 << 20


async def open_local(endpoint: pb.LocalEndpoint, max_message_bytes: int) -> AsyncLocalStream:
    """Connect and shake hands; OSError (NotProven, TimeoutError, ...) or DecodeError if that fails."""
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        reader, writer, welcome = await shake_hands(endpoint)
    return AsyncLocalStream(reader, writer, welcome.node_id, max_message_bytes, welcome.takes_cancels)


class AsyncLocalStream:
    """One connection to one node's local socket, and the jobs waiting on it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, node_id: str,
        max_message_bytes: int, takes_cancels: bool = False,
    ) -> None:
        self._replies = reader
        self._writer = writer
        self.node_id = node_id
        self._max_bytes = max_message_bytes
        #: The node's welcome said it reads cancels: one that does not would take a batch of
        #: cancels alone for this client's end.
        self._takes_cancels = takes_cancels
        self._waiting = Waiting()
        self._unsent: list[pb.SubmitRequest] = []
        #: The seqs of written requests whose callers stopped waiting, for the next frame.
        self._cancels: list[int] = []
        #: The "no more jobs" frame is written: nothing may follow it (the node would not
        #: read it, and its close would then reset the connection).
        self._closing = False
        self.ended: Exception | None = None
        self.unsupported = False  # a node that names a socket has SubmitBatches
        self.replied = 0
        self.answered = True  # the handshake: see LocalStream.answered
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def send(self, request: pb.SubmitRequest) -> asyncio.Future[pb.SubmitStreamReply]:
        """Queue the job for this turn's frame; the future is its reply."""
        if self.ended is not None:
            raise self.ended
        waiting = self._waiting.join(request)
        self._flush_soon()
        self._unsent.append(request)
        transport = self._writer.transport
        if transport.get_write_buffer_size() > HIGH_WATER_BYTES:
            try:
                await self._writer.drain()
            except ConnectionError as exc:
                self._waiting.leave(request, waiting)
                raise self.ended or AttemptFailed(f"local socket: {exc}", reached=True) from None
            except asyncio.CancelledError:  # written all the same: cancelled as it goes
                self.forget(request, waiting)
                raise
        return waiting

    def _flush_soon(self) -> None:
        if not self._unsent and not self._cancels:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._unsent = self._unsent, []
        cancels, self._cancels = self._cancels, []
        if (batch or cancels) and self.ended is None and not self._writer.is_closing():
            self._writer.write(frame(pb.SubmitBatch(jobs=batch, cancel=cancels)))

    def forget(self, request: pb.SubmitRequest, waiting: asyncio.Future[pb.SubmitStreamReply]) -> None:
        """The caller of `waiting` stopped waiting: a job not answered yet is cancelled on the
        node (where it takes cancels), which ends it and frees its slot there."""
        unanswered = self._waiting.leave(request, waiting)
        if not unanswered or self.ended is not None or withdraw(self._unsent, request):
            return
        if self._takes_cancels and request.seq and not self._closing:  # closing: the close ends it
            self._flush_soon()
            self._cancels.append(request.seq)

    async def _read(self) -> None:
        ended: Exception = AttemptFailed("local socket: closed by the node", reached=True)
        try:
            while True:
                batch = await read_async(self._replies, pb.SubmitBatchReply, self._max_bytes)
                if batch is None:
                    break
                for reply in batch.replies:
                    self.replied += 1
                    if not reply.job_id:
                        ended = stream_refused(reply, self.replied)
                        continue
                    self._waiting.answer(reply)
        except (OSError, asyncio.IncompleteReadError, LimitExceeded, DecodeError) as exc:
            ended = AttemptFailed(f"local socket: {exc}", reached=True)
        finally:
            self.ended = ended
            self._writer.close()  # nothing more can be read: the connection is done
            self._waiting.fail_all(ended)

    async def close(self) -> None:
        """Say "no more jobs" (an empty batch); the node closes once its jobs are answered.
        Waited for, briefly; then whatever is left is cancelled, as when the client is gone."""
        if self.ended is None and not self._writer.is_closing():
            self._flush()
            self._writer.write(frame(pb.SubmitBatch()))
        self._closing = True
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._reader), close_wait_s(self._waiting))
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
