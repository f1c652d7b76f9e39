"""The job table as a client sees it (`JobStatus`, a finished job's `Answer`), and
`call_any`: the clients' retry loop (retry.py's rules) for every call they make, in
an asyncio flavour and a blocking one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from node._proto import distnode_pb2 as pb
from node.client.answer import Answer
from node.client.reach import unreachable
from node.client.retry import FailedCall, Nodes, RetryPlan, classify
from node.errors import (
    AttemptFailed,
    ClusterUnavailable,
    JobCancelled,
    JobError,
    JobFailed,
    JobFinished,
    JobPending,
    UnknownJob,
)
from node.security import TlsFiles
from node.wire.status import signed_by
from node.wire.tensors import result_to_python, tensor_from_proto
from node.wire.times import rfc3339

R = TypeVar("R")


@dataclass(frozen=True)
class JobStatus:
    """One job from a node's job table; `as_dict()` is one entry of `jobs --json`."""

    job_id: str
    op: str
    source: str
    state: str
    shards_done: int
    shards: int
    submitted_at: str | None
    finished_at: str | None
    elapsed_ms: float | None
    #: The answer (a number or a list) when done and kept; else None.
    result: int | float | list[int] | list[float] | None
    #: Why it failed, or why a done job's result was not kept.
    error: str

    def as_dict(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "job_id": self.job_id, "op": self.op, "source": self.source, "state": self.state,
            "shards_done": self.shards_done, "shards": self.shards, "submitted_at": self.submitted_at,
            "finished_at": self.finished_at,
            "elapsed_ms": None if self.elapsed_ms is None else round(self.elapsed_ms, 3),
        }
        if self.state == "done":
            fields["result"] = self.result
        if self.error:
            fields["error"] = self.error
        return fields


def job_status(info: pb.JobInfo) -> JobStatus:
    result = None
    if info.state == "done" and info.result_kept:
        result = result_to_python(tensor_from_proto(info.result))
    return JobStatus(
        info.job_id, info.op, info.source, info.state, info.shards_done, info.shards,
        rfc3339(info.submitted_at), rfc3339(info.finished_at), info.elapsed_ms or None, result, info.error,
    )


def answer_of(info: pb.JobInfo, retries: int) -> Answer:
    """A finished job's Answer, as `submit` returns it; else the error its state means."""
    if info.state == "failed":
        raise JobFailed(f"job {info.job_id} failed: {info.error}")
    if info.state == "cancelled":
        raise JobCancelled(f"job {info.job_id} was cancelled")
    if info.state != "done":
        progress = f", {info.shards_done}/{info.shards} shards" if info.shards else ""
        raise JobPending(f"job {info.job_id} is {info.state}{progress}", info.state, info.shards_done,
                         info.shards)
    if not info.result_kept:  # said without "failed": the job did not fail
        raise JobError(f"job {info.job_id} is done, but {info.error}; submitting the same job with its "
                       "id computes it again")
    return Answer(
        job_id=info.job_id, op=info.op, array=tensor_from_proto(info.result), shards=info.shards,
        nodes=list(info.nodes), elapsed_ms=info.elapsed_ms, leader=info.leader, term=info.term,
        retries=retries,
    )


def failure(exc: FailedCall) -> Exception:
    """A job-table call's failed status: NOT_FOUND and FAILED_PRECONDITION are about the
    job (exit 1), not the request; the rest as for submit (retry.classify)."""
    if signed_by(exc.trailing_metadata()) is not None:
        details = exc.details() or ""
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            return UnknownJob(f"NOT_FOUND: {details}")
        if exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
            return JobFinished(f"FAILED_PRECONDITION: {details}")
    return classify(exc, accepted=False)


def with_job_id(exc: ClusterUnavailable, job_id: str, reached: bool) -> ClusterUnavailable:
    """A detached submit that ran out of time after some node answered may have been
    committed, its reply lost: its id, for `result`, is the caller's only handle on it."""
    if not reached:
        return exc
    return ClusterUnavailable(f"{exc}; job {job_id} may have been taken meanwhile: `result {job_id}` says")


def request_failure(exc: FailedCall) -> Exception:
    """A failed status of a call that asks for a new job (Enqueue): NOT_FOUND and
    FAILED_PRECONDITION are about the request (a missing file, a format this cluster
    does not read), as for an attached submit, not about a job in the table."""
    return classify(exc, accepted=False)


async def call_any(
    nodes: Nodes, call: Callable[[str, float], Awaitable[R]], what: str, deadline_s: float,
    tls: TlsFiles | None, meaning: Callable[[FailedCall], Exception] = failure,
) -> tuple[R, int]:
    """`call(address, remaining_s)` on the last leader seen, else any node, until one answers;
    (its reply, the failed attempts before it). The AsyncClient's retry loop, for every call:
    `call` raises AttemptFailed to have the next node tried, or lets a failed RPC through
    (`meaning` says what it means: `failure` for the job table's calls)."""
    plan = RetryPlan(nodes, what, deadline_s)
    for step in plan:
        if isinstance(step, float):
            await asyncio.sleep(step)
            continue
        address, remaining = step
        try:
            try:
                reply = await call(address, remaining)
            except grpc.aio.AioRpcError as exc:
                raise meaning(exc) from None
        except AttemptFailed as error:
            plan.failed_at(address, error)
            continue
        nodes.reached = True
        return reply, plan.failed
    if plan.unreachable:
        raise await asyncio.to_thread(unreachable, nodes.all(), tls, plan.unreached, deadline_s)
    raise plan.out_of_time()


def deadline(timeout_s: float, wait_s: float = 0.0) -> float:
    return time.monotonic() + timeout_s + wait_s


def call_any_blocking(
    nodes: Nodes, call: Callable[[str, float], R], what: str, deadline_s: float, tls: TlsFiles | None,
    meaning: Callable[[FailedCall], Exception] = failure,
) -> tuple[R, int]:
    """`call_any` for the blocking Client: its calls run on its own thread, with no
    hop to an event loop (a detached submit is a round trip, and it shows)."""
    plan = RetryPlan(nodes, what, deadline_s)
    for step in plan:
        if isinstance(step, float):
            time.sleep(step)
            continue
        address, remaining = step
        try:
            try:
                reply = call(address, remaining)
            except grpc.RpcError as exc:
                raise meaning(exc) from None
        except AttemptFailed as error:
            plan.failed_at(address, error)
            continue
        nodes.reached = True
        return reply, plan.failed
    if plan.unreachable:
        raise unreachable(nodes.all(), tls, plan.unreached, deadline_s)
    raise plan.out_of_time()
