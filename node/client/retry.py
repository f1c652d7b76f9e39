"""The retry rules of a submission, shared by both clients, without any I/O.

A client knows some of the cluster's addresses, not which node leads. It
sends a job to the leader it last saw (or to any node; followers relay to
the leader) and keeps trying, with the same `job_id`, until the deadline:

- UNAVAILABLE (node down, no leader yet, leader lost mid-job), CANCELLED,
  ABORTED, UNKNOWN, UNIMPLEMENTED from something that is not a node, or a
  node that stops answering progress probes (paused, partitioned): try the
  next node. DEADLINE_EXCEEDED from our own deadline ends the loop.
- INVALID_ARGUMENT, ALREADY_EXISTS, NOT_FOUND, PERMISSION_DENIED: the
  request is wrong: `InvalidJob`, at once. UNAUTHENTICATED: `AccessDenied`.
  RESOURCE_EXHAUSTED: `LimitExceeded`. Other statuses: `JobError`.
- Deadline with no node reachable or no leader: `ClusterUnavailable`; and
  sooner, after UNREACHABLE_AFTER_S, if no node has ever answered: then the
  client names what is at each address (reach.py).

Resubmitting a `job_id` never runs the job twice to the user's eye: the leader
answers from its memory, and a new leader recomputes the same bits.
"""

from __future__ import annotations

import itertools
import numbers
import operator
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import grpc

from node._proto import distnode_pb2 as pb
from node.addresses import parse_addresses
from node.core.job import Job
from node.errors import (
    AccessDenied,
    AttemptFailed,
    ClusterUnavailable,
    ConfigError,
    InvalidField,
    InvalidJob,
    JobError,
    LimitExceeded,
)
from node.wire.jobs import check_job_id, check_wire_text, job_to_proto
from node.wire.status import signed_by

DEFAULT_TIMEOUT_S = 120.0
#: A Submit in flight is checked this often with a Progress probe; two failed
#: probes in a row mean the node is gone (paused, cut off) and we move on.
PROBE_INTERVAL_S = 0.5
PROBE_FAILURES = 2
#: A call with less than two intervals left is probed first halfway to its deadline, not
#: an interval in, but not before this: whether a leader took its job is known from the
#: probes, and a job taken and not done is exit 1, one that no leader took exit 3.
FIRST_PROBE_MIN_S = 0.05
# DEADLINE_EXCEEDED is final: either our own deadline passed (nothing left to
# retry with) or the leader's job deadline did (the job is too long anywhere).
_RETRY_ELSEWHERE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNKNOWN,
}
#: The request itself is wrong (a field, a missing or forbidden file, a reused id).
_INVALID = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
}
#: No node sent this status and no node may ever answer: giving up after this
#: long without a single node's answer is better than waiting for the deadline.
UNREACHABLE_AFTER_S = 3.0
#: A leader address learned from a reply whose attempt failed is not tried first again for
#: this long (`Nodes.prefer`); the given addresses are, as the caller said they are reachable.
LEARNED_RETRY_S = 30.0


class FailedCall(Protocol):
    """A failed call, blocking or asyncio: a status code, details and trailers."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> Any: ...


#: The longest gRPC deadline one call is given: gRPC fails a call at once, as past its
#: deadline, when given one of about 10^10 s or more (or infinity).
MAX_CALL_S = 1e6


def first_probe_s(remaining_s: float, interval_s: float = PROBE_INTERVAL_S) -> float:
    """How long into a call with `remaining_s` left its first Progress probe goes, when the
    client probes every `interval_s`."""
    return min(interval_s, max(FIRST_PROBE_MIN_S, remaining_s / 2))


def checked_timeout(value: float) -> float:
    """A client's timeout in seconds, or InvalidField: NaN would never run out (a huge one is
    a long one: each call is given at most MAX_CALL_S)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:  # NaN too
        raise InvalidField("timeout", f"expected a number of seconds above 0, got {value!r}")
    return float(value)


def classify(exc: FailedCall, accepted: bool) -> Exception:
    """Turn a failed call's status into what the caller should do with it."""
    code, details = exc.code(), exc.details() or ""
    reached = signed_by(exc.trailing_metadata()) is not None
    if code in _RETRY_ELSEWHERE or (code is grpc.StatusCode.UNIMPLEMENTED and not reached):
        return AttemptFailed(f"{code.name}: {details}", accepted=accepted, reached=reached)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED and not details.startswith("job-timeout-s"):
        # Our own deadline: the retry loop ends and reports it.
        return AttemptFailed("no answer before the client's timeout", accepted=accepted, reached=reached)
    if code in _INVALID:
        return InvalidJob(f"{code.name}: {details}", field=details.partition(":")[0])
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AccessDenied(f"UNAUTHENTICATED: {details} (the token: --token-file or $DISTNODE_TOKEN)")
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return LimitExceeded(f"{code.name}: {details}{_over_max(details)}")
    return JobError(f"{code.name}: {details}")


#: gRPC's own words for a message over one side's limit, e.g. "SERVER: Sent message larger
#: than max (160099 vs. 65536)": the side, which way, the message's bytes, the limit.
_OVER_MAX = re.compile(r"(SERVER|CLIENT): (Sent|Received) message larger than max \((\d+) vs\. (\d+)\)")


def _over_max(details: str) -> str:
    """What gRPC's size refusal means in our terms: which message, over whose flag."""
    found = _OVER_MAX.search(details)
    if found is None:
        return ""
    side, way, size, limit = found.groups()
    what = "answer" if (side == "SERVER") == (way == "Sent") else "request"
    whose = "the node's --max-message-bytes" if side == "SERVER" else "this client's max_message_bytes"
    return f" (the job's {what}, {int(size):,} bytes, is over {whose}, {int(limit):,})"


def out_of_time(job_id: str, accepted: bool, last_error: str) -> Exception:
    if accepted:
        return JobError(f"job {job_id} did not finish in time ({last_error})")
    return ClusterUnavailable(f"no leader answered in time; last error: {last_error}")


def cluster_addresses(addresses: Sequence[str] | str) -> list[str]:
    """What a client was given (a list, or "HOST:PORT,..."), parsed; InvalidJob names the field."""
    text = addresses if isinstance(addresses, str) else ",".join(addresses)
    try:
        parsed = list(parse_addresses(text, "cluster"))
    except ConfigError as exc:
        raise InvalidJob(str(exc), field="cluster") from None
    if not parsed:
        raise InvalidJob("cluster: give at least one HOST:PORT", field="cluster")
    return parsed


def check_numbers(axis: int | None, bins: int | None, range: tuple[float, float] | None) -> None:
    """What JobSpec's fields hold (int32 axis, uint32 bins, two doubles), or InvalidField."""
    if axis is not None and not -(1 << 31) <= _integer(axis, "axis") < 1 << 31:
        raise InvalidField("axis", f"expected 0 or None, got {axis!r}")
    if bins is not None and not 0 <= _integer(bins, "bins") < 1 << 32:
        raise InvalidField("bins", f"expected an integer from 0 below 2^32, got {bins!r}")
    if range is not None:
        try:
            lo, hi = range
            if not (isinstance(lo, numbers.Real) and isinstance(hi, numbers.Real)):
                raise TypeError
            float(lo), float(hi)
        except (TypeError, ValueError, OverflowError):
            raise InvalidField("range", f"expected two numbers (LO, HI), got {range!r}") from None


def _integer(value: object, field: str) -> int:
    """An int, or what stands for one (numpy's integers): operator.index's reading."""
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidField(field, f"expected an integer, got {value!r}") from None


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
    trace: bool = False,
    detach: bool = False,
) -> pb.SubmitRequest:
    """The Submit request for one job; a fresh UUID unless the caller names the job.
    InvalidField names a field the wire could not carry, before anything is sent."""
    if job_id is not None:
        check_job_id(job_id)
    check_numbers(axis, bins, range)
    job = build_job(op, check_wire_text("source", source), map, axis, bins, range)
    if trace and detach:
        raise InvalidField("trace", "a detached job has no timeline to send back; submit it attached")
    return pb.SubmitRequest(job=job_to_proto(job_id or str(uuid.uuid4()), job), trace=trace)


class Nodes:
    """The addresses a client knows, the last leader it saw first. Thread-safe."""

    def __init__(self, addresses: Sequence[str] | str) -> None:
        self._addresses = cluster_addresses(addresses)
        self._preferred: str | None = None
        self._given = frozenset(self._addresses)
        #: Learned addresses (not given) whose last attempt failed, and when.
        self._failed_learned: dict[str, float] = {}
        self._lock = threading.Lock()
        #: Some node has answered this client (a reply, or a status it signed).
        self.reached = False

    def all(self) -> list[str]:
        with self._lock:
            return list(self._addresses)

    def order(self) -> list[str]:
        """Addresses to try: the last known leader first, then the rest in order."""
        with self._lock:
            first = self._preferred
            return ([first] if first else []) + [a for a in self._addresses if a != first]

    def prefer(self, address: str) -> None:
        """A reply named the leader: learn its address and try it first next time, unless
        it was learned so and failed within LEARNED_RETRY_S (a client that reaches the
        cluster through a tunnel or NAT may never reach the address the nodes know each
        other by: its every call would begin with a failed attempt there)."""
        if not address:
            return
        with self._lock:
            if address not in self._addresses:
                self._addresses.append(address)
            failed_at = self._failed_learned.get(address)
            if failed_at is not None and time.monotonic() - failed_at < LEARNED_RETRY_S:
                return
            self._preferred = address

    def forget(self, address: str) -> None:
        """An attempt at `address` failed: stop trying it first."""
        with self._lock:
            if self._preferred == address:
                self._preferred = None
            if address not in self._given:
                self._failed_learned[address] = time.monotonic()


class RetryPlan:
    """The retry rules of a submission, without the I/O (both clients drive it).

    `deadline_s` is a time.monotonic() value. Iterating yields `(address,
    remaining_s)` for the next attempt, or a float: seconds to pause before
    the next round (backoff 50 ms doubling to 500 ms).
    Report each failed attempt with `failed_at`; when the iteration ends,
    either `unreachable` holds (say why, with reach.diagnose) or the deadline
    has passed and `out_of_time()` is the error to raise.
    """

    def __init__(self, nodes: Nodes, job_id: str, deadline_s: float) -> None:
        self.nodes = nodes
        self.job_id = job_id
        self.deadline_s = deadline_s
        self.started_s = time.monotonic()
        self.failed = 0
        self._accepted = False
        self._last_error = "no node tried"
        #: Addresses whose attempts failed without any node answering, and how.
        self.unreached: dict[str, str] = {}

    def __iter__(self) -> Iterator[tuple[str, float] | float]:
        for round_ in itertools.count():
            for address in self.nodes.order():
                remaining = self.deadline_s - time.monotonic()
                if remaining <= 0:
                    break
                yield address, min(remaining, MAX_CALL_S)
            left = self.deadline_s - time.monotonic()
            if left <= 0 or self.unreachable:
                return
            yield min(0.05 * 2**round_, 0.5, left)

    def failed_at(self, address: str, exc: AttemptFailed) -> None:
        self.failed += 1
        self._last_error = f"{address}: {exc}"
        # What the deadline finds: a leader that had the job running (it did not finish in
        # time), or none after the one that took it failed ("no leader within --timeout").
        self._accepted = exc.accepted
        if exc.reached or exc.accepted:  # a node that knew the job answered a probe about it
            self.nodes.reached = True
        else:
            self.unreached[address] = str(exc)
        self.nodes.forget(address)

    @property
    def unreachable(self) -> bool:
        """No node has ever answered this client, every address failed without
        one answering, and for UNREACHABLE_AFTER_S: the client is likely
        misconfigured (TLS, port, host), or the whole cluster is down."""
        return (
            not self.nodes.reached
            and set(self.nodes.all()) <= set(self.unreached)
            and time.monotonic() - self.started_s >= UNREACHABLE_AFTER_S
        )

    def out_of_time(self) -> Exception:
        return out_of_time(self.job_id, self._accepted, self._last_error)


