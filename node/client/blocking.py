"""`Client`: the blocking twin of `AsyncClient`, with a synchronous fast path.

`submit` works in the caller's thread on gRPC's synchronous API: no
event-loop thread (handing each call to one and back cost a third of a
millisecond) and no call future (gRPC's channel thread handing the answer
over cost ~0.15-0.2 ms). A job with a scalar answer goes on the calling
thread's own SubmitBatches stream to the node (`client/blocking_stream.py`; one
message each way on an open stream costs 0.6-0.7 of a unary call), a vector
answer on a unary `Submit`, read without copies, as in AsyncClient. Jobs
that run long are watched from one background thread (`node.client.watchdog`),
which probes Progress as AsyncClient's watchdog does and, if the node stops
answering, closes its channel so the call ends and the caller retries
elsewhere; it also ends a streamed job at the client's timeout. The retry rules are AsyncClient's
(one `RetryPlan` over one `Nodes` list, one `classify`). `on_progress` is
called from the watchdog thread. `status`, `progress` and `wait_for_leader`
are not latency-critical and run on an AsyncClient in a private loop thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, Literal, TypeVar, overload

import grpc

from node._proto import distnode_pb2 as pb
from node.channels import ChannelFactory
from node.client.answer import (
    Answer,
    ClusterStatus,
    ProgressCallback,
    answer_file,
    answer_from,
    read_answer_file,
)
from node.client.async_client import AsyncClient
from node.client.blocking_stream import ThreadStream, ThreadStreams
from node.client.jobs import JobStatus, call_any_blocking, request_failure, with_job_id
from node.client.local_stream import CONNECT_TIMEOUT_S, LocalStream
from node.client.retry import (
    DEFAULT_TIMEOUT_S,
    PROBE_FAILURES,
    PROBE_INTERVAL_S,
    Nodes,
    checked_timeout,
    classify,
    new_request,
)
from node.client.streams import stream_answer, unary_instead
from node.client.watchdog import Watch, Watchdog
from node.core.limits import MAX_MESSAGE_BYTES
from node.errors import AttemptFailed, ClusterUnavailable, GaveUp
from node.security import TlsFiles, load_token
from node.wire.answers import SubmitAnswer
from node.wire.stubs import BlockingNodeStub

T = TypeVar("T")


class Client:
    """Blocking client: `submit`, `result`, `jobs`, `cancel`, `status`, `progress`,
    `wait_for_leader`, `close`."""

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
        self._factory = ChannelFactory(tls, token, max_message_bytes)
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, BlockingNodeStub] = {}
        self._lock = threading.Lock()
        #: Set by close(), under the lock: no channel is opened after it.
        self._closed = False
        #: Calls of other threads on the loop, which close() ends (under the lock).
        self._in_flight: set[concurrent.futures.Future[Any]] = set()
        self._streams = ThreadStreams(max_message_bytes, local_socket)
        self._watchdog = Watchdog(self._probe, self._abandon, PROBE_INTERVAL_S, PROBE_FAILURES)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="distnode-client", daemon=True)
        self._thread.start()
        self._async = self._call(_make_async(self._nodes.all(), timeout, token, tls, max_message_bytes))

    # -- the synchronous submit path --------------------------------------

    @overload
    def submit(
        self, op: str, source: str, map: str | None = None, axis: int | None = None,
        bins: int | None = None, range: tuple[float, float] | None = None, job_id: str | None = None,
        timeout: float | None = None, on_progress: ProgressCallback | None = None,
        detach: Literal[False] = False, trace: bool = False,
    ) -> Answer: ...

    @overload
    def submit(
        self, op: str, source: str, map: str | None = None, axis: int | None = None,
        bins: int | None = None, range: tuple[float, float] | None = None, job_id: str | None = None,
        timeout: float | None = None, on_progress: ProgressCallback | None = None, *,
        detach: Literal[True], trace: Literal[False] = False,
    ) -> str: ...

    def submit(
        self,
        op: str,
        source: str,
        map: str | None = None,
        axis: int | None = None,
        bins: int | None = None,
        range: tuple[float, float] | None = None,
        job_id: str | None = None,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        detach: bool = False,
        trace: bool = False,
    ) -> Answer | str:
        """Run one job and return its answer; with `detach`, return its job id once the
        cluster has committed it; with `trace`, the answer's `trace` is the job's timeline
        (Trace Event Format). Raises InvalidJob, JobError, ClusterUnavailable."""
        if self._loop.is_closed():
            raise ClusterUnavailable("this client is closed")
        request = new_request(op, source, map, axis, bins, range, job_id, trace=trace, detach=detach)
        deadline = time.monotonic() + (self.timeout if timeout is None else checked_timeout(timeout))
        if detach:
            def enqueue(address: str, remaining: float) -> pb.JobInfo:
                info: pb.JobInfo = self._stub(address).Enqueue(request, timeout=remaining)
                return info

            try:
                info, _ = call_any_blocking(self._nodes, enqueue, request.job.job_id, deadline,
                                            self._factory.tls, request_failure)
            except ClusterUnavailable as exc:
                raise with_job_id(exc, request.job.job_id, self._nodes.reached) from None
            self._nodes.prefer(info.leader_address)  # a follower relays Enqueue: one hop each way saved
            return info.job_id
        started, started_ns = time.perf_counter(), time.time_ns()
        on_stream = axis is None  # a vector answer keeps the unary Submit, read without copies
        with answer_file(request, on_stream) as target:
            def attempt(address: str, remaining: float) -> SubmitAnswer:
                reply = self._attempt(address, request, remaining, on_progress, on_stream)
                return reply if target is None else read_answer_file(target, reply)

            reply, failed = call_any_blocking(self._nodes, attempt, request.job.job_id, deadline,
                                              self._factory.tls)
        self._nodes.prefer(reply.head.leader_address)
        return answer_from(reply, started, failed, started_ns if trace else None)

    def _attempt(
        self, address: str, request: pb.SubmitRequest, remaining: float, on_progress: ProgressCallback | None,
        on_stream: bool,
    ) -> SubmitAnswer:
        """One job at one node: on this thread's SubmitBatches stream if `on_stream`; as a unary
        Submit if the node has none (an older version: remembered), or if the stream failed
        before it ever answered (then the unary call finds out whether the node is there)."""
        deadline = time.monotonic() + remaining
        if on_stream and self._streams.usable(address):
            stub, channel = self._stub_and_channel(address)
            stream = self._streams.to(address, stub, channel, min(CONNECT_TIMEOUT_S, remaining))
            remaining = deadline - time.monotonic()  # less a local socket's handshake, if one was made
            if remaining <= 0:
                raise GaveUp("no answer before the client's timeout", reached=True)
            try:
                return self._attempt_once(address, request, remaining, on_progress, stream)
            except AttemptFailed as failure:
                left = unary_instead(stream, self._streams.unsupported, address, failure, deadline)
                if left is None:
                    raise
                remaining = left
        return self._attempt_once(address, request, remaining, on_progress, None)

    def _attempt_once(
        self, address: str, request: pb.SubmitRequest, remaining: float, on_progress: ProgressCallback | None,
        stream: ThreadStream | LocalStream | None,
    ) -> SubmitAnswer:
        stub, channel = self._stub_and_channel(address)
        # A job on a stream has no gRPC deadline: the watchdog ends its stream at the
        # client's. watch() raises ClusterUnavailable if close() ran in another thread meanwhile.
        with self._watchdog.watch(
            address, request.job.job_id, on_progress, channel, time.monotonic() + remaining,
            stream.cancel if stream is not None else None,
        ) as watch:
            try:
                if stream is None:
                    return stub.Submit(request, timeout=remaining)
                request.timeout_s = remaining
                try:
                    reply = stream.run(request)
                except AttemptFailed as exc:
                    if watch.timed_out:
                        raise GaveUp("no answer before the client's timeout",
                                     accepted=watch.known, reached=True) from None
                    if watch.abandoned:
                        raise GaveUp("node stopped answering progress probes",
                                     accepted=watch.known, reached=True) from None
                    raise AttemptFailed(str(exc), accepted=watch.known, reached=exc.reached) from None
                return stream_answer(reply, watch.known)
            except grpc.RpcError as exc:
                if watch.abandoned:  # reached: the node had accepted the connection
                    raise GaveUp(
                        "node stopped answering progress probes", accepted=watch.known, reached=True
                    ) from None
                raise classify(exc, watch.known) from None
            except ValueError as exc:  # another thread's watch closed this channel just now
                raise AttemptFailed(f"channel closed: {exc}", accepted=False, reached=True) from None

    def _probe(self, address: str, job_id: str) -> tuple[int, int] | None:
        """The watchdog's question to `address`: how far is `job_id`? None: not known there."""
        try:
            reply = self._stub(address).Progress(
                pb.ProgressRequest(job_id=job_id), timeout=PROBE_INTERVAL_S
            )
        except (grpc.RpcError, ValueError):
            return None
        return (reply.shards_done, reply.shards_total) if reply.known else None

    def _abandon(self, watch: Watch) -> None:
        """Close the watched call's channel: its calls end with CANCELLED, and the
        next call to that node opens a fresh one (unless one was opened meanwhile)."""
        with self._lock:
            if self._channels.get(watch.address) is watch.channel:
                del self._channels[watch.address]
                self._stubs.pop(watch.address, None)
        watch.channel.close()
        if watch.on_deadline is not None:  # a job on a stream: a local socket's is not the channel's
            watch.on_deadline()

    def _stub(self, address: str) -> BlockingNodeStub:
        return self._stub_and_channel(address)[0]

    def _stub_and_channel(self, address: str) -> tuple[BlockingNodeStub, grpc.Channel]:
        with self._lock:
            if self._closed:  # close() ran in another thread: a channel opened now would leak
                raise ClusterUnavailable("this client is closed")
            stub = self._stubs.get(address)
            if stub is None:
                channel = self._factory.blocking(address)
                self._channels[address] = channel
                stub = self._stubs[address] = BlockingNodeStub(channel, self._factory.metadata)
            return stub, self._channels[address]

    # -- everything else, through the AsyncClient --------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()  # never to run: said now, not as a warning at collection
            raise ClusterUnavailable("this client is closed")
        call = asyncio.run_coroutine_threadsafe(coro, self._loop)
        with self._lock:
            self._in_flight.add(call)
        try:
            return call.result()
        except concurrent.futures.CancelledError:  # close() ended it: its loop stops
            raise ClusterUnavailable("this client was closed during the call") from None
        except BaseException:  # interrupted (Ctrl-C): the call stops too, not on its own
            call.cancel()
            raise
        finally:
            with self._lock:
                self._in_flight.discard(call)

    def status(self, timeout: float | None = None) -> ClusterStatus:
        return self._call(self._async.status(timeout))

    def progress(self, job_id: str) -> tuple[int, int] | None:
        return self._call(self._async.progress(job_id))

    def result(self, job_id: str, wait: float = 0.0, timeout: float | None = None) -> Answer:
        return self._call(self._async.result(job_id, wait, timeout))

    def jobs(
        self, state: str | None = None, limit: int = 100, timeout: float | None = None
    ) -> list[JobStatus]:
        return self._call(self._async.jobs(state, limit, timeout))

    def cancel(self, job_id: str, timeout: float | None = None) -> JobStatus:
        return self._call(self._async.cancel(job_id, timeout))

    def wait_for_leader(self, timeout: float | None = None) -> ClusterStatus:
        return self._call(self._async.wait_for_leader(timeout))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._watchdog.close()
        self._streams.close()
        with self._lock:  # another thread's call would wait for ever on a stopped loop
            in_flight = list(self._in_flight)
        for call in in_flight:
            call.cancel()
        self._call(self._async.close())
        self._call(_end_the_rest())  # a call given up (interrupted) may still be ending
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        with self._lock:
            self._closed = True
            channels = list(self._channels.values())
            self._channels.clear()
            self._stubs.clear()
        for channel in channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make_async(
    addresses: Sequence[str], timeout: float, token: str | None, tls: TlsFiles | None,
    max_message_bytes: int,
) -> AsyncClient:
    return AsyncClient(list(addresses), timeout, token, tls, max_message_bytes)


async def _end_the_rest() -> None:
    """Cancel every other task of this loop and wait for their ends."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
