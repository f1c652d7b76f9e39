"""A job table's record on the wire: `JobView` <-> `JobInfo` (the client reads JobInfo itself)."""

from __future__ import annotations

from node._proto import distnode_pb2 as pb
from node.core.jobtable import JobRecord, Result
from node.server.api import JobView


def view_to_info(view: JobView) -> pb.JobInfo:
    record = view.record
    spec = record.spec
    info = pb.JobInfo(
        job_id=record.job_id, op=record.op, source=record.source, state=record.state,
        shards_done=record.shards if record.state == "done" else view.shards_done,
        shards=record.shards or view.shards_total,
        submitted_at=record.submitted_at or 0.0, finished_at=record.finished_at or 0.0,
        elapsed_ms=record.elapsed_ms or 0.0, error=record.error, nodes=record.nodes,
        answered_by=view.answered_by, leader=view.leader, term=view.term, leader_address=view.leader_address,
        map=str(spec.get("map") or "identity"), bins=int(spec.get("bins") or 0),
    )
    for name in ("axis", "range_lo", "range_hi"):
        if spec.get(name) is not None:
            setattr(info, name, spec[name])
    if record.result is not None:
        info.result_kept = True
        info.result.dtype = record.result.dtype
        info.result.shape.extend(record.result.shape)
        info.result.data = record.result.data
    return info


def view_from_info(info: pb.JobInfo) -> JobView:
    """A relayed reply back into a view (the follower passes the leader's answer on)."""
    spec = {"map": info.map, "axis": info.axis if info.HasField("axis") else None, "bins": info.bins,
            "range_lo": info.range_lo if info.HasField("range_lo") else None,
            "range_hi": info.range_hi if info.HasField("range_hi") else None}
    kept = info.result
    result = Result(kept.dtype, tuple(kept.shape), kept.data) if info.result_kept else None
    running = info.state == "running"  # its shards in all are the leader's progress, not the record's
    record = JobRecord(
        info.job_id, info.op, info.source, info.state, spec, 0 if running else info.shards, tuple(info.nodes),
        info.submitted_at or None, info.finished_at or None, info.elapsed_ms or None, result, info.error,
    )
    return JobView(record, info.answered_by, info.leader, info.term, info.shards_done, info.leader_address,
                   info.shards if running else 0)
