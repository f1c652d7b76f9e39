"""Learning the peers' node ids: each --peers entry is asked for its Status.

Ids let this node map a leader id or a `reduce_to` back onto its own
--peers entry, so all peer traffic follows the configured addresses. The
same answer says which source kinds the peer reads.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.server.peers import PeerTable

#: How often a node asks the peers whose ids it does not know yet, and how long it waits.
DISCOVERY_INTERVAL_S = 0.2
DISCOVERY_TIMEOUT_S = 0.5


def describe(exc: grpc.aio.AioRpcError, timeout_s: float) -> str:
    """A failed call to a peer, as its operator needs to read it."""
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {timeout_s * 1000:.0f} ms (nothing listening there, or not a distnode)"
    return f"{exc.code().name}: {exc.details()}"


class IdDiscovery:
    def __init__(self, peers: PeerTable, stubs: StubCache) -> None:
        self.peers = peers
        self.stubs = stubs
        self._discovery: asyncio.Future[None] | None = None
        #: Set whenever discovery learns an id (for callers waiting on one).
        self._learnt = asyncio.Event()

    async def discover_ids(self, stopping: asyncio.Event) -> None:
        """Ask every peer whose id is unknown for its Status, until all are known."""
        while self.peers.unknown_ids() and not stopping.is_set():
            await self.discover_once()
            await asyncio.sleep(DISCOVERY_INTERVAL_S)

    def close(self) -> None:
        if self._discovery is not None:
            self._discovery.cancel()

    async def discover_once(self, wanted: str = "") -> None:
        """One round: every unknown peer asked at once; callers during a round share it.

        With `wanted`, return as soon as that id is known: the slowest (or a
        dead) peer of the round must not hold up a vote from a live one.
        """
        if self._discovery is None or self._discovery.done():
            self._discovery = asyncio.ensure_future(self._discover_round())
        round_ = self._discovery
        while not (wanted and self.peers.is_member(wanted)) and not round_.done():
            self._learnt.clear()
            learnt: asyncio.Future[Any] = asyncio.ensure_future(self._learnt.wait())
            waits: set[asyncio.Future[Any]] = {round_, learnt}
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                learnt.cancel()

    async def _discover_round(self) -> None:
        # One peer at a time: a round runs beside the election and the beats, and
        # asking (or first dialling) several peers in one step of the event loop
        # holds it for milliseconds.
        for address in self.peers.unknown_ids():
            await self._ask_id(address)

    async def _ask_id(self, address: str) -> None:
        try:
            reply = await self.stubs.stub(address).Status(
                pb.StatusRequest(), timeout=DISCOVERY_TIMEOUT_S, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            self.peers.failed(address, describe(exc, DISCOVERY_TIMEOUT_S))
            return
        self.peers.learn(address, reply.node_id, reply.sources)
        self._learnt.set()

    async def ask_sources(self, addresses: list[str]) -> None:
        """Ask these peers (at once) what source kinds they read; who does not answer stays unknown."""
        await asyncio.gather(*(self._ask_id(address) for address in addresses))
