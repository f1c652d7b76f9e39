"""The gRPC servicer: protobuf in, one call on the node (`api.NodeApi`), protobuf or a status out.

It holds no state and makes no decision; what a request means is the node's
business. Expected failures are the classes of node/errors.py and become one
status each (`STATUS_OF`), with the exception's message, which names the field
and the problem (`INVALID_ARGUMENT: op: unknown op 'sums' ...`). Anything else
is a bug: logged with its traceback and answered `INTERNAL`, and the node goes
on serving.

Every error status carries the node's id as a trailer (node/wire/status.py),
so a client can tell a node's refusal from a connection that never reached
one. The UDP heartbeat listener (beacons.py) answers with `beat_reply` too,
so a beat means the same whichever way it came.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from node._proto import distnode_pb2 as pb
from node._proto import distnode_pb2_grpc as pb_grpc
from node.core.halt import ShardHalted
from node.core.jobtable import STATES
from node.errors import (
    Forbidden,
    InvalidField,
    InvalidJob,
    JobCancelled,
    JobConflict,
    JobFailed,
    JobFinished,
    JobTimedOut,
    LimitExceeded,
    MissingExtra,
    NoLeader,
    NotLeader,
    ReduceFailed,
    RelayFailed,
    RunAbandoned,
    SourceNotFound,
    UnknownJob,
)
from node.server.api import (
    Answered,
    BeatAnswer,
    Caller,
    IncomingPartial,
    JobView,
    NodeApi,
    StatusView,
    Submitted,
)
from node.server.beatstream import answers_as_ready, snapshots_whole
from node.server.computelink import Computed, LinkCallFailed
from node.server.dispatch import incoming
from node.server.jobinfo import view_to_info
from node.server.jobstream import JobStream
from node.server.linkserve import CallHalt, SendBlocking
from node.server.stealing import CallSkips
from node.wire.answerfile import check_name, deliver
from node.wire.answers import SubmitAnswer, submit_answer
from node.wire.jobs import MAX_WAIT_S, check_job_id, job_from_proto
from node.wire.log import beat_from_proto
from node.wire.status import node_trailer
from node.wire.trace import spans_to_json

log = logging.getLogger("distnode.service")

T = TypeVar("T")
DEFAULT_JOBS_LIMIT = 100
#: A `Jobs` listing carries results up to this size each, and this much in all.
JOBS_RESULT_MAX_BYTES = 64 << 10
JOBS_RESULT_BYTES = 4 << 20
MAX_JOBS_LIMIT = 10_000
Context = grpc.aio.ServicerContext[Any, Any]

#: Expected failures and their statuses, most specific class first (the
#: Source* errors are InvalidFields, JobConflict an InvalidJob).
STATUS_OF: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (JobTimedOut, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Forbidden, grpc.StatusCode.PERMISSION_DENIED),
    (SourceNotFound, grpc.StatusCode.NOT_FOUND),
    (JobConflict, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidJob, grpc.StatusCode.INVALID_ARGUMENT),
    (NotLeader, grpc.StatusCode.UNAVAILABLE),
    (NoLeader, grpc.StatusCode.UNAVAILABLE),
    (ReduceFailed, grpc.StatusCode.UNAVAILABLE),
    (RunAbandoned, grpc.StatusCode.UNAVAILABLE),
    (MissingExtra, grpc.StatusCode.FAILED_PRECONDITION),
    (UnknownJob, grpc.StatusCode.NOT_FOUND),
    (JobFinished, grpc.StatusCode.FAILED_PRECONDITION),
    (JobCancelled, grpc.StatusCode.FAILED_PRECONDITION),
    (JobFailed, grpc.StatusCode.INTERNAL),
)


def status_of(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and message a failure is answered with; unknown ones are bugs: INTERNAL."""
    if isinstance(exc, RelayFailed):
        return grpc.StatusCode[exc.code], str(exc)
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            message = f"not the leader any more: {exc}" if cls is NotLeader else str(exc)
            return code, message
    log.error("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


async def answer(node: NodeApi, context: Context, call: Awaitable[T]) -> T:
    """Await the node's call; a failure becomes the call's status, signed by the node."""
    try:
        return await call
    except Exception as exc:  # CancelledError is not an Exception: a cancelled call stays cancelled
        failure = exc
    await context.abort(*status_of(failure), trailing_metadata=node_trailer(node.node_id))


def beat_reply(node_id: str, beat: BeatAnswer, max_message_bytes: int) -> pb.HeartbeatReply:
    """The reply to one heartbeat, whichever way it came (gRPC stream or UDP datagram)."""
    return pb.HeartbeatReply(
        term=beat.term, node_id=node_id, role=beat.role, storage_error=beat.storage_error,
        refused=beat.refused, match_index=beat.match_index, writing=beat.writing, serial=beat.serial,
        takes_snapshot_chunks=True, max_message_bytes=max_message_bytes,
    )


def status_reply(view: StatusView) -> pb.StatusReply:
    reply = pb.StatusReply(
        node_id=view.node_id, role=view.role, term=view.term,
        leader_id=view.leader_id, leader_address=view.leader_address, sources=view.sources,
        log_index=view.log_index, commit_index=view.commit_index,
    )
    for name, value in view.settings.items():
        setattr(reply, name, value)
    for node in view.nodes:
        heard = -1.0 if node.last_heartbeat_ms is None else node.last_heartbeat_ms
        reply.nodes.append(pb.NodeStatus(
            id=node.id, address=node.address, role=node.role, term=node.term,
            alive=node.alive, last_heartbeat_ms=heard, storage_error=node.storage_error,
            problem=node.problem, failures=node.failures,
        ))
    return reply


def submit_reply(submitted: Answered | bytes, trace: bool = False) -> SubmitAnswer | bytes:
    """The reply to Submit; with `trace`, the run's spans go with it (none for an answer the
    leader remembered rather than ran)."""
    if isinstance(submitted, bytes):
        return submitted
    outcome = submitted.outcome
    return submit_answer(
        outcome.result, job_id=outcome.job_id, op=outcome.op, shards=outcome.shards,
        nodes=list(outcome.nodes), elapsed_ms=outcome.elapsed_ms, leader=submitted.leader,
        term=submitted.term, leader_address=submitted.leader_address,
        trace_json=spans_to_json(outcome.trace) if trace else "",
    )


class NodeServicer(pb_grpc.NodeServicer):
    def __init__(self, node: NodeApi) -> None:
        self.node = node
        #: The node's local socket (localsocket.py), told to SubmitBatches clients; None: none.
        self.local: pb.LocalEndpoint | None = None

    async def RequestVote(self, request: pb.VoteRequest, context: Context) -> pb.VoteReply:
        vote = await answer(self.node, context, self.node.request_vote(
            request.candidate_id, request.term, request.pre_vote, request.last_index, request.last_term
        ))
        return pb.VoteReply(term=vote.term, granted=vote.granted, voter_id=self.node.node_id)

    async def Heartbeat(
        self, request_iterator: AsyncIterator[pb.HeartbeatRequest], context: Context
    ) -> AsyncIterator[pb.HeartbeatReply]:
        """One reply per heartbeat on the leader's long-lived stream.

        A refused beat ends the stream with its status; the generator returns
        rather than raising through `abort`, which gRPC would then have to
        close while it still runs. When the leader ends the stream instead
        (its process died, or it stopped leading), the node hears of it at
        once (`leader_stream_closed`), not an election timeout later.

        Beats are answered as their answers are ready (beatstream.py): a bare
        beat behind one whose entries are being written is answered at once.
        A snapshot in chunks is stepped once it is whole, each chunk before
        that as a bare beat, answered writing (snapshotchunks.py).
        """
        sender: list[tuple[str, int]] = []  # the leader and term of the last beat stepped
        refusal: list[Exception] = []

        def ended(_: Context) -> None:  # however the RPC ended: run by gRPC, not by this generator
            if sender:
                self.node.leader_stream_closed(*sender[-1])

        async def step(
            request: pb.HeartbeatRequest, snapshot: bytes | None, reply: Callable[[pb.HeartbeatReply], None]
        ) -> None:
            message = beat_from_proto(request, self.node.node_id, self.node.tick_ms, snapshot)
            node = self.node
            await node.heartbeat(message, request.beacon_key,
                                 lambda beat: reply(beat_reply(node.node_id, beat, node.max_bytes)))
            sender[:] = [(message.src, message.term)]

        context.add_done_callback(ended)  # type: ignore[arg-type]  # the stub wants its own class, not a callable
        async for answer in answers_as_ready(request_iterator, snapshots_whole(step), refusal):
            yield answer
        if refusal:
            sender.clear()  # our refusal ends it: nothing to learn from that
            code, details = status_of(refusal[0])
            context.set_code(code)
            context.set_details(details)
            context.set_trailing_metadata(node_trailer(self.node.node_id))

    # The reply is a SubmitAnswer or relayed bytes, not a SubmitReply: add_to_server
    # gives Submit its own serializer, which the generated signature cannot know.
    async def Submit(  # type: ignore[override]
        self, request: pb.SubmitRequest, context: Context
    ) -> SubmitAnswer | bytes:
        submitted = await answer(self.node, context, self._submit(request, context))
        reply = submit_reply(submitted if isinstance(submitted, Answered) else submitted.reply, request.trace)
        if isinstance(reply, SubmitAnswer) and request.HasField("answer_file"):
            return deliver(reply, request.answer_file)
        return reply

    async def _submit(
        self, request: pb.SubmitRequest, caller: Caller, timeout_s: float | None = None
    ) -> Submitted:
        spec = request.job
        check_job_id(spec.job_id)
        malformed = check_name(request.answer_file)
        if malformed is not None:
            raise InvalidField("answer_file.name", malformed)
        return await self.node.submit(
            spec.job_id, job_from_proto(spec), caller.peer(), request.forwarded,
            caller.time_remaining() if timeout_s is None else timeout_s, request.trace,
            request.answer_file if request.HasField("answer_file") else None,
        )

    async def SubmitBatches(
        self, request_iterator: AsyncIterator[pb.SubmitBatch], context: Context
    ) -> AsyncIterator[pb.SubmitBatchReply]:
        """Each job as Submit would run it, at once, answered when it ends (jobstream.py);
        the stream ends when the client has half-closed and every job has been answered.
        A node with a local socket names it first, so the client can move before its
        first job ends."""
        stream = JobStream(functools.partial(self.stream_job, context), self.stream_failed)
        if self.local is not None:
            yield pb.SubmitBatchReply(local=self.local)
        async for batch in stream.replies(request_iterator):
            yield batch

    async def stream_job(self, caller: Caller, request: pb.SubmitRequest) -> pb.SubmitStreamReply:
        """One job of a stream (gRPC's or the local socket's), run as Submit would run it;
        its failure is its reply."""
        job_id = request.job.job_id
        timeout_s = request.timeout_s if request.timeout_s > 0 else None
        try:
            submitted = await self._submit(request, caller, timeout_s)
        except Exception as exc:  # the stream goes on
            return self.stream_failed(job_id, exc)
        if isinstance(submitted, Answered):
            answer = submit_reply(submitted, request.trace)
            assert isinstance(answer, SubmitAnswer)
            reply = answer.head
            reply.result.data = bytes(answer.data)
        else:  # relayed: the leader's reply, as it sent it
            reply = pb.SubmitReply.FromString(submitted.reply)
        return pb.SubmitStreamReply(job_id=job_id, reply=reply, node_id=self.node.node_id)

    def stream_failed(self, job_id: str, exc: Exception) -> pb.SubmitStreamReply:
        code, message = status_of(exc)
        return pb.SubmitStreamReply(job_id=job_id, code=code.value[0], message=message,
                                    node_id=self.node.node_id)

    async def Compute(self, request: pb.ComputeRequest, context: Context) -> pb.ComputeReply:
        done = await answer(self.node, context, self._compute(request, context.time_remaining()))
        reply = pb.ComputeReply(shards_sent=done.sent, skipped=done.skipped)
        if self.local is not None:  # a leader in our network namespace calls us there next
            reply.local.CopyFrom(self.local)
        return reply

    async def link_pool(self) -> Executor:
        return await self.node.links.pool()

    def link_compute(
        self, request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips,
        queued_ns: int,
    ) -> Computed:
        """`Compute` on a compute link, in the pool's thread (linkserve.py): the same call,
        its partials sent with `send`, its shards skipped as `skips` says; a failure is
        LinkCallFailed with the status gRPC would have given."""
        try:
            shards = [(s.index, s.start, s.stop) for s in request.shards]
            return self.node.links.compute(request.job.job_id, job_from_proto(request.job), shards,
                                           request.leader_id, halted, send, skips, queued_ns, request.run)
        except ShardHalted:
            raise
        except Exception as exc:
            code, message = status_of(exc)
            raise LinkCallFailed(f"{code.name}: {message}") from None

    async def _compute(self, request: pb.ComputeRequest, timeout_s: float | None) -> Computed:
        shards = [(s.index, s.start, s.stop) for s in request.shards]
        job = job_from_proto(request.job)
        return await self.node.compute(request.job.job_id, job, shards, request.leader_id, timeout_s,
                                       request.run)

    async def Skip(self, request: pb.SkipShards, context: Context) -> pb.SkipReply:
        shards = list(request.shards)
        skipped = await answer(self.node, context, self.node.skip(request.job_id, shards, request.leader_id))
        return pb.SkipReply(skipped=skipped)

    async def Reduce(self, request_iterator: AsyncIterator[pb.Partial], context: Context) -> pb.ReduceReply:
        count = await answer(self.node, context, self.node.reduce(_partials(request_iterator)))
        return pb.ReduceReply(accepted=count.accepted, dropped=count.dropped)

    async def Progress(self, request: pb.ProgressRequest, context: Context) -> pb.ProgressReply:
        progress = await answer(self.node, context, self.node.progress(request.job_id))
        return pb.ProgressReply(
            known=progress.known, shards_done=progress.shards_done, shards_total=progress.shards_total,
            shards_by_node=progress.by_node,
        )

    async def Status(self, request: pb.StatusRequest, context: Context) -> pb.StatusReply:
        return status_reply(await answer(self.node, context, self.node.status()))

    async def Enqueue(self, request: pb.SubmitRequest, context: Context) -> pb.JobInfo:
        return view_to_info(await answer(self.node, context, self._enqueue(request, context)))

    async def _enqueue(self, request: pb.SubmitRequest, context: Context) -> JobView:
        check_job_id(request.job.job_id)
        job = job_from_proto(request.job)
        return await self.node.enqueue(request.job.job_id, job, context.peer(), request.forwarded)

    async def Result(self, request: pb.ResultRequest, context: Context) -> pb.JobInfo:
        return view_to_info(await answer(self.node, context, self._result(request, context)))

    async def _result(self, request: pb.ResultRequest, context: Context) -> JobView:
        if not request.job_id:  # an id already recorded is read as it is, however long (check_job_id)
            raise InvalidField("job_id", "must not be empty")
        if not 0 <= request.wait_s <= MAX_WAIT_S:  # NaN fails both
            raise InvalidField("wait_s", f"must be 0 to {MAX_WAIT_S:g} seconds, got {request.wait_s}")
        remaining = context.time_remaining()
        wait_s = request.wait_s if remaining is None else min(request.wait_s, max(0.0, remaining - 0.05))
        return await self.node.result(request.job_id, wait_s, request.forwarded)

    async def Jobs(self, request: pb.JobsRequest, context: Context) -> pb.JobsReply:
        views = await answer(self.node, context, self._jobs(request))
        reply = pb.JobsReply()
        budget = JOBS_RESULT_BYTES  # a listing shows results while they are small; `Result` shows any
        for view in views:
            info = view_to_info(view)
            if info.result_kept and len(info.result.data) > min(budget, JOBS_RESULT_MAX_BYTES):
                info.ClearField("result")
                info.result_kept = False
                info.error = info.error or "result not listed (too big for a listing): use Result"
            budget -= len(info.result.data)
            reply.jobs.append(info)
        return reply

    async def _jobs(self, request: pb.JobsRequest) -> list[JobView]:
        if request.state and request.state not in STATES:
            raise InvalidField("state", f"unknown state {request.state!r}; one of {', '.join(STATES)}")
        limit = request.limit or DEFAULT_JOBS_LIMIT
        if limit > MAX_JOBS_LIMIT:
            raise InvalidField("limit", f"{limit} is more than {MAX_JOBS_LIMIT}")
        return await self.node.list_jobs(request.state or None, limit, request.forwarded)

    async def Cancel(self, request: pb.CancelRequest, context: Context) -> pb.JobInfo:
        return view_to_info(await answer(self.node, context, self._cancel(request)))

    async def _cancel(self, request: pb.CancelRequest) -> JobView:
        if not request.job_id:  # an id already recorded is read as it is, however long (check_job_id)
            raise InvalidField("job_id", "must not be empty")
        return await self.node.cancel(request.job_id, request.forwarded)


async def _partials(messages: AsyncIterator[pb.Partial]) -> AsyncIterator[IncomingPartial]:
    async for message in messages:
        yield incoming(message)
