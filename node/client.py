"""The Python API: `AsyncClient` and its blocking twin `Client`.

A client knows some of the cluster's addresses, not which node leads. It
sends a job to the leader it last saw (or to any node; followers relay to
the leader) and keeps trying, with the same `job_id`, until the deadline:

- UNAVAILABLE (node down, no leader yet, leader lost mid-job) or a node that
  stops answering progress probes (paused, partitioned): try the next node.
- INVALID_ARGUMENT: `InvalidJob`, at once. Other statuses: `JobError`.
- Deadline with no node reachable or no leader: `ClusterUnavailable`.

Resubmitting a `job_id` never runs the job twice to the user's eye: the leader
answers from its memory, and a new leader recomputes the same bits.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from node._proto import distnode_pb2 as pb
from node.answerwire import SubmitAnswer, node_stub
from node.compute import Job, parse_count
from node.config import ConfigError, parse_address
from node.errors import ClusterUnavailable, InvalidJob, JobError
from node.jobtypes import job_to_proto
from node.peers import CHANNEL_OPTIONS
from node.security import TlsFiles, load_token, open_channel
from node.wire import result_to_python

ProgressCallback = Callable[[int, int], None]

DEFAULT_TIMEOUT_S = 120.0
#: A Submit in flight is checked this often with a Progress probe; two failed
#: probes in a row mean the node is gone (paused, cut off) and we move on.
PROBE_INTERVAL_S = 0.5
PROBE_FAILURES = 2
# DEADLINE_EXCEEDED is final: either our own deadline passed (nothing left to
# retry with) or the leader's job deadline did (the job is too long anywhere).
_RETRY_ELSEWHERE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNKNOWN,
}
_INVALID = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS}


@dataclass(frozen=True, eq=False)
class Answer:
    """One job's answer; `as_dict()` is the CLI's `--json` object.

    `array` is the answer as numpy gives it (0-d for a scalar); `result` is the
    same as a Python number or list, made on first use (a million-element
    vector costs ~25 ms to turn into a list, so numpy users should use `array`).
    """

    job_id: str
    op: str
    array: np.ndarray
    shards: int
    nodes: list[str]
    elapsed_ms: float
    leader: str
    term: int
    retries: int

    @functools.cached_property
    def result(self) -> int | float | list[int] | list[float]:
        return result_to_python(self.array)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "op": self.op, "result": self.result,
            "shards": self.shards, "nodes": self.nodes,
            "elapsed_ms": round(self.elapsed_ms, 3), "leader": self.leader,
            "term": self.term, "retries": self.retries,
        }


@dataclass(frozen=True)
class NodeInfo:
    id: str
    address: str
    role: str
    term: int
    alive: bool
    last_heartbeat_ms: float | None


@dataclass(frozen=True)
class ClusterStatus:
    leader: str | None
    term: int
    nodes: list[NodeInfo] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "term": self.term,
            "nodes": [vars(node).copy() for node in self.nodes],
        }


@dataclass
class Seen:
    """What the watchdog learnt: did the node ever confirm it holds the job?"""

    known: bool = False


@dataclass(eq=False)
class _Flight:
    """One AsyncClient attempt in flight, as its sweeper sees it."""

    stub: Any
    job_id: str
    call: Any
    on_progress: ProgressCallback | None
    started_s: float
    seen: Seen = field(default_factory=Seen)
    watchdog: asyncio.Task[Retry] | None = None


class Retry(Exception):
    """This attempt failed in a way another node may not."""

    def __init__(self, message: str, accepted: bool = False) -> None:
        super().__init__(message)
        #: The cluster had accepted the job before the attempt failed.
        self.accepted = accepted


def classify(exc: Any, accepted: bool) -> Exception:
    """Turn a failed Submit's status into what the caller should do with it."""
    code, details = exc.code(), exc.details() or ""
    if code in _RETRY_ELSEWHERE:
        return Retry(f"{code.name}: {details}", accepted=accepted)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and not details.startswith("job-timeout-s"):
        # Our own deadline: the retry loop ends and reports it.
        return Retry("no answer before the client's timeout", accepted=accepted)
    if code in _INVALID:
        return InvalidJob(details, field=details.partition(":")[0])
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return ClusterUnavailable(f"UNAUTHENTICATED: {details}")
    return JobError(f"{code.name}: {details}")


def out_of_time(job_id: str, accepted: bool, last_error: str) -> Exception:
    if accepted:
        return JobError(f"job {job_id} did not finish in time ({last_error})")
    return ClusterUnavailable(f"no leader answered in time; last error: {last_error}")


def answer_from(reply: SubmitAnswer, started_s: float, retries: int) -> Answer:
    head = reply.head
    return Answer(
        job_id=head.job_id, op=head.op, array=reply.array,
        shards=head.shards, nodes=list(head.nodes),
        elapsed_ms=(time.perf_counter() - started_s) * 1000,
        leader=head.leader, term=head.term, retries=retries,
    )


def parse_addresses(addresses: Sequence[str] | str) -> list[str]:
    if isinstance(addresses, str):
        addresses = [a for a in addresses.split(",") if a.strip()]
    if not addresses:
        raise InvalidJob("cluster: give at least one HOST:PORT", field="cluster")
    try:
        return [parse_address(a, "cluster") for a in addresses]
    except ConfigError as exc:
        raise InvalidJob(str(exc), field="cluster") from None


def build_job(
    op: str,
    source: str,
    map: str | None = None,
    axis: int | None = None,
    bins: int | None = None,
    range: tuple[float, float] | None = None,
) -> Job:
    lo, hi = range if range is not None else (None, None)
    return Job(
        op=op, source=source, kernel=map or "identity", axis=axis,
        bins=bins or 0, range_lo=lo, range_hi=hi,
    )


def new_request(
    op: str,
    source: str,
    map: str | None,
    axis: int | None,
    bins: int | None,
    range: tuple[float, float] | None,
    job_id: str | None,
) -> Any:
    """The Submit request for one job; a fresh UUID unless the caller names the job."""
    job = build_job(op, source, map, axis, bins, range)
    return pb.SubmitRequest(job=job_to_proto(job_id or str(uuid.uuid4()), job))


class Nodes:
    """The addresses a client knows, the last leader it saw first. Thread-safe."""

    def __init__(self, addresses: Sequence[str] | str) -> None:
        self._addresses = parse_addresses(addresses)
        self._preferred: str | None = None
        self._lock = threading.Lock()

    def all(self) -> list[str]:
        with self._lock:
            return list(self._addresses)

    def order(self) -> list[str]:
        """Addresses to try: the last known leader first, then the rest in order."""
        with self._lock:
            first = self._preferred
            return ([first] if first else []) + [a for a in self._addresses if a != first]

    def prefer(self, address: str) -> None:
        """A reply named the leader: learn its address and try it first next time."""
        if not address:
            return
        with self._lock:
            if address not in self._addresses:
                self._addresses.append(address)
            self._preferred = address

    def forget(self, address: str) -> None:
        """An attempt at `address` failed: stop trying it first."""
        with self._lock:
            if self._preferred == address:
                self._preferred = None


class RetryPlan:
    """The retry rules of a submission, without the I/O (both clients drive it).

    Iterating yields `(address, remaining_s)` for the next attempt, or a float:
    seconds to pause before the next round (backoff 50 ms doubling to 500 ms).
    Report each failed attempt with `failed_at`; when the iteration ends, the
    deadline has passed and `out_of_time()` is the error to raise.
    """

    def __init__(self, nodes: Nodes, job_id: str, deadline: float) -> None:
        self.nodes = nodes
        self.job_id = job_id
        self.deadline = deadline
        self.failed = 0
        self._accepted = False
        self._last_error = "no node tried"

    def __iter__(self) -> Iterator[tuple[str, float] | float]:
        for round_ in itertools.count():
            for address in self.nodes.order():
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    break
                yield address, remaining
            left = self.deadline - time.monotonic()
            if left <= 0:
                return
            yield min(0.05 * 2**round_, 0.5, left)

    def failed_at(self, address: str, exc: Retry) -> None:
        self.failed += 1
        self._last_error = f"{address}: {exc}"
        self._accepted = self._accepted or exc.accepted
        self.nodes.forget(address)

    def out_of_time(self) -> Exception:
        return out_of_time(self.job_id, self._accepted, self._last_error)


class AsyncClient:
    """Talks to a distnode cluster from asyncio code. Use as `async with`.

    `token`: the cluster token (default: $DISTNODE_TOKEN, if set). `tls`:
    `TlsFiles(ca=...)` to verify the nodes, plus `cert`/`key` for mutual TLS.
    """

    def __init__(
        self,
        addresses: Sequence[str] | str,
        timeout: float = DEFAULT_TIMEOUT_S,
        token: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self._nodes = Nodes(addresses)
        self.timeout = timeout
        self._token = token if token is not None else load_token(None)
        self._tls = tls
        self._channels: dict[str, Any] = {}
        self._stubs: dict[str, Any] = {}
        self._status_error = ""
        self._flights: set[_Flight] = set()
        self._sweeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        channels, self._channels, self._stubs = self._channels, {}, {}
        for channel in channels.values():
            await channel.close(grace=None)

    def _stub(self, address: str) -> Any:
        stub = self._stubs.get(address)
        if stub is None:
            channel = open_channel(address, list(CHANNEL_OPTIONS), self._tls, self._token)
            self._channels[address] = channel
            stub = self._stubs[address] = node_stub(channel)
        return stub

    async def submit(
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
                await asyncio.sleep(step)
                continue
            address, remaining = step
            try:
                reply = await self._attempt(address, request, remaining, on_progress)
            except Retry as exc:
                plan.failed_at(address, exc)
                continue
            self._nodes.prefer(reply.head.leader_address)
            return answer_from(reply, started, plan.failed)
        raise plan.out_of_time()

    async def _attempt(
        self, address: str, request: Any, remaining: float, on_progress: ProgressCallback | None
    ) -> Any:
        """One Submit to one node. A watchdog starts probing only if the job runs long.

        Most jobs answer in about a millisecond, so the fast path is a bare
        `await call`, registered in a set: no task, no timer per call. One
        sweeper task per client, alive only while calls are in flight, gives
        each call that has run PROBE_INTERVAL_S a watchdog task; that probes
        Progress, and if the node stops answering it cancels the call and
        leaves a `Retry` behind for us to raise.
        """
        stub = self._stub(address)
        call = stub.Submit(request, timeout=remaining)
        flight = _Flight(stub, request.job.job_id, call, on_progress, time.monotonic())
        self._flights.add(flight)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        try:
            return await call
        except asyncio.CancelledError:
            watchdog = flight.watchdog
            if watchdog is not None and watchdog.done() and not watchdog.cancelled():
                raise watchdog.result() from None
            raise
        except grpc.aio.AioRpcError as exc:
            raise classify(exc, flight.seen.known) from None
        finally:
            self._flights.discard(flight)
            if flight.watchdog is not None:
                flight.watchdog.cancel()

    async def _sweep(self) -> None:
        """Start a watchdog for each call in flight for PROBE_INTERVAL_S or more.

        Wakes every half interval, so probing starts 0.5-0.75 s into a call;
        ends (and forgets itself) as soon as nothing is in flight.
        """
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
            if self._sweeper is asyncio.current_task():
                self._sweeper = None

    async def _watch(
        self, stub: Any, job_id: str, call: Any, on_progress: ProgressCallback | None, seen: Seen
    ) -> Retry:
        """Probe the node every PROBE_INTERVAL_S; cancel `call` once it misses PROBE_FAILURES."""
        failures = 0
        while True:
            if await self._probe(stub, job_id, on_progress):
                failures, seen.known = 0, True
            else:
                failures += 1
                if failures >= PROBE_FAILURES:
                    call.cancel()
                    return Retry("node stopped answering progress probes", accepted=seen.known)
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _probe(self, stub: Any, job_id: str, on_progress: ProgressCallback | None) -> bool:
        try:
            reply = await stub.Progress(pb.ProgressRequest(job_id=job_id), timeout=PROBE_INTERVAL_S)
        except grpc.aio.AioRpcError:
            return False
        if reply.known and on_progress is not None:
            on_progress(reply.shards_done, reply.shards_total)
        return bool(reply.known)

    async def progress(self, job_id: str) -> tuple[int, int] | None:
        """(shards received, shards total) of a running or answered job; None if no node knows it."""
        for address in self._nodes.order():
            try:
                reply = await self._stub(address).Progress(
                    pb.ProgressRequest(job_id=job_id), timeout=PROBE_INTERVAL_S
                )
            except grpc.aio.AioRpcError:
                continue
            if reply.known:
                return reply.shards_done, reply.shards_total
        return None

    async def status(self, timeout: float | None = None) -> ClusterStatus:
        """The leader's view of the cluster (or the best view available without one)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        views: list[Any] = []
        for address in self._nodes.order():
            reply = await self._status_of(address, deadline)
            if reply is None:
                continue
            if reply.role == "leader":
                return _cluster_status(reply)
            views.append(reply)
            if reply.leader_address:
                leader_view = await self._status_of(reply.leader_address, deadline)
                if leader_view is not None and leader_view.role == "leader":
                    return _cluster_status(leader_view)
        if not views:
            raise ClusterUnavailable(
                f"no node answered ({self._status_error or 'no reply'}): " + ",".join(self._nodes.all())
            )
        return _cluster_status(max(views, key=lambda v: v.term), leaderless=True)

    async def _status_of(self, address: str, deadline: float) -> Any:
        remaining = min(2.0, deadline - time.monotonic())
        if remaining <= 0:
            return None
        try:
            return await self._stub(address).Status(pb.StatusRequest(), timeout=remaining)
        except grpc.aio.AioRpcError as exc:
            self._status_error = f"{exc.code().name}: {exc.details()}"
            return None

    async def wait_for_leader(self, timeout: float | None = None) -> ClusterStatus:
        """Poll `status()` until a leader is known; ClusterUnavailable at the deadline."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                view = await self.status(timeout=max(0.1, deadline - time.monotonic()))
                if view.leader is not None:
                    return view
            except ClusterUnavailable:
                pass
            if time.monotonic() >= deadline:
                raise ClusterUnavailable("no leader elected in time")
            await asyncio.sleep(0.05)


def _cluster_status(reply: Any, leaderless: bool = False) -> ClusterStatus:
    nodes = [
        NodeInfo(
            id=n.id or n.address, address=n.address, role=n.role, term=n.term, alive=n.alive,
            last_heartbeat_ms=None if n.last_heartbeat_ms < 0 else round(n.last_heartbeat_ms, 1),
        )
        for n in reply.nodes
    ]
    nodes.sort(key=lambda n: n.id)
    leader = None if leaderless else (reply.leader_id or None)
    return ClusterStatus(leader=leader, term=reply.term, nodes=nodes)


__all__ = ["Answer", "AsyncClient", "ClusterStatus", "NodeInfo", "parse_count"]
