"""The cluster as this node sees it: the table `distnode status` and the status page show."""

from __future__ import annotations

from node.core.election import Election
from node.core.messages import Role
from node.server.api import NodeView, StatusView
from node.server.config import NodeConfig
from node.server.peers import PeerTable


def peer_view(
    election: Election, peers: PeerTable, config: NodeConfig, leader_address: str, disk_error: str
) -> StatusView:
    """What this node knows, and nothing it does not.

    A leader hears every peer: a peer is alive if it answered within the
    failure timeout, and its role is what it last said, or "unknown" once
    that is stale. A follower hears only its leader: that one is shown as
    the leader, alive by the same rule; the others as "unknown". So a
    table never holds two leaders, and a dead former leader is "unknown".
    """
    nodes = [NodeView(config.node_id, config.address, election.role.value, election.term, True, 0.0,
                      disk_error)]
    heard = election.peer_ticks_since_heard()
    active = election.active_peers()
    leading = election.role is Role.LEADER
    for peer in peers:
        ticks = heard.get(peer.address)
        if leading:
            alive = peer.address in active
            role, term = (peer.role, peer.term) if alive else ("unknown", peer.term)
        elif peer.address == leader_address and election.leader is not None:
            ticks = election.ticks_since_leader
            alive, role, term = ticks <= config.election_ticks[0], "leader", election.term
        else:
            alive, role, term = False, "unknown", peer.term
        last_ms = None if ticks is None else float(ticks * config.tick_ms)
        storage_error = peer.storage_error if leading and alive else ""
        problem = peers.conflicts.get(peer.address, peer.problem)
        nodes.append(NodeView(peer.node_id, peer.address, role, term, alive, last_ms, storage_error,
                              problem, peer.failures))
    return StatusView(
        config.node_id, election.role.value, election.term, election.leader or "",
        leader_address, nodes,
    )
