"""A shard reduced in blocks (node/core/compute.py, BLOCK_ELEMS).

A job that writes a temporary as large as what it reads (a `--map` kernel,
bool data widened to int64, var/std's deviations) reduces each shard a block
at a time, so the temporary stays in the CPU's cache. What that must not
change, and what it must:
1. every op x kernel x layout still matches plain numpy (exactly where numpy
   is exact), with blocks of a few elements so that every shard is cut,
   ties and NaNs straddling the blocks' edges included;
2. the kernel never sees more than a block: the temporaries are bounded;
3. at the real block sizes, on data larger than a block, the answer is
   numpy's.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from reference import assert_matches, make_job, op_cases

from node.core import compute
from node.core.compute import compute_partial, finalize, reduce_all
from node.core.job import KERNELS, Job
from node.core.sources import ValuesSource

Array = npt.NDArray[Any]

RNG = np.random.default_rng(20261205)
#: Minima, maxima and NaNs repeated in many blocks: argmin/argmax must keep the first.
TIES = np.tile(np.array([3.0, 1.0, 2.0, 7.0, 1.0, np.nan, 7.0, 0.5]), 37)
DATASETS: dict[str, Array] = {
    "int1d": RNG.integers(-20, 20, size=301).astype(np.int64),
    "float1d": RNG.standard_normal(307) * 3.0,  # negatives: sqrt/log give NaN
    "bool1d": RNG.random(199) < 0.5,
    "ties1d": TIES,
    "int2d": RNG.integers(-9, 9, size=(37, 4)).astype(np.int64),
    "float2d": RNG.standard_normal((41, 5)),
}
CASES = op_cases(DATASETS)  # (dataset, axis, op)
SMALL_BLOCK = 8
SMALL_HISTOGRAM_BLOCK = 16
SHARD_ELEMS = 64


def makes_temporaries(op: str, kernel: str, data: Array) -> bool:
    return kernel != "identity" or data.dtype == np.bool_ or op in ("var", "std")


@pytest.fixture
def kernel_inputs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Small blocks, and the size of every array the kernel is applied to."""
    monkeypatch.setattr(compute, "BLOCK_ELEMS", SMALL_BLOCK)
    monkeypatch.setattr(compute, "HISTOGRAM_BLOCK_ELEMS", SMALL_HISTOGRAM_BLOCK)
    sizes: list[int] = []
    apply = compute.apply_kernel

    def recording(kernel: str, x: Array, out: Array | None = None) -> Array:
        sizes.append(int(x.size))
        return apply(kernel, x, out)

    monkeypatch.setattr(compute, "apply_kernel", recording)
    return sizes


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("dataset", "axis", "op"), CASES)
def test_blocks_match_numpy(
    dataset: str, axis: int | None, op: str, kernel: str, kernel_inputs: list[int]
) -> None:
    data = DATASETS[dataset]
    job = make_job(op, "values:0", kernel, axis, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN/overflow must stay silent, block by block too
        actual = reduce_all(job, ValuesSource(data), shard_elems=SHARD_ELEMS)
    assert_matches(job, data, actual)
    if op != "count" and makes_temporaries(op, kernel, data):
        limit = SMALL_HISTOGRAM_BLOCK if op == "histogram" else SMALL_BLOCK
        width = data.shape[1] if data.ndim == 2 and axis == 0 else 1
        assert max(kernel_inputs) <= max(limit, width)
        assert len(kernel_inputs) > len(range(0, data.size, SHARD_ELEMS)), "no shard was cut in blocks"


def test_a_plain_sum_is_not_cut(kernel_inputs: list[int]) -> None:
    """Without a temporary there is nothing to keep in cache: one reduce per shard."""
    data = DATASETS["float1d"]
    reduce_all(Job("sum", "values:0"), ValuesSource(data), shard_elems=SHARD_ELEMS)
    assert kernel_inputs == [min(SHARD_ELEMS, data.size - start) for start in range(0, data.size, SHARD_ELEMS)]


@pytest.fixture
def squared_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every array the `square` kernel is applied to (at the real block sizes)."""
    seen: list[int] = []
    square = compute._UFUNCS["square"]

    def recording(x: Array, out: Array | None = None) -> Array:
        seen.append(int(x.size))
        return np.asarray(square(x) if out is None else square(x, out=out))

    monkeypatch.setitem(compute._UFUNCS, "square", recording)
    return seen


def test_real_blocks_bound_the_temporaries_and_match_numpy(squared_sizes: list[int]) -> None:
    data = RNG.standard_normal(5 * compute.BLOCK_ELEMS + 123)
    source = ValuesSource(data)
    total = finalize(Job("sum", "x", "square"), compute_partial(Job("sum", "x", "square"), source, 0, data.size))
    assert max(squared_sizes) == compute.BLOCK_ELEMS and len(squared_sizes) == 6
    np.testing.assert_allclose(total, np.sum(np.square(data)), rtol=1e-12)
    variance = finalize(Job("var", "x"), compute_partial(Job("var", "x"), source, 0, data.size))
    np.testing.assert_allclose(variance, np.var(data), rtol=1e-12)


def test_histogram_blocks_are_larger(squared_sizes: list[int]) -> None:
    """np.histogram's own cost per call is ~0.2 ms: its blocks are HISTOGRAM_BLOCK_ELEMS."""
    data = RNG.random(compute.HISTOGRAM_BLOCK_ELEMS + compute.BLOCK_ELEMS)
    job = Job("histogram", "x", "square", bins=10, range_lo=0.0, range_hi=1.0)
    counts = finalize(job, compute_partial(job, ValuesSource(data), 0, data.size))
    assert squared_sizes == [compute.HISTOGRAM_BLOCK_ELEMS, compute.BLOCK_ELEMS]
    np.testing.assert_array_equal(counts, np.histogram(np.square(data), bins=10, range=(0.0, 1.0))[0])
