"""Unit tests for node/core/compute.py and node/core/sources.py.

What they prove, in the order of the module's contract:
1. merging fixed shards in shard order gives the same bits however the shards
   were spread over nodes;
2. every op x kernel matches plain numpy on the whole array (exactly where
   numpy is exact, rtol 1e-12 for float sums);
3. shard boundaries (N = k*rows - 1, k*rows, k*rows + 1) and ties straddling
   them;
4. sources: random is defined per block, npy is memory-mapped and validated;
5. every bad input names its field.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_matches, kernel_ref, make_job, op_cases, same_bits

from node.core.compute import (
    MAX_BINS,
    Partial,
    compute_partial,
    finalize,
    merge,
    plan_shards,
    reduce_all,
    validate_job,
)
from node.core.job import KERNELS, OPS, SHARD_ELEMS, Job
from node.core.sources import RANDOM_BLOCK_ELEMS, DataSource, open_source, parse_count
from node.errors import InvalidField, SourceNotFound

Array = npt.NDArray[Any]


# --- helpers (the numpy reference itself is in reference.py) --------------------


def merge_in_order(op: str, partials: dict[int, Partial]) -> Partial:
    ordered = [partials[i] for i in sorted(partials)]
    return functools.reduce(functools.partial(merge, op), ordered)


# --- datasets ------------------------------------------------------------------

DATASET_RNG = np.random.default_rng(20240601)
DATASETS: dict[str, Array] = {
    "int1d": DATASET_RNG.integers(-20, 20, size=47).astype(np.int64),
    "float1d": DATASET_RNG.standard_normal(53) * 3.0,  # negatives: sqrt/log give NaN
    "int2d": DATASET_RNG.integers(-9, 9, size=(11, 4)).astype(np.int64),
    "float2d": DATASET_RNG.standard_normal((13, 5)),
}
CASES = op_cases(DATASETS)  # (dataset, axis, op)


@pytest.fixture(autouse=True)
def _data_root_is_the_temp_tree(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """npy: paths must lie under the data root, by default the working directory."""
    monkeypatch.chdir(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("npy")
    for name, data in DATASETS.items():
        np.save(root / f"{name}.npy", data)
    return root


def spec_for(name: str, data_dir: Path) -> str:
    data = DATASETS[name]
    if name == "int1d":  # inline, exercising the values: parser too
        return "values:" + ",".join(str(v) for v in data)
    return f"npy:{data_dir / name}.npy"


# --- 2 and 4: every op x every kernel against numpy ---------------------------


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize(("dataset", "axis", "op"), CASES)
def test_op_kernel_matches_numpy(
    dataset: str, axis: int | None, op: str, kernel: str, data_dir: Path
) -> None:
    data = DATASETS[dataset]
    job = make_job(op, spec_for(dataset, data_dir), kernel, axis, data)
    source = validate_job(job)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN/overflow must stay silent
        actual = reduce_all(job, source, shard_elems=7)
    assert_matches(job, data, actual)


@pytest.mark.parametrize("op", OPS)
def test_range_source_is_exact(op: str) -> None:
    data = np.arange(1000, dtype=np.int64)
    job = make_job(op, "range:n=1e3", data=data)
    assert_matches(job, data, reduce_all(job, validate_job(job), shard_elems=64))


def test_known_answers() -> None:
    source = open_source("range:n=1000000")
    assert reduce_all(Job("sum", "range:n=1000000"), source, 1 << 16) == 499_999_500_000
    assert reduce_all(Job("count", "range:n=1000000"), source, 1 << 16) == 1_000_000
    var = reduce_all(Job("var", "range:n=1000000"), source, 1 << 16)
    assert var == pytest.approx((1_000_000**2 - 1) / 12, rel=1e-14)


def test_dtypes_follow_numpy() -> None:
    ints = open_source("values:1,2,3")
    assert ints.dtype == np.int64
    assert reduce_all(Job("sum", "values:1,2,3"), ints).dtype == np.int64
    assert reduce_all(Job("max", "values:1,2,3"), ints).dtype == np.int64
    assert reduce_all(Job("mean", "values:1,2,3"), ints).dtype == np.float64
    assert reduce_all(Job("sum", "values:1,2,3", kernel="sqrt"), ints).dtype == np.float64
    assert open_source("values:1,2.5").dtype == np.float64
    assert reduce_all(Job("argmax", "values:1,2,3"), ints).dtype == np.int64


def test_integer_overflow_wraps_silently_like_numpy() -> None:
    spec = "values:9223372036854775807,1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        total = reduce_all(Job("sum", spec), open_source(spec), shard_elems=1)
    assert int(total) == -(2**63)


def test_small_dtypes(tmp_path: Path) -> None:
    cases: list[Array] = [
        np.array([250, 10, 3], dtype=np.uint8),
        np.array([[1, -2], [3, 4]], dtype=np.int32),
        np.array([True, False, True, True]),
        np.array([0.1, 0.2, 0.3], dtype=np.float32),
    ]
    for i, data in enumerate(cases):
        np.save(tmp_path / f"{i}.npy", data)
        spec = f"npy:{tmp_path / f'{i}.npy'}"
        for op in ("sum", "min", "argmax", "mean", "var"):
            job = make_job(op, spec)
            actual = reduce_all(job, validate_job(job), shard_elems=1)
            ref = kernel_ref("identity", data).reshape(-1)
            if op == "sum" and ref.dtype.kind == "f":
                # deviation: float16/32 accumulate in float64
                np.testing.assert_allclose(actual, np.sum(ref, dtype=np.float64), rtol=1e-12)
            elif op in ("mean", "var"):
                np.testing.assert_allclose(actual, getattr(np, op)(ref), rtol=1e-6)
            else:
                expected = np.asarray(getattr(np, op)(ref))
                np.testing.assert_array_equal(actual, expected)
                assert actual.dtype == expected.dtype


# --- 1: the answer does not depend on who computed which shard ----------------

small_floats = st.floats(-1e6, 1e6, allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(small_floats, min_size=1, max_size=80),
    shard_elems=st.integers(1, 20),
    op=st.sampled_from(OPS),
    kernel=st.sampled_from(KERNELS),
    nodes=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_assignment_of_shards_gives_identical_bits(
    values: list[float], shard_elems: int, op: str, kernel: str, nodes: int, seed: int
) -> None:
    data = np.array(values)
    spec = "values:" + ",".join(repr(v) for v in values)
    job = make_job(op, spec, kernel, data=data)
    source = validate_job(job)
    shards = plan_shards(source, shard_elems)
    # Deal the shards to `nodes` nodes in a random order; each computes its own
    # in its own random order; the leader merges in shard order.
    rng = random.Random(seed)
    order = list(range(len(shards)))
    rng.shuffle(order)
    partials: dict[int, Partial] = {}
    for node in range(nodes):
        for i in order[node::nodes]:
            partials[i] = compute_partial(job, source, *shards[i])
    distributed = finalize(job, merge_in_order(op, partials))
    assert same_bits(distributed, reduce_all(job, source, shard_elems))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 30),
    cols=st.integers(1, 6),
    shard_elems=st.integers(1, 40),
    op=st.sampled_from([o for o in OPS if o != "histogram"]),
    order_seed=st.integers(0, 1000),
)
def test_axis0_assignment_independent(
    tmp_path_factory: pytest.TempPathFactory,
    rows: int, cols: int, shard_elems: int, op: str, order_seed: int,
) -> None:  # fmt: skip
    data = np.random.default_rng(order_seed).standard_normal((rows, cols))
    path = tmp_path_factory.mktemp("axis") / "d.npy"
    np.save(path, data)
    job = Job(op=op, source=f"npy:{path}", axis=0)
    source = validate_job(job)
    shards = plan_shards(source, shard_elems)
    order = list(range(len(shards)))
    random.Random(order_seed).shuffle(order)
    partials = {i: compute_partial(job, source, *shards[i]) for i in order}
    assert same_bits(
        finalize(job, merge_in_order(op, partials)), reduce_all(job, source, shard_elems)
    )
    assert_matches(job, data, reduce_all(job, source, shard_elems))


# Few distinct values so that ties and NaNs land on every side of every boundary.
tie_values = st.lists(st.sampled_from([0.0, 1.0, -1.0, 2.0, np.nan, -0.0]), min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(values=tie_values, shard_elems=st.integers(1, 12))
def test_arg_and_extremes_match_numpy_with_ties_and_nans(
    values: list[float], shard_elems: int
) -> None:
    data = np.array(values)
    spec = "values:" + ",".join(repr(v) for v in values)
    source = open_source(spec)
    for op in ("argmin", "argmax", "min", "max"):
        job = Job(op=op, source=spec)
        assert_matches(job, data, reduce_all(job, source, shard_elems))


# --- 3: shard boundaries ------------------------------------------------------


@pytest.mark.parametrize("shard_elems", [7, 16])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("delta", [-1, 0, 1])
@pytest.mark.parametrize("cols", [None, 3])
def test_shard_boundaries(
    shard_elems: int, k: int, delta: int, cols: int | None, tmp_path: Path
) -> None:
    shard_rows = max(1, shard_elems // (cols or 1))
    rows = k * shard_rows + delta
    if cols is None:
        data: Array = np.arange(rows, dtype=np.int64)
        spec = f"range:n={rows}"
    else:
        data = np.arange(rows * cols, dtype=np.float64).reshape(rows, cols) % 5 - 2.0
        np.save(tmp_path / "b.npy", data)
        spec = f"npy:{tmp_path / 'b.npy'}"
    source = open_source(spec)
    shards = plan_shards(source, shard_elems)
    assert shards[0][0] == 0 and shards[-1][1] == rows
    assert all(a < b for a, b in shards)
    assert all(left[1] == right[0] for left, right in itertools.pairwise(shards))
    assert all(b - a == shard_rows for a, b in shards[:-1])
    assert len(shards) == -(-rows // shard_rows)
    for op in OPS:
        for axis in (None, 0) if cols else (None,):
            if op == "histogram" and axis is not None:
                continue
            job = make_job(op, spec, "square", axis, data)
            assert_matches(job, data, reduce_all(job, source, shard_elems))


def test_plan_depends_only_on_shape() -> None:
    assert plan_shards(open_source("range:n=10"), 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan_shards(open_source("random:n=10,seed=3"), 4) == [(0, 4), (4, 8), (8, 10)]
    assert plan_shards(open_source("range:n=1"), SHARD_ELEMS) == [(0, 1)]
    with pytest.raises(ValueError, match="shard_elems"):
        plan_shards(open_source("range:n=10"), 0)


def test_wide_rows_get_one_row_per_shard(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.ones((3, 50)))
    assert plan_shards(open_source(f"npy:{tmp_path / 'w.npy'}"), 16) == [(0, 1), (1, 2), (2, 3)]


@pytest.mark.parametrize(("op", "values", "expected"), [
    ("argmin", "5,5,5,1,1,5,5,5", 3),   # shard_elems=4: the tie straddles 3|4
    ("argmax", "0,0,0,9,9,0,0,0", 3),
    ("argmin", "5,5,5,5,1,1,5,5", 4),   # tie inside the second shard
    ("argmax", "1,2,3,4,0,0,0,4", 3),   # tie three shards apart
    ("argmin", "1,nan,1,nan,0", 1),     # the first NaN wins, like numpy
    ("argmax", "1,2,3,4,5,nan,nan", 5),
])  # fmt: skip
def test_arg_ties_across_boundary_pick_lowest(op: str, values: str, expected: int) -> None:
    spec = f"values:{values}"
    source = open_source(spec)
    for shard_elems in (1, 2, 3, 4, 5, 100):
        assert int(reduce_all(Job(op, spec), source, shard_elems)) == expected


def test_arg_axis0_ties_across_boundary(tmp_path: Path) -> None:
    data = np.array([[3, 1], [1, 2], [1, 1], [3, 1]], dtype=np.int64)  # shards of 2 rows
    np.save(tmp_path / "t.npy", data)
    spec = f"npy:{tmp_path / 't.npy'}"
    source = open_source(spec)
    for shard_elems in (2, 4, 6, 100):
        np.testing.assert_array_equal(
            reduce_all(Job("argmin", spec, axis=0), source, shard_elems), [1, 0]
        )
        np.testing.assert_array_equal(
            reduce_all(Job("argmax", spec, axis=0), source, shard_elems), [0, 1]
        )
    flat = reduce_all(Job("argmin", spec), source, 2)  # flat index r * cols + c
    assert int(flat) == int(np.argmin(data))


# --- 5: random source ---------------------------------------------------------

BIG_N = RANDOM_BLOCK_ELEMS + 1000  # two blocks, the last one short


@pytest.fixture(scope="module")
def big_random() -> tuple[DataSource, Array]:
    source = open_source(f"random:n={BIG_N},seed=42")
    return source, source.read(0, BIG_N)


def test_random_matches_the_per_block_definition(big_random: tuple[DataSource, Array]) -> None:
    source, full = big_random
    assert (source.rows, source.cols, source.dtype) == (BIG_N, None, np.dtype(np.float64))
    np.testing.assert_array_equal(
        full[:RANDOM_BLOCK_ELEMS], np.random.default_rng([42, 0]).random(RANDOM_BLOCK_ELEMS)
    )
    np.testing.assert_array_equal(full[RANDOM_BLOCK_ELEMS:], np.random.default_rng([42, 1]).random(1000))


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, BIG_N - 1), max_size=4, unique=True))
def test_random_values_do_not_depend_on_read_ranges(
    big_random: tuple[DataSource, Array], cuts: list[int]
) -> None:
    source, full = big_random
    bounds = [0, *sorted(cuts), BIG_N]
    pieces = [source.read(a, b) for a, b in itertools.pairwise(bounds)]
    assert np.concatenate(pieces).tobytes() == full.tobytes()


def test_random_normal_and_small_reads() -> None:
    source = open_source("random:n=1e3,seed=7,dist=normal")
    expected = np.random.default_rng([7, 0]).standard_normal(1000)
    np.testing.assert_array_equal(source.read(0, 1000), expected)
    np.testing.assert_array_equal(source.read(10, 13), expected[10:13])
    assert not np.array_equal(source.read(0, 10), open_source("random:n=1e3,seed=7").read(0, 10))
    job = Job("mean", "random:n=1e3,seed=7,dist=normal")
    np.testing.assert_allclose(reduce_all(job, source, 64), np.mean(expected), rtol=1e-12)


# --- 6: npy source ------------------------------------------------------------


def test_npy_1d_and_2d_read_only_requested_rows(tmp_path: Path) -> None:
    one = np.arange(100, dtype=np.float32)
    two = np.arange(60, dtype=np.int16).reshape(20, 3)
    np.save(tmp_path / "one.npy", one)
    np.save(tmp_path / "two.npy", two)
    s1, s2 = open_source(f"npy:{tmp_path / 'one.npy'}"), open_source(f"npy:{tmp_path / 'two.npy'}")
    assert (s1.rows, s1.cols, s1.dtype) == (100, None, np.dtype(np.float32))
    assert (s2.rows, s2.cols, s2.dtype) == (20, 3, np.dtype(np.int16))
    np.testing.assert_array_equal(s1.read(10, 15), one[10:15])
    np.testing.assert_array_equal(s2.read(4, 7), two[4:7])
    chunk = s2.read(4, 7)
    assert chunk.shape == (3, 3)
    assert type(chunk) is np.ndarray and not chunk.flags.owndata  # a view of the map
    assert np.shares_memory(chunk, s2.array)  # type: ignore[attr-defined]


def test_npy_relative_to_data_root_and_cached(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", np.arange(5))
    a = open_source("npy:d.npy", data_root=tmp_path)
    b = open_source(f"npy:{tmp_path / 'd.npy'}")
    assert a.array is b.array  # type: ignore[attr-defined]
    np.save(tmp_path / "d.npy", np.arange(7))  # rewritten: size changes, so remapped
    os.utime(tmp_path / "d.npy", ns=(1, 1))
    assert open_source("npy:d.npy", data_root=tmp_path).rows == 7


def test_npy_fortran_order_flattens_in_c_order(tmp_path: Path) -> None:
    data = np.asfortranarray(np.arange(12.0).reshape(3, 4) ** 2)
    np.save(tmp_path / "f.npy", data)
    spec = f"npy:{tmp_path / 'f.npy'}"
    source = open_source(spec)
    for op in ("argmax", "sum", "max"):
        assert_matches(Job(op, spec), data, reduce_all(Job(op, spec), source, 4))
        assert_matches(Job(op, spec, axis=0), data, reduce_all(Job(op, spec, axis=0), source, 4))


def test_npy_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match=r"^source: no such file") as info:
        open_source(f"npy:{tmp_path / 'nope.npy'}")
    assert isinstance(info.value, InvalidField) and info.value.field == "source"


@pytest.mark.parametrize(("name", "content", "match"), [
    ("text.npy", b"1,2,3\n", "not a valid .npy"),
    ("empty.npy", b"", "not a valid .npy"),
])  # fmt: skip
def test_npy_not_an_npy_file(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InvalidField, match=match) as info:
        open_source(f"npy:{tmp_path / name}")
    assert info.value.field == "source" and not isinstance(info.value, SourceNotFound)


@pytest.mark.parametrize(("array", "match"), [
    (np.array([1, "a"], dtype=object), "has dtype object"),  # read without unpickling anything
    (np.array(["a", "bc"]), "dtype <U2"),
    (np.array([1 + 2j]), "dtype complex128"),
    (np.float64(3.0), "0-D"),
    (np.zeros((2, 2, 2)), "3-D"),
    (np.zeros(0), "no elements"),
    (np.zeros((4, 0)), "no elements"),
])  # fmt: skip
def test_npy_rejected_arrays(tmp_path: Path, array: Any, match: str) -> None:
    np.save(tmp_path / "x.npy", array, allow_pickle=True)
    with pytest.raises(InvalidField, match=match) as info:
        open_source(f"npy:{tmp_path / 'x.npy'}")
    assert info.value.field == "source"


# --- 7: bad input names its field ---------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("1e8", 100_000_000), ("1000", 1000), ("1_000", 1000), ("2.5e3", 2500), ("1E2", 100),
])  # fmt: skip
def test_parse_count_accepts(text: str, expected: int) -> None:
    assert parse_count(text, "n") == expected


@pytest.mark.parametrize(
    "text", ["1.5", "-3", "0", "", "abc", "1e-3", "nan", "inf", "0x10", "1e30"]
)
def test_parse_count_rejects(text: str) -> None:
    with pytest.raises(InvalidField, match=r"^n: must be") as info:
        parse_count(text, "n")
    assert info.value.field == "n"


@pytest.mark.parametrize(("spec", "match"), [
    ("foo:n=3", "unknown kind 'foo' (expected range, random, npy, values, zarr, hdf5, parquet)"),
    ("range", "expected KIND:ARGS"),
    ("range:n=0", "source: n must be a positive integer, got '0'"),
    ("range:n=1.5", "got '1.5'"),
    ("range:m=3", "unknown parameter 'm'"),
    ("range:n=3,n=4", "given twice"),
    ("range:", "expected KEY=VALUE"),
    ("random:n=10", "missing parameter seed"),
    ("random:n=10,seed=-1", "seed must be a non-negative integer"),
    ("random:n=10,seed=1,dist=cauchy", "unknown dist 'cauchy'"),
    ("values:", "at least one number"),
    ("values:1,,2", "empty item"),
    ("values:1,a", "not a number: 'a'"),
    ("values:99999999999999999999", "out of int64 range"),
    ("npy:", "needs a path"),
])  # fmt: skip
def test_bad_sources(spec: str, match: str) -> None:
    with pytest.raises(InvalidField) as info:
        open_source(spec)
    assert info.value.field == "source"
    assert str(info.value).startswith("source: ")
    assert match in str(info.value)


def test_bad_sources_inside_validate_job() -> None:
    with pytest.raises(InvalidField, match=r"^source: unknown kind"):
        validate_job(Job("sum", "bogus:1"))


@pytest.mark.parametrize(("job", "field", "match"), [
    (Job("median", "range:n=3"), "op", "unknown op 'median'"),
    (Job("sum", "range:n=3", kernel="cube"), "map", "unknown kernel 'cube'"),
    (Job("sum", "range:n=3", axis=0), "axis", "--axis 0 needs 2-D data; source 'range:n=3' is 1-D"),
    (Job("sum", "range:n=3", axis=1), "axis", "only --axis 0"),
    (Job("sum", "range:n=3", axis=True), "axis", "only --axis 0"),
    (Job("sum", "range:n=3", bins=4), "bins", "only applies to --op histogram"),
    (Job("sum", "range:n=3", range_lo=0, range_hi=1), "range", "only applies"),
    (Job("histogram", "range:n=3", range_lo=0, range_hi=1), "bins", "histogram needs --bins N"),
    (Job("histogram", "range:n=3", bins=-2, range_lo=0, range_hi=1), "bins", "must be a positive integer, got -2"),
    (Job("histogram", "range:n=3", bins=MAX_BINS + 1, range_lo=0, range_hi=1), "bins", "1000000"),
    (Job("histogram", "range:n=3", bins=4), "range", "histogram needs --range LO:HI"),
    (Job("histogram", "range:n=3", bins=4, range_lo=0), "range", "needs --range"),
    (Job("histogram", "range:n=3", bins=4, range_lo=2, range_hi=1), "range", "below"),
    (Job("histogram", "range:n=3", bins=4, range_lo=1, range_hi=1), "range", "below"),
    (Job("histogram", "range:n=3", bins=4, range_lo=0, range_hi=np.inf), "range", "finite"),
    (Job("histogram", "range:n=3", bins=4, range_lo=np.nan, range_hi=1), "range", "finite"),
    # Found by Hypothesis: numpy refuses bins that would not be of finite size (it raised ValueError).
    (Job("histogram", "range:n=3", bins=9, range_lo=1.0, range_hi=1.0000000000000002), "range", "too narrow"),
])  # fmt: skip
def test_bad_jobs_name_their_field(job: Job, field: str, match: str) -> None:
    with pytest.raises(InvalidField) as info:
        validate_job(job)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert match in str(info.value)


def test_histogram_with_axis_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "h.npy", np.ones((2, 2)))
    job = Job("histogram", f"npy:{tmp_path / 'h.npy'}", axis=0, bins=2, range_lo=0, range_hi=1)
    with pytest.raises(InvalidField, match=r"^axis: histogram"):
        validate_job(job)


def test_compute_partial_rejects_empty_shard() -> None:
    source = open_source("range:n=10")
    with pytest.raises(ValueError, match="bad shard"):
        compute_partial(Job("sum", "range:n=10"), source, 5, 5)
    with pytest.raises(ValueError, match="bad shard"):
        compute_partial(Job("sum", "range:n=10"), source, 5, 11)


def test_merge_rejects_unknown_op() -> None:
    with pytest.raises(InvalidField, match=r"^op: "):
        merge("median", {}, {})


def test_partials_are_small_numpy_arrays(tmp_path: Path) -> None:
    np.save(tmp_path / "p.npy", np.ones((10, 3)))
    spec = f"npy:{tmp_path / 'p.npy'}"
    source = open_source(spec)
    for op in OPS:
        for axis in (None, 0):
            if op == "histogram" and axis is not None:
                continue
            job = make_job(op, spec, axis=axis, data=np.ones((10, 3)))
            partial = compute_partial(job, source, 2, 7)
            for value in partial.values():
                assert type(value) is np.ndarray and value.ndim <= 1
                assert value.size <= max(3, job.bins)
            for value in partial.values():  # as they arrive from the wire (np.frombuffer)
                value.flags.writeable = False
            before = {key: value.copy() for key, value in partial.items()}
            result = finalize(job, merge(op, partial, partial))
            assert type(result) is np.ndarray
            assert all(np.array_equal(partial[k], v, equal_nan=True) for k, v in before.items())


def test_floats_wider_than_64_bits_are_refused_naming_the_source(tmp_path: Path) -> None:
    """A float128 .npy was taken: `min`/`max` answered a numpy.longdouble (`submit --json`
    then failed with a traceback), and its bytes would be another number on a node of
    another architecture."""
    np.save(tmp_path / "wide.npy", np.arange(1, 11, dtype=np.longdouble))  # 16 bytes on x86-64 Linux
    with pytest.raises(InvalidField, match=r"float128.*save it as float64") as refused:
        validate_job(Job("max", f"npy:{tmp_path / 'wide.npy'}"), None)
    assert refused.value.field == "source"
