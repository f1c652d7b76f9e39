"""The leader's `Compute` calls to its workers, and the partials that come back.

A call goes on the worker's compute link when the leader has one (a worker
in its network namespace: computelink.py), else on gRPC, whose reply names
the worker's local socket for the next call. Partials come back on the
link, or on the worker's `Reduce` stream; both reach the job the same way
(`incoming`, then the daemon's check that the sender is a member).
"""

from __future__ import annotations

from collections.abc import Callable

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.core.job import Job
from node.errors import InvalidField
from node.server.api import IncomingPartial, ShardRange
from node.server.computelink import AcceptPartial, ComputeLinks
from node.server.config import NodeConfig
from node.server.peers import PeerTable
from node.server.tracing import ShardTimes
from node.wire.jobs import job_to_proto

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
    return IncomingPartial(message.job_id, message.shard, message.node_id, state, times)


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

    async def __call__(self, address: str, job_id: str, job: Job, ranges: list[ShardRange]) -> None:
        request = pb.ComputeRequest(
            job=job_to_proto(job_id, job),
            shards=[pb.Shard(index=i, start=start, stop=stop) for i, start, stop in ranges],
            reduce_to=self.address, term=self.term(), leader_id=self.node_id,
        )
        link = await self.links.link(address)
        if link is not None:
            self._count(address, "link")
            await link.compute(request, COMPUTE_TIMEOUT_S)
            return
        self._count(address, "grpc")
        reply = await self.stubs.stub(address).Compute(request, timeout=COMPUTE_TIMEOUT_S)
        if self.use_links and reply.HasField("local"):
            self.links.learn(address, self.peers.id_of(address), reply.local)

    def _count(self, address: str, transport: str) -> None:
        key = (address, transport)
        self.calls[key] = self.calls.get(key, 0) + 1

    def close(self) -> None:
        self.links.close()
