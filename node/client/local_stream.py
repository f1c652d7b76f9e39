"""The blocking Client's jobs on a node's local socket (node/server/localsocket.py).

A node tells a SubmitBatches client where its local socket is in the
stream's first message; from then on each thread of the Client sends its jobs
to that node on the socket, in its own thread as on the stream, and gets the
same replies for about 0.4 ms less per job (docs/timeline.md). A `LocalStream`
is a `ThreadStream` that speaks frames instead of gRPC: `run`, `cancel`,
`close`, and what a failed job's caller asks (`ended`, `replied`,
`unsupported`).

Connecting proves both ends hold the key the node gave over gRPC, without
sending it (node/wire/localframes.py). A socket nobody listens on (another
network namespace, a node that restarted) or whose node cannot prove the key
leaves the Client on gRPC for that node until the node names a socket
again; a connection that ends drops the name, so the Client reconnects
only to one a node names anew.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time

import grpc
from google.protobuf.message import DecodeError

from node._proto import distnode_pb2 as pb
from node.client.streams import answers, stream_refused
from node.errors import AttemptFailed, LimitExceeded
from node.wire.localframes import (
    ABSTRACT_PREFIX,
    HANDSHAKE_MAX_BYTES,
    answer_welcome,
    frame,
    hello,
    read_blocking,
)

#: Connecting and the handshake, at most: a node on this host answers in microseconds.
CONNECT_TIMEOUT_S = 2.0


class LocalStream:
    """One thread's connection to one node's local socket; jobs one at a time."""

    def __init__(
        self, endpoint: pb.LocalEndpoint, channel: grpc.Channel, max_message_bytes: int,
        timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        """Connect and shake hands within `timeout_s`; OSError (NotProven, TimeoutError, ...)
        or DecodeError if that fails."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline_s = time.monotonic() + timeout_s  # the whole handshake's, not each recv's
        try:
            sock.settimeout(timeout_s)
            sock.connect(ABSTRACT_PREFIX + endpoint.name)
            nonce, first = hello()
            sock.sendall(first)
            welcome = read_blocking(sock, pb.LocalWelcome, HANDSHAKE_MAX_BYTES, deadline_s)
            sock.sendall(answer_welcome(endpoint.key, nonce, welcome))
            sock.settimeout(None)  # a job's deadline is the node's, and the watchdog's
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._max_bytes = max_message_bytes
        #: What the node named: forgotten by the Client once this ends.
        self.endpoint = endpoint
        self.node_id = welcome.node_id
        #: The node's gRPC channel when this opened: once the watchdog closes it, this is done too.
        self.channel = channel
        self.thread = threading.current_thread()
        self.ended: Exception | None = None
        self.unsupported = False  # a node that names a socket has SubmitBatches
        self.replied = 0
        #: Numbers this connection's requests, as ThreadStream does its stream's.
        self._numbers = itertools.count(1)
        #: The handshake was the node's answer: a job that fails here is not sent again as a
        #: unary call to find out whether the node is there (it was), but elsewhere.
        self.answered = True

    def run(self, request: pb.SubmitRequest) -> pb.SubmitStreamReply:
        """Send the job and wait for its reply; AttemptFailed if the connection ends."""
        if self.ended is not None:
            raise self.ended
        request.seq = next(self._numbers)
        try:
            self._sock.sendall(frame(pb.SubmitBatch(jobs=[request])))
            while True:
                batch = read_blocking(self._sock, pb.SubmitBatchReply, self._max_bytes)
                self.replied += len(batch.replies)
                for reply in batch.replies:
                    if answers(reply, request):
                        return reply
                    if not reply.job_id:
                        self.ended = stream_refused(reply, self.replied)
                        raise self.ended
        except (OSError, LimitExceeded, DecodeError) as exc:
            self.ended = AttemptFailed(f"local socket: {exc}", reached=True)
        except BaseException:
            # Interrupted (Ctrl-C) maybe within a frame: what is left of it would be read as
            # the next frame, so the connection ends here (the node cancels its jobs).
            self.close()
            raise
        raise self.ended

    def cancel(self) -> None:
        """End the connection from another thread: the owner's read ends at once, and the
        node cancels what it was running for it."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.ended is None:
            self.ended = AttemptFailed("local socket: closed by the client")
        self.cancel()
        self._sock.close()
