"""Resource limits: what one request may cost a node.

Every limit has a flag on `distnode start` and a name that appears in the
error message, so a user who hits one knows which knob it was. Exceeding a
limit is `RESOURCE_EXHAUSTED` (or `DEADLINE_EXCEEDED` for the job deadline)
and costs the node nothing: checks run before any data is touched.
"""

from __future__ import annotations

import msgspec

from node.core.job import Job
from node.errors import LimitExceeded

#: The largest gRPC message a node or a client sends or accepts, unless told
#: otherwise (`--max-message-bytes`; `max_message_bytes=` on the clients).
MAX_MESSAGE_BYTES = 64 << 20
#: The least `--max-message-bytes` a node runs with. A node's messages carry a job's
#: record beside 8 KiB of envelope (server/recordsize.py) and a snapshot's chunks
#: beside 4 KiB (server/beatsend.py): below this it could record almost no job and
#: send no snapshot at all. (A client's own limit has no floor: it bounds answers.)
MIN_NODE_MESSAGE_BYTES = 64 << 10


class Limits(msgspec.Struct, frozen=True):
    #: Elements one job may reduce (rows x cols of its source).
    max_elements: int = 10**11
    #: Bytes of a job's source spec (bounds `values:` inline data).
    max_inline_bytes: int = 1 << 20
    #: Length of a vector answer (`--axis 0` columns).
    max_vector: int = 10**7
    #: Jobs running at once on the leader.
    max_jobs: int = 256
    #: Jobs in flight from one client connection at the node it submits to.
    max_jobs_per_client: int = 64
    #: Largest gRPC message a node accepts or sends.
    max_message_bytes: int = MAX_MESSAGE_BYTES
    #: Wall-clock budget of one job on the leader.
    job_timeout_s: float = 600.0

    def check_spec(self, job: Job) -> None:
        size = len(job.source.encode())
        if size > self.max_inline_bytes:
            raise LimitExceeded(
                f"source: {size} bytes exceeds max-inline-bytes ({self.max_inline_bytes})"
            )

    def check_shape(self, job: Job, rows: int, cols: int | None) -> None:
        elements = rows * (cols or 1)
        if elements > self.max_elements:
            raise LimitExceeded(
                f"source: {elements} elements exceeds max-elements ({self.max_elements})"
            )
        if job.axis == 0 and cols is not None and cols > self.max_vector:
            raise LimitExceeded(
                f"axis: a vector of {cols} exceeds max-vector ({self.max_vector})"
            )
        if cols is not None and cols > self.max_vector:  # a shard is whole rows, at least one
            raise LimitExceeded(
                f"source: rows of {cols} elements exceed max-vector ({self.max_vector}); a node "
                "reads at least one row at once"
            )
