"""Attached jobs on one open `SubmitBatches` stream per node: many jobs, one stream,
replies by job id and the request's number on the stream (`Waiting`).

On this project's 2-core host a unary gRPC call costs 0.8-1.2 ms from Python
and one message each way on an open stream half that
(`scripts/grpc_floor.py`, docs/timeline.md), and a small job is little more
than its round trip. So the AsyncClient sends jobs with a scalar answer on a
stream it keeps open to each node it talks to; vector answers keep the unary
`Submit`, whose reply is read without copies. A message costs about the same
whatever it holds (`scripts/grpc_floor.py`), so the jobs that wait while
one is written go together in the next.

A job's failure comes back as its own reply (the status a unary Submit
would have ended with, signed by the node), and `classify` treats it the
same way. If the stream breaks (the node died, the connection dropped),
every job waiting on it fails with `AttemptFailed` and the client's retry
loop sends it again, elsewhere or on a new stream, with the same job id.

A node that has a local socket names it first on a stream; the
client connects to it in the background and, once connected, sends that
node's jobs there instead (client/async_local_stream.py). A socket it
cannot reach leaves it on gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from node._proto import distnode_pb2 as pb
from node.client.retry import FailedCall, classify
from node.errors import AccessDenied, AttemptFailed, GaveUp
from node.wire.answers import SubmitAnswer
from node.wire.localframes import UNREACHABLE
from node.wire.status import NODE_TRAILER
from node.wire.stubs import NodeStub


@dataclass(frozen=True)
class StreamStatus:
    """A job's failure on a stream, shaped as a failed call for `classify`."""

    status: grpc.StatusCode
    message: str
    node_id: str

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return self.message

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((NODE_TRAILER, self.node_id),) if self.node_id else ()


_CODES = {code.value[0]: code for code in grpc.StatusCode}
#: How long closing a client waits for its streams' last answers before cancelling them;
#: for a stream no caller waits on, for its node to end it (a paused node never does).
CLOSE_WAIT_S, IDLE_CLOSE_WAIT_S = 1.0, 0.05


def close_wait_s(waiting: Waiting) -> float:
    """How long closing a stream waits for its node to end it."""
    return IDLE_CLOSE_WAIT_S if waiting.idle.is_set() else CLOSE_WAIT_S


def stream_refused(reply: pb.SubmitStreamReply, replied: int) -> Exception:
    """What a reply for no job (an empty id: the node could not take a frame, and closes the
    connection) means for the jobs still waiting on it: as a status that ends a gRPC stream."""
    found, _ = stream_ended(
        StreamStatus(_CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.message, reply.node_id), replied
    )
    return found


class Waiting:
    """The replies a stream's callers wait for: one future for each request, numbered on the
    stream (`SubmitRequest.seq`, echoed in its reply), so that two requests for one job id at
    once (two submits of it, or a retry beside the first try) each get their own reply, a
    refusal of one (another job under the id, a limit) not the other's, and one caller that
    gives up (its timeout, its cancellation, its watchdog) takes only its own future with it.
    A node that echoes no number (an earlier version) answers every request of the id."""

    def __init__(self) -> None:
        self._by_id: dict[str, dict[int, asyncio.Future[pb.SubmitStreamReply]]] = {}
        self._numbers = itertools.count(1)
        #: Set while no caller waits.
        self.idle = asyncio.Event()
        self.idle.set()

    def __contains__(self, job_id: str) -> bool:
        return job_id in self._by_id

    def join(self, request: pb.SubmitRequest) -> asyncio.Future[pb.SubmitStreamReply]:
        """The future of `request`'s reply; numbers the request (its `seq`) for the stream."""
        future: asyncio.Future[pb.SubmitStreamReply] = asyncio.get_running_loop().create_future()
        future.add_done_callback(retrieved)
        request.seq = next(self._numbers)
        self._by_id.setdefault(request.job.job_id, {})[request.seq] = future
        self.idle.clear()
        return future

    def leave(self, request: pb.SubmitRequest, future: asyncio.Future[pb.SubmitStreamReply]) -> bool:
        """The caller of `future` stopped waiting (answered, cancelled, or out of time); True
        if it had no answer (a future cancelled by its timeout or a watchdog had none)."""
        unanswered = not future.done() or future.cancelled()
        futures = self._by_id.get(request.job.job_id)
        if futures is not None and futures.get(request.seq) is future:
            del futures[request.seq]
            if not futures:
                del self._by_id[request.job.job_id]
        future.cancel()
        if not self._by_id:
            self.idle.set()
        return unanswered

    def answer(self, reply: pb.SubmitStreamReply) -> None:
        futures = self._by_id.get(reply.job_id)
        if futures is None:
            return
        if reply.seq:
            answered = [futures.pop(reply.seq)] if reply.seq in futures else []
            if not futures:
                del self._by_id[reply.job_id]
        else:
            answered = list(self._by_id.pop(reply.job_id).values())
        for future in answered:
            if not future.done():
                future.set_result(reply)
        if not self._by_id:
            self.idle.set()

    def fail_all(self, exc: Exception) -> None:
        """The stream ended: every caller still waiting hears why."""
        for futures in self._by_id.values():
            for future in futures.values():
                if not future.done():
                    future.set_exception(exc)
        self._by_id.clear()
        self.idle.set()


def withdraw(unsent: list[pb.SubmitRequest], request: pb.SubmitRequest) -> bool:
    """Take `request` out of `unsent`, the jobs not yet written; True if it was there (never
    written: there is nothing to end on the node)."""
    for index, other in enumerate(unsent):
        if other is request:
            del unsent[index]
            return True
    return False


def answers(reply: pb.SubmitStreamReply, request: pb.SubmitRequest) -> bool:
    """Whether `reply` is `request`'s, on a blocking client's stream (one request at a time):
    its job id, and its number where the node echoes one. An earlier request of the same id,
    whose caller stopped waiting (an interrupt), may still be answered after it."""
    return reply.job_id == request.job.job_id and reply.seq in (request.seq, 0)


def stream_answer(reply: pb.SubmitStreamReply, accepted: bool) -> SubmitAnswer:
    """The job's answer, or the exception its status means (`classify`)."""
    if reply.code:
        raise classify(StreamStatus(_CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.message,
                                    reply.node_id), accepted)
    return SubmitAnswer(reply.reply, memoryview(reply.reply.result.data))


def stream_ended(exc: FailedCall, replied: int) -> tuple[Exception, bool]:
    """What a status for a whole stream means for every job waiting on it, and whether the
    node has no SubmitBatches at all.

    A wrong token is final; the rest (the node going away, a broken connection) is worth
    another attempt. A node without the method says UNIMPLEMENTED, or, when the client was
    writing as it refused the call, gRPC's own INTERNAL ("error from Core"): before any
    reply, both mean the same. Whether the node had accepted a job is for its caller to say
    (its watchdog's probes), as for a unary call: a broken stream alone does not tell.
    """
    code = exc.code()
    unsupported = code is grpc.StatusCode.UNIMPLEMENTED or (code is grpc.StatusCode.INTERNAL and not replied)
    found = classify(exc, False)
    if not isinstance(found, AccessDenied):
        reached = found.reached if isinstance(found, AttemptFailed) else True
        found = AttemptFailed(f"SubmitBatches: {code.name}: {exc.details()}", reached=reached)
    return found, unsupported


class OpenedStream(Protocol):
    """What both clients' streams say about themselves once a job on them failed."""

    unsupported: bool
    replied: int
    ended: Exception | None

    @property
    def answered(self) -> bool:
        """The node has answered on it: a reply, or (a local socket) the handshake."""


def unary_instead(
    stream: OpenedStream, unsupported: set[str], address: str, failure: AttemptFailed, deadline_s: float,
) -> float | None:
    """After `failure` ended a job on `stream` to `address`: the seconds left (of the monotonic
    `deadline_s`) to send it as a unary Submit to that node, or None not to. Never after the
    client gave up on it itself (GaveUp: its timeout, or the node stopped answering probes),
    or with no time left; else yes if the node has no SubmitBatches (remembered in
    `unsupported`), or if the stream failed before the node ever answered on it (the unary
    call finds out whether the node is there); no if it had answered, or only this job failed."""
    if isinstance(failure, GaveUp):
        return None
    if stream.unsupported:
        unsupported.add(address)
    elif stream.answered or stream.ended is None:
        return None
    remaining = deadline_s - time.monotonic()
    return remaining if remaining > 0 else None


def retrieved(future: asyncio.Future[Any]) -> None:
    """An outcome nobody waits for any more (its caller gave up) is not an error to log."""
    if not future.cancelled():
        future.exception()


class SubmitStream:
    """One open SubmitBatches stream to one node, and the jobs waiting on it.

    Jobs are written by one task per burst: whatever was sent while it wrote
    goes as the next message, so 32 jobs in flight cost a few messages, not
    32 (a message costs the same ~0.1 ms of CPU whatever it holds), while a
    lone job goes at once. A caller that gives up does not stop a write that
    carries other callers' jobs.
    """

    def __init__(self, stub: NodeStub, on_local: Callable[[pb.LocalEndpoint], None] | None = None) -> None:
        self._call = stub.SubmitBatches()
        #: Told where the node's local socket is, if the node names one.
        self._on_local = on_local
        self._waiting = Waiting()
        #: Jobs sent and not yet written, and the future their write will resolve.
        self._unsent: list[pb.SubmitRequest] = []
        #: The seqs of written requests whose callers stopped waiting, for the next message.
        self._cancels: list[int] = []
        #: Half-closed, or closing: nothing more is written (cancels neither).
        self._closing = False
        self._written: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        #: Why the stream ended (what the jobs still waiting on it raise); None while it is open.
        self.ended: Exception | None = None
        #: The node does not have SubmitBatches (an older version): use unary Submit there.
        self.unsupported = False
        #: Replies read so far: a stream that failed before its first worked nowhere yet.
        self.replied = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def answered(self) -> bool:
        return self.replied > 0

    async def send(self, request: pb.SubmitRequest) -> asyncio.Future[pb.SubmitStreamReply]:
        """Write the job; the future is its reply. AttemptFailed if the stream is gone."""
        if self.ended is not None:
            raise self.ended
        loop = asyncio.get_running_loop()
        waiting = self._waiting.join(request)
        if self._written is None:
            self._written = loop.create_future()
            self._written.add_done_callback(retrieved)
        written = self._written
        self._unsent.append(request)
        if self._writer is None:
            self._writer = loop.create_task(self._write_all())
        try:
            await asyncio.shield(written)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.RpcError) as exc:
            self._waiting.leave(request, waiting)
            # The stream's own status says why (and whether the node has SubmitBatches at all).
            await asyncio.wait({self._reader}, timeout=CLOSE_WAIT_S)
            raise self.ended or AttemptFailed(f"SubmitBatches: the job could not be sent: {exc}") from None
        except asyncio.CancelledError:
            self.forget(request, waiting)  # nobody waits for its reply now
            raise
        return waiting

    async def _write_all(self) -> None:
        """Write what is unsent (jobs, cancels), as one message, until nothing is."""
        written: asyncio.Future[None] | None = None
        try:
            while self._unsent or self._cancels:
                batch, self._unsent = self._unsent, []
                cancels, self._cancels = self._cancels, []
                written, self._written = self._written, None
                try:
                    await self._call.write(pb.SubmitBatch(jobs=batch, cancel=cancels))
                except Exception as exc:  # the senders say what it means (send)
                    if written is not None:
                        written.set_exception(exc)
                else:
                    if written is not None:
                        written.set_result(None)
        except asyncio.CancelledError:  # the loop stops: whoever still waits must hear of it
            for future in (written, self._written):
                if future is not None and not future.done():
                    future.set_exception(AttemptFailed("SubmitBatches: the client stopped writing"))
            raise
        finally:
            self._writer = None

    def forget(self, request: pb.SubmitRequest, waiting: asyncio.Future[pb.SubmitStreamReply]) -> None:
        """The caller of `waiting` stopped waiting (answered, cancelled, out of time). A job
        written and not answered is cancelled on the node, which ends it and frees its slot
        there; a node of an earlier version ignores the cancel (a batch without jobs)."""
        unanswered = self._waiting.leave(request, waiting)
        if not unanswered or self.ended is not None or withdraw(self._unsent, request):
            return
        if request.seq and not self._closing:  # closing: the call's cancel ends what is left
            self._cancels.append(request.seq)
            if self._writer is None:
                self._writer = asyncio.get_running_loop().create_task(self._write_all())

    async def _read(self) -> None:
        ended: Exception = AttemptFailed("SubmitBatches: the node closed the stream")
        try:
            async for batch in self._call:
                if batch.HasField("local") and self._on_local is not None:
                    self._on_local(batch.local)
                for reply in batch.replies:
                    self.replied += 1
                    self._waiting.answer(reply)
        except grpc.aio.AioRpcError as exc:
            ended, self.unsupported = stream_ended(exc, self.replied)
        finally:
            self.ended = ended
            self._waiting.fail_all(ended)

    async def finish(self) -> None:
        """Once no caller waits on it, half-close, and wait until the node has ended the stream.
        (Half-closed, it could not carry the cancel of a caller that stops waiting.)"""
        idle = asyncio.ensure_future(self._waiting.idle.wait())
        try:
            await asyncio.wait({idle, self._reader}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
        self._closing = True
        if self._writer is not None:  # gRPC allows one write at a time, half-closing included
            await asyncio.wait({self._writer})
        if self.ended is None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.RpcError):
                await self._call.done_writing()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(self._reader)

    async def close(self) -> None:
        """Half-close; the node ends the stream once its jobs are answered. Waited for, briefly:
        gRPC must see the call end while this loop still runs, or its poller thread later
        calls into a closed loop."""
        self._closing = True
        if self._writer is not None:  # gRPC allows one write at a time, half-closing included
            await asyncio.wait({self._writer})
        if self.ended is None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.RpcError):
                await self._call.done_writing()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self._reader), close_wait_s(self._waiting))
        if not self._reader.done():
            self._call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._call.code()


class SocketStream(OpenedStream, Protocol):
    """What SubmitStreams needs of a stream on a node's local socket (AsyncLocalStream)."""

    async def send(self, request: pb.SubmitRequest) -> asyncio.Future[pb.SubmitStreamReply]: ...
    def forget(self, request: pb.SubmitRequest, waiting: asyncio.Future[pb.SubmitStreamReply]) -> None: ...
    async def close(self) -> None: ...


#: Connects to a node's local socket and shakes hands; raises if it cannot.
OpenLocal = Callable[[pb.LocalEndpoint], Awaitable[SocketStream]]


class SubmitStreams:
    """The AsyncClient's streams, one per node address, opened when first needed and
    opened again after one ends; on the node's local socket once one is connected."""

    def __init__(self, open_local: OpenLocal | None = None) -> None:
        self._open: dict[str, SubmitStream | SocketStream] = {}
        #: Nodes that said they have no SubmitBatches: unary Submit there.
        self.unsupported: set[str] = set()
        self._open_local = open_local
        #: Local sockets being connected to, and names this client could not use.
        self._connecting: set[asyncio.Task[None]] = set()
        self._unusable: set[str] = set()
        #: gRPC streams a local one replaced, half-closed: each ends once its jobs are answered.
        self._retired: set[SubmitStream] = set()
        self._closed = False

    def usable(self, address: str) -> bool:
        return address not in self.unsupported

    def to(self, address: str, stub: NodeStub) -> SubmitStream | SocketStream:
        stream = self._open.get(address)
        if stream is None or stream.ended is not None:
            stream = self._open[address] = SubmitStream(stub, lambda told: self._told(address, told))
        return stream

    def _told(self, address: str, endpoint: pb.LocalEndpoint) -> None:
        if self._open_local is None or endpoint.name in self._unusable or self._closed:
            return
        task = asyncio.get_running_loop().create_task(self._connect(address, endpoint))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, address: str, endpoint: pb.LocalEndpoint) -> None:
        assert self._open_local is not None
        try:
            local = await self._open_local(endpoint)
        except UNREACHABLE:
            self._unusable.add(endpoint.name)  # not this name again
            return
        except OSError:  # slow to answer (a paused node): gRPC until the node names it again
            return
        old = self._open.get(address)
        self._open[address] = local
        if isinstance(old, SubmitStream):
            self._retired.add(old)
            await old.finish()
            self._retired.discard(old)
        elif old is not None:
            await old.close()

    async def close(self) -> None:
        self._closed = True  # a stream's first message may still name a socket: not opened now
        for task in list(self._connecting):
            task.cancel()
        await asyncio.gather(*self._connecting, return_exceptions=True)
        streams, self._open = [*self._open.values(), *self._retired], {}
        self._retired = set()
        await asyncio.gather(*(stream.close() for stream in streams))
