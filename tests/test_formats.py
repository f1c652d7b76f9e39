"""zarr:, hdf5: and parquet: sources (node/formats/), on their own: no node, no RPC.

What they prove:
1. each reader returns exactly the array that was written, for every store
   layout, dtype and chunking (hypothesis), and every op x kernel over it
   matches numpy on the whole array;
2. the shard plan holds whole stored units (chunks, Zarr shards, row groups),
   covers the data once, and depends only on the data and the shard size;
3. each hostile file is refused with the path and the problem, and a node
   configured without a format (or without its library) refuses its sources.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from formats_data import LAYOUTS, write, write_hdf5, write_parquet, write_zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import assert_matches, make_job, same_bits

import node.formats
from node.core.compute import compute_partial, finalize, merge, plan_shards, reduce_all, validate_job
from node.core.job import KERNELS, OPS, Job
from node.core.limits import Limits
from node.core.sourcechecks import MAX_CHUNK_ELEMS
from node.core.sources import ArrayBacked, DataSource, open_source
from node.errors import ConfigError, InvalidField, LimitExceeded, MissingExtra, SourceForbidden
from node.formats import mapped, openers
from node.server.config import NodeConfig


@pytest.fixture(scope="module", autouse=True)
def _maps_let_go() -> Iterator[None]:
    """This module's hundreds of files are mapped and cached as a node caches them, each map
    holding a descriptor: let them go, so the test process after it has its usual few."""
    yield
    mapped._mapped.cache_clear()
    node.core.sources._load_memmap.cache_clear()
    gc.collect()

Array = npt.NDArray[Any]
OPENERS = openers()
DTYPES = ("float64", "float32", "int64", "int32", "uint16", "bool")


def open_in(root: Path, spec: str, op: str = "sum", **job: Any) -> DataSource:
    return validate_job(Job(op=op, source=spec, **job), root, OPENERS)


class ArraySource(ArrayBacked):
    """The written array itself, in memory: what a reader must be indistinguishable from.

    For a reader that hands out pieces (mapped chunks), the same pieces, cut from the array.
    """

    def __init__(self, array: Array, like: DataSource | None = None) -> None:
        self.array = array
        if like is not None and hasattr(like, "read_pieces"):
            self.read_pieces = lambda a, b: [
                (first, array[first:first + len(piece)]) for first, piece in like.read_pieces(a, b)
            ]



def answer_over(job: Job, source: DataSource, shards: list[tuple[int, int]]) -> Array:
    """The cluster's answer for `shards` of `source`: partials merged in shard order."""
    partials = [compute_partial(job, source, a, b) for a, b in shards]
    merged = partials[0]
    for partial in partials[1:]:
        merged = merge(job.op, merged, partial)
    return finalize(job, merged)


def make_data(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> Array:
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.startswith(("int", "uint")):
        return rng.integers(0, 50, size=shape).astype(dtype)
    return (rng.standard_normal(shape) * 4).astype(dtype)  # negatives: sqrt and log give NaN


def stored_units(source: DataSource) -> set[int]:
    """Row indices at which a stored unit starts: where a shard may start."""
    if hasattr(source, "row_blocks"):
        starts, total = {0}, 0
        for size in source.row_blocks():
            total += size
            starts.add(total)
        return starts
    unit = getattr(source, "chunk_rows", (1,))[-1]
    return set(range(0, source.rows + unit, unit))


# --- 1 and 2: every layout, dtype and chunking ---------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from(DTYPES),
    rows=st.integers(1, 300),
    cols=st.one_of(st.none(), st.integers(1, 5)),
    chunk_rows=st.integers(1, 64),
    shard_elems=st.integers(1, 400),
    op=st.sampled_from(OPS),
    kernel=st.sampled_from(KERNELS),
    along_axis=st.booleans(),
)
def test_a_reader_gives_back_what_was_written(
    layout: str, seed: int, dtype: str, rows: int, cols: int | None, chunk_rows: int,
    shard_elems: int, op: str, kernel: str, along_axis: bool,
) -> None:  # fmt: skip
    if LAYOUTS[layout][0] == "parquet":
        cols = None  # one column
    rng = np.random.default_rng(seed)
    data = make_data(rng, dtype, (rows,) if cols is None else (rows, cols))
    axis = 0 if along_axis and cols is not None and op != "histogram" else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        spec = write(layout, root, "data", data, chunk_rows)
        job = make_job(op, spec, kernel, axis, data)
        source = validate_job(job, root, OPENERS)
        assert (source.rows, source.cols, source.dtype) == (rows, cols, data.dtype)
        a, b = sorted(rng.integers(0, rows + 1, size=2))
        if a < b:
            got = source.read(int(a), int(b))
            assert same_bits(np.asarray(got), data[a:b]), (a, b)

        shards = plan_shards(source, shard_elems)
        assert shards[0][0] == 0 and shards[-1][1] == rows
        assert all(prev[1] == nxt[0] and prev[0] < prev[1] for prev, nxt in itertools.pairwise(shards))
        assert {start for start, _ in shards} <= stored_units(source)
        assert plan_shards(open_in(root, spec), shard_elems) == shards  # the data alone decides

        answer = answer_over(job, source, shards)
        assert same_bits(answer, answer_over(job, ArraySource(data, like=source), shards))
        assert_matches(job, data, answer)


# --- 2: the plan's alignment, case by case -------------------------------------


def test_zarr_shards_are_kept_whole_when_they_fit_else_its_chunks(tmp_path: Path) -> None:
    data = np.arange(10_000, dtype=np.float64)
    spec = write("zarr3-sharded", tmp_path, "s", data, chunk_rows=100)  # Zarr shards of 300 rows
    source = open_in(tmp_path, spec)
    assert source.chunk_rows == (300, 100)  # type: ignore[attr-defined]
    assert plan_shards(source, 1000)[:2] == [(0, 900), (900, 1800)]  # three Zarr shards each
    assert plan_shards(source, 250)[:2] == [(0, 200), (200, 400)]  # a Zarr shard is too big: chunks
    assert plan_shards(source, 10)[:2] == [(0, 100), (100, 200)]  # one chunk is the least


def test_a_chunk_bigger_than_a_shard_is_one_shard(tmp_path: Path) -> None:
    data = np.ones((1000, 4))
    spec = write_hdf5(tmp_path / "h.h5", data, chunk_rows=64, root=tmp_path)
    shards = plan_shards(open_in(tmp_path, spec), 16)  # 4 rows of 4 would do; a chunk holds 64
    assert shards[:2] == [(0, 64), (64, 128)] and shards[-1] == (960, 1000)


def test_a_contiguous_hdf5_dataset_is_cut_like_npy(tmp_path: Path) -> None:
    spec = write("hdf5-contiguous", tmp_path, "h", np.ones((100, 3)), chunk_rows=1)
    assert plan_shards(open_in(tmp_path, spec), 30)[:2] == [(0, 10), (10, 20)]


def test_parquet_shards_gather_row_groups_across_files(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    data = np.arange(1000, dtype=np.int64)
    spec = write_parquet(tmp_path / "dir", data, chunk_rows=70, root=tmp_path, files=3)
    source = open_in(tmp_path, spec)
    blocks = source.row_blocks()  # type: ignore[attr-defined]
    assert sum(blocks) == 1000 and max(blocks) == 70 and len(set(blocks)) > 1  # files end mid-group
    shards = plan_shards(source, 200)
    assert all(b - a >= 200 for a, b in shards[:-1])
    files = sorted((tmp_path / "dir").glob("*.parquet"))
    file_ends = set(np.cumsum([pq.read_metadata(f).num_rows for f in files]).tolist())
    assert len(files) == 3 and any(a < end < b for a, b in shards for end in file_ends), "no shard crosses a file"
    assert reduce_all(Job("sum", spec), source, 200) == data.sum()


def test_a_parquet_shard_is_reduced_one_row_group_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row groups are decoded as they are asked for and never joined into one array."""
    import node.formats.parquet_source as parquet_source

    data = np.arange(1000, dtype=np.float64)
    source = open_in(tmp_path, write_parquet(tmp_path / "p", data, chunk_rows=100, root=tmp_path))
    decoded: list[int] = []
    read_group = parquet_source.ParquetSource._read_group

    def counting(self: Any, group: Any) -> Array:
        decoded.append(group.index)
        return read_group(self, group)

    monkeypatch.setattr(parquet_source.ParquetSource, "_read_group", counting)
    pieces = source.read_pieces(0, 1000)  # type: ignore[attr-defined]
    first, rows = next(pieces)
    assert (first, len(rows), decoded) == (0, 100, [0])  # one group decoded, not all ten
    monkeypatch.setattr(parquet_source.np, "concatenate", lambda *a, **k: pytest.fail("rows were joined"))
    partial = compute_partial(Job("sum", "x"), source, 300, 700)
    assert decoded[1:] == [3, 4, 5, 6] and float(partial["sum"]) == float(data[300:700].sum())


def test_parquet_directory_order_is_sorted_names_and_skips_markers(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    for name, values in (("b.parquet", [3, 4]), ("a.parquet", [1, 2]), ("c.parquet", [5])):
        pq.write_table(pa.table({"x": values}), tmp_path / "d" / name)
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / ".hidden.parquet").write_text("not parquet")
    job = Job("argmax", "parquet:d#x")
    assert open_in(tmp_path, "parquet:d#x").read(0, 5).tolist() == [1, 2, 3, 4, 5]
    assert reduce_all(job, open_in(tmp_path, "parquet:d#x", op="argmax")) == 4


# --- 3: hostile files, each refused with its path and problem ------------------


def refused(root: Path, spec: str, *expected: str, error: type[Exception] = InvalidField) -> str:
    """Open and reduce `spec`: it must raise `error` whose message holds every `expected`."""
    with pytest.raises(error) as info:
        job = Job("sum", spec)
        source = validate_job(job, root, OPENERS)
        Limits().check_shape(job, source.rows, source.cols)
        reduce_all(job, source, 1000)
    message = str(info.value)
    assert message.startswith("source: ") and "\n" not in message
    for part in expected:
        assert part in message, message
    return message


def plain_zarr(root: Path, name: str = "a.zarr", rows: int = 10_000, **options: Any) -> Path:
    write_zarr(root / name, np.arange(rows, dtype=np.float64), 1000, root=root, **options)
    return root / name


def test_zarr_truncated_chunk(tmp_path: Path) -> None:
    chunk = plain_zarr(tmp_path, compressed=True) / "c" / "3"
    chunk.write_bytes(chunk.read_bytes()[:40])
    refused(tmp_path, "zarr:a.zarr", "a.zarr", "rows [3000, 4000)")


def test_zarr_unknown_codec(tmp_path: Path) -> None:
    meta = plain_zarr(tmp_path) / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["codecs"].append({"name": "run_my_code", "configuration": {}})
    meta.write_text(json.dumps(doc))
    refused(tmp_path, "zarr:a.zarr", "a.zarr", "run_my_code")


def test_zarr_known_but_unlisted_codec(tmp_path: Path) -> None:
    """A codec zarr knows but we do not allow (it is not a plain compressor) is refused before any read."""
    store = tmp_path / "v.zarr"
    store.mkdir()
    (store / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [10], "chunks": [10], "dtype": "<f8", "order": "C",
        "compressor": None, "filters": [{"id": "fixedscaleoffset", "offset": 0, "scale": 1, "dtype": "<f8"}],
        "fill_value": 0,
    }))
    refused(tmp_path, "zarr:v.zarr", "v.zarr", "fixedscaleoffset")


@pytest.mark.parametrize(("dtype", "codec", "problem"), [
    ("|O", [{"id": "pickle"}], "cannot be opened"),
    ("<U4", None, "dtype <U4"),
    ("|S3", None, "dtype |S3"),
    ("<M8[s]", None, "dtype datetime64[s]"),
])
def test_zarr_object_string_or_time_dtype(tmp_path: Path, dtype: str, codec: Any, problem: str) -> None:
    store = tmp_path / "o.zarr"
    store.mkdir()
    (store / ".zarray").write_text(json.dumps({
        "zarr_format": 2, "shape": [10], "chunks": [10], "dtype": dtype, "order": "C",
        "compressor": None, "filters": codec, "fill_value": None,
    }))
    refused(tmp_path, "zarr:o.zarr", "o.zarr", problem)


def test_zarr_three_dimensional(tmp_path: Path) -> None:
    import zarr

    zarr.create_array(store=str(tmp_path / "c.zarr"), shape=(4, 4, 4), chunks=(2, 2, 2), dtype="f8")
    refused(tmp_path, "zarr:c.zarr", "c.zarr", "3-D")


def test_zarr_absurd_declared_shape_is_a_limit_not_a_read(tmp_path: Path) -> None:
    import zarr

    zarr.create_array(store=str(tmp_path / "h.zarr"), shape=(10**15,), chunks=(10**6,), dtype="f8")
    refused(tmp_path, "zarr:h.zarr", "1000000000000000 elements", "max-elements", error=LimitExceeded)


def test_zarr_absurd_chunk_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    import zarr

    rows = MAX_CHUNK_ELEMS + 1
    zarr.create_array(store=str(tmp_path / "b.zarr"), shape=(rows,), chunks=(rows,), dtype="f8")
    refused(tmp_path, "zarr:b.zarr", "b.zarr", f"chunks of {rows} elements", error=LimitExceeded)


def test_zarr_chunk_that_links_out_of_the_data_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    chunk = plain_zarr(root) / "c" / "2"
    outside = tmp_path / "secret"
    outside.write_bytes(chunk.read_bytes())
    chunk.unlink()
    chunk.symlink_to(outside)
    # PERMISSION_DENIED, as every other path out of the root (it was INVALID_ARGUMENT)
    refused(root, "zarr:a.zarr", "a.zarr/c/2", "out of the data root", error=SourceForbidden)


@pytest.mark.parametrize("swapped", ["c/2", "c"])
def test_zarr_chunk_swapped_for_a_link_out_of_the_root_after_it_was_read(tmp_path: Path, swapped: str) -> None:
    """Every read checks its chunk file again, also once the store is open and the file mapped:
    a chunk file, or the directory holding it, replaced by a symlink out of the root is refused."""
    root = tmp_path / "root"
    root.mkdir()
    store = plain_zarr(root)
    job = Job("sum", "zarr:a.zarr")
    source = validate_job(job, root, OPENERS)
    assert float(reduce_all(job, source, 1000)) == float(np.arange(10_000.0).sum())
    outside = tmp_path / "outside"
    shutil.copytree(store / "c", outside / "c")
    (store / swapped).rename(tmp_path / "moved")
    (store / swapped).symlink_to(outside / swapped)
    with pytest.raises(SourceForbidden, match="out of the data root"):
        reduce_all(job, source, 1000)


def test_zarr_chunk_directory_linked_inside_the_root_reads(tmp_path: Path) -> None:
    store = plain_zarr(tmp_path)
    (store / "c").rename(tmp_path / "chunks")
    (store / "c").symlink_to(tmp_path / "chunks")
    assert float(reduce_all(Job("sum", "zarr:a.zarr"), open_in(tmp_path, "zarr:a.zarr"), 1000)) == float(
        np.arange(10_000.0).sum()
    )


def test_zarr_chunk_that_is_a_fifo(tmp_path: Path) -> None:
    chunk = plain_zarr(tmp_path) / "c" / "2"
    chunk.unlink()
    os.mkfifo(chunk)  # reading it would block the node forever
    refused(tmp_path, "zarr:a.zarr", "a.zarr/c/2", "not a regular file")


def test_zarr_store_outside_the_root_or_not_a_store(tmp_path: Path) -> None:
    plain_zarr(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceForbidden):
        open_in(tmp_path / "empty", "zarr:../a.zarr")
    refused(tmp_path, "zarr:empty", "'empty'", "no Zarr array")
    refused(tmp_path, "zarr:a.zarr/zarr.json", "not a directory store")


def hdf5_with(path: Path, build: Any) -> None:
    import h5py

    with h5py.File(path, "w") as handle:
        handle["data"] = np.arange(100.0)
        build(handle)


def test_hdf5_cyclic_soft_link(tmp_path: Path) -> None:
    import h5py

    def build(handle: Any) -> None:
        handle.create_group("loop")
        handle["loop/again"] = h5py.SoftLink("/loop")

    hdf5_with(tmp_path / "f.h5", build)
    refused(tmp_path, "hdf5:f.h5#/loop/again/again/data", "f.h5", "'again' is a soft link")


def test_hdf5_external_link(tmp_path: Path) -> None:
    import h5py

    outside = tmp_path.parent / f"{tmp_path.name}-outside.h5"
    hdf5_with(outside, lambda handle: None)

    def build(handle: Any) -> None:
        handle["ext"] = h5py.ExternalLink(str(outside), "/data")

    hdf5_with(tmp_path / "f.h5", build)
    refused(tmp_path, "hdf5:f.h5#/ext", "f.h5", "'ext' is an external link")


def test_hdf5_external_storage_and_virtual_dataset(tmp_path: Path) -> None:
    import h5py

    (tmp_path / "raw.bin").write_bytes(bytes(80))

    def build(handle: Any) -> None:
        handle.create_dataset("outside", shape=(10,), dtype="f8", external=[("raw.bin", 0, 80)])
        layout = h5py.VirtualLayout(shape=(10,), dtype="f8")
        layout[:] = h5py.VirtualSource("other.h5", "data", shape=(100,))[:10]
        handle.create_virtual_dataset("virtual", layout)

    hdf5_with(tmp_path / "f.h5", build)
    refused(tmp_path, "hdf5:f.h5#/outside", "f.h5", "external files")
    refused(tmp_path, "hdf5:f.h5#/virtual", "f.h5", "virtual dataset")


def test_hdf5_filter_we_do_not_read(tmp_path: Path) -> None:
    """A filter id outside HDF5's own (here one that would be a plugin) is refused, and no plugin path is searched."""
    import h5py

    def build(handle: Any) -> None:
        space = h5py.h5s.create_simple((10,))
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_chunk((10,))
        plist.set_filter(32004, h5py.h5z.FLAG_OPTIONAL)  # LZ4's registered id; optional, so writable
        h5py.h5d.create(handle.id, b"plugged", h5py.h5t.NATIVE_DOUBLE, space, plist)

    hdf5_with(tmp_path / "f.h5", build)
    refused(tmp_path, "hdf5:f.h5#/plugged", "f.h5", "filters distnode does not read (ids 32004)")
    assert node.formats.hdf5_source._h5py().h5pl.size() == 0


@pytest.mark.parametrize(("name", "problem"), [
    ("strings", "dtype |S2"), ("text", "dtype object"), ("records", "need bool, integer or float"),
    ("cube", "3-D"), ("scalar", "0-D"), ("empty", "no elements"), ("nothing", "no dataset at '/nothing'"),
    ("group", "'/group' is not a dataset"),
])
def test_hdf5_datasets_that_are_not_numeric_arrays(tmp_path: Path, name: str, problem: str) -> None:
    import h5py

    def build(handle: Any) -> None:
        handle["strings"] = np.array([b"ab", b"cd"])
        handle.create_dataset("text", data=["x", "y"], dtype=h5py.string_dtype())
        handle["records"] = np.zeros(3, dtype=[("a", "f8"), ("b", "i4")])
        handle["cube"] = np.zeros((2, 2, 2))
        handle["scalar"] = 1.0
        handle.create_dataset("empty", shape=(0,), dtype="f8")
        handle.create_group("group")

    hdf5_with(tmp_path / "f.h5", build)
    refused(tmp_path, f"hdf5:f.h5#/{name}", "f.h5", problem)


def test_hdf5_truncated_or_corrupt_file(tmp_path: Path) -> None:
    import h5py

    spec = write_hdf5(tmp_path / "f.h5", np.arange(10_000.0), 1000, root=tmp_path, compressed=True)
    whole = (tmp_path / "f.h5").read_bytes()
    (tmp_path / "short.h5").write_bytes(whole[: len(whole) // 3])
    refused(tmp_path, spec.replace("f.h5", "short.h5"), "short.h5", "not a readable HDF5 file")
    with h5py.File(tmp_path / "f.h5") as handle:
        chunk = handle["group/values"].id.get_chunk_info(5)  # rows [5000, 6000), deflated
    damaged = bytearray(whole)
    damaged[chunk.byte_offset:chunk.byte_offset + chunk.size] = b"\xab" * chunk.size
    (tmp_path / "bad.h5").write_bytes(bytes(damaged))
    refused(tmp_path, spec.replace("f.h5", "bad.h5"), "bad.h5", "cannot read rows [5000, 6000)")
    (tmp_path / "text.h5").write_text("hello")
    refused(tmp_path, "hdf5:text.h5#/x", "text.h5", "not a readable HDF5 file")
    refused(tmp_path, "hdf5:f.h5", "expected hdf5:PATH#/DATASET")


def test_parquet_corrupt_footer_and_truncated_file(tmp_path: Path) -> None:
    write_parquet(tmp_path / "ok", np.arange(5000.0), 1000, root=tmp_path)
    whole = (tmp_path / "ok.parquet").read_bytes()
    (footer_len,) = struct.unpack("<i", whole[-8:-4])
    garbled = bytearray(whole)
    garbled[-8 - footer_len:-8] = bytes((i * 37 + 11) % 256 for i in range(footer_len))
    (tmp_path / "footer.parquet").write_bytes(bytes(garbled))
    refused(tmp_path, "parquet:footer.parquet#x", "footer.parquet", "not a readable Parquet file")
    (tmp_path / "short.parquet").write_bytes(whole[: len(whole) // 2])
    refused(tmp_path, "parquet:short.parquet#x", "short.parquet", "not a readable Parquet file")
    lying = bytearray(whole)
    lying[-8:-4] = struct.pack("<i", 2**31 - 1)  # a footer longer than the file
    (tmp_path / "lying.parquet").write_bytes(bytes(lying))
    refused(tmp_path, "parquet:lying.parquet#x", "lying.parquet", "not a readable Parquet file")


@pytest.mark.parametrize(("values", "problem"), [
    (["a", "b"], "column 'x' is string, not numbers"),
    ([[1, 2], [3]], "column 'x' is list<"),
    ([{"a": 1}], "column 'x' is struct<"),
])
def test_parquet_column_that_is_not_numbers(tmp_path: Path, values: list[Any], problem: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": values}), tmp_path / "t.parquet")
    refused(tmp_path, "parquet:t.parquet#x", "t.parquet", problem)


def test_parquet_dictionary_and_missing_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": pa.array(["a", "b"]).dictionary_encode(), "y": [1, 2]}), tmp_path / "t.parquet")
    refused(tmp_path, "parquet:t.parquet#x", "t.parquet", "not numbers")
    refused(tmp_path, "parquet:t.parquet#z", "t.parquet", "no column 'z'", "'x', 'y'")
    refused(tmp_path, "parquet:t.parquet", "expected parquet:PATH#COLUMN")


@pytest.mark.parametrize("statistics", [True, False], ids=["footer-counts-them", "found-on-read"])
def test_parquet_nulls_are_refused_naming_file_and_row_group(tmp_path: Path, statistics: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = [1.0] * 1000 + [1.0, None, 3.0] * 10
    pq.write_table(pa.table({"x": values}), tmp_path / "n.parquet", row_group_size=1000,
                   write_statistics=statistics)
    refused(tmp_path, "parquet:n.parquet#x", "n.parquet row group 1", "holds 10 nulls")


def test_parquet_types_differing_across_files(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"x": pa.array([1, 2], pa.int64())}), tmp_path / "d" / "a.parquet")
    pq.write_table(pa.table({"x": pa.array([1.5], pa.float64())}), tmp_path / "d" / "b.parquet")
    refused(tmp_path, "parquet:d#x", "column 'x' has different types across files")


def test_parquet_directory_with_a_subdirectory_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    refused(tmp_path, "parquet:d#x", "'d' holds 'sub', not a regular file")
    (tmp_path / "e").mkdir()
    refused(tmp_path, "parquet:e#x", "'e' holds no data files")


# --- 3: what a node serves ------------------------------------------------------


def test_a_node_without_the_format_answers_missing_extra(tmp_path: Path) -> None:
    spec = write("zarr3", tmp_path, "a", np.arange(10.0), 5)
    with pytest.raises(MissingExtra, match=r"does not read zarr: .*pip install 'distnode\[formats\]'"):
        open_source(spec, tmp_path, openers(served=("hdf5", "parquet")))
    with pytest.raises(MissingExtra):
        open_source(spec, tmp_path)  # the core alone reads no file format
    assert open_source(spec, tmp_path, openers(served=("zarr",))).rows == 10


def test_formats_not_installed_are_neither_served_nor_accepted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(node.formats, "available", lambda: frozenset({"parquet"}))
    assert sorted(openers()) == ["parquet"]

    def config(*formats: str) -> NodeConfig:
        return NodeConfig(node_id="n1", listen="127.0.0.1:1", peers=(), data_dir=tmp_path, formats=formats)

    config("parquet").validate()
    config().validate()
    with pytest.raises(ConfigError, match=r"formats: zarr needs zarr, not installed here .*distnode\[formats\]"):
        config("zarr", "parquet").validate()
    with pytest.raises(ConfigError, match="formats: unknown netcdf"):
        config("netcdf").validate()


# --- uncompressed chunks are read in place (node/formats/mapped.py) -------------


@pytest.mark.parametrize(("layout", "mapped"), [
    ("zarr3", True), ("zarr2", True), ("hdf5-chunked-plain", True), ("hdf5-contiguous", True),
    ("zarr3-zstd", False), ("zarr3-sharded", False), ("hdf5-chunked", False), ("parquet-file", False),
])
def test_uncompressed_chunks_are_mapped_not_copied(tmp_path: Path, layout: str, mapped: bool) -> None:
    data = np.arange(10_000, dtype=np.float64)
    source = open_in(tmp_path, write(layout, tmp_path, "m", data, 1000))
    piece = source.read(1000, 2000)  # one whole chunk
    assert same_bits(piece, data[1000:2000])
    assert backed_by_a_map(piece) == mapped  # the page cache's memory, not a copy


def backed_by_a_map(array: Array) -> bool:
    """True if `array` is a view, at some remove, of a memory-mapped file."""
    import mmap

    base: Any = array
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return True
        base = getattr(base, "base", None)
    return False


def test_a_mapped_zarr_chunk_never_written_reads_as_the_fill_value(tmp_path: Path) -> None:
    data = np.ones(4000)
    data[1000:2000] = 0.0  # the fill value: zarr writes no file for this chunk
    spec = write("zarr3", tmp_path, "f", data, 1000)
    assert not (tmp_path / "f.zarr" / "c" / "1").exists()
    source = open_in(tmp_path, spec)
    assert same_bits(source.read(0, 4000), data)
    assert reduce_all(Job("sum", spec), source, 1000) == 3000.0


def test_a_mapped_zarr_chunk_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    chunk = plain_zarr(tmp_path) / "c" / "3"
    assert hasattr(open_in(tmp_path, "zarr:a.zarr"), "read_pieces")
    chunk.write_bytes(chunk.read_bytes()[:800])
    refused(tmp_path, "zarr:a.zarr", "a.zarr", "rows [3000, 4000)", "800 bytes")
    chunk.write_bytes(bytes(8008))
    refused(tmp_path, "zarr:a.zarr", "a.zarr", "rows [3000, 4000)", "8008 bytes")


def test_hdf5_chunks_stored_back_to_back_are_reduced_as_one_piece(tmp_path: Path) -> None:
    """Adjacent chunks are one view, so a shard's sum is numpy's own over its rows, bit for bit;
    a chunk written out of order starts a new piece, and the rows still come out whole."""
    import h5py

    data = np.random.default_rng(7).standard_normal(8000)
    with h5py.File(tmp_path / "f.h5", "w") as handle:
        in_order = handle.create_dataset("a", shape=(8000,), dtype="f8", chunks=(1000,))
        in_order[:] = data
        shuffled = handle.create_dataset("b", shape=(8000,), dtype="f8", chunks=(1000,))
        shuffled[5000:6000] = data[5000:6000]  # stored first, so not after chunk 4
        shuffled[:5000] = data[:5000]
        shuffled[6000:] = data[6000:]
    whole = open_in(tmp_path, "hdf5:f.h5#/a")
    assert [(first, len(rows)) for first, rows in whole.read_pieces(500, 7500)] == [(500, 7000)]
    sum_job = Job("sum", "hdf5:f.h5#/a")
    assert same_bits(compute_partial(sum_job, whole, 500, 7500)["sum"], np.add.reduce(data[500:7500]))
    split = open_in(tmp_path, "hdf5:f.h5#/b")
    pieces = split.read_pieces(0, 8000)
    assert [first for first, _ in pieces] == [0, 5000, 6000]
    assert same_bits(np.concatenate([rows for _, rows in pieces]), data)


def test_a_run_of_mapped_chunks_cut_short_names_the_first_missing_chunk(tmp_path: Path) -> None:
    from node.formats.mapped import ChunkPieces

    (tmp_path / "chunks").write_bytes(np.arange(2500.0).tobytes())  # 2.5 chunks of 1000

    def locate(index: int) -> tuple[Path, int]:
        return tmp_path / "chunks", index * 8000

    pieces = ChunkPieces("f", 4000, None, np.dtype("f8"), 1000, locate, 0.0, exact_files=False)
    assert same_bits(pieces.read(0, 2000), np.arange(2000.0))
    with pytest.raises(InvalidField, match=r"f: cannot read rows \[2000, 3000\): the chunk holds 4000 bytes"):
        pieces.read(0, 4000)


def test_a_mapped_hdf5_chunk_never_written_reads_as_the_fill_value(tmp_path: Path) -> None:
    import h5py

    with h5py.File(tmp_path / "f.h5", "w") as handle:
        dataset = handle.create_dataset("x", shape=(4000, 2), dtype="f8", chunks=(1000, 2), fillvalue=7.0)
        dataset[:1000] = 1.0
        dataset[3000:] = 2.0
    source = open_in(tmp_path, "hdf5:f.h5#/x")
    assert hasattr(source, "read_pieces")
    expected = np.full((4000, 2), 7.0)
    expected[:1000], expected[3000:] = 1.0, 2.0
    assert same_bits(source.read(0, 4000), expected)
    assert reduce_all(Job("sum", "hdf5:f.h5#/x"), source, 3000) == expected.sum()
