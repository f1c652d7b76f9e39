"""NaN, infinities, integer overflow and tiny inputs behave as numpy does.

The reference is numpy on the whole array; distnode computes the same job
over many tiny shards (so every special value sits in some shard and crosses
merge boundaries) and must agree: exactly where numpy's answer is exact, with
NaN equal to NaN.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.core.compute import reduce_all, validate_job
from node.core.job import OPS, Job

SPECIAL = {
    "nan-first": [np.nan, 1.0, 2.0, -3.0, 4.0, np.nan, 0.5],
    "nan-late": [1.0, 2.0, -3.0, 4.0, np.nan, 0.5, np.nan],
    "+inf": [1.0, np.inf, -2.0, 3.0, 0.0, 5.0],
    "-inf": [1.0, -np.inf, -2.0, 3.0, 0.0, 5.0],
    "inf-minus-inf": [np.inf, 1.0, -np.inf, 2.0],
    "all-nan": [np.nan, np.nan, np.nan],
    "single": [7.25],
}


def numpy_reference(op: str, data: Any) -> Any:
    with np.errstate(all="ignore"):
        if op == "histogram":
            return np.histogram(data, bins=4, range=(-4.0, 4.0))[0]
        if op == "count":
            return data.size
        return getattr(np, op)(data)


@pytest.mark.parametrize("name", list(SPECIAL))
@pytest.mark.parametrize("op", OPS)
def test_special_floats_like_numpy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, op: str) -> None:
    monkeypatch.chdir(tmp_path)
    data = np.array(SPECIAL[name])
    np.save("d.npy", data)
    options: dict[str, Any] = {"bins": 4, "range_lo": -4.0, "range_hi": 4.0} if op == "histogram" else {}
    job = Job(op=op, source="npy:d.npy", **options)
    got = reduce_all(job, validate_job(job), shard_elems=2)
    want = numpy_reference(op, data)
    if op in ("sum", "prod", "mean", "var", "std") and not np.isnan(want):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("values", "op"),
    [
        ("9223372036854775807,1", "sum"),       # wraps to -2**63, as numpy's int64 sum
        ("3037000500,3037000500", "prod"),      # overflows int64 like numpy
        ("-9223372036854775808,-1", "sum"),
        ("4611686018427387904,4611686018427387904,4611686018427387904", "mean"),  # float64 mean: no wrap
    ],
)
def test_integer_overflow_matches_numpy(values: str, op: str) -> None:
    job = Job(op=op, source=f"values:{values}")
    got = reduce_all(job, validate_job(job), shard_elems=1)
    data = np.array([int(v) for v in values.split(",")], dtype=np.int64)
    with np.errstate(all="ignore"):
        want = np.mean(data) if op == "mean" else getattr(np, op)(data)
    assert got.item() == want.item()
