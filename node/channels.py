"""Every gRPC channel distnode opens, made in one place: peers, clients and the harness.

A `ChannelFactory` holds what every channel of one party shares (TLS files,
the cluster token, the message-size limit) and makes asyncio or blocking
channels from it; `StubCache` keeps one channel and stub per address for the
asyncio side (a daemon's peers, an `AsyncClient`'s nodes).

Why these options:

- gRPC's default reconnect backoff grows to minutes, so a restarted node
  would stay unreachable long after it is back; we cap it well under an
  election timeout.
- Vector answers and partials run to megabytes: big HTTP/2 frames and a big
  initial window move 8 MB in ~10 ms instead of ~35 ms of flow-control steps.
  The server takes the same frame options (`server_options`).
- Each channel gets its own TCP connection (a local subchannel pool); sharing
  one between the election and job traffic would couple heartbeats to big
  transfers.
- The message-size limit is the one `--max-message-bytes` sets on the server,
  so a node sends and accepts exactly what its peers accept.

With TLS a party dials presenting its own certificate, if it has one (so a
node needs no separate client identity under mutual TLS). The token rides on
every call as metadata, bound into the stubs (node/wire/answers.py says why
not an interceptor).
"""

from __future__ import annotations

from typing import Any

import grpc
import msgspec

from node.core.limits import MAX_MESSAGE_BYTES
from node.security import TlsFiles, check_token, token_metadata
from node.wire.stubs import NodeStub

#: HTTP/2 options shared by servers and channels (see the module docstring).
HTTP2_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.http2.max_frame_size", (1 << 24) - 1),
    ("grpc.http2.lookahead_bytes", 16 << 20),
)


def size_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    """Options for a daemon's server. `so_reuseport` off: two servers must never share a port."""
    return [("grpc.so_reuseport", 0), *size_options(max_message_bytes), *HTTP2_OPTIONS]


class ChannelFactory(msgspec.Struct, frozen=True):
    """How one party (a node, a client, the harness) dials the cluster."""

    tls: TlsFiles | None = None
    token: str | None = None
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if self.token is not None:
            check_token(self.token)

    def options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.min_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 300),
            *size_options(self.max_message_bytes),
            *HTTP2_OPTIONS,
            ("grpc.use_local_subchannel_pool", 1),
        ]

    @property
    def secure(self) -> bool:
        return self.tls is not None and self.tls.enabled

    @property
    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """What every call carries (the token, if any); the stubs bind it in."""
        return token_metadata(self.token)

    def aio(self, address: str) -> grpc.aio.Channel:
        """An asyncio channel; calls on it need `metadata` (a NodeStub adds it)."""
        if self.secure:
            assert self.tls is not None
            return grpc.aio.secure_channel(address, self.tls.channel_credentials(), options=self.options())
        return grpc.aio.insecure_channel(address, options=self.options())

    def blocking(self, address: str) -> grpc.Channel:
        """A blocking channel; calls on it need `metadata` (a BlockingNodeStub adds it)."""
        if self.secure:
            assert self.tls is not None
            return grpc.secure_channel(address, self.tls.channel_credentials(), self.options())
        return grpc.insecure_channel(address, self.options())


class StubCache:
    """One asyncio channel and stub per address, opened on first use, closed together."""

    def __init__(self, factory: ChannelFactory) -> None:
        self.factory = factory
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, NodeStub] = {}

    def stub(self, address: str) -> NodeStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = self.factory.aio(address)
            self._channels[address] = channel
            stub = self._stubs[address] = NodeStub(channel, self.factory.metadata)
        return stub

    async def close(self) -> None:
        channels, self._channels, self._stubs = self._channels, {}, {}
        for channel in channels.values():
            await channel.close(grace=None)
