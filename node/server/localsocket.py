"""A node's local socket: SubmitBatches without gRPC, for clients in its own network namespace.

A small job is one round trip, and on this project's 2-core host a gRPC
stream's round trip costs 0.44 ms with nothing behind it, where a Unix
socket's costs 0.02-0.1 ms (`scripts/grpc_floor.py`, docs/timeline.md). MPI
ranks on one machine talk through shared memory for the same reason. So a
node also listens on an abstract Unix socket, which only processes in its
network namespace can reach, and names it, with a random key, as the first
message of every SubmitBatches stream (`SubmitBatchReply.local`); a client
that can connect sends its next jobs there, and one that cannot keeps gRPC.

What the socket carries is what the stream carries (node/wire/localframes.py),
answered by the same code: each job runs as the servicer's SubmitBatches job
does (`JobStream`, the servicer's `stream_job`), so limits, deadlines,
relaying and errors are the same. A leader's compute link (a connection
whose hello says LOCAL_COMPUTE, computelink.py) is handed, once its
handshake is done, to threads of its own (linkserve.py). What gRPC gave
and this must keep:

- Authentication: the key is handed out only over gRPC, where the cluster
  token (and TLS) apply, and never crosses the socket: each end proves it
  holds it (localframes.py). A connection that does not is closed without an
  answer.
- Limits: a frame over `--max-message-bytes` is refused before it is read,
  with RESOURCE_EXHAUSTED, and the connection closes; the per-client limit
  counts a process's local jobs (`local:pid=N`) together, as it counts a gRPC
  connection's (a process it cannot name, in another pid namespace, is
  counted by connection).
- Cancellation: a client that goes away (the socket ends without the empty
  batch that says "no more jobs") has its jobs' tasks cancelled, as gRPC
  cancels a stream's.
- Shutdown: the node stops taking connections when it stops taking RPCs,
  serves those it has through gRPC's grace period, then ends them.
- Privacy: the bytes never leave the kernel, as with TLS on loopback.

`--no-local-socket` turns it off; a node without it names none, and
clients then use gRPC alone.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import os
import secrets
import socket
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Protocol

from google.protobuf.message import DecodeError

from node._proto import distnode_pb2 as pb
from node.errors import InvalidField, LimitExceeded
from node.server.api import Caller
from node.server.computelink import Computed
from node.server.jobstream import Failed, JobStream
from node.server.linkserve import CLOSE_WAIT_S, CallHalt, LinkCompute, LinkServer, SendBlocking
from node.server.stealing import CallSkips
from node.wire.localframes import (
    ABSTRACT_PREFIX,
    HANDSHAKE_MAX_BYTES,
    frame,
    peer_credentials,
    proven,
    read_async,
    same_user,
    welcome,
)

log = logging.getLogger(__name__)

#: A connection that has not proven itself by then is closed (a client's takes well under
#: a millisecond; a leader dialling a worker's gives up after computelink.CONNECT_TIMEOUT_S).
HANDSHAKE_TIMEOUT_S = 2.0
#: Connections proving themselves at once; a new one past this is closed unread, so a
#: process without the key holds no more of the node's descriptors than this (a client
#: closed so falls back to gRPC, as one that cannot reach the socket does).
MAX_HANDSHAKES = 64
#: Refused connections are logged at most once per this long (anyone on the host can make them).
REFUSED_LOG_S = 10.0

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
    async def link_pool(self) -> Executor: ...
    def link_compute(
        self, request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips,
        queued_ns: int,
    ) -> Computed: ...


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

    def __init__(
        self, node_id: str, run: StreamJob, failed: Failed, max_message_bytes: int,
        compute: LinkCompute | None = None, link_pool: Callable[[], Awaitable[Executor]] | None = None,
    ) -> None:
        self.node_id = node_id
        name = f"distnode-{secrets.token_hex(16)}"
        self.endpoint = pb.LocalEndpoint(name=name, key=secrets.token_bytes(32))
        self._run = run
        self._failed = failed
        #: Runs a leader's Compute calls on a compute link (computelink.py); None: no links.
        self._compute = compute
        #: The compute pool the links' calls run in, once it is ready.
        self._link_pool = link_pool
        #: Compute links handed to their threads (linkserve.py), until they end.
        self.links: set[LinkServer] = set()
        self._max_bytes = max_message_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False
        self._refused: collections.Counter[str] = collections.Counter()  # by why, since last said
        self._refused_logged_s = -REFUSED_LOG_S
        #: Connections in their handshake now (MAX_HANDSHAKES).
        self.handshaking = 0
        self._numbers = itertools.count(1)

    async def start(self) -> None:
        path = ABSTRACT_PREFIX + self.endpoint.name
        self._server = await asyncio.start_unix_server(self._connected, path=path)

    def stop_accepting(self) -> None:
        """No new connections; those open are served on (what gRPC's grace period does)."""
        self._closing = True
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """End every connection (their jobs' callers retry elsewhere)."""
        self.stop_accepting()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        links = list(self.links)
        for link in links:
            link.close()
        await asyncio.to_thread(_join, links)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing or self.handshaking >= MAX_HANDSHAKES:
            if not self._closing:
                peer = _peer_of(writer, next(self._numbers))
                self._refuse(peer, f"past {MAX_HANDSHAKES} in their handshake")
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer, _peer_of(writer, next(self._numbers)))
        except (OSError, asyncio.IncompleteReadError, DecodeError, LimitExceeded) as exc:
            log.debug("local connection ended: %s", exc)
        except asyncio.CancelledError:
            # asyncio's stream server logs a handler that ends cancelled as an error.
            if not self._closing:
                raise
        finally:
            self._connections.discard(task)
            writer.close()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> pb.LocalHello | None:
        """Prove the node, and have the client prove itself (localframes.py): its hello
        (which says what the connection carries) if it did, else None."""
        self.handshaking += 1
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                hello = await read_async(reader, pb.LocalHello, HANDSHAKE_MAX_BYTES)
                answer = welcome(self.endpoint.key, self.node_id, hello)
                if answer is not None:
                    assert hello is not None
                    node_nonce, welcome_frame = answer
                    writer.write(welcome_frame)
                    claimed = await read_async(reader, pb.LocalProof, HANDSHAKE_MAX_BYTES)
                    if proven(self.endpoint.key, hello.nonce, node_nonce, claimed):
                        return hello
        finally:
            self.handshaking -= 1
        self._refuse(peer, "without the key")
        return None

    def _refuse(self, peer: str, why: str) -> None:
        """Count a refused connection; said at most once per REFUSED_LOG_S (anyone on the host
        can make them)."""
        self._refused[why] += 1
        now = time.monotonic()
        if now - self._refused_logged_s >= REFUSED_LOG_S:
            counts = ", ".join(f"{count} {reason}" for reason, count in self._refused.items())
            log.warning("local socket: connections refused: %s (the last from %s)", counts, peer)
            self._refused.clear()
            self._refused_logged_s = now

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        hello = await self._handshake(reader, writer, peer)
        if hello is None:
            return
        if hello.purpose == pb.LOCAL_COMPUTE:
            # Compute calls answer with the partials of any data this node reads: only to a
            # process of this node's own user, who may read that data anyway.
            if self._compute is not None and same_user(writer.get_extra_info("socket")):
                await self._hand_over(reader, writer)
            return
        if hello.purpose != pb.LOCAL_SUBMIT:  # from a newer version: nothing here to serve it
            return
        refused: list[pb.SubmitStreamReply] = []
        watching: list[asyncio.Task[None]] = []
        stream = JobStream(functools.partial(self._run, LocalCaller(peer)), self._failed)
        batches = self._batches(reader, refused, stream, watching)
        try:
            async with contextlib.aclosing(stream.replies(batches)) as replies:
                async for batch in replies:
                    writer.write(frame(batch))
                    await writer.drain()
        finally:
            for task in watching:
                task.cancel()
        if refused:  # the client's last frame was not one we could read: say why, then close
            writer.write(frame(pb.SubmitBatchReply(replies=refused)))
            await writer.drain()

    async def _hand_over(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve a compute link in its own threads (linkserve.py): its socket, and what the
        loop read past the handshake; the connection's transport then closes, the link
        holding a descriptor of its own."""
        assert self._compute is not None and self._link_pool is not None
        pool = await self._link_pool()
        if self._closing:
            return
        typing.cast(asyncio.Transport, writer.transport).pause_reading()
        pending = bytes(getattr(reader, "_buffer", b""))  # asyncio's StreamReader keeps it there
        sock = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
        link = LinkServer(sock, pending, self._compute, pool, self._max_bytes, self.links.discard)
        self.links.add(link)  # before it starts: a link that ends at once discards itself
        try:
            link.start()
        except RuntimeError:  # no thread to be had: the leader's next call goes on gRPC
            self.links.discard(link)
            sock.close()
            raise

    async def _batches(
        self, reader: asyncio.StreamReader, refused: list[pb.SubmitStreamReply], stream: JobStream,
        watching: list[asyncio.Task[None]],
    ) -> AsyncIterator[pb.SubmitBatch]:
        """The client's batches until an empty one (no jobs and no cancels: no more jobs, those
        running are answered) or the end of the socket (the client is gone: they are
        cancelled). A frame over the limit, or not a batch, ends them with a reply for no job
        (an empty job id) that says what was wrong."""
        while True:
            try:
                batch = await read_async(reader, pb.SubmitBatch, self._max_bytes)
            except LimitExceeded as exc:
                refused.append(self._failed("", exc))
                return
            except DecodeError:
                not_a_batch = InvalidField("local socket", "a frame that is not a SubmitBatch")
                refused.append(self._failed("", not_a_batch))
                return
            if batch is None:
                stream.cancel_all()
                return
            if not batch.jobs and not batch.cancel:
                watching.append(asyncio.create_task(_until_gone(reader, stream)))
                return
            yield batch


async def _until_gone(reader: asyncio.StreamReader, stream: JobStream) -> None:
    """After a client's "no more jobs", its jobs still running are answered; if it closes
    the socket first, nobody waits for them: they end, as when it leaves without saying so.
    A client keeps its end open until its answers are in (both clients do): a shutdown of
    its writing side alone reads here as its close. Anything it sends after "no more jobs"
    breaks the protocol, and ends them as well."""
    with contextlib.suppress(OSError):
        await reader.read(1)
    stream.cancel_all()


def _join(links: list[LinkServer]) -> None:
    """Wait for the links' threads, CLOSE_WAIT_S in all."""
    deadline_s = time.monotonic() + CLOSE_WAIT_S
    for link in links:
        link.join(max(0.0, deadline_s - time.monotonic()))


def _peer_of(writer: asyncio.StreamWriter, number: int) -> str:
    """`local:pid=N`: the per-client limit counts a process's local jobs together.

    A process in another pid namespace reads as pid 0 (the kernel cannot name
    it here), and so would every other one there: such a connection, or one
    whose credentials cannot be read, is a client of its own (`local:conn=N`,
    N this socket's count of connections), as each gRPC connection is."""
    credentials = peer_credentials(writer.get_extra_info("socket"))
    pid = credentials[0] if credentials is not None else 0
    return f"local:pid={pid}" if pid > 0 else f"local:conn={number}"


async def listen(servicer: Servicer, max_message_bytes: int) -> LocalSocket | None:
    """The node's local socket, listening, and told to `servicer` for its SubmitBatches
    clients; None where the platform has no abstract sockets (clients keep gRPC)."""
    local = LocalSocket(servicer.node.node_id, servicer.stream_job, servicer.stream_failed, max_message_bytes,
                        servicer.link_compute, servicer.link_pool)
    try:
        await local.start()
    except (OSError, NotImplementedError) as exc:
        log.warning("no local socket (%s); clients on this host use gRPC", exc)
        return None
    servicer.local = local.endpoint
    return local
