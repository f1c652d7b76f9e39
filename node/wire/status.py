"""How a node signs its error statuses, so a client can tell a node's answer from a transport's.

gRPC reports "the node said UNAVAILABLE: no leader yet" and "the TLS handshake
failed" with the same code. Every status a distnode sends carries the trailer
`distnode-node: <its id>`; a failure without it never reached a distnode (the
connection was refused or reset, or something else answered), which the
client treats as a sign of misconfiguration rather than of a busy cluster.
"""

from __future__ import annotations

from collections.abc import Iterable

NODE_TRAILER = "distnode-node"


def node_trailer(node_id: str) -> tuple[tuple[str, str], ...]:
    return ((NODE_TRAILER, node_id),)


def signed_by(trailers: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The id of the node that sent a status with these trailers; None if no node did."""
    for key, value in trailers or ():
        if key == NODE_TRAILER:
            return value.decode() if isinstance(value, bytes) else value
    return None
