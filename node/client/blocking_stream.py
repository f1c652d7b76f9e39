"""The blocking Client's SubmitBatches streams: one open stream per calling thread and node.

A small job is little more than its round trip, and one message each way on
an open stream costs 0.6-0.7 of a unary call here (`scripts/grpc_floor.py`,
docs/timeline.md). The blocking Client keeps its calls in the caller's thread
(a hand-off to another thread costs as much as it saves), so each thread
gets its own stream to each node: the thread writes its job and reads the
stream until its reply comes, and no reply ever needs routing to another
thread. gRPC's blocking API takes a stream's requests from an iterator, read
by a thread of its own; here that iterator drains a queue the caller puts
the job on.

A node that has a local socket names it first on a stream; the
thread's next job to that node goes there instead (`LocalStream`,
client/local_stream.py), and stays on gRPC if it cannot connect.

A stream belongs to its thread: a stream whose thread has ended is closed
when the next stream is opened, so a client used from many short-lived
threads does not collect them. What a stream's end means for its jobs
(`stream_ended`), and when a failed job goes unary instead (`unary_instead`),
are `client/streams.py`'s, shared with the AsyncClient's streams.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator

import grpc

from node._proto import distnode_pb2 as pb
from node.client.local_stream import CONNECT_TIMEOUT_S, LocalStream
from node.client.streams import answers, stream_ended
from node.errors import AttemptFailed
from node.wire.localframes import UNREACHABLE
from node.wire.stubs import BlockingNodeStub


class ThreadStream:
    """One open SubmitBatches stream, written and read by the thread that opened it: a
    thread has one job at a time, so each of its messages holds one job."""

    def __init__(
        self, stub: BlockingNodeStub, channel: grpc.Channel,
        on_local: Callable[[pb.LocalEndpoint], None] | None = None,
    ) -> None:
        #: Told where the node's local socket is, if the node names one.
        self._on_local = on_local
        self._requests: queue.SimpleQueue[pb.SubmitBatch | None] = queue.SimpleQueue()
        self._replies: Iterator[pb.SubmitBatchReply] = stub.SubmitBatches(self._feed())
        #: What it was opened on: once the watchdog closes that channel, the stream is done.
        self.channel = channel
        self.thread = threading.current_thread()
        #: Why the stream ended (what its next job raises); None while it is open.
        self.ended: Exception | None = None
        #: The node does not have SubmitBatches (an older version): use unary Submit there.
        self.unsupported = False
        #: Replies read so far: a stream that failed before its first worked nowhere yet.
        self.replied = 0
        #: Numbers this stream's requests (`SubmitRequest.seq`), so a late reply is not taken
        #: for the next request of its job id (streams.answers).
        self._numbers = itertools.count(1)

    @property
    def answered(self) -> bool:
        return self.replied > 0

    def _feed(self) -> Iterator[pb.SubmitBatch]:
        while (batch := self._requests.get()) is not None:
            yield batch

    def run(self, request: pb.SubmitRequest) -> pb.SubmitStreamReply:
        """Send the job and wait for its reply (the job's deadline is in the request: the
        node answers DEADLINE_EXCEEDED for it). AttemptFailed/AccessDenied if the stream ends."""
        if self.ended is not None:
            raise self.ended
        request.seq = next(self._numbers)
        self._requests.put(pb.SubmitBatch(jobs=[request]))
        try:
            for batch in self._replies:
                if batch.HasField("local") and self._on_local is not None:
                    self._on_local(batch.local)
                self.replied += len(batch.replies)
                for reply in batch.replies:
                    if answers(reply, request):
                        return reply
                    # Not ours: only a job this thread stopped waiting for can answer late.
            self.ended = AttemptFailed("SubmitBatches: the node closed the stream")
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)  # a failed call is both
            self.ended, self.unsupported = stream_ended(exc, self.replied)
        except ValueError as exc:  # the watchdog closed the channel under the call
            self.ended = AttemptFailed(f"SubmitBatches: channel closed: {exc}")
        except BaseException:
            # Interrupted (Ctrl-C): nobody waits for the job now, and the node ends it (one of
            # the previous version ignores a batch without jobs: the job runs to its deadline).
            if self.ended is None:
                self._requests.put(pb.SubmitBatch(cancel=[request.seq]))
            raise
        raise self.ended

    def cancel(self) -> None:
        """End the stream from another thread (the watchdog, at a job's deadline): the
        owner's read ends with CANCELLED."""
        cancel = getattr(self._replies, "cancel", None)
        if cancel is not None:
            cancel()

    def close(self) -> None:
        """Half-close and cancel: a job still running on it is the node's to finish."""
        if self.ended is None:
            self.ended = AttemptFailed("SubmitBatches: closed by the client")
        self._requests.put(None)
        self.cancel()


class ThreadStreams:
    """The blocking Client's streams, by (thread, node address); thread-safe."""

    def __init__(self, max_message_bytes: int, local_socket: bool = True) -> None:
        self._open: dict[tuple[int, str], ThreadStream | LocalStream] = {}
        #: Nodes that said they have no SubmitBatches: unary Submit there.
        self.unsupported: set[str] = set()
        #: The local socket each node last named, and the names this client could not use.
        self._local: dict[str, pb.LocalEndpoint] = {}
        self._unusable: set[str] = set()
        self._max_bytes = max_message_bytes
        #: Use a node's local socket when it names one (the Client's `local_socket`).
        self._use_local = local_socket
        self._lock = threading.Lock()

    def usable(self, address: str) -> bool:
        return address not in self.unsupported

    def to(
        self, address: str, stub: BlockingNodeStub, channel: grpc.Channel,
        connect_s: float = CONNECT_TIMEOUT_S,
    ) -> ThreadStream | LocalStream:
        """This thread's stream to `address`: on the node's local socket once it has named one
        this client can reach (connecting within `connect_s`), else on gRPC; opened (again) if
        it has none that is open."""
        key = (threading.get_ident(), address)
        stream = self._open.get(key)
        if isinstance(stream, LocalStream) and stream.ended is not None:
            self._forget(address, stream)  # reconnect only to a socket the node names again
        endpoint = self._local.get(address)
        if (stream is not None and stream.ended is None and stream.channel is channel
                and stream.thread is threading.current_thread()):
            if endpoint is None or isinstance(stream, LocalStream):
                return stream
        else:
            stream = None
        fresh: ThreadStream | LocalStream | None = None
        if endpoint is not None:
            fresh = self._connect(endpoint, channel, connect_s)
        if fresh is None:
            if stream is not None:
                return stream
            fresh = ThreadStream(stub, channel, lambda told: self._told(address, told))
        with self._lock:
            stale = [k for k, s in self._open.items() if not s.thread.is_alive() or k == key]
            gone = [self._open.pop(k) for k in stale]
            self._open[key] = fresh
        for old in gone:
            old.close()
        return fresh

    def _told(self, address: str, endpoint: pb.LocalEndpoint) -> None:
        with self._lock:
            if self._use_local and endpoint.name not in self._unusable:
                self._local[address] = endpoint

    def _forget(self, address: str, ended: LocalStream) -> None:
        with self._lock:
            if self._local.get(address) is ended.endpoint:
                del self._local[address]

    def _connect(
        self, endpoint: pb.LocalEndpoint, channel: grpc.Channel, connect_s: float
    ) -> LocalStream | None:
        try:
            return LocalStream(endpoint, channel, self._max_bytes, connect_s)
        except UNREACHABLE:
            with self._lock:  # not this name again
                self._unusable.add(endpoint.name)
                self._local = {a: e for a, e in self._local.items() if e.name != endpoint.name}
            return None
        except OSError:  # slow to answer (a paused node): gRPC this time, the socket next time
            return None

    def close(self) -> None:
        with self._lock:
            streams, self._open = list(self._open.values()), {}
        for stream in streams:
            stream.close()
