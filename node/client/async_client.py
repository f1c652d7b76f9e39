"""`AsyncClient`: the Python API for asyncio code (`Client` in blocking.py is its twin).

Both follow one set of retry rules (retry.py): send the job to the last
leader seen, or any node (followers relay), and on a failure another node
may not share, try the next node with the same `job_id` until the deadline.

Most jobs answer in about a millisecond, so a submission is a bare `await`
of the call. Calls that run long are watched: one sweeper task per client,
alive only while calls are in flight, gives each call older than
PROBE_INTERVAL_S a watchdog that probes the node's Progress, reports it to
`on_progress`, and cancels the call when the node stops answering (paused,
cut off), so the retry moves on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, overload

import grpc

from node._proto import distnode_pb2 as pb
from node.channels import ChannelFactory, StubCache
from node.client.answer import (
    Answer,
    ClusterStatus,
    ProgressCallback,
    answer_file,
    answer_from,
    read_answer_file,
)
from node.client.async_local_stream import open_local
from node.client.fanout import Fanout
from node.client.jobs import JobStatus, answer_of, call_any, job_status, request_failure, with_job_id
from node.client.oneloop import OneLoop
from node.client.retry import (
    DEFAULT_TIMEOUT_S,
    MAX_CALL_S,
    PROBE_FAILURES,
    PROBE_INTERVAL_S,
    Nodes,
    checked_timeout,
    classify,
    first_probe_s,
    new_request,
)
from node.client.statusround import STATUS_TIMEOUT_S, cluster_view
from node.client.streams import SocketStream, SubmitStream, SubmitStreams, stream_answer, unary_instead
from node.core.limits import MAX_MESSAGE_BYTES
from node.errors import AttemptFailed, ClusterUnavailable, GaveUp, InvalidField
from node.security import TlsFiles, load_token
from node.wire.answers import SubmitAnswer
from node.wire.jobs import MAX_WAIT_S, check_wire_text
from node.wire.stubs import NodeStub

SubmitCall = grpc.aio.UnaryUnaryCall[pb.SubmitRequest, SubmitAnswer]
log = logging.getLogger("distnode.client")
#: A job's states from which it does not move on (node/core/jobtable.py's FINISHED).
FINISHED_STATES = ("done", "failed", "cancelled")
#: `result` asks again while this much of its wait is left and the job has not ended.
WAIT_AGAIN_S = 0.05


@dataclass
class Seen:
    """What the watchdog learnt: did the node ever confirm it holds the job?"""

    known: bool = False


@dataclass(eq=False)
class _Flight:
    """One AsyncClient attempt in flight, as its sweeper sees it."""

    stub: NodeStub
    job_id: str
    #: The unary call, or the future of the job's reply on a SubmitBatches stream; the watchdog cancels it.
    call: SubmitCall | asyncio.Future[pb.SubmitStreamReply]
    on_progress: ProgressCallback | None
    started_s: float
    seen: Seen = field(default_factory=Seen)
    watchdog: asyncio.Task[AttemptFailed] | None = None


class AsyncClient:
    """Talks to a distnode cluster from asyncio code. Use as `async with`.

    `token`: the cluster token (default: $DISTNODE_TOKEN, if set). `tls`:
    `TlsFiles(ca=...)` to verify the nodes, plus `cert`/`key` for mutual TLS.
    `max_message_bytes`: the largest answer accepted (the nodes' own
    `--max-message-bytes` bounds what they send). `local_socket`: send a node's
    jobs on its local socket once it names one (a node on this machine).
    """

    def __init__(
        self,
        addresses: Sequence[str] | str,
        timeout: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        tls: TlsFiles | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        local_socket: bool = True,
    ) -> None:
        self._nodes = Nodes(addresses)
        self.timeout = checked_timeout(timeout)
        token = token if token is not None else load_token(None)
        self._stubs = StubCache(ChannelFactory(tls, token, max_message_bytes))
        self._status_error = ""
        self._flights: set[_Flight] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False
        local = functools.partial(open_local, max_message_bytes=max_message_bytes) if local_socket else None
        self._streams = SubmitStreams(local)
        self._loop = OneLoop("AsyncClient")

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._loop.gone:
            self._closed, self._sweeper, self._flights = True, None, set()
            return
        self._loop.check()
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await self._streams.close()
        await self._stubs.close()

    def _stub(self, address: str) -> NodeStub:
        self._usable()
        return self._stubs.stub(address)

    def _usable(self) -> None:
        if self._closed:  # also a call still retrying when close() ran: no channel opens again
            raise ClusterUnavailable("this client is closed")
        self._loop.check()

    @overload
    async def submit(
        self, op: str, source: str, map: str | None = None, axis: int | None = None,
        bins: int | None = None, range: tuple[float, float] | None = None, job_id: str | None = None,
        timeout: float | None = None, on_progress: ProgressCallback | None = None,
        detach: Literal[False] = False, trace: bool = False,
    ) -> Answer: ...

    @overload
    async def submit(
        self, op: str, source: str, map: str | None = None, axis: int | None = None,
        bins: int | None = None, range: tuple[float, float] | None = None, job_id: str | None = None,
        timeout: float | None = None, on_progress: ProgressCallback | None = None, *,
        detach: Literal[True], trace: Literal[False] = False,
    ) -> str: ...

    async def submit(
        self, op: str, source: str, map: str | None = None, axis: int | None = None,
        bins: int | None = None, range: tuple[float, float] | None = None, job_id: str | None = None,
        timeout: float | None = None, on_progress: ProgressCallback | None = None,
        detach: bool = False, trace: bool = False,
    ) -> Answer | str:
        """Run one job and return its answer; with `detach`, return its job id as soon as
        the cluster has committed it (see `result`); with `trace`, the answer's `trace` is the
        job's timeline (Trace Event Format). Raises InvalidJob, JobError, ClusterUnavailable."""
        request = new_request(op, source, map, axis, bins, range, job_id, trace=trace, detach=detach)
        if detach:
            return (await self._enqueue(request, timeout)).job_id
        started, started_ns = time.perf_counter(), time.time_ns()
        on_stream = axis is None  # a vector answer keeps the unary Submit, read without copies
        with answer_file(request, on_stream) as target:
            async def attempt(address: str, remaining: float) -> SubmitAnswer:
                reply = await self._attempt(address, request, remaining, on_progress, on_stream)
                return reply if target is None else read_answer_file(target, reply)

            reply, failed = await call_any(
                self._nodes, attempt, request.job.job_id, self._deadline(timeout), self._tls
            )
        self._nodes.prefer(reply.head.leader_address)
        return answer_from(reply, started, failed, started_ns if trace else None)

    async def enqueue(
        self, op: str, source: str, map: str | None = None, axis: int | None = None,
        bins: int | None = None, range: tuple[float, float] | None = None, job_id: str | None = None,
        timeout: float | None = None,
    ) -> JobStatus:
        """`submit(..., detach=True)`, answered with the job as the table holds it once the
        cluster has committed it: queued, or, for an id already taken by the same job, its
        record as it stands (running, done, ...). Raises InvalidJob, JobError, ClusterUnavailable."""
        request = new_request(op, source, map, axis, bins, range, job_id, detach=True)
        return await self._enqueue(request, timeout)

    async def _enqueue(self, request: pb.SubmitRequest, timeout: float | None) -> JobStatus:
        self._usable()  # said before anything is sent: a closed client's error takes no job id

        async def call(address: str, remaining: float) -> pb.JobInfo:
            return await self._stub(address).Enqueue(request, timeout=remaining)

        try:
            info, _ = await call_any(self._nodes, call, request.job.job_id, self._deadline(timeout),
                                     self._tls, request_failure)
        except ClusterUnavailable as exc:
            raise with_job_id(exc, request.job.job_id, self._nodes.reached) from None
        self._nodes.prefer(info.leader_address)  # a follower relays Enqueue: one hop each way saved
        return job_status(info)

    async def result(self, job_id: str, wait: float = 0.0, timeout: float | None = None) -> Answer:
        """A job's answer from the job table of any node, waiting up to `wait` seconds for it
        to end. Raises JobPending (not done in time), JobFailed, JobCancelled, UnknownJob, and
        JobError for a done job whose answer's bytes were not kept (submitting the same job
        under its id computes it again)."""
        if not 0 <= wait <= MAX_CALL_S:  # NaN fails both
            raise InvalidField("wait", f"expected 0 to {MAX_CALL_S:g} seconds, got {wait!r}")
        request = pb.ResultRequest(job_id=check_wire_text("job_id", job_id))
        wait_until, deadline = time.monotonic() + wait, self._deadline(timeout, wait)

        async def call(address: str, remaining: float) -> pb.JobInfo:
            # What is left of the wait, not all of it again after a retry; a node waits
            # at most MAX_WAIT_S a call, so a longer wait asks again (below).
            request.wait_s = max(0.0, min(wait_until - time.monotonic(), remaining - 0.1, MAX_WAIT_S))
            return await self._stub(address).Result(request, timeout=remaining)

        pause_s = WAIT_AGAIN_S
        while True:
            asked_at = time.monotonic()
            info, retries = await call_any(self._nodes, call, job_id, deadline, self._tls)
            now = time.monotonic()
            if info.state in FINISHED_STATES or wait_until - now < WAIT_AGAIN_S:
                break
            if now - asked_at < request.wait_s - WAIT_AGAIN_S:  # answered sooner than asked: a pause
                await asyncio.sleep(min(pause_s, wait_until - now))
                pause_s = min(2 * pause_s, 1.0)
        self._nodes.prefer(info.leader_address)
        return answer_of(info, retries)

    async def jobs(self, state: str | None = None, limit: int = 100, timeout: float | None = None
                   ) -> list[JobStatus]:
        """Jobs from the job table of any node, newest first; only those in `state` if given."""
        if not isinstance(limit, numbers.Integral) or not 0 < limit < 1 << 32:
            raise InvalidField("limit", f"expected a positive integer, got {limit!r}")
        request = pb.JobsRequest(state=state or "", limit=limit)

        async def call(address: str, remaining: float) -> pb.JobsReply:
            return await self._stub(address).Jobs(request, timeout=remaining)

        reply, _ = await call_any(self._nodes, call, "jobs", self._deadline(timeout), self._tls)
        return [job_status(info) for info in reply.jobs]

    async def cancel(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Cancel a queued or running job. Raises JobFinished if it has ended, UnknownJob."""
        request = pb.CancelRequest(job_id=check_wire_text("job_id", job_id))

        async def call(address: str, remaining: float) -> pb.JobInfo:
            return await self._stub(address).Cancel(request, timeout=remaining)

        info, _ = await call_any(self._nodes, call, job_id, self._deadline(timeout), self._tls)
        self._nodes.prefer(info.leader_address)
        return job_status(info)

    def _deadline(self, timeout: float | None, wait: float = 0.0) -> float:
        return time.monotonic() + (self.timeout if timeout is None else checked_timeout(timeout)) + wait

    @property
    def _tls(self) -> TlsFiles | None:
        return self._stubs.factory.tls

    async def _attempt(
        self, address: str, request: pb.SubmitRequest, remaining: float, on_progress: ProgressCallback | None,
        on_stream: bool = False,
    ) -> SubmitAnswer:
        """One job at one node: on its SubmitBatches stream if `on_stream`; as a unary Submit if the
        node has none (an older version: remembered), or if the stream failed before it
        ever answered (then the unary call finds out whether the node is there)."""
        deadline = time.monotonic() + remaining
        if on_stream and self._streams.usable(address):
            stream = self._streams.to(address, self._stub(address))
            try:
                return await self._attempt_once(address, request, remaining, on_progress, stream)
            except AttemptFailed as failure:
                left = unary_instead(stream, self._streams.unsupported, address, failure, deadline)
                if left is None:
                    raise
                remaining = left
        return await self._attempt_once(address, request, remaining, on_progress, None)

    async def _attempt_once(
        self, address: str, request: pb.SubmitRequest, remaining: float, on_progress: ProgressCallback | None,
        stream: SubmitStream | SocketStream | None,
    ) -> SubmitAnswer:
        """One Submit to one node. A watchdog starts probing only if the job runs long.

        Most jobs answer in about a millisecond, so the fast path is a bare
        `await call`, registered in a set: no task, no timer per call. One
        sweeper task per client, alive only while calls are in flight, gives
        each call that has run PROBE_INTERVAL_S a watchdog task; that probes
        Progress, and if the node stops answering it cancels the call and
        leaves a `AttemptFailed` behind for us to raise. A call with under two
        intervals left has its watchdog from the start (`first_probe_s`).
        """
        stub = self._stub(address)
        waiting, unary = None, None
        if stream is not None:
            request.timeout_s = remaining
            waiting = await stream.send(request)
        else:
            unary = stub.Submit(request, timeout=remaining)
        handle = waiting if waiting is not None else unary
        assert handle is not None
        flight = _Flight(stub, request.job.job_id, handle, on_progress, time.monotonic())
        if (first_s := first_probe_s(remaining, PROBE_INTERVAL_S)) < PROBE_INTERVAL_S:  # before the sweeper
            flight.watchdog = asyncio.get_running_loop().create_task(self._watch(
                stub, flight.job_id, handle, on_progress, flight.seen, first_s))
        self._flights.add(flight)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        try:
            if unary is not None:
                return await unary
            assert waiting is not None
            try:
                async with asyncio.timeout(remaining):
                    reply = await waiting
            except TimeoutError:
                raise GaveUp("no answer before the client's timeout", accepted=flight.seen.known) from None
            except AttemptFailed as exc:  # the stream ended under the job
                raise AttemptFailed(str(exc), accepted=flight.seen.known, reached=exc.reached) from None
            return stream_answer(reply, flight.seen.known)
        except asyncio.CancelledError:
            # The watchdog cancelling the call, not our caller cancelling us, is a retry.
            task = asyncio.current_task()
            watchdog = flight.watchdog
            mine = task is not None and task.cancelling() > 0
            if not mine and watchdog is not None and watchdog.done() and not watchdog.cancelled():
                raise watchdog.result() from None
            if not mine and self._closed:  # close() ended our channel's calls, not a cancel of ours
                raise ClusterUnavailable("this client was closed during the call") from None
            raise
        except grpc.aio.AioRpcError as exc:
            raise classify(exc, flight.seen.known) from None
        finally:
            self._flights.discard(flight)
            if flight.watchdog is not None:
                flight.watchdog.cancel()
            if stream is not None and waiting is not None:
                stream.forget(request, waiting)

    async def _sweep(self) -> None:
        """Start a watchdog for each call in flight for PROBE_INTERVAL_S or more.

        Wakes every half interval, so probing starts 0.5-0.75 s into a call (sooner
        for one with little time: `_attempt_once`); ends as soon as nothing is in flight.
        """
        me = asyncio.current_task()  # its end may come with its loop gone (none is running then)
        try:
            while self._flights:
                await asyncio.sleep(PROBE_INTERVAL_S / 2)
                due = time.monotonic() - PROBE_INTERVAL_S
                for flight in self._flights:
                    if flight.watchdog is None and flight.started_s <= due:
                        flight.watchdog = asyncio.get_running_loop().create_task(self._watch(
                            flight.stub, flight.job_id, flight.call, flight.on_progress, flight.seen
                        ))
        finally:
            if self._sweeper is me:
                self._sweeper = None

    async def _watch(
        self, stub: NodeStub, job_id: str, call: SubmitCall | asyncio.Future[pb.SubmitStreamReply],
        on_progress: ProgressCallback | None, seen: Seen, first_s: float = 0.0,
    ) -> AttemptFailed:
        """Probe the node every PROBE_INTERVAL_S, first in `first_s`; cancel `call` after PROBE_FAILURES."""
        failures = 0
        await asyncio.sleep(first_s)
        while True:
            if await self._probe(stub, job_id, on_progress):
                failures, seen.known = 0, True
            else:
                failures += 1
                if failures >= PROBE_FAILURES:
                    call.cancel()
                    # reached: the call went out on a connection the node had accepted.
                    return GaveUp("node stopped answering progress probes", accepted=seen.known, reached=True)
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _probe(self, stub: NodeStub, job_id: str, on_progress: ProgressCallback | None) -> bool:
        try:
            reply = await stub.Progress(pb.ProgressRequest(job_id=job_id), timeout=PROBE_INTERVAL_S)
        except grpc.aio.AioRpcError:
            return False
        if reply.known and on_progress is not None:
            try:
                on_progress(reply.shards_done, reply.shards_total)
            except Exception:  # the caller's bug must not stop the watching
                log.exception("on_progress callback raised; ignored")
        return bool(reply.known)

    async def progress(self, job_id: str) -> tuple[int, int] | None:
        """(shards received, shards total) of a running or answered job; None if no node knows it.

        Every node is asked at once (followers relay to their leader): a paused
        node costs nothing while another answers.
        """
        check_wire_text("job_id", job_id)

        async def ask(address: str) -> pb.ProgressReply | None:
            try:
                return await self._stub(address).Progress(
                    pb.ProgressRequest(job_id=job_id), timeout=PROBE_INTERVAL_S
                )
            except grpc.aio.AioRpcError:
                return None

        async with Fanout(ask, self._nodes.order()) as answers:
            async for _, reply in answers:
                if reply is not None and reply.known:
                    return reply.shards_done, reply.shards_total
        return None

    async def status(self, timeout: float | None = None) -> ClusterStatus:
        """The leader's view of the cluster, or the freshest view without one, asking the
        nodes again until one answers or `timeout` (default STATUS_TIMEOUT_S, 5 s) passes
        (statusround.py)."""
        return await cluster_view(self._stub, self._nodes, self._stubs.factory.tls,
                                  STATUS_TIMEOUT_S if timeout is None else timeout)

    async def wait_for_leader(self, timeout: float | None = None) -> ClusterStatus:
        """Poll `status()` until a leader is known; ClusterUnavailable at the deadline."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                view = await self.status(timeout=max(0.1, deadline - time.monotonic()))
                if view.leader is not None:
                    return view
            except ClusterUnavailable:
                if self._closed:
                    raise
            if time.monotonic() >= deadline:
                raise ClusterUnavailable("no leader elected in time")
            await asyncio.sleep(0.05)
