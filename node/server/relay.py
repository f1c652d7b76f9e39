"""A follower's relay of client calls to the leader it knows.

Clients may call any node; a follower passes Submit and Progress on to its
leader, through its own `--peers` entry for it, once: a relayed call is never
relayed again, so two nodes that each believe the other leads cannot bounce a
job between them. Submit's reply comes back as the leader's bytes and goes
out untouched. Without a known leader the caller gets UNAVAILABLE and retries.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.core.job import Job
from node.errors import NoLeader, RelayFailed
from node.server.api import JobProgress, Relayed
from node.wire.jobs import job_to_proto

#: How long a follower waits for the leader when it relays a Progress probe.
RELAY_PROBE_S = 1.0


class Relay:
    def __init__(self, stubs: StubCache, leader_address: Callable[[], str], who: Callable[[], str]) -> None:
        self.stubs = stubs
        #: The leader's address as this node dials it; "" while none is known.
        self.leader_address = leader_address
        #: "n2 (term 4)", for the message when there is no leader.
        self.who = who

    def _leader(self) -> str:
        leader = self.leader_address()
        if not leader:
            raise NoLeader(f"no leader known to {self.who()}; retry")
        return leader

    async def submit(self, job_id: str, job: Job, forwarded: bool, timeout_s: float | None) -> Relayed:
        if forwarded:  # the sender took us for the leader: do not bounce it back
            raise NoLeader(f"no leader known to {self.who()}; retry")
        request = pb.SubmitRequest(job=job_to_proto(job_id, job), forwarded=True)
        try:
            reply = await self.stubs.stub(self._leader()).SubmitRelay(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise RelayFailed(exc.code().name, exc.details() or "leader unreachable") from None
        return Relayed(reply)

    async def progress(self, job_id: str) -> JobProgress:
        stub = self.stubs.stub(self._leader())
        try:
            reply = await stub.Progress(pb.ProgressRequest(job_id=job_id), timeout=RELAY_PROBE_S)
        except grpc.aio.AioRpcError as exc:
            raise RelayFailed(exc.code().name, exc.details() or "leader unreachable") from None
        return JobProgress(reply.known, reply.shards_done, reply.shards_total)
