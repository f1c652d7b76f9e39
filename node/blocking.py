"""`Client`: the blocking twin of `AsyncClient`, with a synchronous fast path.

`submit` runs on gRPC's synchronous API in the caller's thread: handing each
call to an event-loop thread and back cost a third of a millisecond, half the
small-job budget. Its retry rules are AsyncClient's (one `RetryPlan` over
one `Nodes` list, one `classify`, the same progress probes); only the waiting differs: a
blocking `future.result(timeout=PROBE_INTERVAL_S)` instead of a timer.
`status`, `progress` and `wait_for_leader` are not latency-critical and run on
an AsyncClient in a private loop thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import grpc

from node._proto import distnode_pb2 as pb
from node.answerwire import node_stub
from node.client import (
    DEFAULT_TIMEOUT_S,
    PROBE_FAILURES,
    PROBE_INTERVAL_S,
    Answer,
    AsyncClient,
    ClusterStatus,
    Nodes,
    ProgressCallback,
    Retry,
    RetryPlan,
    answer_from,
    classify,
    new_request,
)
from node.peers import CHANNEL_OPTIONS
from node.security import AUTH_HEADER, TlsFiles, load_token

T = TypeVar("T")


class Client:
    """Blocking client: `submit`, `status`, `progress`, `wait_for_leader`, `close`."""

    def __init__(
        self,
        addresses: Sequence[str] | str,
        timeout: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self._nodes = Nodes(addresses)
        self.timeout = timeout
        self._tls = tls
        token = token if token is not None else load_token(None)
        self._metadata = ((AUTH_HEADER, f"Bearer {token}"),) if token else None
        self._channels: dict[str, Any] = {}
        self._stubs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="distnode-client", daemon=True)
        self._thread.start()
        self._async = self._call(_make_async(self._nodes.all(), timeout, token, tls))

    # -- the synchronous submit path --------------------------------------

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
    ) -> Answer:
        """Run one job and return its answer. Raises InvalidJob, JobError, ClusterUnavailable."""
        request = new_request(op, source, map, axis, bins, range, job_id)
        started = time.perf_counter()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        plan = RetryPlan(self._nodes, request.job.job_id, deadline)
        for step in plan:
            if isinstance(step, float):
                time.sleep(step)
                continue
            address, remaining = step
            try:
                reply = self._attempt(address, request, remaining, on_progress)
            except Retry as exc:
                plan.failed_at(address, exc)
                continue
            self._nodes.prefer(reply.head.leader_address)
            return answer_from(reply, started, plan.failed)
        raise plan.out_of_time()

    def _attempt(
        self, address: str, request: Any, remaining: float, on_progress: ProgressCallback | None
    ) -> Any:
        stub = self._stub(address)
        future = stub.Submit.future(request, timeout=remaining, metadata=self._metadata)
        failures, known = 0, False
        try:
            while True:
                try:
                    return future.result(timeout=PROBE_INTERVAL_S)
                except grpc.FutureTimeoutError:
                    pass
                except grpc.RpcError as exc:
                    raise classify(exc, known) from None
                if self._probe(stub, request.job.job_id, on_progress):
                    failures, known = 0, True
                    continue
                failures += 1
                if failures >= PROBE_FAILURES:
                    raise Retry("node stopped answering progress probes", accepted=known)
        finally:
            future.cancel()

    def _probe(self, stub: Any, job_id: str, on_progress: ProgressCallback | None) -> bool:
        try:
            reply = stub.Progress(
                pb.ProgressRequest(job_id=job_id), timeout=PROBE_INTERVAL_S, metadata=self._metadata
            )
        except grpc.RpcError:
            return False
        if reply.known and on_progress is not None:
            on_progress(reply.shards_done, reply.shards_total)
        return bool(reply.known)

    def _stub(self, address: str) -> Any:
        with self._lock:
            stub = self._stubs.get(address)
            if stub is None:
                options = list(CHANNEL_OPTIONS)
                if self._tls is not None and self._tls.enabled:
                    channel = grpc.secure_channel(address, self._tls.channel_credentials(), options)
                else:
                    channel = grpc.insecure_channel(address, options)
                self._channels[address] = channel
                stub = self._stubs[address] = node_stub(channel)
            return stub

    # -- everything else, through the AsyncClient --------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def status(self, timeout: float | None = None) -> ClusterStatus:
        return self._call(self._async.status(timeout))

    def progress(self, job_id: str) -> tuple[int, int] | None:
        return self._call(self._async.progress(job_id))

    def wait_for_leader(self, timeout: float | None = None) -> ClusterStatus:
        return self._call(self._async.wait_for_leader(timeout))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._stubs.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _make_async(
    addresses: Sequence[str], timeout: float, token: str | None, tls: TlsFiles | None
) -> AsyncClient:
    return AsyncClient(list(addresses), timeout, token, tls)
