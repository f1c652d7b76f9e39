"""A finished job's answer as the job table keeps it, and back: what a record stores of
an `Outcome`, and what an attached submit of an already recorded job answers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from node.core.jobtable import JobRecord, Result
from node.errors import JobCancelled, JobFailed

if TYPE_CHECKING:
    from node.server.api import Outcome


def result_of(outcome: Outcome, cap: int) -> tuple[Result | None, str]:
    """The outcome's answer as a record keeps it, or None and why not."""
    from node.wire.tensors import wire_array  # numpy: with the compute stack

    array = wire_array(outcome.result)
    if array.nbytes > cap:
        return None, f"the result ({array.nbytes} bytes) was not kept, being over {cap}; submit again"
    return Result(array.dtype.str, tuple(array.shape), array.tobytes()), ""


def outcome_of(record: JobRecord) -> Outcome | None:
    """What an attached submit of a recorded job answers: the answer of a done one (None
    without its bytes, or while it runs: then it is run, or joined); JobFailed or JobCancelled."""
    if record.state == "failed":
        raise JobFailed(f"job {record.job_id} failed: {record.error}")
    if record.state == "cancelled":
        raise JobCancelled(f"job {record.job_id} was cancelled")
    kept = record.result
    if kept is None:
        return None
    import numpy as np

    from node.server.api import Outcome

    result = np.frombuffer(kept.data, dtype=np.dtype(kept.dtype)).reshape(kept.shape)
    return Outcome(record.job_id, record.op, result, record.shards, record.nodes, record.elapsed_ms or 0.0)
