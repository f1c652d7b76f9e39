"""`status()`: the cluster's view from whichever nodes answer, asked in rounds.

Every node is asked at once, and the first leader to answer wins; a
follower's answer points at its leader, which is asked too. So one paused or
partitioned node costs nothing while the others answer. If no leader answers,
the view of the node with the highest term is returned with `leader` None,
and its claims about a leader dropped. If no node answers, the nodes are asked
again, after a pause that grows, until the timeout: a cluster that is
restarting answers the round after it listens. A client that has reached no
node at all gives up sooner, after UNREACHABLE_AFTER_S, and says why
(reach.py), as every other call does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc

from node._proto import distnode_pb2 as pb
from node.client.answer import ClusterStatus, cluster_status
from node.client.fanout import Fanout
from node.client.reach import unreachable
from node.client.retry import UNREACHABLE_AFTER_S, Nodes, classify
from node.errors import ClusterUnavailable
from node.security import TlsFiles
from node.wire.status import signed_by
from node.wire.stubs import NodeStub

#: The longest one node's Status may take in a round before the round stops waiting for it.
STATUS_PROBE_S = 2.0
#: The first pause between rounds, doubled each round up to MAX_PAUSE_S; no round starts
#: with less than LAST_ROUND_S left (its calls would end before they could be answered).
FIRST_PAUSE_S = 0.05
MAX_PAUSE_S = 0.5
LAST_ROUND_S = 0.05
#: What `status()` waits by default: the CLI's `--timeout` default, not a job's.
STATUS_TIMEOUT_S = 5.0


async def cluster_view(
    stub: Callable[[str], NodeStub], nodes: Nodes, tls: TlsFiles | None, timeout_s: float
) -> ClusterStatus:
    """The leader's view of the cluster, or the freshest view without one (module docstring);
    ClusterUnavailable (its cause, for a client that reached no node) if none answered."""
    started = time.monotonic()
    deadline, pause = started + timeout_s, FIRST_PAUSE_S
    errors: dict[str, str] = {}  # each node's latest, across rounds: what the last one heard
    while True:
        view = await _round(stub, nodes, deadline, errors)
        if view is not None:
            return view
        now = time.monotonic()
        given_up = not nodes.reached and now - started >= UNREACHABLE_AFTER_S
        if given_up or deadline - now < pause + LAST_ROUND_S:
            break
        await asyncio.sleep(pause)
        pause = min(2 * pause, MAX_PAUSE_S)
    if not nodes.reached:
        raise await asyncio.to_thread(unreachable, nodes.all(), tls, errors, deadline)
    detail = "; ".join(f"{address}: {error}" for address, error in errors.items()) or "no reply"
    raise ClusterUnavailable(f"no node answered ({detail})")


async def _round(
    stub: Callable[[str], NodeStub], nodes: Nodes, deadline: float, errors: dict[str, str]
) -> ClusterStatus | None:
    views: list[pb.StatusReply] = []

    async def ask(address: str) -> pb.StatusReply | None:
        return await _status_of(stub, nodes, address, deadline, errors)

    async with Fanout(ask, nodes.order()) as answers:
        async for _, reply in answers:
            if reply is None:
                continue
            nodes.reached = True
            if reply.role == "leader":
                return cluster_status(reply)
            views.append(reply)
            if reply.leader_address:
                answers.add(reply.leader_address)
    return cluster_status(max(views, key=lambda v: v.term), leaderless=True) if views else None


async def _status_of(
    stub: Callable[[str], NodeStub], nodes: Nodes, address: str, deadline: float, errors: dict[str, str]
) -> pb.StatusReply | None:
    remaining = min(STATUS_PROBE_S, deadline - time.monotonic())
    if remaining <= 0:
        return None
    try:
        return await stub(address).Status(pb.StatusRequest(), timeout=remaining)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.UNAUTHENTICATED:
            raise classify(exc, accepted=False) from None  # the same everywhere: no use asking on
        errors[address] = f"{exc.code().name}: {exc.details()}"
        if signed_by(exc.trailing_metadata()) is not None:
            nodes.reached = True
        return None
