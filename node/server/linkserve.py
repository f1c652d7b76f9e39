"""A worker's end of a compute link, served in threads beside the event loop.

computelink.py says what a link is and keeps the leader's end. On the worker
the link's frames used to be read, run and answered by the event loop: a
task per call, a pool hand-off and a wake-up per shard, a write and a drain
per partial. On the 2-core host of the benchmarks that was about 2 ms of a
worker's loop per big sum, and every millisecond of CPU taken beside the
compute threads costs a big sum about half a millisecond of wall time
(docs/timeline.md, "What a millisecond of the loops costs a big sum").

So once the local socket has checked a link's handshake (localsocket.py), it
hands the link's socket here, with what the event loop had read past the
handshake, and the link never touches the loop again:

- a reader thread reads the leader's frames: a `ComputeCall` goes to the
  node's compute pool as one entry, which computes the call's shards one
  after the other and writes each partial, then the call's end, to the
  socket itself; a `SkipShards` is answered by the reader (stealing.py); a
  cancellation halts the call (halt.py), which then says nothing more;
- a call past its deadline stops between shards (or between a shard's
  pieces) and is answered DEADLINE_EXCEEDED, as gRPC ends a handler;
- a link that ends (the leader closed it, or it broke) halts every call on
  it, and its socket is closed once none of them can write to it any more,
  never under a thread that still may;
- a write that takes longer than STALLED_S (a leader that reads nothing,
  the socket's buffer full) closes the link: a write cannot wait for ever
  in the compute pool, which has one thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Protocol

from google.protobuf.message import DecodeError

from node._proto import distnode_pb2 as pb
from node.core import halt
from node.errors import LimitExceeded
from node.server.computelink import ENVELOPE_BYTES, Computed, LinkCallFailed
from node.server.stealing import CallSkips, SkipsByCall
from node.wire.localframes import FrameReader, frame

if TYPE_CHECKING:
    from node.core.job import Job
    from node.server.peers import PeerTable

log = logging.getLogger(__name__)

#: How long one write may take (a leader that reads nothing, its socket's buffer full)
#: before the link is closed; and how often an idle reader wakes (nothing to do).
STALLED_S = 30.0
#: How long a node's close waits for its links' threads, all of them (a shard under way ends
#: first).
CLOSE_WAIT_S = 5.0

#: Writes one partial of a call to the link (in the compute pool's thread).
SendBlocking = Callable[[pb.Partial], None]


class CallHalt(halt.Halt):
    """A call's halt: set when the leader cancels it or the link ends, and past its deadline."""

    __slots__ = ("_deadline", "cancelled")

    def __init__(self, timeout_s: float | None) -> None:
        super().__init__()
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        #: The leader cancelled the call, or the link ended: nobody waits for a word of it.
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.set()

    def is_set(self) -> bool:
        return super().is_set() or self.past_deadline()

    @property
    def deadline(self) -> float | None:
        """When the call's time is up (time.monotonic), if it has a deadline."""
        return self._deadline

    def past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline


#: Runs a Compute request in the compute pool's thread: (request, halt, send, skips, queued_ns:
#: when the call was handed to the pool, for the trace) -> what the call did. It raises
#: LinkCallFailed with what a gRPC Compute would have answered, and ShardHalted (halt.py) once
#: `halt` is set.
LinkCompute = Callable[[pb.ComputeRequest, CallHalt, SendBlocking, CallSkips, int], Computed]


class PoolWorker(Protocol):
    """The worker's part a link's call runs (worker.py, which loads numpy: not imported here)."""

    executor: Executor

    def compute_in_pool(
        self, job_id: str, job: Job, ranges: list[tuple[int, int, int]], halted: halt.Halt,
        send: SendBlocking, skips: CallSkips, queued_ns: int, run: int = 0,
    ) -> Computed: ...


class LinkHost:
    """What a node gives its compute links: its compute pool, once the compute stack is
    loaded and the worker built (on the event loop), and each call's run in that pool,
    after the check that its leader is a member."""

    def __init__(
        self, node_id: str, peers: PeerTable, worker: Callable[[], PoolWorker],
        ready: Callable[[], Awaitable[None]],
    ) -> None:
        self._node_id, self._peers, self._worker, self._ready = node_id, peers, worker, ready

    async def pool(self) -> Executor:
        await self._ready()
        return self._worker().executor  # built here: the links' threads only use it

    def compute(
        self, job_id: str, job: Job, shards: list[tuple[int, int, int]], leader_id: str, halted: CallHalt,
        send: SendBlocking, skips: CallSkips, queued_ns: int, run: int = 0,
    ) -> Computed:
        self._peers.check_member("leader_id", leader_id, self._node_id)
        return self._worker().compute_in_pool(job_id, job, shards, halted, send, skips, queued_ns, run)


class LinkServer:
    """One compute link's worker end: `start`, then `close` (or the leader ends it)."""

    def __init__(
        self, sock: socket.socket, pending: bytes, compute: LinkCompute, executor: Executor, max_bytes: int,
        ended: Callable[[LinkServer], None] = lambda link: None,
    ) -> None:
        sock.settimeout(STALLED_S)
        self._sock = sock
        self._frames = FrameReader(sock, pending)
        self._compute = compute
        self._executor = executor
        self._max_bytes = max_bytes
        self._ended = ended
        self._write_lock = threading.Lock()
        self._close_lock, self._closed = threading.Lock(), False
        #: Guards `_calls` and `_jobs`, which the reader and the pool's thread both change.
        self._lock = threading.Lock()
        self._calls: dict[int, tuple[CallHalt, concurrent.futures.Future[None]]] = {}
        self._jobs: SkipsByCall[str] = SkipsByCall()
        self._thread = threading.Thread(target=self._serve, name="compute-link", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """End the link: the reader wakes to its end, and halts the calls. (Any thread: the
        reader closes the socket, never while a shutdown may still use its descriptor.)"""
        with self._close_lock, contextlib.suppress(OSError):
            if not self._closed:
                self._sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout_s: float = CLOSE_WAIT_S) -> bool:
        """Wait for the link's reader (which waits for its calls); True if it ended."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _serve(self) -> None:
        try:
            self._read()
        except (OSError, DecodeError, LimitExceeded) as exc:
            log.debug("compute link ended: %s", exc)
        except Exception:
            log.exception("compute link: unexpected error")
        finally:
            with self._lock:
                running = list(self._calls.values())
            for halted, _ in running:
                halted.cancel()
            self.close()  # a call blocked writing to a leader that reads nothing fails at once
            # Close only once no call can write any more: a descriptor closed under a thread
            # that still writes may be another file's by then.
            concurrent.futures.wait([call for _, call in running])
            with self._close_lock:
                self._closed = True
                self._sock.close()
            self._ended(self)

    def _read(self) -> None:
        while True:
            call = self._frames.read(pb.ComputeCall, self._max_bytes + ENVELOPE_BYTES)
            if call is None:
                return
            if call.HasField("skip"):
                with self._lock:
                    let_go = self._jobs.skip(call.skip.job_id, call.skip.shards)
                self._write(pb.ComputeEvent(call=call.call, skipped=pb.SkipReply(skipped=let_go)))
            elif call.cancel:
                with self._lock:
                    running = self._calls.get(call.call)
                if running is not None:
                    running[0].cancel()
            else:
                self._start(call)

    def _start(self, call: pb.ComputeCall) -> None:
        job_id = call.request.job.job_id
        shards = [shard.index for shard in call.request.shards]
        with self._lock:
            if call.call in self._calls:
                return
            skips = CallSkips(self._jobs.register(job_id, shards), shards)
            halted = CallHalt(call.timeout_s or None)
            try:
                running = self._executor.submit(self._run, call, halted, skips, time.time_ns())
            except RuntimeError:  # the node is stopping: its pool takes nothing more
                self._jobs.unregister(job_id)
                raise ConnectionAbortedError("compute link: the node is stopping") from None
            self._calls[call.call] = (halted, running)

    def _run(self, call: pb.ComputeCall, halted: CallHalt, skips: CallSkips, queued_ns: int) -> None:
        """One call, in the compute pool's thread."""
        number = call.call

        def send(partial: pb.Partial) -> None:
            try:
                self._write(pb.ComputeEvent(call=number, partial=partial))
            except OSError:  # the link is gone, and nobody waits for the call any more
                halted.cancel()
                raise halt.ShardHalted("the compute link closed") from None

        event: pb.ComputeEvent | None
        try:
            if halted.is_set():
                raise halt.ShardHalted("halted before it began")
            done = self._compute(call.request, halted, send, skips, queued_ns)
            event = pb.ComputeEvent(call=number, done=pb.ComputeReply(shards_sent=done.sent,
                                                                      skipped=done.skipped))
        except halt.ShardHalted:
            event = None if halted.cancelled else pb.ComputeEvent(
                call=number, error=f"DEADLINE_EXCEEDED: the call ran past {call.timeout_s:g} s")
        except LinkCallFailed as exc:
            event = pb.ComputeEvent(call=number, error=str(exc))
        except Exception as exc:
            log.error("compute link: unexpected error", exc_info=exc)
            event = pb.ComputeEvent(call=number, error=f"INTERNAL: {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._calls.pop(number, None)
                self._jobs.unregister(call.request.job.job_id)
        if event is not None and not halted.cancelled:
            with contextlib.suppress(OSError):  # the leader is gone: nobody to tell
                self._write(event)

    def _write(self, event: pb.ComputeEvent) -> None:
        """One frame, whole, or the link ends: a write that timed out (STALLED_S) or failed
        midway leaves the stream where no frame can follow."""
        with self._write_lock:
            try:
                self._sock.sendall(frame(event))
            except OSError:
                self.close()
                raise
