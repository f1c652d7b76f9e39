"""What a job is and how it can fail: the types every layer shares, without numpy.

The election, the heartbeats and the servicer's routing need to name jobs and
their errors but never touch an array. Keeping these here, free of numpy,
lets a daemon start, vote and lead before it has loaded the compute stack
(`node.compute`, `node.jobs`, `node.wire`), which it does in the background
once a leader is known (see `Daemon._preload_compute`). With sixteen daemons
starting on two cores, numpy's import alone is ~0.8 CPU-seconds of the
start-up storm.

`node.compute` re-exports `Job`, the op and kernel names and the source errors
for its importers; the job errors and the proto conversions are imported
from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from node._proto import distnode_pb2 as pb

OPS: tuple[str, ...] = (
    "sum", "prod", "min", "max", "mean", "count", "var", "std", "argmin", "argmax", "histogram",
)  # fmt: skip
KERNELS: tuple[str, ...] = ("identity", "square", "abs", "sqrt", "exp", "log", "negative")
SHARD_ELEMS: int = 1 << 23  # default shard size in elements (64 MiB of float64)


@dataclass(frozen=True)
class Job:
    """What to compute; `source` is the spec string, e.g. "range:n=1e6"."""

    op: str
    source: str
    kernel: str = "identity"
    axis: int | None = None
    bins: int = 0
    range_lo: float | None = None
    range_hi: float | None = None


# --- what can go wrong ----------------------------------------------------------


class JobSpecError(ValueError):
    """The job as submitted cannot run; `field` names the offending option."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class SourceNotFound(JobSpecError):
    """The source names a file that does not exist (gRPC NOT_FOUND)."""


class SourceForbidden(JobSpecError):
    """The source names a file outside the data root (gRPC PERMISSION_DENIED)."""


class NotLeader(Exception):
    """This node lost leadership while the job ran; the client should retry."""


class JobConflict(Exception):
    """The job id is already taken by a different job."""


class JobFailed(Exception):
    """The leader itself could not compute a shard: the job cannot finish."""


class ReduceFailed(Exception):
    """The partials could not be delivered to the aggregator."""


# --- on the wire ----------------------------------------------------------------


def job_to_proto(job_id: str, job: Job) -> pb.JobSpec:
    spec = pb.JobSpec(
        job_id=job_id, op=job.op, source=job.source, map=job.kernel, bins=job.bins
    )
    if job.axis is not None:
        spec.axis = job.axis
    if job.range_lo is not None:
        spec.range_lo = job.range_lo
    if job.range_hi is not None:
        spec.range_hi = job.range_hi
    return spec


def job_from_proto(spec: pb.JobSpec) -> Job:
    return Job(
        op=spec.op,
        source=spec.source,
        kernel=spec.map or "identity",
        axis=spec.axis if spec.HasField("axis") else None,
        bins=spec.bins,
        range_lo=spec.range_lo if spec.HasField("range_lo") else None,
        range_hi=spec.range_hi if spec.HasField("range_hi") else None,
    )
