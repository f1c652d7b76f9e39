"""Frames on a node's local socket, and its handshake.

A frame is a 4-byte little-endian length, then a protobuf message. The local
socket (node/server/localsocket.py) carries what a SubmitBatches stream
carries, without gRPC: `SubmitBatch` frames one way, `SubmitBatchReply`
frames the other. A Unix socket is reliable and ordered, so a length prefix
is all the framing it needs. A frame longer than the reader's limit is
refused before its body is read: the reader names the limit and closes.

The handshake proves to each end that the other holds the endpoint's key,
which the node hands out only over gRPC (where the cluster token and TLS
apply), and the key itself never crosses the socket:

1. the client writes `LocalHello(nonce_c, purpose)`: jobs (a client) or Compute
   calls (a leader, node/server/computelink.py);
2. the node answers `LocalWelcome(node_id, nonce_n, HMAC(key, "node", nonce_c, nonce_n))`;
3. the client checks that, and writes `LocalProof(HMAC(key, "client", nonce_n, nonce_c))`.

So a process that takes over the name of a node that died learns nothing
from a client that connects, cannot answer it, and gets no job; and a
process that never had the key gets no answer from a node. Both ends of the
handshake are written here so they cannot drift apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import socket
import struct
import time
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from node._proto import distnode_pb2 as pb
from node.errors import LimitExceeded

HEADER = struct.Struct("<I")
NONCE_BYTES = 16
#: A handshake message is a nonce, an id and a proof: anything longer is not one.
HANDSHAKE_MAX_BYTES = 512
#: Linux abstract socket names start with NUL; the name travels without it.
ABSTRACT_PREFIX = "\0"

M = TypeVar("M", bound=Message)


class NotProven(ConnectionError):
    """The other end of a local socket did not prove it holds the key."""


#: Connecting failed in a way that will not change: nobody listens on the name (another
#: network namespace, a node gone), or whoever does is not the node. Any other OSError
#: (a timeout: a paused node) may pass.
UNREACHABLE = (ConnectionRefusedError, FileNotFoundError, NotProven, DecodeError, LimitExceeded)


async def connect(name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams on a new connection to the abstract socket `name` (without its NUL).

    The socket is connected here, not by `asyncio.open_unix_connection(path)`:
    uvloop refuses an abstract path there (EINVAL), and a node's event loop is
    uvloop. Connecting a Unix socket does not wait: it is made at once or
    refused (a full backlog raises BlockingIOError, an OSError like the rest)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect(ABSTRACT_PREFIX + name)
        return await asyncio.open_unix_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


_PEERCRED = struct.Struct("3i")


def peer_credentials(sock: socket.socket | None) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of a Unix socket (SO_PEERCRED); None
    where they cannot be read. A process in another pid namespace has pid 0 here."""
    if sock is None:
        return None
    try:
        credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except (OSError, AttributeError):
        return None
    pid, uid, _gid = _PEERCRED.unpack(credentials)
    return pid, uid


def same_user(sock: socket.socket | None) -> bool:
    """Whether the other end of `sock` runs as this process's user: one that may read
    what this node reads, and its memory, anyway (computelink.py)."""
    credentials = peer_credentials(sock)
    return credentials is not None and credentials[1] == os.geteuid()


def frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return HEADER.pack(len(body)) + body


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


def node_proof(key: bytes, client_nonce: bytes, node_nonce: bytes) -> bytes:
    return _mac(key, b"node\0", client_nonce, node_nonce)


def client_proof(key: bytes, client_nonce: bytes, node_nonce: bytes) -> bytes:
    return _mac(key, b"client\0", node_nonce, client_nonce)


def hello(purpose: pb.LocalPurpose.ValueType = pb.LOCAL_SUBMIT) -> tuple[bytes, bytes]:
    """The client's nonce and its first frame, which says what the connection will carry."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce, frame(pb.LocalHello(nonce=nonce, purpose=purpose))


def answer_welcome(key: bytes, nonce: bytes, welcome: pb.LocalWelcome | None) -> bytes:
    """The client's proof frame, once the node's welcome has proven the node; NotProven if not."""
    if welcome is None or len(welcome.nonce) != NONCE_BYTES or not hmac.compare_digest(
        node_proof(key, nonce, welcome.nonce), welcome.proof
    ):
        raise NotProven("local socket: the node did not prove it holds the key")
    return frame(pb.LocalProof(proof=client_proof(key, nonce, welcome.nonce)))


def welcome(key: bytes, node_id: str, hello: pb.LocalHello | None) -> tuple[bytes, bytes] | None:
    """The node's nonce and its welcome frame; None for a hello that is not one."""
    if hello is None or len(hello.nonce) != NONCE_BYTES:
        return None
    nonce = secrets.token_bytes(NONCE_BYTES)
    proof = node_proof(key, hello.nonce, nonce)
    return nonce, frame(pb.LocalWelcome(node_id=node_id, nonce=nonce, proof=proof, takes_cancels=True))


def proven(key: bytes, client_nonce: bytes, node_nonce: bytes, claimed: pb.LocalProof | None) -> bool:
    """Whether the client's proof is right (compared in constant time)."""
    expected = client_proof(key, client_nonce, node_nonce)
    return claimed is not None and hmac.compare_digest(expected, claimed.proof)


def _length(header: bytes, max_bytes: int) -> int:
    length: int = HEADER.unpack(header)[0]
    if length > max_bytes:
        raise LimitExceeded(f"local socket: a frame of {length} bytes is over the limit of {max_bytes}")
    return length


async def read_async(reader: asyncio.StreamReader, kind: type[M], max_bytes: int) -> M | None:
    """The next message, or None at a clean end of the stream (between frames)."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    return kind.FromString(await reader.readexactly(_length(header, max_bytes)))


async def shake_hands(
    endpoint: pb.LocalEndpoint, purpose: pb.LocalPurpose.ValueType = pb.LOCAL_SUBMIT,
    node_id: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, pb.LocalWelcome]:
    """Connect to a node's socket as its client, for `purpose`: the streams, and the welcome
    of the node that proved it holds the key. NotProven if it did not, or (with `node_id`) if
    it is another node, checked before our own proof goes; the OSErrors of connecting, and
    ConnectionResetError if it closed before its welcome (busy: try again later). The
    caller bounds the time it takes."""
    reader, writer = await connect(endpoint.name)
    try:
        nonce, first = hello(purpose)
        writer.write(first)
        welcome = await read_async(reader, pb.LocalWelcome, HANDSHAKE_MAX_BYTES)
        if welcome is None:  # closed unanswered: a node at its bound of handshakes, or stopping
            raise ConnectionResetError("local socket: closed before the node's welcome")
        if node_id is not None and welcome.node_id != node_id:
            raise NotProven(f"local socket: {welcome.node_id!r} answered, not {node_id!r}")
        writer.write(answer_welcome(endpoint.key, nonce, welcome))
    except BaseException:
        writer.close()
        raise
    return reader, writer, welcome


def read_blocking(sock: socket.socket, kind: type[M], max_bytes: int, deadline_s: float | None = None) -> M:
    """The next message; ConnectionError if the node closed the socket. With `deadline_s`
    (time.monotonic()), TimeoutError once it passes, however the bytes trickle in: the
    socket's own timeout bounds each recv, and a peer sending a byte at a time resets it."""
    length = _length(_exactly(sock, HEADER.size, deadline_s), max_bytes)
    return kind.FromString(_exactly(sock, length, deadline_s))


class FrameReader:
    """Frames from a socket that a thread reads as they come: what an event loop had read
    of it already (`pending`) first. A socket with a timeout is waited on again past it,
    so a reader that must never block for ever can use one and check in between."""

    #: Read this much at a time: a frame's header and a small body in one recv.
    CHUNK_BYTES = 65536

    def __init__(self, sock: socket.socket, pending: bytes = b"") -> None:
        self._sock = sock
        self._buffer = bytearray(pending)

    def read(self, kind: type[M], max_bytes: int) -> M | None:
        """The next message, or None at a clean end of the stream (between frames);
        ConnectionError at an end within one; LimitExceeded (the body unread) past `max_bytes`."""
        if not self._fill(HEADER.size):
            if self._buffer:
                raise ConnectionError("local socket: closed within a frame")
            return None
        length = _length(bytes(self._buffer[:HEADER.size]), max_bytes)
        if not self._fill(HEADER.size + length):
            raise ConnectionError("local socket: closed within a frame")
        body = bytes(self._buffer[HEADER.size:HEADER.size + length])
        del self._buffer[:HEADER.size + length]
        return kind.FromString(body)

    def _fill(self, size: int) -> bool:
        """At least `size` bytes buffered: False if the stream ended first."""
        while len(self._buffer) < size:
            try:
                chunk = self._sock.recv(max(self.CHUNK_BYTES, size - len(self._buffer)))
            except TimeoutError:
                continue
            if not chunk:
                return False
            self._buffer += chunk
        return True


def _exactly(sock: socket.socket, size: int, deadline_s: float | None = None) -> bytes:
    if size == 0:
        return b""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        if deadline_s is not None:
            left_s = deadline_s - time.monotonic()
            if left_s <= 0:
                raise TimeoutError("local socket: the node's answer did not come in time")
            sock.settimeout(left_s)
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("local socket: closed by the node")
        got += n
    return bytes(buffer)
