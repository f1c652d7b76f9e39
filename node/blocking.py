"""`Client`: the blocking twin of `AsyncClient`, with a synchronous fast path.

`submit` runs on gRPC's synchronous API in the caller's thread: handing each
call to an event-loop thread and back cost a third of a millisecond, half the
small-job budget. Its retry rules are AsyncClient's (`classify`, the same
order of nodes, the same progress probes); only the waiting differs: a
blocking `future.result(timeout=PROBE_INTERVAL_S)` instead of a timer.
`status`, `progress` and `wait_for_leader` are not latency-critical and run on
an AsyncClient in a private loop thread.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import grpc

from node._proto import distnode_pb2 as pb
from node._proto import distnode_pb2_grpc as pb_grpc
from node.client import (
    DEFAULT_TIMEOUT_S,
    PROBE_FAILURES,
    PROBE_INTERVAL_S,
    Answer,
    AsyncClient,
    ClusterStatus,
    ProgressCallback,
    Retry,
    answer_from,
    build_job,
    classify,
    out_of_time,
    parse_addresses,
)
from node.peers import CHANNEL_OPTIONS
from node.security import AUTH_HEADER, TlsFiles, load_token
from node.wire import job_to_proto

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
        self._addresses = parse_addresses(addresses)
        self.timeout = timeout
        self._tls = tls
        token = token if token is not None else load_token(None)
        self._metadata = ((AUTH_HEADER, f"Bearer {token}"),) if token else None
        self._channels: dict[str, Any] = {}
        self._stubs: dict[str, Any] = {}
        self._preferred: str | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="distnode-client", daemon=True)
        self._thread.start()
        self._async = self._call(_make_async(self._addresses, timeout, token, tls))

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
        job = build_job(op, source, map, axis, bins, range)
        request = pb.SubmitRequest(job=job_to_proto(job_id or str(uuid.uuid4()), job))
        started = time.perf_counter()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        reply, retries = self._submit_until(request, deadline, on_progress)
        if reply.leader_address:
            with self._lock:
                if reply.leader_address not in self._addresses:
                    self._addresses.append(reply.leader_address)
                self._preferred = reply.leader_address
        return answer_from(reply, started, retries)

    def _order(self) -> list[str]:
        with self._lock:
            first = self._preferred
            return ([first] if first else []) + [a for a in self._addresses if a != first]

    def _submit_until(
        self, request: Any, deadline: float, on_progress: ProgressCallback | None
    ) -> tuple[Any, int]:
        last_error, accepted, failed = "no node tried", False, 0
        for round_ in itertools.count():
            for address in self._order():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    return self._attempt(address, request, remaining, on_progress), failed
                except Retry as exc:
                    failed += 1
                    last_error, accepted = f"{address}: {exc}", accepted or exc.accepted
                    with self._lock:
                        if self._preferred == address:
                            self._preferred = None
            if time.monotonic() >= deadline:
                break
            time.sleep(min(0.05 * 2**round_, 0.5, max(0.0, deadline - time.monotonic())))
        raise out_of_time(request.job.job_id, accepted, last_error)

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
                stub = self._stubs[address] = pb_grpc.NodeStub(channel)
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
