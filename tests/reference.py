"""What plain numpy answers for a job over a whole array: the reference every source is held to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from node.core.job import OPS, Job

Array = npt.NDArray[Any]

UFUNCS: dict[str, Callable[[Array], Any]] = {
    "identity": lambda x: x,
    "square": np.square,
    "abs": np.abs,
    "sqrt": np.sqrt,
    "exp": np.exp,
    "log": np.log,
    "negative": np.negative,
}
EXACT_OPS = {"min", "max", "count", "argmin", "argmax", "histogram"}


# --- helpers -------------------------------------------------------------------


def kernel_ref(kernel: str, data: Array) -> Array:
    if data.dtype == np.bool_:
        data = data.astype(np.int64)
    with np.errstate(all="ignore"):
        return np.asarray(UFUNCS[kernel](data))


def histogram_range(values: Array) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    # A range too narrow for 9 distinct edges is refused (InvalidField): widen it as a user would,
    # by more than the float spacing where the values are huge (exp of an int64: 1e18 + 1 == 1e18).
    if lo < hi and np.all(np.diff(np.linspace(lo, hi, 10)) > 0):
        return lo, hi
    return lo, lo + max(1.0, abs(lo) * 1e-6)


def op_cases(datasets: dict[str, Array]) -> list[tuple[str, int | None, str]]:
    """(dataset, axis, op) for every op over every dataset: 2-D data also along axis 0,
    except for histogram, which takes no axis."""
    return [
        (name, axis, op)
        for name, data in datasets.items()
        for axis in ((None, 0) if data.ndim == 2 else (None,))
        for op in OPS
        if axis is None or op != "histogram"
    ]


def make_job(op: str, spec: str, kernel: str = "identity", axis: int | None = None,
             data: Array | None = None) -> Job:  # fmt: skip
    if op != "histogram":
        return Job(op=op, source=spec, kernel=kernel, axis=axis)
    assert data is not None
    lo, hi = histogram_range(kernel_ref(kernel, data))
    return Job(op=op, source=spec, kernel=kernel, bins=9, range_lo=lo, range_hi=hi)


def reference(job: Job, data: Array) -> Array:
    """Plain numpy on the whole array: what the cluster must answer."""
    x = kernel_ref(job.kernel, data)
    axis = job.axis
    if axis is None:
        x = x.reshape(-1)
    floaty = x.dtype.kind == "f"
    with np.errstate(all="ignore"):
        result: Any
        if job.op == "count":
            result = np.full(x.shape[1], x.shape[0]) if axis == 0 else x.size
        elif job.op == "histogram":
            assert job.range_lo is not None and job.range_hi is not None
            result = np.histogram(x, bins=job.bins, range=(job.range_lo, job.range_hi))[0]
        elif job.op in ("sum", "prod", "mean", "var", "std"):
            # distnode accumulates float data in float64, float32 included.
            result = getattr(np, job.op)(x, axis=axis, dtype=np.float64 if floaty else None)
        else:
            result = getattr(np, job.op)(x, axis=axis)
    return np.asarray(result)


def magnitude(job: Job, data: Array) -> Array:
    """Scale for the absolute tolerance of float results near zero."""
    x = np.abs(kernel_ref(job.kernel, data).astype(np.float64))
    x = np.where(np.isfinite(x), x, 0.0)
    axis = job.axis if job.axis is not None else None
    if job.axis is None:
        x = x.reshape(-1)
    if job.op in ("sum", "prod"):
        return np.asarray(np.sum(x, axis=axis))
    if job.op == "var":
        return np.asarray(np.max(np.square(x), axis=axis))
    return np.asarray(np.max(x, axis=axis))


def assert_matches(job: Job, data: Array, actual: Array) -> None:
    expected = reference(job, data)
    assert actual.shape == expected.shape
    if job.op in EXACT_OPS or expected.dtype.kind in "iu":
        np.testing.assert_array_equal(actual, expected)
        if job.op in ("sum", "prod", "min", "max"):
            assert actual.dtype == expected.dtype
        return
    atol = 1e-12 * float(np.max(magnitude(job, data)))
    if job.op == "prod":
        actual, expected = _overflow_either_way(job, data, actual, expected)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=atol, equal_nan=True)


def _overflow_either_way(job: Job, data: Array, actual: Array, expected: Array) -> tuple[Array, Array]:
    """A product overflows or not depending on the order of its factors, where some order's
    partial product can pass float64's largest: numpy's one pass and the shards' products of
    products may differ there (one CI run: 4.8e305 against inf). Where that can happen, the
    exact product (long double) and an infinity of its sign are both right (or NaN, where
    that infinity met a zero factor)."""
    x = np.abs(kernel_ref(job.kernel, data).astype(np.longdouble))
    if job.axis is None:
        x = x.reshape(-1)
    with np.errstate(all="ignore"):
        bound = np.prod(np.maximum(x, 1), axis=job.axis)  # the largest any partial product can be
        exact = np.prod(kernel_ref(job.kernel, data).astype(np.longdouble), axis=job.axis)
        risky = np.asarray(bound > np.finfo(np.float64).max)
        # An infinity of the exact product's sign, or NaN where a zero factor met an infinity.
        either = (np.isinf(actual) & (np.sign(actual) == np.sign(exact))) | (np.isnan(actual) & (exact == 0))
        settled = np.where(risky & either, actual, exact)
        expected = np.where(risky, np.asarray(settled, np.float64), np.asarray(expected, np.float64))
    return np.asarray(actual, np.float64), expected


def same_bits(a: Array, b: Array) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
