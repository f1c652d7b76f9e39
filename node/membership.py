"""What this node knows about the others: ids, roles, and who is alive.

The leader's heartbeat replies are the failure detector (DESIGN §3): a peer
heard within `failure_ms` is alive; one silent for longer is dead, and the
job scheduler waiting on it is woken through `dead_event()` so its shards move
on at once instead of at the end of an RPC timeout.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass
class Peer:
    address: str
    node_id: str = ""
    role: str = "unknown"
    term: int = 0
    last_heard_s: float | None = None
    alive: bool = False
    _dead: asyncio.Event = field(default_factory=asyncio.Event)


class PeerTable:
    """Peers keyed by the address this node dials. Clock values are passed in."""

    def __init__(self, addresses: tuple[str, ...], failure_ms: int) -> None:
        self.failure_s = failure_ms / 1000
        self._peers = {address: Peer(address) for address in addresses}
        for peer in self._peers.values():
            peer._dead.set()  # never heard: dead until proven alive

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._peers.values())

    def get(self, address: str) -> Peer | None:
        return self._peers.get(address)

    def learn(self, address: str, node_id: str) -> None:
        """Record the id of the node behind `address` (from any reply it sent)."""
        peer = self._peers.get(address)
        if peer is not None and node_id:
            peer.node_id = node_id

    def address_of(self, node_id: str) -> str | None:
        """The address *this* node dials to reach `node_id`, if known.

        Nodes always dial each other through their own --peers entries (which
        may be proxies, NAT addresses or names), never through an address
        another node advertised about itself.
        """
        for peer in self._peers.values():
            if peer.node_id == node_id:
                return peer.address
        return None

    def is_member(self, node_id: str) -> bool:
        """True if `node_id` answers at one of this node's --peers addresses."""
        return any(peer.node_id == node_id for peer in self._peers.values())

    def unknown_ids(self) -> list[str]:
        return [peer.address for peer in self._peers.values() if not peer.node_id]

    def heard(self, address: str, node_id: str, role: str, term: int, now_s: float) -> None:
        peer = self._peers.get(address)
        if peer is None:
            return
        peer.node_id, peer.role, peer.term = node_id or peer.node_id, role, term
        peer.last_heard_s = now_s
        if not peer.alive:
            peer.alive = True
            peer._dead = asyncio.Event()

    def check(self, now_s: float) -> list[Peer]:
        """Declare dead every peer silent for longer than the failure timeout."""
        died = []
        for peer in self._peers.values():
            silent = peer.last_heard_s is None or now_s - peer.last_heard_s > self.failure_s
            if peer.alive and silent:
                peer.alive = False
                peer._dead.set()
                died.append(peer)
        return died

    def forget_liveness(self) -> None:
        """A new leader starts with no evidence: peers count as alive only once heard."""
        for peer in self._peers.values():
            peer.alive = False
            peer._dead.set()

    def alive_addresses(self) -> list[str]:
        return [peer.address for peer in self._peers.values() if peer.alive]

    def dead_event(self, address: str) -> asyncio.Event:
        """An event that is set when (or if already) the peer is considered dead."""
        return self._peers[address]._dead

    def id_of(self, address: str) -> str:
        peer = self._peers.get(address)
        return (peer.node_id if peer else "") or address
