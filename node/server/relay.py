"""A follower's relay of client calls to the leader it knows.

Clients may call any node; a follower passes Submit, Enqueue, Cancel and
Progress on to its leader, through its own `--peers` entry for it. A relayed Submit is marked
and never relayed again, so two nodes that each believe the other leads
cannot bounce a job between them (a Progress probe is not marked: it has a
short deadline and changes nothing). Submit's reply comes back as the
leader's bytes and goes out untouched.

A status the leader signed (node/wire/status.py) is about the job and goes
back to the client as it is. A failure of the hop itself (the leader
unreachable, or refusing this node's token or certificate) is not the
client's doing: it becomes UNAVAILABLE, and the client retries elsewhere.
Without a known leader the caller gets UNAVAILABLE too.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.core.job import Job
from node.errors import NoLeader, RelayFailed
from node.server.api import JobProgress, JobView, Relayed
from node.server.jobinfo import view_from_info
from node.wire.jobs import job_to_proto
from node.wire.status import signed_by

#: How long a follower waits for the leader when it relays a Progress probe.
RELAY_PROBE_S = 1.0
#: How long a follower waits for the leader when it relays Enqueue or Cancel without a deadline.
RELAY_CALL_S = 30.0


class Relay:
    def __init__(
        self, stubs: StubCache, leader_address: Callable[[], str], who: Callable[[], str],
        job_timeout_s: float,
    ) -> None:
        self.stubs = stubs
        #: The leader's address as this node dials it; "" while none is known.
        self.leader_address = leader_address
        #: "n2 (term 4)", for the messages.
        self.who = who
        #: The deadline of a relayed Submit whose caller set none.
        self.job_timeout_s = job_timeout_s

    def _leader(self) -> str:
        leader = self.leader_address()
        if not leader:
            raise NoLeader(f"no leader known to {self.who()}; retry")
        return leader

    async def submit(self, job_id: str, job: Job, forwarded: bool, timeout_s: float | None) -> Relayed:
        if forwarded:  # the sender took us for the leader: do not bounce it back
            raise NoLeader(f"no leader known to {self.who()}; retry")
        request = pb.SubmitRequest(job=job_to_proto(job_id, job), forwarded=True)
        timeout_s = self.job_timeout_s if timeout_s is None else timeout_s
        try:
            reply = await self.stubs.stub(self._leader()).SubmitRelay(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from None
        return Relayed(reply)

    async def enqueue(self, job_id: str, job: Job, forwarded: bool, timeout_s: float | None) -> JobView:
        if forwarded:
            raise NoLeader(f"no leader known to {self.who()}; retry")
        request = pb.SubmitRequest(job=job_to_proto(job_id, job), forwarded=True)
        try:
            reply = await self.stubs.stub(self._leader()).Enqueue(request, timeout=timeout_s or RELAY_CALL_S)
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from None
        return view_from_info(reply)

    async def result(self, job_id: str, wait_s: float) -> JobView | None:
        """The leader's record of a job this follower has not applied yet; None without a leader."""
        leader = self.leader_address()
        if not leader:
            return None
        request = pb.ResultRequest(job_id=job_id, wait_s=wait_s, forwarded=True)
        try:
            reply = await self.stubs.stub(leader).Result(request, timeout=wait_s + RELAY_PROBE_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE) or signed_by(
                    exc.trailing_metadata()) is None:
                return None  # unknown there too, or no answer from it: this node's table answers
            raise self._failed(exc) from None
        return view_from_info(reply)

    async def jobs(self, state: str | None, limit: int) -> list[JobView] | None:
        """The leader's job table; None without a leader, or if it cannot be reached."""
        leader = self.leader_address()
        if not leader:
            return None
        request = pb.JobsRequest(state=state or "", limit=limit, forwarded=True)
        try:
            reply = await self.stubs.stub(leader).Jobs(request, timeout=RELAY_PROBE_S)
        except grpc.aio.AioRpcError as exc:
            if signed_by(exc.trailing_metadata()) is None or exc.code() is grpc.StatusCode.UNAVAILABLE:
                return None
            raise self._failed(exc) from None
        return [view_from_info(info) for info in reply.jobs]

    async def cancel(self, job_id: str, forwarded: bool, timeout_s: float | None) -> JobView:
        if forwarded:
            raise NoLeader(f"no leader known to {self.who()}; retry")
        request = pb.CancelRequest(job_id=job_id, forwarded=True)
        try:
            reply = await self.stubs.stub(self._leader()).Cancel(request, timeout=timeout_s or RELAY_CALL_S)
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from None
        return view_from_info(reply)

    async def progress(self, job_id: str) -> JobProgress:
        stub = self.stubs.stub(self._leader())
        try:
            reply = await stub.Progress(pb.ProgressRequest(job_id=job_id), timeout=RELAY_PROBE_S)
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from None
        return JobProgress(reply.known, reply.shards_done, reply.shards_total)

    def _failed(self, exc: grpc.aio.AioRpcError) -> RelayFailed:
        details = exc.details() or "no detail"
        if signed_by(exc.trailing_metadata()) is not None:
            return RelayFailed(exc.code().name, details)  # the leader's answer about the job
        return RelayFailed("UNAVAILABLE", f"relay from {self.who()} to its leader failed: "
                                          f"{exc.code().name}: {details}")
