"""A worker's `Reduce` stream to its aggregator: one, kept open across `Compute` calls.

Each `Compute` call used to open its own `Reduce` stream, write its partials,
half-close it and wait for the aggregator's acknowledgement. On a 2-core host
that set-up and close were most of a worker's event-loop time per big job
(docs/timeline.md). Now a worker keeps one stream to the aggregator it serves
(a `Compute` for another aggregator, a new leader's, closes the old stream
once what is queued on it is written) and every `Compute` call hands its
partials to it. One writer task writes them in the order they were handed
over: gRPC allows one write in flight on a call, and a `Compute` call that
its leader cancels must not cut a write short, which would leave the shared
stream in an unknown state.

A write that fails, or takes longer than the deadline of the `Compute` call
that handed it over, fails every partial queued behind it (ReduceFailed: those
calls answer UNAVAILABLE and the leader gives their shards to others) and
drops the stream; the next partial opens a new one. "Written" means handed to
gRPC, not received: after a `Compute` call returns, the leader waits for its
partials to arrive and gives back any that never do (jobs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import grpc

from node._proto import distnode_pb2 as pb
from node.errors import ReduceFailed

ReduceCall = grpc.aio.StreamUnaryCall[pb.Partial, pb.ReduceReply]
#: A closed stream's aggregator has this long to count what it received.
CLOSE_WAIT_S = 5.0

#: A partial to write, its deadline (time.monotonic(); None: none) and who waits for it.
_Item = tuple[pb.Partial, float | None, "asyncio.Future[None]"]


def reduce_failed(reduce_to: str, exc: BaseException) -> ReduceFailed:
    """A failed write, said as the aggregator being unreachable (which, to the leader, it is)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return ReduceFailed(f"reduce_to: {exc.details()}")
    if isinstance(exc, TimeoutError):
        return ReduceFailed(f"reduce_to {reduce_to}: a write outlasted its Compute call's deadline")
    # A stream the aggregator dropped fails writes with InvalidStateError or gRPC's
    # ExecuteBatchError rather than an AioRpcError.
    return ReduceFailed(f"reduce_to {reduce_to}: {type(exc).__name__}: {exc}")


def _settle(waiter: asyncio.Future[None], exc: BaseException | None) -> None:
    if waiter.done():
        return
    if exc is None:
        waiter.set_result(None)
    else:
        waiter.set_exception(exc)
        waiter.exception()  # its Compute call may be gone: not an error nobody saw


class ReduceStream:
    """One open `Reduce` call and the task that writes to it."""

    def __init__(self, address: str, call: ReduceCall) -> None:
        self.address = address
        self.call = call
        #: Why the stream is no longer usable (set once); None while it is.
        self.broken: ReduceFailed | None = None
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_all())

    async def send(self, partial: pb.Partial, deadline: float | None) -> None:
        """Queue `partial`; return once it is written. ReduceFailed if the stream breaks first."""
        if self.broken is not None:
            raise self.broken
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((partial, deadline, waiter))
        await asyncio.shield(waiter)  # a cancelled caller leaves the write to finish

    def close(self) -> None:
        """Write what is queued, then half-close (the aggregator counts and answers)."""
        if self.broken is None:
            self.broken = ReduceFailed(f"reduce_to {self.address}: stream closed")
            self._queue.put_nowait(None)

    @property
    def writer(self) -> asyncio.Task[None]:
        """The task that writes the queued partials; done once the stream is closed or broken."""
        return self._writer

    def cancel(self) -> None:
        self.call.cancel()
        self._writer.cancel()

    async def _write_all(self) -> None:
        failure: ReduceFailed | None = None
        waiter: asyncio.Future[None] | None = None
        try:
            while (item := await self._queue.get()) is not None:
                partial, deadline, waiter = item
                timeout_s = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    await asyncio.wait_for(self.call.write(partial), timeout_s)
                except Exception as exc:
                    failure = reduce_failed(self.address, exc)
                    return
                _settle(waiter, None)
            with contextlib.suppress(Exception):
                await self.call.done_writing()
                await asyncio.wait_for(self.call, CLOSE_WAIT_S)
        finally:  # also when cancelled: nobody may be left waiting
            failure = failure or ReduceFailed(f"reduce_to {self.address}: stream closed")
            self.broken = self.broken or failure
            if not self.call.done():
                self.call.cancel()
            if waiter is not None:
                _settle(waiter, failure)
            while not self._queue.empty():
                queued = self._queue.get_nowait()
                if queued is not None:
                    _settle(queued[2], failure)


class ReduceStreams:
    """The worker's stream to the aggregator it serves now, opened when first needed."""

    def __init__(self, open_call: Callable[[str], ReduceCall]) -> None:
        self._open_call = open_call
        self._stream: ReduceStream | None = None
        #: Streams replaced while their writer finishes (asyncio holds tasks only weakly).
        self._closing: set[ReduceStream] = set()

    async def send(self, reduce_to: str, partial: pb.Partial, deadline: float | None) -> None:
        stream = self._stream
        if stream is None or stream.address != reduce_to or stream.broken is not None:
            if stream is not None:
                self._retire(stream)
            stream = self._stream = ReduceStream(reduce_to, self._open_call(reduce_to))
        await stream.send(partial, deadline)

    def _retire(self, stream: ReduceStream) -> None:
        """What is queued on it still goes (another aggregator's partials, or nothing)."""
        stream.close()
        self._closing.add(stream)
        stream.writer.add_done_callback(lambda _: self._closing.discard(stream))

    async def close(self) -> None:
        """Close every stream, waiting up to CLOSE_WAIT_S for what is queued on them."""
        if self._stream is not None:
            self._retire(self._stream)
            self._stream = None
        writers = [stream.writer for stream in self._closing]
        if writers:
            await asyncio.wait(writers, timeout=CLOSE_WAIT_S)
        for stream in list(self._closing):
            stream.cancel()  # still writing after the wait: the aggregator does not read
