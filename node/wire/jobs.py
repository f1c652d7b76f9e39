"""Jobs on the wire: `Job` <-> `JobSpec`, with no numpy (a daemon relays before it loads numpy)."""

from __future__ import annotations

from node._proto import distnode_pb2 as pb
from node.core.job import Job
from node.errors import InvalidField

#: A job id's length at most: a client's are UUIDs (36); an id is in every record of the
#: job, which must fit one message to the followers (server/recordsize.py).
MAX_JOB_ID_CHARS = 256
#: The longest one `Result` call waits for a job to end; a client that waits longer asks again.
MAX_WAIT_S = 3600.0


def check_job_id(job_id: str) -> None:
    """InvalidField unless `job_id` is a name: 1 to MAX_JOB_ID_CHARS printable characters
    (a control character is six bytes in a record's JSON)."""
    if not job_id:
        raise InvalidField("job_id", "must not be empty")
    if len(job_id) > MAX_JOB_ID_CHARS or not job_id.isprintable():
        raise InvalidField("job_id", f"must be at most {MAX_JOB_ID_CHARS} printable characters, "
                                     f"got {len(job_id)} ({job_id[:40]!r}...)")


def check_wire_text(field: str, text: str) -> str:
    """`text`, if protobuf can carry it: InvalidField for a string that is not UTF-8 (what
    Python makes of a file name in another encoding, `\\udce9`), which it refuses to encode."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidField(field, f"is not UTF-8 text: {text[exc.start:exc.end]!r} at character {exc.start}"
                                  " (a file name in another encoding? rename it)") from None
    return text


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
