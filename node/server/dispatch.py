"""The leader's `Compute` calls to its workers, and the partials that come back.

A call goes on the worker's compute link when the leader has one (a worker
in its network namespace: computelink.py), else on gRPC, whose reply names
the worker's local socket for the next call. Partials come back on the
link, or on the worker's `Reduce` stream; both reach the job the same way
(`incoming`, then the daemon's check that the sender is a member).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.core.job import Job
from node.errors import InvalidField
from node.server.api import IncomingPartial, ShardRange
from node.server.computelink import SKIP_TIMEOUT_S, AcceptPartial, ComputeLinks
from node.server.config import NodeConfig
from node.server.peers import PeerTable
from node.server.tracing import ShardTimes
from node.wire.jobs import job_to_proto

log = logging.getLogger(__name__)

#: Upper bound on one Compute batch; the failure detector normally acts first.
COMPUTE_TIMEOUT_S = 600.0


def incoming(message: pb.Partial) -> IncomingPartial:
    """A partial as it came over the wire, turned into arrays; InvalidField if it cannot be."""
    from node.wire.tensors import partial_from_proto  # numpy: loaded with the compute stack

    try:
        state = partial_from_proto(message)
    except ValueError as exc:
        raise InvalidField("state", str(exc)) from None
    times = None
    if message.started_ns:  # a worker of an older version sends no times
        times = ShardTimes(message.queued_ns, message.started_ns, message.finished_ns)
    rows = (message.start_row, message.stop_row) if message.stop_row else None
    return IncomingPartial(message.job_id, message.shard, message.node_id, state, times, rows, message.run)


class Dispatch:
    """`JobManager`'s way to run a batch of shards on a worker (jobs.RemoteCompute)."""

    def __init__(
        self, config: NodeConfig, stubs: StubCache, peers: PeerTable, term: Callable[[], int],
        accept: AcceptPartial,
    ) -> None:
        self.node_id = config.node_id
        self.address = config.address
        self.stubs = stubs
        self.peers = peers
        self.term = term
        self.links = ComputeLinks(accept, config.limits.max_message_bytes)
        #: Off with the node's own local socket (--no-local-socket): every call on gRPC.
        self.use_links = config.local_socket
        #: (worker address, "link" or "grpc") -> Compute calls made, as leader (metrics.py).
        self.calls: dict[tuple[str, str], int] = {}
        #: (worker address, job id, "link" or "grpc") -> Compute calls under way: what `skip` tells.
        self._under_way: collections.Counter[tuple[str, str, str]] = collections.Counter()

    async def __call__(
        self, address: str, job_id: str, job: Job, ranges: list[ShardRange], run: int = 0
    ) -> list[int]:
        """One Compute call to the worker at `address` for the run numbered `run`: the shards
        of `ranges` it let go (stealing.py), once it has sent the partials of the others."""
        request = pb.ComputeRequest(
            job=job_to_proto(job_id, job),
            shards=[pb.Shard(index=i, start=start, stop=stop) for i, start, stop in ranges],
            reduce_to=self.address, term=self.term(), leader_id=self.node_id, run=run,
        )
        link = await self.links.link(address)
        transport = "link" if link is not None else "grpc"
        self._count(address, transport)
        key = (address, job_id, transport)
        self._under_way[key] += 1
        try:
            if link is not None:
                return list((await link.compute(request, COMPUTE_TIMEOUT_S)).skipped)
            reply = await self.stubs.stub(address).Compute(request, timeout=COMPUTE_TIMEOUT_S)
        finally:
            self._under_way[key] -= 1
            if not self._under_way[key]:
                del self._under_way[key]
        if self.use_links and reply.HasField("local"):
            self.links.learn(address, self.peers.id_of(address), reply.local)
        return list(reply.skipped)

    async def skip(self, address: str, job_id: str, shards: list[int]) -> list[int]:
        """Ask the worker at `address` to let `shards` of `job_id` go (stealing.py), where the
        job's calls to it went, both at once if both: on its compute link, in order with them,
        and in a `Skip` call, which may reach the worker before the `Compute` it is about
        (then it keeps them). The shards it let go; none if it cannot be asked or does not
        answer."""
        legs: list[Awaitable[list[int]]] = []
        link = self.links.current(address)
        if link is not None and self._under_way[(address, job_id, "link")]:
            legs.append(link.skip(job_id, shards))
        if self._under_way[(address, job_id, "grpc")]:
            asked = pb.SkipShards(job_id=job_id, shards=shards, leader_id=self.node_id)
            legs.append(self._skip_call(address, asked))
        given: list[int] = []
        for answer in await asyncio.gather(*legs, return_exceptions=True):
            if isinstance(answer, BaseException):  # one leg failing keeps what the other got
                log.debug("worker %s: a skip failed: %r", self.peers.id_of(address), answer)
            else:
                given += answer
        return given

    async def _skip_call(self, address: str, asked: pb.SkipShards) -> list[int]:
        return list((await self.stubs.stub(address).Skip(asked, timeout=SKIP_TIMEOUT_S)).skipped)

    def _count(self, address: str, transport: str) -> None:
        key = (address, transport)
        self.calls[key] = self.calls.get(key, 0) + 1

    def close(self) -> None:
        self.links.close()
