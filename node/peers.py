"""Outbound gRPC to other nodes: one channel per address, reused.

Channel options matter for failover speed: gRPC's default reconnect backoff
grows to minutes, so a restarted node would stay unreachable long after it is
back. We cap it well under an election timeout.
"""

from __future__ import annotations

from typing import Any

from node.answerwire import node_stub
from node.security import TlsFiles, open_channel

#: Options shared by every channel distnode opens (peers and clients).
CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 300),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Vector answers and partials run to megabytes: big HTTP/2 frames and a big
    # initial window move 8 MB in ~10 ms instead of ~35 ms of flow-control steps.
    ("grpc.http2.max_frame_size", (1 << 24) - 1),
    ("grpc.http2.lookahead_bytes", 16 << 20),
    # Each channel gets its own TCP connection; sharing a subchannel between
    # the election and job traffic would couple heartbeats to big transfers.
    ("grpc.use_local_subchannel_pool", 1),
)


class PeerChannels:
    """Lazily opened channels and stubs keyed by HOST:PORT.

    With TLS, a node dials its peers presenting its own certificate (so mutual
    TLS needs no separate client identity); with a token, every call carries it.
    """

    def __init__(self, tls: TlsFiles | None = None, token: str | None = None) -> None:
        self.tls = tls
        self.token = token
        self._channels: dict[str, Any] = {}
        self._stubs: dict[str, Any] = {}

    def stub(self, address: str) -> Any:
        stub = self._stubs.get(address)
        if stub is None:
            channel = open_channel(address, list(CHANNEL_OPTIONS), self.tls, self.token)
            self._channels[address] = channel
            stub = self._stubs[address] = node_stub(channel)
        return stub

    async def close(self) -> None:
        channels, self._channels, self._stubs = self._channels, {}, {}
        for channel in channels.values():
            await channel.close(grace=None)
