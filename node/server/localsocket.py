"""A node's local socket: SubmitBatches without gRPC, for clients in its own network namespace.

A small job is one round trip, and on this project's 2-core host a gRPC
stream's round trip costs 0.44 ms with nothing behind it, where a Unix
socket's costs 0.02 ms (`scripts/grpc_floor.py`, docs/timeline.md). MPI
ranks on one machine talk through shared memory for the same reason. So a
node also listens on an abstract Unix socket, which only processes in its
network namespace can reach, and tells every SubmitBatches client where it
is in the stream's first message (`SubmitBatchReply.local`); a client that can
connect sends its next jobs there, and one that cannot keeps gRPC.

What the socket carries is what the stream carries (node/wire/localframes.py),
answered by the same code: each job runs as the servicer's SubmitBatches job
does (`JobStream`, the servicer's `stream_job`), so limits, deadlines,
relaying and errors are the same. What gRPC gave and this must keep:

- Authentication: the endpoint's key is handed out only over gRPC, where the
  cluster token (and TLS) apply; a connection must present it first
  (`LocalHello`), or it is closed without an answer. The node proves itself
  back with an HMAC of the client's nonce.
- Limits: a frame over `--max-message-bytes` is refused before it is read,
  with RESOURCE_EXHAUSTED; the per-client limit counts a process's local
  jobs (`local:pid=N`), as it counts a gRPC connection's.
- Privacy: the bytes never leave the kernel, as with TLS on loopback.

`--no-local-socket` turns it off; a node without it sends no endpoint, and
clients then use gRPC alone.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import grpc
from google.protobuf.message import DecodeError

from node._proto import distnode_pb2 as pb
from node.errors import LimitExceeded
from node.server.jobstream import Failed, JobStream
from node.wire.localframes import ABSTRACT_PREFIX, frame, proof, read_async

log = logging.getLogger(__name__)

#: A hello is a key and a nonce: anything longer is not one.
HELLO_MAX_BYTES = 256
#: A connection that has not said hello by then is closed.
HELLO_TIMEOUT_S = 5.0
_PEERCRED = struct.Struct("3i")


class Caller(Protocol):
    """What a job's run needs to know about whoever sent it (a gRPC context has both)."""

    def peer(self) -> str: ...
    def time_remaining(self) -> float | None: ...


StreamJob = Callable[[Caller, pb.SubmitRequest], Awaitable[pb.SubmitStreamReply]]


class _Node(Protocol):
    @property
    def node_id(self) -> str: ...


class Servicer(Protocol):
    """The part of service.NodeServicer this module uses (it imports this one)."""

    local: pb.LocalEndpoint | None

    @property
    def node(self) -> _Node: ...

    async def stream_job(self, caller: Caller, request: pb.SubmitRequest) -> pb.SubmitStreamReply: ...
    def stream_failed(self, job_id: str, exc: Exception) -> pb.SubmitStreamReply: ...


class LocalCaller:
    """A local connection's caller: the peer is its process; deadlines come per job."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None


class LocalSocket:
    """The listening socket and its connections; `endpoint` is what clients are told."""

    def __init__(self, node_id: str, run: StreamJob, failed: Failed, max_message_bytes: int) -> None:
        self.node_id = node_id
        name = f"distnode-{secrets.token_hex(16)}"
        self.endpoint = pb.LocalEndpoint(name=name, key=secrets.token_bytes(32))
        self._run = run
        self._failed = failed
        self._max_bytes = max_message_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._connected, path=ABSTRACT_PREFIX + self.endpoint.name)

    async def close(self) -> None:
        """Stop listening and end every connection (their jobs' callers retry elsewhere)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer, _peer_of(writer))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, DecodeError) as exc:
            log.debug("local connection ended: %s", exc)
        except asyncio.CancelledError:
            # asyncio's stream server logs a handler that ends cancelled as an error.
            if not self._closing:
                raise
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        hello = await asyncio.wait_for(read_async(reader, pb.LocalHello, HELLO_MAX_BYTES), HELLO_TIMEOUT_S)
        if hello is None or not secrets.compare_digest(hello.key, self.endpoint.key):
            log.warning("local socket: a connection from %s without the key; closed", peer)
            return
        welcome = pb.LocalWelcome(node_id=self.node_id, proof=proof(self.endpoint.key, hello.nonce))
        writer.write(frame(welcome))
        refused: list[pb.SubmitStreamReply] = []
        stream = JobStream(functools.partial(self._run, LocalCaller(peer)), self._failed)
        async for batch in stream.replies(self._batches(reader, refused)):
            writer.write(frame(batch))
            await writer.drain()
        if refused:  # the client's last frame was not one we could read: say why, then close
            writer.write(frame(pb.SubmitBatchReply(replies=refused)))
            await writer.drain()

    async def _batches(
        self, reader: asyncio.StreamReader, refused: list[pb.SubmitStreamReply]
    ) -> AsyncIterator[pb.SubmitBatch]:
        """The client's batches until it closes; a frame over the limit or not a batch ends
        them, with a reply for no job (an empty job id) that says what was wrong."""
        while True:
            try:
                batch = await read_async(reader, pb.SubmitBatch, self._max_bytes)
            except LimitExceeded as exc:
                refused.append(self._stream_error(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)))
                return
            except DecodeError:
                refused.append(self._stream_error(grpc.StatusCode.INVALID_ARGUMENT,
                                                  "local socket: a frame that is not a SubmitBatch"))
                return
            if batch is None:
                return
            yield batch

    def _stream_error(self, code: grpc.StatusCode, message: str) -> pb.SubmitStreamReply:
        return pb.SubmitStreamReply(job_id="", code=code.value[0], message=message, node_id=self.node_id)


def _peer_of(writer: asyncio.StreamWriter) -> str:
    """`local:pid=N`: the per-client limit counts a process's local jobs together."""
    sock = writer.get_extra_info("socket")
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        pid, _uid, _gid = _PEERCRED.unpack(credentials)
    except (OSError, AttributeError):
        return "local:unknown"
    return f"local:pid={pid}"


async def listen(servicer: Servicer, max_message_bytes: int) -> LocalSocket | None:
    """The node's local socket, listening, and told to `servicer` for its SubmitBatches
    clients; None where the platform has no abstract sockets (clients keep gRPC)."""
    local = LocalSocket(servicer.node.node_id, servicer.stream_job, servicer.stream_failed, max_message_bytes)
    try:
        await local.start()
    except (OSError, NotImplementedError) as exc:
        log.warning("no local socket (%s); clients on this host use gRPC", exc)
        return None
    servicer.local = local.endpoint
    return local
