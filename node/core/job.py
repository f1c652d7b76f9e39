"""What a job is: the names every layer shares, without numpy.

The servicer, the client and the CLI name jobs, ops and kernels but never
touch an array. Keeping these free of numpy lets a daemon start, vote and
lead before it loads the compute stack (node/core/compute.py and the server's
jobs and worker), which it does in the background once a leader is known
(`Daemon._preload_compute`): with sixteen daemons starting on two cores, numpy's
import alone is ~0.8 CPU-seconds of the start-up storm.
"""

from __future__ import annotations

import msgspec

OPS: tuple[str, ...] = (
    "sum", "prod", "min", "max", "mean", "count", "var", "std", "argmin", "argmax", "histogram",
)  # fmt: skip
KERNELS: tuple[str, ...] = ("identity", "square", "abs", "sqrt", "exp", "log", "negative")
SHARD_ELEMS: int = 1 << 23  # default shard size in elements (64 MiB of float64)


class Job(msgspec.Struct, frozen=True):
    """What to compute; `source` is the spec string, e.g. "range:n=1e6"."""

    op: str
    source: str
    kernel: str = "identity"
    axis: int | None = None
    bins: int = 0
    range_lo: float | None = None
    range_hi: float | None = None
    #: Elements per shard, when the job brings its own: a detached job keeps the shard
    #: size of the leader that took it, so any leader that resumes it cuts the same
    #: shards (the same bits). None: the running leader's --shard-elems.
    shard_elems: int | None = None
