"""Learning the peers' node ids: each --peers entry is asked for its Status.

Ids let this node map a leader id or a `reduce_to` back onto its own
--peers entry, so all peer traffic follows the configured addresses. The
same answer says which source kinds the peer reads, and the settings that
must agree across the cluster: a mismatch is a WARNING, once per peer and
setting, naming both values. None of them is refused: timings that differ
still elect (within the ranges each node checks of its own), and a shard
size that differs only changes which leader cuts which shards (a detached
job keeps the shard size of the leader that took it). A --max-message-bytes
that differs would stop a follower's log at the first message over its own
limit, so a node keeps each peer's (PeerTable.message_bytes), from its
Status and then from each of its heartbeat replies, which state it too (a
restart may change it): a leader sizes its records by the smallest it
heard of (recordsize.py), and what it sends one follower (a batch of
entries, a snapshot's chunks) by that follower's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.server.config import NodeConfig
from node.server.peers import PeerTable

log = logging.getLogger("distnode")

#: How often a node asks the peers whose ids it does not know yet, and how long it waits.
DISCOVERY_INTERVAL_S = 0.2
DISCOVERY_TIMEOUT_S = 0.5


def shared_settings(config: NodeConfig) -> dict[str, int]:
    """What this node states in its Status for its peers to compare, by field name."""
    return {"heartbeat_ms": config.heartbeat_ms, "election_ms_min": config.election_ms_min,
            "election_ms_max": config.election_ms_max, "shard_elems": config.shard_elems,
            "cluster_size": len(config.peers) + 1, "max_message_bytes": config.limits.max_message_bytes}


def mismatches(own: dict[str, int], reply: pb.StatusReply) -> dict[str, str]:
    """What differs between our settings and a peer's Status: key -> "the peer's, ours"."""
    theirs = {name: int(getattr(reply, name)) for name in own}
    found = {}
    if theirs["heartbeat_ms"] and theirs["heartbeat_ms"] != own["heartbeat_ms"]:
        found["heartbeat_ms"] = f"--heartbeat-ms {theirs['heartbeat_ms']}, this node {own['heartbeat_ms']}"
    ranges = [f"{d['election_ms_min']}-{d['election_ms_max']}" for d in (theirs, own)]
    if theirs["election_ms_min"] and ranges[0] != ranges[1]:
        found["election_ms"] = f"--election-ms {ranges[0]}, this node {ranges[1]}"
    if theirs["shard_elems"] and theirs["shard_elems"] != own["shard_elems"]:
        found["shard_elems"] = (f"--shard-elems {theirs['shard_elems']}, this node {own['shard_elems']}"
                                " (an attached job's last bits may depend on the leader)")
    if theirs["cluster_size"] and theirs["cluster_size"] != own["cluster_size"]:
        found["cluster_size"] = (f"a cluster of {theirs['cluster_size']} nodes (its --peers and itself),"
                                 f" this node {own['cluster_size']}: the --peers lists differ")
    if theirs["max_message_bytes"] and theirs["max_message_bytes"] != own["max_message_bytes"]:
        found["max_message_bytes"] = (
            f"--max-message-bytes {theirs['max_message_bytes']}, this node {own['max_message_bytes']}"
            " (the cluster's records are sized for the smaller: fewer results are kept whole)")
    return found


def describe(exc: grpc.aio.AioRpcError, timeout_s: float) -> str:
    """A failed call to a peer, as its operator needs to read it."""
    if exc.code() is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {timeout_s * 1000:.0f} ms (nothing listening there, or not a distnode)"
    return f"{exc.code().name}: {exc.details()}"


class IdDiscovery:
    def __init__(self, peers: PeerTable, stubs: StubCache, settings: dict[str, int]) -> None:
        self.peers = peers
        self.stubs = stubs
        #: Ours, as our Status states them (shared_settings).
        self.settings = settings
        #: (address, setting) already warned of.
        self._warned: set[tuple[str, str]] = set()
        #: Peers whose Status was read at least once (its settings compared).
        self._asked: set[str] = set()
        #: Peers being asked again (`ask_again`): one question at a time each.
        self._asking: set[str] = set()
        self._discovery: asyncio.Future[None] | None = None
        #: Set whenever discovery learns an id (for callers waiting on one).
        self._learnt = asyncio.Event()

    def _unasked(self) -> list[str]:
        """Peers whose id is unknown, or whose Status was never read (a reply to a beat or a
        vote names the id, not the settings)."""
        unknown = self.peers.unknown_ids()
        return unknown + [p.address for p in self.peers if p.address not in self._asked and p.node_id]

    async def admit(self, field: str, node_id: str) -> None:
        """`PeerTable.check_member`, after asking the peers whose ids we do not know yet.

        At start-up a leader can be elected before this node has learnt its
        id; refusing its first beats would cost the cluster an election.
        """
        if node_id and not self.peers.is_member(node_id) and self.peers.unknown_ids():
            await self.discover_once(wanted=node_id)
        self.peers.check_member(field, node_id, self.peers.own_id)

    async def discover_ids(self, stopping: asyncio.Event) -> None:
        """Ask every peer for its Status, until each answered once."""
        while self._unasked() and not stopping.is_set():
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
        for address in self._unasked():
            await self._ask_id(address)

    async def _ask_id(self, address: str) -> None:
        try:
            reply = await self.stubs.stub(address).Status(
                pb.StatusRequest(), timeout=DISCOVERY_TIMEOUT_S, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:  # cancelled: this node is stopping
                self.peers.failed(address, describe(exc, DISCOVERY_TIMEOUT_S))
            return
        self.peers.learn(address, reply.node_id, reply.sources, reply.max_message_bytes)
        self._asked.add(address)
        for setting, what in mismatches(self.settings, reply).items():
            if (address, setting) not in self._warned:
                self._warned.add((address, setting))
                log.warning("peer %s runs with %s; give every node the same", self.peers.name(address), what,
                            extra={"peer": address})
        self._learnt.set()

    async def ask_again(self, address: str) -> None:
        """Ask a peer its Status again: a restart may have changed what it states. A second
        call while the first waits for its answer adds nothing."""
        if address in self._asking:
            return
        self._asking.add(address)
        try:
            await self._ask_id(address)
        finally:
            self._asking.discard(address)

    async def ask_sources(self, addresses: list[str]) -> None:
        """Ask these peers (at once) what source kinds they read; who does not answer stays unknown."""
        await asyncio.gather(*(self._ask_id(address) for address in addresses))
