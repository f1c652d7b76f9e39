"""A candidate's vote request to one peer, over gRPC."""

from __future__ import annotations

import grpc

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.core.messages import VoteRequest, VoteResponse
from node.server.config import NodeConfig
from node.server.discovery import describe
from node.server.peers import PeerTable


async def ask_vote(
    stubs: StubCache, peers: PeerTable, config: NodeConfig, message: VoteRequest
) -> VoteResponse | None:
    """The peer's answer to `message`, for the core; None if it could not be had (the
    peer table notes why, unless this node is stopping)."""
    request = pb.VoteRequest(
        term=message.term, candidate_id=config.node_id, pre_vote=message.pre_vote,
        last_index=message.last_index, last_term=message.last_term,
    )
    timeout_s = config.election_ms_min / 1000
    try:
        reply = await stubs.stub(message.dst).RequestVote(request, timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is not grpc.StatusCode.CANCELLED:  # cancelled: this node is stopping
            peers.failed(message.dst, describe(exc, timeout_s))
        return None
    peers.learn(message.dst, reply.voter_id)
    return VoteResponse(src=message.dst, dst=config.node_id, term=reply.term, granted=reply.granted,
                        pre_vote=message.pre_vote)
