"""A follower's relay of client calls to the leader it knows.

Clients may call any node; a follower passes Submit, Enqueue, Cancel and
Progress on to its leader, through its own `--peers` entry for it, and asks
it the Result and Jobs reads its own table may be behind on. Relayed calls
are marked and never relayed again, so two nodes that each believe the
other leads cannot bounce a job between them (a Progress probe is not
marked: it has a short deadline and changes nothing). Submit's reply comes
back as the leader's bytes and goes out untouched. A read the leader cannot
answer falls back to this node's table (`_ask` returns None).

A status the leader signed (node/wire/status.py) is about the job and goes
back to the client as it is. A failure of the hop itself (the leader
unreachable, or refusing this node's token or certificate) is not the
client's doing: it becomes UNAVAILABLE, and the client retries elsewhere.
Without a known leader the caller gets UNAVAILABLE too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.core.job import Job
from node.errors import NoLeader, RelayFailed
from node.server.api import JobProgress, JobView, Relayed
from node.server.jobinfo import view_from_info
from node.wire.jobs import job_to_proto
from node.wire.status import signed_by
from node.wire.stubs import NodeStub

R = TypeVar("R")

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
        #: Told of every call passed to the leader (the metrics count them).
        self.on_relay: Callable[[], None] = lambda: None

    def _leader(self) -> str:
        leader = self.leader_address()
        if not leader:
            raise NoLeader(f"no leader known to {self.who()}; retry")
        return leader

    async def submit(
        self, job_id: str, job: Job, forwarded: bool, timeout_s: float | None, trace: bool = False,
        answer_file: pb.AnswerFile | None = None,
    ) -> Relayed:
        request = pb.SubmitRequest(job=job_to_proto(job_id, job), forwarded=True, trace=trace,
                                   answer_file=answer_file)
        timeout_s = self.job_timeout_s if timeout_s is None else timeout_s
        stub = self.stubs.stub(self._leader_for(forwarded))
        return Relayed(await self._relay(stub.SubmitRelay(request, timeout=timeout_s)))

    async def enqueue(self, job_id: str, job: Job, forwarded: bool, timeout_s: float | None) -> JobView:
        request = pb.SubmitRequest(job=job_to_proto(job_id, job), forwarded=True)
        stub = self.stubs.stub(self._leader_for(forwarded))
        return view_from_info(await self._relay(stub.Enqueue(request, timeout=timeout_s or RELAY_CALL_S)))

    async def cancel(self, job_id: str, forwarded: bool, timeout_s: float | None) -> JobView:
        request = pb.CancelRequest(job_id=job_id, forwarded=True)
        stub = self.stubs.stub(self._leader_for(forwarded))
        return view_from_info(await self._relay(stub.Cancel(request, timeout=timeout_s or RELAY_CALL_S)))

    async def progress(self, job_id: str) -> JobProgress:
        stub = self.stubs.stub(self._leader())
        reply = await self._relay(stub.Progress(pb.ProgressRequest(job_id=job_id), timeout=RELAY_PROBE_S))
        return JobProgress(reply.known, reply.shards_done, reply.shards_total, dict(reply.shards_by_node))

    async def result(self, job_id: str, wait_s: float) -> JobView | None:
        """The leader's record of a job this follower has not applied yet; None if there is
        no leader to ask (its NOT_FOUND is passed on: only a leader knows a job is unknown)."""
        request = pb.ResultRequest(job_id=job_id, wait_s=wait_s, forwarded=True)
        reply = await self._ask(lambda stub: stub.Result(request, timeout=wait_s + RELAY_PROBE_S))
        return None if reply is None else view_from_info(reply)

    async def jobs(self, state: str | None, limit: int) -> list[JobView] | None:
        """The leader's job table; None if there is no leader to ask (this node's answers)."""
        request = pb.JobsRequest(state=state or "", limit=limit, forwarded=True)
        reply = await self._ask(lambda stub: stub.Jobs(request, timeout=RELAY_PROBE_S))
        return None if reply is None else [view_from_info(info) for info in reply.jobs]

    def _leader_for(self, forwarded: bool) -> str:
        if forwarded:  # the sender took us for the leader: do not bounce it back
            raise NoLeader(f"no leader known to {self.who()}; retry")
        return self._leader()

    async def _relay(self, call: Awaitable[R]) -> R:
        """A call to the leader; its failure as the caller should see it (`_failed`)."""
        self.on_relay()
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise self._failed(exc) from None

    async def _ask(self, call: Callable[[NodeStub], Awaitable[R]], *absent: grpc.StatusCode) -> R | None:
        """A read the leader may answer: None without a known leader, if it does not answer
        (UNAVAILABLE, or no status of its own), or with one of the `absent` statuses."""
        leader = self.leader_address()
        if not leader:
            return None
        self.on_relay()
        try:
            return await call(self.stubs.stub(leader))
        except grpc.aio.AioRpcError as exc:
            unanswered = signed_by(exc.trailing_metadata()) is None
            if unanswered or exc.code() in (grpc.StatusCode.UNAVAILABLE, *absent):
                return None
            raise self._failed(exc) from None

    def _failed(self, exc: grpc.aio.AioRpcError) -> RelayFailed:
        details = exc.details() or "no detail"
        if signed_by(exc.trailing_metadata()) is not None:
            return RelayFailed(exc.code().name, details)  # the leader's answer about the job
        return RelayFailed("UNAVAILABLE", f"relay from {self.who()} to its leader failed: "
                                          f"{exc.code().name}: {details}")
