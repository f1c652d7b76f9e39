"""Asking a peer its Status again (node/server/discovery.py): a leader does when a follower
refused a message as too large, to learn the limit it restarted with."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.server.discovery import IdDiscovery
from node.server.peers import PeerTable

ADDRESS = "127.0.0.1:1"


class HeldStatus:
    """A peer's Status that answers when told to; counts the questions."""

    def __init__(self) -> None:
        self.asked = 0
        self.answer = asyncio.Event()

    def stub(self, address: str) -> HeldStatus:
        return self

    async def Status(self, request: pb.StatusRequest, **options: Any) -> pb.StatusReply:
        self.asked += 1
        await self.answer.wait()
        return pb.StatusReply(node_id="n2", max_message_bytes=1 << 17)


async def test_a_peer_is_asked_again_once_at_a_time_and_its_new_limit_learnt() -> None:
    peers, status = PeerTable((ADDRESS,), "n1"), HeldStatus()
    settings = {"heartbeat_ms": 50, "election_ms_min": 250, "election_ms_max": 500, "shard_elems": 1 << 23,
                "cluster_size": 2, "max_message_bytes": 1 << 26}
    discovery = IdDiscovery(peers, cast(StubCache, status), settings)
    first = asyncio.create_task(discovery.ask_again(ADDRESS))
    await asyncio.sleep(0)
    # The first still waits for its answer: this one returns at once, asking nothing.
    await asyncio.wait_for(discovery.ask_again(ADDRESS), timeout=5)
    assert status.asked == 1 and not first.done()
    status.answer.set()
    await first
    assert peers.message_bytes_of(ADDRESS, 1 << 26) == 1 << 17
    await discovery.ask_again(ADDRESS)  # answered since: asked again
    assert status.asked == 2
