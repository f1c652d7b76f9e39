"""Frames on a node's local socket: a 4-byte little-endian length, then a protobuf message.

The local socket (node/server/localsocket.py) carries what a SubmitBatches
stream carries, without gRPC: `SubmitBatch` frames one way, `SubmitBatchReply`
frames the other, after a `LocalHello` / `LocalWelcome` handshake. A Unix
socket is reliable and ordered, so a length prefix is all the framing it
needs. A frame longer than the reader's limit is refused before its body is
read: the reader names the limit and closes the connection.

Both ends of the handshake are here so they cannot drift apart: the client
proves it holds the key it was given over gRPC (`LocalHello.key`), and the
node proves it is the one that gave it (`proof`, an HMAC of the client's
random nonce), so a process that took over the name of a node that died
learns nothing and cannot pose as it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
import struct
from typing import TypeVar

from google.protobuf.message import Message

from node.errors import LimitExceeded

HEADER = struct.Struct("<I")
NONCE_BYTES = 16
#: Linux abstract socket names start with NUL; the name travels without it.
ABSTRACT_PREFIX = "\0"

M = TypeVar("M", bound=Message)


def frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return HEADER.pack(len(body)) + body


def proof(key: bytes, nonce: bytes) -> bytes:
    return hmac.new(key, nonce, hashlib.sha256).digest()


def proves(key: bytes, nonce: bytes, claimed: bytes) -> bool:
    return hmac.compare_digest(proof(key, nonce), claimed)


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


def read_blocking(sock: socket.socket, kind: type[M], max_bytes: int) -> M:
    """The next message; ConnectionError if the node closed the socket."""
    length = _length(_exactly(sock, HEADER.size), max_bytes)
    return kind.FromString(_exactly(sock, length))


def _exactly(sock: socket.socket, size: int) -> bytes:
    if size == 0:
        return b""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("local socket: closed by the node")
        got += n
    return bytes(buffer)
