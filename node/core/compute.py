"""Kernels, ops and their mergeable partial states: the numpy heart of a job.

Theory of operation. A job's data is cut into **fixed shards**: row ranges
whose boundaries depend only on the source's shape and the shard size, never
on how many nodes are alive (`plan_shards`). Each shard is reduced on its own
to a small **partial state** (`compute_partial`): a dict of numpy arrays that
can be merged with the partial of the next shard (`merge`). The leader merges
partials **in shard order**, a plain left fold, and `finalize` turns the last
state into the answer. Since both the shards and the order of the fold are
fixed, the answer is bit-for-bit the same on 1 node or 16, whichever node
computed which shard, with or without retries.

Partial states, per op (`n` = number of elements reduced, per column with
`--axis 0`):

    sum, prod, min, max   {"sum"} / {"prod"} / {"min"} / {"max"}
    count                 {"count"}            int64
    mean                  {"n", "sum"}         sum in float64
    var, std              {"n", "mean", "m2"}  Chan et al.'s parallel update
    argmin, argmax        {"value", "index"}   global index; ties -> lower index
    histogram             {"counts"}           int64, np.histogram per shard

Numeric conventions follow numpy: integer sum/prod/min/max stay integer (int64
for signed data, uint64 for unsigned) and wrap on overflow like numpy does;
mean/var/std are float64; var/std are population statistics (ddof=0). Float
sums and products accumulate in float64 even for float16/32 data. Bool data is
reduced as int64 0/1. NaN propagates like numpy (argmin/argmax pick the first
NaN). Without `--axis`, 2-D data is reduced as if flattened in C order; the
flat index of row r, column c is r * cols + c.

A job that makes a temporary as large as what it reads (a `--map` kernel,
bool data widened to int64, var/std's deviations) reduces its shard in
blocks of about BLOCK_ELEMS elements, merged in order like shards: the
temporary then stays in the CPU's cache instead of going to memory and
back, which made `--map square` sums 2.4 times faster in one thread
(docs/timeline.md, "A map's temporaries"). Blocks depend on the shard
alone, so answers stay the same on any node count.

Everything here is pure numpy: no I/O besides reading the source, no clock,
no asyncio. Sources live in node/core/sources.py.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from node.core import halt
from node.core.job import KERNELS, OPS, SHARD_ELEMS, Job
from node.core.sources import Array, DataSource, Opener, ValuesSource, open_source
from node.errors import InvalidField

MAX_BINS = 1_000_000  # a histogram partial travels over the wire on every shard
#: Elements per block when a job makes temporaries: 512 KiB of float64 stays in a
#: core's L2 cache (2^16 was the fastest of 2^16-2^20 for `--map square` sums).
BLOCK_ELEMS = 1 << 16
#: np.histogram costs ~0.2 ms a call before it reads anything: its blocks are larger.
HISTOGRAM_BLOCK_ELEMS = 1 << 20

Partial = dict[str, Array]

_UFUNCS: dict[str, np.ufunc] = {
    "square": np.square,
    "abs": np.absolute,
    "sqrt": np.sqrt,
    "exp": np.exp,
    "log": np.log,
    "negative": np.negative,
}


# --- validation and planning ---------------------------------------------------


def validate_job(
    job: Job, data_root: Path | None = None, openers: Mapping[str, Opener] | None = None
) -> DataSource:
    """Check every option of `job` against its source; return the opened source.

    `openers`: the file formats this node reads (sources.open_source).
    """
    if job.op not in OPS:
        raise InvalidField("op", f"unknown op {job.op!r} (expected {', '.join(OPS)})")
    if job.kernel not in KERNELS:
        expected = ", ".join(KERNELS)
        raise InvalidField("map", f"unknown kernel {job.kernel!r} (expected {expected})")
    source = open_source(job.source, data_root, openers)
    _validate_axis(job, source)
    if job.op == "histogram":
        _validate_histogram(job)
    elif job.bins != 0:
        raise InvalidField("bins", f"--bins only applies to --op histogram, not {job.op}")
    elif job.range_lo is not None or job.range_hi is not None:
        raise InvalidField("range", f"--range only applies to --op histogram, not {job.op}")
    return source


def _validate_axis(job: Job, source: DataSource) -> None:
    if job.axis is None:
        return
    if isinstance(job.axis, bool) or job.axis != 0:
        raise InvalidField("axis", f"only --axis 0 is supported, got {job.axis!r}")
    if job.op == "histogram":
        raise InvalidField("axis", "histogram does not take --axis")
    if source.cols is None:
        raise InvalidField("axis", f"--axis 0 needs 2-D data; source {job.source!r} is 1-D")


def _validate_histogram(job: Job) -> None:
    if job.bins == 0:
        raise InvalidField("bins", "histogram needs --bins N, the number of bins")
    if job.bins < 0:
        raise InvalidField("bins", f"must be a positive integer, got {job.bins}")
    if job.bins > MAX_BINS:
        raise InvalidField("bins", f"--bins {job.bins} is above the limit of {MAX_BINS}")
    lo, hi = job.range_lo, job.range_hi
    if lo is None or hi is None:
        raise InvalidField("range", "histogram needs --range LO:HI")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise InvalidField("range", f"LO and HI must be finite, got {lo}:{hi}")
    if not lo < hi:
        raise InvalidField("range", f"LO must be below HI, got {lo}:{hi}")
    if not math.isfinite(hi - lo):
        raise InvalidField("range", f"HI - LO must be finite, got {lo}:{hi}")
    if np.any(np.diff(np.linspace(lo, hi, job.bins + 1)) <= 0):  # numpy's own test of the edges
        raise InvalidField("range", f"{lo}:{hi} is too narrow for {job.bins} bins: two edges would be equal")


def shard_rows(source: DataSource, shard_elems: int = SHARD_ELEMS) -> int:
    """Rows per shard: as many whole rows as fit in `shard_elems` elements, at least one.

    For a chunked source, rounded down to whole stored units: the coarsest
    level of which one fits (a Zarr shard file), else one finest chunk.
    """
    if shard_elems <= 0:
        raise ValueError(f"shard_elems must be positive, got {shard_elems}")
    rows = max(1, shard_elems // (source.cols or 1))
    # getattr, not isinstance: a runtime Protocol check costs ~45 us, a small job's whole budget is ~800.
    units: tuple[int, ...] | None = getattr(source, "chunk_rows", None)
    if units:
        unit = next((u for u in units if u <= rows), units[-1])
        rows = max(1, rows // unit) * unit
    return rows


def plan_shards(source: DataSource, shard_elems: int = SHARD_ELEMS) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of about `shard_elems` elements each.

    Depends only on the source's shape and storage layout and on
    `shard_elems`, never on the nodes: this is what makes answers independent
    of the node count. Shards hold whole chunks, or whole blocks (consecutive
    blocks gathered until they reach `shard_elems`), so no block is decoded
    for two shards.
    """
    row_blocks: Callable[[], list[int]] | None = getattr(source, "row_blocks", None)
    if row_blocks is not None:
        return _gather_blocks(row_blocks(), shard_rows(source, shard_elems))
    rows = shard_rows(source, shard_elems)
    return [(s, min(s + rows, source.rows)) for s in range(0, source.rows, rows)]


def _gather_blocks(blocks: list[int], target_rows: int) -> list[tuple[int, int]]:
    shards: list[tuple[int, int]] = []
    start = stop = 0
    for size in blocks:
        stop += size
        if stop - start >= target_rows:
            shards.append((start, stop))
            start = stop
    if stop > start:
        shards.append((start, stop))
    return shards


# --- kernels and per-shard partials --------------------------------------------


def apply_kernel(kernel: str, x: Array, out: Array | None = None) -> Array:
    """Apply a named elementwise kernel; identity returns `x` itself (no copy).
    `out`, if given, is a buffer of the result's shape and dtype to write into."""
    if x.dtype == np.bool_:
        x = x.astype(np.int64)
    if kernel == "identity":
        return x
    if kernel not in _UFUNCS:
        raise InvalidField("map", f"unknown kernel {kernel!r} (expected {', '.join(KERNELS)})")
    # sqrt/log of negatives give NaN, log(0) gives -inf, exp may overflow: as numpy.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return np.asarray(_UFUNCS[kernel](x) if out is None else _UFUNCS[kernel](x, out=out))


def compute_partial(job: Job, source: DataSource, start: int, stop: int) -> Partial:
    """Reduce rows [start, stop) of `source` to the partial state of `job.op`.

    A source stored in pieces (`PieceSource`: uncompressed chunk files, each
    memory-mapped; Parquet row groups) is reduced piece by piece and the
    pieces' partials merged in order: joining them first would copy the
    whole shard. The pieces depend on the data alone, like the shards.
    """
    if not 0 <= start < stop <= source.rows:
        raise ValueError(f"bad shard [{start}, {stop}) for {source.rows} rows")
    pieces = getattr(source, "read_pieces", None)
    if pieces is None:
        return _partial_of(job, source.read(start, stop), start, source.cols)
    partials = []
    for first, piece in pieces(start, stop):
        halt.check()  # a piece may be a row group decoded now: stop here if the shard is no longer wanted
        partials.append(_partial_of(job, piece, first, source.cols))
    return functools.reduce(functools.partial(merge, job.op), partials)


def _partial_of(job: Job, raw: Array, start: int, cols: int | None) -> Partial:
    """The partial of rows `raw`, the first of which is row `start` of the source."""
    axis = job.axis
    if axis is None and raw.ndim == 2:
        raw = raw.reshape(-1)  # C-order flatten: a view for contiguous rows
    if job.op == "count":  # the kernel cannot change how many elements there are
        return {"count": _count(raw, axis)}
    # Global index of the first element of this shard, in the reduced layout.
    offset = start if axis == 0 else start * (cols or 1)
    width = raw.shape[1] if raw.ndim == 2 else 1
    rows = max(1, (HISTOGRAM_BLOCK_ELEMS if job.op == "histogram" else BLOCK_ELEMS) // width)
    if raw.shape[0] <= rows or not _makes_temporaries(job, raw):
        return _compute_op(job, apply_kernel(job.kernel, raw), axis, offset)
    merged: Partial | None = None
    buffer: Array | None = None
    for first in range(0, raw.shape[0], rows):
        halt.check()
        block = raw[first:first + rows]
        out = None if buffer is None else buffer[:block.shape[0]]
        x = apply_kernel(job.kernel, block, out)
        buffer = x if buffer is None else buffer
        # A block's first row is `first` rows (axis 0) or elements (flattened) further on.
        partial = _compute_op(job, x, axis, offset + first)
        merged = partial if merged is None else merge(job.op, merged, partial)
    assert merged is not None
    return merged


def _makes_temporaries(job: Job, raw: Array) -> bool:
    """Does reducing `raw` for `job` write a temporary the size of `raw`?"""
    return job.kernel != "identity" or raw.dtype == np.bool_ or job.op in ("var", "std")


def partial_template(job: Job, source: DataSource) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """The keys, shapes and dtypes of every partial of `job` over `source`, read from none of it.

    Computed over one row of zeros of the source's dtype, as wide as the source for an
    `--axis 0` job (its partials are vectors) and one column wide otherwise: a real row
    might be the first of a chunk that would be decoded for it alone.
    """
    shape = (1,) if source.cols is None else (1, source.cols if job.axis == 0 else 1)
    row = ValuesSource(np.zeros(shape, dtype=source.dtype))
    return {key: (value.shape, value.dtype) for key, value in compute_partial(job, row, 0, 1).items()}


def _compute_op(job: Job, x: Array, axis: int | None, offset: int) -> Partial:
    op = job.op
    if op in ("sum", "prod", "mean", "min", "max"):
        if x.dtype.kind != "f":  # integer reductions wrap and warn of nothing
            return _reduce_op(op, x, axis)
        with np.errstate(all="ignore"):  # overflow and NaN behave as in numpy, silently
            return _reduce_op(op, x, axis)
    with np.errstate(all="ignore"):
        if op in ("var", "std"):
            mean = np.mean(x, axis=axis, dtype=np.float64)
            deviation = np.subtract(x, mean, dtype=np.float64)  # one temporary, squared in place
            m2 = np.sum(np.square(deviation, out=deviation), axis=axis)
            return {"n": _rows(x, axis), "mean": np.asarray(mean), "m2": np.asarray(m2)}
        if op in ("argmin", "argmax"):
            return _arg_partial(op, x, axis, offset)
        if op == "histogram":
            assert job.range_lo is not None and job.range_hi is not None
            counts, _ = np.histogram(x, bins=job.bins, range=(job.range_lo, job.range_hi))
            return {"counts": counts.astype(np.int64, copy=False)}
    raise InvalidField("op", f"unknown op {op!r} (expected {', '.join(OPS)})")


def _reduce_op(op: str, x: Array, axis: int | None) -> Partial:
    """The ufuncs' own reduce, as np.sum/np.prod/np.min/np.max call it for an
    ndarray (same pairwise summation, same bits), minus their Python wrapper:
    a small job is mostly such overhead."""
    if op in ("min", "max"):
        extreme = np.minimum if op == "min" else np.maximum
        return {op: np.asarray(extreme.reduce(x, axis=axis))}
    reducer = np.multiply if op == "prod" else np.add
    value = np.asarray(reducer.reduce(x, axis=axis, dtype=_accumulator(x, op)))
    if op == "mean":
        return {"n": _rows(x, axis), "sum": value}
    return {op: value}


def _accumulator(x: Array, op: str) -> type[np.floating[Any]] | None:
    """float64 for mean and for float data; None keeps numpy's integer default."""
    return np.float64 if op == "mean" or x.dtype.kind == "f" else None


def _rows(x: Array, axis: int | None) -> Array:
    return np.asarray(x.shape[0] if axis == 0 else x.size, dtype=np.int64)


def _count(x: Array, axis: int | None) -> Array:
    if axis == 0:  # one count per column, like every other --axis 0 answer
        return np.full(x.shape[1], x.shape[0], dtype=np.int64)
    return np.asarray(x.size, dtype=np.int64)


def _arg_partial(op: str, x: Array, axis: int | None, offset: int) -> Partial:
    finder = np.argmin if op == "argmin" else np.argmax
    local = np.asarray(finder(x, axis=axis))
    if axis == 0:
        # In this machine's byte order, as every partial arrives from the wire (a big-endian
        # source's were all refused as malformed, and the workers dropped from the job).
        value = np.take_along_axis(x, local[np.newaxis, :], axis=0)[0]
        value = value.astype(value.dtype.newbyteorder("="), copy=False)
    else:
        value = np.asarray(x[local[()]])
    index = np.asarray(local.astype(np.int64) + offset)
    return {"value": value, "index": index}


# --- merging and finishing -----------------------------------------------------


def merge(op: str, left: Partial, right: Partial) -> Partial:
    """Combine two partials; `left` covers lower indices than `right`.

    Pure and deterministic: merging the shards' partials left to right in
    shard order gives the same bits whoever computed them.
    """
    try:
        merger = _MERGERS[op]
    except KeyError:
        raise InvalidField("op", f"unknown op {op!r} (expected {', '.join(OPS)})") from None
    with np.errstate(all="ignore"):
        return {key: np.asarray(value) for key, value in merger(left, right).items()}


def _merge_moments(left: Partial, right: Partial) -> Partial:
    """Chan, Golub & LeVeque (1979): combine (n, mean, M2) of two disjoint parts."""
    n_left, n_right = left["n"], right["n"]
    n = n_left + n_right
    delta = right["mean"] - left["mean"]
    weight = n_right / n  # float64 since n is int64
    mean = left["mean"] + delta * weight
    m2 = left["m2"] + right["m2"] + np.square(delta) * n_left * weight
    return {"n": n, "mean": mean, "m2": m2}


def _merge_arg(better: Callable[[Array, Array], Array], left: Partial, right: Partial) -> Partial:
    """Keep the right value only where it is strictly better: ties stay with the
    lower (left) index. A NaN wins over any number and the first NaN stays, as
    in np.argmin/np.argmax."""
    lv, rv = left["value"], right["value"]
    left_nan, right_nan = np.isnan(lv), np.isnan(rv)
    take_right = ~left_nan & (right_nan | better(rv, lv))
    return {
        "value": np.where(take_right, rv, lv),
        "index": np.where(take_right, right["index"], left["index"]),
    }


def _summed(key: str) -> Callable[[Partial, Partial], Partial]:
    return lambda left, right: {key: left[key] + right[key]}


_MERGERS: dict[str, Callable[[Partial, Partial], Partial]] = {
    "sum": _summed("sum"),
    "prod": lambda left, right: {"prod": left["prod"] * right["prod"]},
    "min": lambda left, right: {"min": np.minimum(left["min"], right["min"])},
    "max": lambda left, right: {"max": np.maximum(left["max"], right["max"])},
    "count": _summed("count"),
    "mean": lambda left, right: {"n": left["n"] + right["n"], "sum": left["sum"] + right["sum"]},
    "var": _merge_moments,
    "std": _merge_moments,
    "argmin": functools.partial(_merge_arg, np.less),
    "argmax": functools.partial(_merge_arg, np.greater),
    "histogram": _summed("counts"),
}


def finalize(job: Job, partial: Partial) -> Array:
    """The answer: a 0-d array (scalar) or 1-d (vector, counts, indices)."""
    op = job.op
    if op in ("mean", "var", "std"):
        with np.errstate(all="ignore"):
            if op == "mean":
                return np.asarray(partial["sum"] / partial["n"], dtype=np.float64)
            var = np.asarray(partial["m2"] / partial["n"], dtype=np.float64)
            return np.asarray(np.sqrt(var)) if op == "std" else var
    key = {"argmin": "index", "argmax": "index", "histogram": "counts"}.get(op, op)
    if key not in partial:
        raise InvalidField("op", f"unknown op {op!r} (expected {', '.join(OPS)})")
    return np.asarray(partial[key])


def reduce_all(job: Job, source: DataSource, shard_elems: int = SHARD_ELEMS) -> Array:
    """Plan, compute every shard, merge left to right, finalize: the one-node path."""
    partials = (compute_partial(job, source, a, b) for a, b in plan_shards(source, shard_elems))
    return finalize(job, functools.reduce(functools.partial(merge, job.op), partials))
