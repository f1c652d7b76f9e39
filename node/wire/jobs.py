"""Jobs on the wire: `Job` <-> `JobSpec`, with no numpy (a daemon relays before it loads numpy)."""

from __future__ import annotations

from node._proto import distnode_pb2 as pb
from node.core.job import Job


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
