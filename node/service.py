"""The gRPC servicer: translate requests into calls on the node, errors into statuses.

Expected failures become a status whose message names the field and the
problem (`INVALID_ARGUMENT: op: unknown op 'sums' ...`); anything unexpected
is logged with its traceback and answered `INTERNAL`. Nothing a client sends
can stop the node from serving the next request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NoReturn

import grpc

from node._proto import distnode_pb2 as pb
from node._proto import distnode_pb2_grpc as pb_grpc
from node.answerwire import SERVICE, serialize_submit_reply, submit_answer
from node.jobtypes import (
    JobConflict,
    JobFailed,
    JobSpecError,
    NotLeader,
    ReduceFailed,
    SourceForbidden,
    SourceNotFound,
)
from node.limits import JobTimedOut, LimitExceeded

if TYPE_CHECKING:
    from node.daemon import Daemon

log = logging.getLogger("distnode.service")

#: How long a follower waits for the leader when it relays a Progress probe.
RELAY_PROBE_S = 1.0


async def abort(context: Any, code: Any, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover


#: Expected failures and their statuses, most specific class first (the
#: Source* errors are JobSpecErrors). Anything else is a bug: INTERNAL.
STATUS_OF: tuple[tuple[type[Exception], Any], ...] = (
    (LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (JobTimedOut, grpc.StatusCode.DEADLINE_EXCEEDED),
    (SourceForbidden, grpc.StatusCode.PERMISSION_DENIED),
    (SourceNotFound, grpc.StatusCode.NOT_FOUND),
    (JobSpecError, grpc.StatusCode.INVALID_ARGUMENT),
    (JobConflict, grpc.StatusCode.ALREADY_EXISTS),
    (NotLeader, grpc.StatusCode.UNAVAILABLE),
    (JobFailed, grpc.StatusCode.INTERNAL),
)
EXPECTED_ERRORS = tuple(cls for cls, _ in STATUS_OF)


async def abort_for(context: Any, exc: Exception) -> NoReturn:
    """Map a core exception to its status; unknown ones are bugs → INTERNAL."""
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            message = f"not the leader any more: {exc}" if cls is NotLeader else str(exc)
            await abort(context, code, message)
    log.error("unexpected error", exc_info=exc)
    await abort(context, grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


#: No honest cluster gets near this many terms; a bigger one is an attack on
#: the election (term + 1 would overflow the wire's uint64).
MAX_TERM = 1 << 62


async def check_member(context: Any, daemon: Daemon, field: str, node_id: str) -> None:
    if not node_id:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{field}: must not be empty")
    if node_id == daemon.node_id:
        await abort(
            context, grpc.StatusCode.PERMISSION_DENIED, f"{field}: {node_id!r} is this node's own id"
        )
    if not daemon.is_member(node_id):
        await abort(
            context, grpc.StatusCode.PERMISSION_DENIED,
            f"{field}: {node_id!r} is not a member of this cluster",
        )


async def check_term(context: Any, term: int) -> None:
    if term > MAX_TERM:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"term: {term} is beyond {MAX_TERM}")


class _Handlers:
    """Stands in for a server to catch the generated code's handler table."""

    def __init__(self) -> None:
        self.table: dict[str, Any] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, table: dict[str, Any]) -> None:
        self.table = dict(table)


def add_to_server(servicer: NodeServicer, server: Any) -> None:
    """The generated registration, except that Submit's answer is serialised by
    `answerwire.serialize_submit_reply` (one copy of a vector answer, not four)."""
    caught = _Handlers()
    pb_grpc.add_NodeServicer_to_server(servicer, caught)
    table = caught.table
    table["Submit"] = table["Submit"]._replace(response_serializer=serialize_submit_reply)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, table),))
    server.add_registered_method_handlers(SERVICE, table)


class NodeServicer(pb_grpc.NodeServicer):  # type: ignore[misc]
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        #: Jobs in flight per client connection (`context.peer()`), first hop only.
        self._in_flight: dict[str, int] = {}

    async def RequestVote(self, request: Any, context: Any) -> Any:
        await check_member(context, self.daemon, "candidate_id", request.candidate_id)
        await check_term(context, request.term)
        return self.daemon.handle_vote(request)

    async def Heartbeat(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """One reply per heartbeat on the leader's long-lived stream."""
        async for request in request_iterator:
            await check_member(context, self.daemon, "leader_id", request.leader_id)
            await check_term(context, request.term)
            yield self.daemon.handle_heartbeat(request)

    async def Submit(self, request: Any, context: Any) -> Any:
        if not request.job.job_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "job_id: must not be empty")
        if request.forwarded:
            return await self._submit(request, context)
        client = context.peer()
        limit = self.daemon.config.limits.max_jobs_per_client
        if self._in_flight.get(client, 0) >= limit:
            await abort(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"max-jobs-per-client: {limit} jobs already in flight from {client}",
            )
        self._in_flight[client] = self._in_flight.get(client, 0) + 1
        try:
            return await self._submit(request, context)
        finally:
            self._in_flight[client] -= 1
            if not self._in_flight[client]:
                del self._in_flight[client]

    async def _submit(self, request: Any, context: Any) -> Any:
        if not self.daemon.is_leader:
            return await self._forward(request, context)
        await self.daemon.compute_ready()
        try:
            outcome = await self.daemon.jobs.submit(request.job.job_id, self.daemon.job_of(request))
        except EXPECTED_ERRORS as exc:
            await abort_for(context, exc)
        return submit_answer(
            outcome.result,
            job_id=outcome.job_id,
            op=outcome.op,
            shards=outcome.shards,
            nodes=list(outcome.nodes),
            elapsed_ms=outcome.elapsed_ms,
            leader=self.daemon.node_id,
            term=self.daemon.election.term,
            leader_address=self.daemon.config.address,
        )

    async def _forward(self, request: Any, context: Any) -> Any:
        """A follower relays a submission to the leader it knows, once."""
        leader = self.daemon.leader_address
        if request.forwarded or not leader:
            await abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                f"no leader known to {self.daemon.node_id} (term {self.daemon.election.term}); retry",
            )
        relayed = pb.SubmitRequest(job=request.job, forwarded=True)
        try:
            return await self.daemon.channels.stub(leader).SubmitRelay(
                relayed, timeout=context.time_remaining()
            )
        except grpc.aio.AioRpcError as exc:
            await abort(context, exc.code(), exc.details() or "leader unreachable")

    async def Compute(self, request: Any, context: Any) -> Any:
        await check_member(context, self.daemon, "leader_id", request.leader_id)
        await self.daemon.compute_ready()
        try:
            sent = await self.daemon.worker.compute(request, context.time_remaining())
        except JobSpecError as exc:
            await abort_for(context, exc)
        except grpc.aio.AioRpcError as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, f"reduce_to: {exc.details()}")
        except ReduceFailed as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))
        return pb.ComputeReply(shards_sent=sent)

    async def Reduce(self, request_iterator: AsyncIterator[Any], context: Any) -> Any:
        accepted = dropped = 0
        await self.daemon.compute_ready()
        from node.wire import partial_from_proto  # loaded with the compute stack, not at start-up

        async for partial in request_iterator:
            try:
                state = partial_from_proto(partial)
            except ValueError as exc:
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"state: {exc}")
            member = self.daemon.is_member(partial.node_id)
            if member and self.daemon.jobs.accept_partial(
                partial.job_id, partial.shard, partial.node_id, state
            ):
                accepted += 1
            else:
                dropped += 1
        return pb.ReduceReply(accepted=accepted, dropped=dropped)

    async def Progress(self, request: Any, context: Any) -> Any:
        if self.daemon.is_leader:
            await self.daemon.compute_ready()
            known, done, total = self.daemon.jobs.progress(request.job_id)
            return pb.ProgressReply(known=known, shards_done=done, shards_total=total)
        leader = self.daemon.leader_address
        if not leader:
            await abort(context, grpc.StatusCode.UNAVAILABLE, "no leader known; retry")
        try:
            return await self.daemon.channels.stub(leader).Progress(request, timeout=RELAY_PROBE_S)
        except grpc.aio.AioRpcError as exc:
            await abort(context, exc.code(), exc.details() or "leader unreachable")

    async def Status(self, request: Any, context: Any) -> Any:
        return self.daemon.status()
