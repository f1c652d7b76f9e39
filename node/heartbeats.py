"""The leader's heartbeat links: one long-lived gRPC stream per follower.

A unary call per heartbeat costs more than twice the CPU of a message on an
open stream, and heartbeats are most of what an idle cluster does. So the
leader keeps one bidirectional `Heartbeat` stream per peer, writes a request
every heartbeat interval and reads the replies in a task of the link's own.

A link never blocks the caller: `send()` skips a beat while the previous
write is still pending (a paused peer whose window is full), and a link
that has gone unanswered for `stale_s` is torn down and reopened, so a peer
that died or restarted is picked up again within about one election timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from node.peers import PeerChannels

log = logging.getLogger("distnode.heartbeats")

#: Called with (peer address, reply) for every reply that arrives.
OnReply = Callable[[str, Any], None]


class HeartbeatLink:
    def __init__(self, address: str, channels: PeerChannels, on_reply: OnReply, stale_s: float) -> None:
        self.address = address
        self.channels = channels
        self.on_reply = on_reply
        self.stale_s = stale_s
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        #: The call whose write is still pending, if any (one write at a time per stream).
        self._pending: Any = None
        self._writers: set[asyncio.Task[None]] = set()
        self._last_reply_s = 0.0
        self._opened_s = 0.0

    def send(self, request: Any) -> None:
        """Queue one heartbeat; returns at once."""
        now = time.monotonic()
        if self._call is not None and now - max(self._last_reply_s, self._opened_s) > self.stale_s:
            log.info("heartbeat stream to %s unanswered for %.0f ms; reopening", self.address,
                     (now - max(self._last_reply_s, self._opened_s)) * 1000)
            self.close()  # unanswered for too long (even a write stuck): start over
        if self._call is not None and self._pending is self._call:
            return  # the previous beat has not left yet: the peer is not reading
        if self._call is None:
            self._open(now)
        self._pending = self._call
        writer = asyncio.get_running_loop().create_task(self._write(self._call, request))
        self._writers.add(writer)  # hold a reference: a collected pending task is lost
        writer.add_done_callback(self._writers.discard)

    def _open(self, now: float) -> None:
        self._call = self.channels.stub(self.address).Heartbeat()
        self._opened_s = now
        self._reader = asyncio.get_running_loop().create_task(self._read(self._call))

    async def _write(self, call: Any, request: Any) -> None:
        try:
            await call.write(request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            self._drop(call)
        finally:
            if self._pending is call:
                self._pending = None

    async def _read(self, call: Any) -> None:
        try:
            async for reply in call:
                self._last_reply_s = time.monotonic()
                self.on_reply(self.address, reply)
        except grpc.aio.AioRpcError as exc:
            log.info("heartbeat stream to %s ended: %s", self.address, exc.code().name)
        finally:
            self._drop(call)

    def _drop(self, call: Any) -> None:
        if self._call is call:
            self._call = None
            call.cancel()

    def close(self) -> None:
        call, reader = self._call, self._reader
        self._call = self._reader = None
        if call is not None:
            call.cancel()
        if reader is not None:
            reader.cancel()
        for writer in list(self._writers):
            writer.cancel()


class HeartbeatLinks:
    """All of the leader's links, opened lazily, closed when leadership ends."""

    def __init__(self, channels: PeerChannels, on_reply: OnReply, stale_s: float) -> None:
        self.channels = channels
        self.on_reply = on_reply
        self.stale_s = stale_s
        self._links: dict[str, HeartbeatLink] = {}

    def send(self, address: str, request: Any) -> None:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = HeartbeatLink(
                address, self.channels, self.on_reply, self.stale_s
            )
        link.send(request)

    def close(self) -> None:
        links, self._links = self._links, {}
        for link in links.values():
            with contextlib.suppress(Exception):
                link.close()

