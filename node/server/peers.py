"""What this node knows about the others: ids, roles, and who is alive.

Peers are keyed by the address this node dials (its own `--peers` entry), and
an id is learnt from whatever answers there. Liveness is not judged here: the
election core's failure detector is the one source (`Election.active_peers`,
a peer that answered within the minimum election timeout), and `sync` copies
its verdict in after every tick and every reply. A worker's death wakes the
job scheduler waiting on it through `dead_event()`, so its shards move on at
once instead of at the end of an RPC timeout.

Contacts that fail (a heartbeat stream, a vote request, an id probe) are
counted per peer, and said once per episode: one WARNING when a peer stops
answering, with the reason (INFO for one never reached yet: at start, peers
come up one by one), one INFO when it answers again; `status` shows
the reason and the count meanwhile. A peer that is down is tried 20 times a
second by a leader, and the log must not say so 20 times a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator

import msgspec

from node.core.limits import MIN_NODE_MESSAGE_BYTES
from node.errors import InvalidField, NotAMember

log = logging.getLogger("distnode")

#: A failure's reason is cut to this many characters (gRPC's details can run long).
REASON_CHARS = 200


class Peer(msgspec.Struct):
    address: str
    node_id: str = ""
    role: str = "unknown"
    term: int = 0
    alive: bool = False
    #: The source kinds it said it reads (its Status); None: not known since it was last seen alive.
    sources: frozenset[str] | None = None
    #: Why it cannot write its durable state, as its last reply said.
    storage_error: str = ""
    #: Why the last contact with it failed ("" once it answered since).
    problem: str = ""
    #: Failed contacts since this node started.
    failures: int = 0
    #: It answered at least once (a peer not up yet at start is not news).
    reached: bool = False
    #: Heartbeat replies from it since this node started.
    replies: int = 0
    _dead: asyncio.Event = msgspec.field(default_factory=asyncio.Event)


class PeerTable:
    def __init__(self, addresses: tuple[str, ...], own_id: str = "") -> None:
        self._peers = {address: Peer(address) for address in addresses}
        #: Address -> the peer's --max-message-bytes, as its last heartbeat reply or Status said
        #: (the consensus core reads it too: Replication.peer_message_bytes).
        self.message_bytes: dict[str, int] = {}
        self.own_id = own_id
        #: Address -> why its id cannot be trusted: this node's own, or one that
        #: another --peers entry answers as too. Such an id gets no vote here.
        self.conflicts: dict[str, str] = {}
        for peer in self._peers.values():
            peer._dead.set()  # never heard: dead until proven alive

    def __iter__(self) -> Iterator[Peer]:
        return iter(self._peers.values())

    def get(self, address: str) -> Peer | None:
        return self._peers.get(address)

    def learn(
        self, address: str, node_id: str, sources: Iterable[str] | None = None, message_bytes: int = 0,
    ) -> None:
        """Record the id of the node behind `address` (from any reply it sent), and the
        source kinds it reads and its --max-message-bytes (from its Status)."""
        peer = self._peers.get(address)
        if peer is not None and node_id:
            changed = peer.node_id != node_id
            peer.node_id = node_id
            if sources is not None:
                peer.sources = frozenset(sources)
            self._bound(address, message_bytes)
            self.reached(address)
            if changed:
                self._check_ids()

    def _check_ids(self) -> None:
        """Ids must be unique: two nodes answering as one id would share one vote record
        (a voter grants both), and a leader id would name two addresses. Said once."""
        at: dict[str, list[str]] = {}
        for peer in self._peers.values():
            if peer.node_id:
                at.setdefault(peer.node_id, []).append(peer.address)
        conflicts = {}
        for node_id, addresses in at.items():
            if node_id == self.own_id:
                why = f"answers as {node_id}, this node's own id"
            elif len(addresses) > 1:
                why = f"{node_id} answers at {' and '.join(addresses)}"
            else:
                continue
            if any(self.conflicts.get(address) != why for address in addresses):
                log.error("peer %s: %s: ids must be unique; %s gets no vote from this node",
                          " and ".join(addresses), why, node_id)
            conflicts.update(dict.fromkeys(addresses, why))
        self.conflicts = conflicts

    def heard(
        self, address: str, node_id: str, role: str, term: int, storage_error: str = "",
        message_bytes: int = 0,
    ) -> Peer | None:
        """Record what a peer said about itself in a reply; the peer, if it is one of ours."""
        peer = self._peers.get(address)
        if peer is not None:
            peer.node_id, peer.role, peer.term = node_id or peer.node_id, role, term
            peer.storage_error = storage_error
            peer.replies += 1
            self._bound(address, message_bytes)
            self.reached(address)
        return peer

    def _bound(self, address: str, message_bytes: int) -> None:
        """A peer's --max-message-bytes as it stated it (0: not stated). Never below what a node
        may run with: one stating less would have the cluster refuse every detached job."""
        if message_bytes:
            self.message_bytes[address] = max(message_bytes, MIN_NODE_MESSAGE_BYTES)

    def failed(self, address: str, reason: str) -> None:
        """A contact with `address` failed: counted, and said if it had answered till now."""
        peer = self._peers.get(address)
        if peer is None:
            return
        peer.failures += 1
        reason = " ".join(reason.split())[:REASON_CHARS] or "no reason given"
        if not peer.problem:
            level = logging.WARNING if peer.reached else logging.INFO
            log.log(level, "peer %s: contact failed: %s", self.name(address), reason, extra={"peer": address})
        peer.problem = reason

    def message_bytes_bound(self, own: int) -> int:
        """The smallest --max-message-bytes of this node (`own`) and the peers it heard from:
        what a message every node must take (a job's record) may be."""
        return min([own, *self.message_bytes.values()])

    def message_bytes_of(self, address: str, own: int) -> int:
        """What a message to `address` may be: the smaller of its bound (if known) and `own`."""
        return min(own, self.message_bytes.get(address, own))

    def reached(self, address: str) -> None:
        """`address` answered: the end of its episode of failures, if it was in one."""
        peer = self._peers.get(address)
        if peer is not None and peer.problem:
            log.info("peer %s: contact works again (%d failed so far)", self.name(address), peer.failures,
                     extra={"peer": address})
            peer.problem = ""
        if peer is not None:
            peer.reached = True

    def name(self, address: str) -> str:
        peer = self._peers.get(address)
        return f"{peer.node_id} ({address})" if peer is not None and peer.node_id else address

    def sync(self, active: set[str], deaths: bool = True) -> list[Peer]:
        """Take the failure detector's verdict (`active`: addresses heard lately).

        With `deaths` off only revivals are taken: after a stall (SIGSTOP, a
        frozen VM) the replies that arrived meanwhile are still unread, and
        judging before reading them would declare every peer dead at once.
        Returns the peers that just died, for the log.
        """
        died = []
        for peer in self._peers.values():
            alive = peer.address in active
            if alive and not peer.alive:
                peer.alive = True
                peer._dead = asyncio.Event()
            elif peer.alive and not alive and deaths:
                peer.alive = False
                peer.sources = None  # it may come back as another build, with other extras
                peer._dead.set()
                died.append(peer)
        return died

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

    def check_member(self, field: str, node_id: str, own_id: str) -> None:
        """Only nodes behind our --peers addresses may vote, lead, or send partials;
        our own id arriving over the network is forged by definition."""
        if not node_id:
            raise InvalidField(field, "must not be empty")
        if node_id == own_id:
            raise NotAMember(field, f"{node_id!r} is this node's own id")
        if not self.is_member(node_id):
            raise NotAMember(field, f"{node_id!r} is not a member of this cluster")
        # A compute link's thread asks too (linkserve.py): tuple() takes each dict whole,
        # under the GIL, where iterating it could meet a change made by the event loop.
        for address, why in tuple(self.conflicts.items()):
            peer = self._peers.get(address)
            if peer is not None and peer.node_id == node_id:
                raise NotAMember(field, f"{why}: ids must be unique")

    def is_member(self, node_id: str) -> bool:
        """True if `node_id` answers at one of this node's --peers addresses (any thread)."""
        return any(peer.node_id == node_id for peer in tuple(self._peers.values()))

    def unknown_ids(self) -> list[str]:
        return [peer.address for peer in self._peers.values() if not peer.node_id]

    def alive_addresses(self, reading: str | None = None) -> list[str]:
        """The live peers; with `reading`, only those known to read that source kind."""
        return [
            peer.address for peer in self._peers.values()
            if peer.alive and (reading is None or (peer.sources is not None and reading in peer.sources))
        ]

    def sources_unknown(self) -> list[str]:
        """Live peers whose source kinds are not known (never asked, or since they revived)."""
        return [peer.address for peer in self._peers.values() if peer.alive and peer.sources is None]

    def dead_event(self, address: str) -> asyncio.Event:
        """An event that is set when (or if already) the peer is considered dead."""
        return self._peers[address]._dead

    def id_of(self, address: str) -> str:
        peer = self._peers.get(address)
        return (peer.node_id if peer else "") or address
