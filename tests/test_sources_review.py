"""Inputs a review of the sources found handled wrongly: each is now refused at once, as
INVALID_ARGUMENT or RESOURCE_EXHAUSTED naming the field, before data is read (or, for a
big-endian source, answered by every node again)."""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr
import zarr.codecs

from node.core.compute import compute_partial, merge, partial_template, validate_job
from node.core.job import SHARD_ELEMS, Job
from node.core.sources import open_source
from node.errors import PROBLEM_BYTES, InvalidField, LimitExceeded
from node.formats import openers
from node.server.jobrun import JobRun
from node.server.jobs import JobManager
from node.server.peers import PeerTable
from node.wire.tensors import partial_from_proto, partial_to_proto

OPENERS = openers()


async def _no_remote(*args: Any) -> list[int]:
    raise AssertionError("no worker is asked here")


def refused_fast(spec: str, root: Path, *said: str, error: type[Exception] = InvalidField) -> None:
    """Refused as a leader refuses a job (JobManager._plan), within a second."""
    started = time.monotonic()
    jobs = JobManager("n1", PeerTable(()), _no_remote, ThreadPoolExecutor(1), SHARD_ELEMS, root,
                      openers=OPENERS)
    with pytest.raises(error) as info:
        jobs._plan(Job("sum", spec))
    assert time.monotonic() - started < 1.0, "refused before anything costly"
    assert str(info.value).startswith("source: ") and all(part in str(info.value) for part in said), info.value


def test_a_megabyte_path_is_refused_before_the_file_system_is_asked(tmp_path: Path) -> None:
    """Resolving it took 27 s on the event loop (Python's realpath is quadratic)."""
    refused_fast("npy:" + "a/" * 524_000 + "x.npy", tmp_path, "the path is 1048005 bytes; at most 4096")
    refused_fast("npy:" + "n" * 256 + ".npy", tmp_path, "255 a component")


@pytest.mark.parametrize("spec", ["npy:a\x00b.npy", "parquet:a\x00b#x", "zarr:z\x00"])
def test_a_nul_byte_in_a_path_is_a_bad_field_not_an_internal_error(tmp_path: Path, spec: str) -> None:
    refused_fast(spec, tmp_path, "NUL byte")


def test_a_symlink_loop_is_a_bad_field(tmp_path: Path) -> None:
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    with pytest.raises(InvalidField, match=r"cannot (resolve|read) 'loop1'"):  # 3.13 resolves, then ELOOP
        validate_job(Job("sum", "npy:loop1"), tmp_path, OPENERS)


def test_an_npy_whose_header_claims_an_absurd_shape_is_a_bad_file(tmp_path: Path) -> None:
    for shape in (f"({10**30},)", "(True, 4)"):
        header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}".encode()
        header += b" " * (63 - len(header) % 64) + b"\n"
        (tmp_path / "x.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header)
        os.utime(tmp_path / "x.npy", ns=(1, 10**9 + len(shape)))  # another map, not the cached one
        refused_fast("npy:x.npy", tmp_path, "not a valid .npy file")


def test_a_wide_row_is_a_limit_before_anything_is_read(tmp_path: Path) -> None:
    """Shards are whole rows: a 400-byte store of rows of 2^28 elements cost 2.6 GiB."""
    zarr.create_array(store=str(tmp_path / "w.zarr"), shape=(2, 1 << 28), chunks=(1, 1000), dtype="f8")
    refused_fast("zarr:w.zarr", tmp_path, "rows of 268435456 elements exceed max-vector (10000000)",
                 error=LimitExceeded)


def test_an_axis_free_template_reads_one_column() -> None:
    """The template of a job's partials is made on the leader's loop: one column unless the
    partials are vectors (it was a whole row of zeros)."""
    source = open_source("values:1.5,2,3")
    wide = type("Wide", (), {"rows": 2, "cols": 10**12, "dtype": np.dtype("f8")})()  # 8 TB a row
    template = partial_template(Job("sum", "values:1"), wide)
    assert template == partial_template(Job("sum", "values:1"), source)


def test_a_zarr_chunk_of_no_elements_is_a_bad_field(tmp_path: Path) -> None:
    zarr.create_array(store=str(tmp_path / "t.zarr"), shape=(10,), chunks=(1,), dtype="f8")
    meta = json.loads((tmp_path / "t.zarr" / "zarr.json").read_text())
    meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"] = [10], [0]
    (tmp_path / "z.zarr").mkdir()
    (tmp_path / "z.zarr" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidField):  # a ZeroDivisionError (INTERNAL) once a shard was cut
        validate_job(Job("sum", "zarr:z.zarr"), tmp_path, OPENERS)


def test_a_compressed_chunk_file_larger_than_its_chunk_is_refused_unread(tmp_path: Path) -> None:
    """A sparse 2 GiB chunk file of a 1000-element array was read whole (2.1 GiB of memory)."""
    store = tmp_path / "c.zarr"
    zarr.create_array(store=str(store), shape=(1000,), chunks=(1000,), dtype="f8",
                      compressors=zarr.codecs.ZstdCodec())[:] = np.arange(1000.0)
    (store / "c" / "0").unlink()
    with open(store / "c" / "0", "wb") as sparse:
        sparse.truncate(1 << 20)
    source = validate_job(Job("sum", "zarr:c.zarr"), tmp_path, OPENERS)
    with pytest.raises(InvalidField, match=r"c.zarr/c/0: a read of 1048576 bytes where its chunks hold at most"):
        compute_partial(Job("sum", "zarr:c.zarr"), source, 0, 1000)


def test_a_shards_inner_chunk_claimed_larger_than_it_holds_is_refused_unread(tmp_path: Path) -> None:
    """A shard's index may claim any length for an inner chunk, read as a range: bounded too."""
    store = tmp_path / "s.zarr"
    zarr.create_array(store=str(store), shape=(4000,), chunks=(1000,), shards=(4000,), dtype="f8",
                      compressors=zarr.codecs.ZstdCodec())[:] = np.arange(4000.0)
    shard = store / "c" / "0"
    data = bytearray(shard.read_bytes())
    index = data[-(16 * 4 + 4):-4]  # four (offset, length) pairs, then a checksum
    offset = int.from_bytes(index[:8], "little")
    index[8:16] = (1 << 20).to_bytes(8, "little")  # the first inner chunk "is" a megabyte
    data[-(16 * 4 + 4):-4] = index
    from numcodecs.checksum32 import CRC32C  # the index's checksum: zarr refuses a wrong one

    data[-4:] = bytes(CRC32C().encode(bytes(index)))[-4:]
    shard.write_bytes(bytes(data) + bytes((1 << 20) - (len(data) - offset)))
    source = validate_job(Job("sum", "zarr:s.zarr"), tmp_path, OPENERS)
    with pytest.raises(InvalidField, match=r"a read of 1048576 bytes where its chunks hold at most"):
        compute_partial(Job("sum", "zarr:s.zarr"), source, 0, 4000)


def test_a_sharded_store_of_tiny_compressed_chunks_still_reads(tmp_path: Path) -> None:
    """gzip makes a 16-byte chunk about 36 bytes: more than twice its size, within the framing."""
    values = np.arange(4096, dtype=np.uint8)
    zarr.create_array(store=str(tmp_path / "u.zarr"), shape=(4096,), chunks=(16,), shards=(4096,),
                      dtype="u1", compressors=zarr.codecs.GzipCodec())[:] = values
    source = validate_job(Job("sum", "zarr:u.zarr"), tmp_path, OPENERS)
    assert int(compute_partial(Job("sum", "zarr:u.zarr"), source, 0, 4096)["sum"]) == int(values.sum(dtype=np.int64))


def test_an_npy_of_a_format_version_numpy_does_not_read_is_a_bad_file(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.arange(3.0))
    data = bytearray((tmp_path / "v.npy").read_bytes())
    data[7] = 5  # version 1.5, which np.load refuses too
    (tmp_path / "v.npy").write_bytes(bytes(data))
    refused_fast("npy:v.npy", tmp_path, "format version 1.5")


def test_zarr_2_without_a_fill_value_reads_absent_chunks_as_zeros_as_zarr_does(tmp_path: Path) -> None:
    store = tmp_path / "f.zarr"
    array = zarr.create_array(store=str(store), shape=(4000,), chunks=(1000,), dtype="f8", zarr_format=2,
                              compressors=None, fill_value=None)
    array[:1000] = 1.0
    source = validate_job(Job("sum", "zarr:f.zarr"), tmp_path, OPENERS)
    assert float(compute_partial(Job("sum", "zarr:f.zarr"), source, 0, 4000)["sum"]) == float(
        np.sum(zarr.open_array(str(store))[:])) == 1000.0


def test_an_hdf5_dataset_without_a_dataspace_is_a_bad_field(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "e.h5", "w") as handle:
        handle.create_dataset("x", data=h5py.Empty("f8"))
    refused_fast("hdf5:e.h5#x", tmp_path, "has no dataspace")


def test_a_big_endian_argmin_vector_travels_as_every_partial_does(tmp_path: Path) -> None:
    """Its partial kept the source's byte order and every worker's was refused as malformed
    against the leader's template, once through the wire."""
    data = np.arange(40, dtype=">f8").reshape(20, 2)[::-1].copy()
    np.save(tmp_path / "b.npy", data)
    job = Job("argmin", "npy:b.npy", axis=0)
    source = validate_job(job, tmp_path, None)
    run = JobRun("j", job, [(0, 10), (10, 20)], None, 0.0)  # type: ignore[arg-type]
    run.template = partial_template(job, source)
    for shard, (start, stop) in enumerate(run.shards):
        partial = compute_partial(job, source, start, stop)
        sent = partial_from_proto(partial_to_proto("j", shard, "n2", partial))
        assert run.well_formed(sent), (sent, run.template)
    both = merge("argmin", compute_partial(job, source, 0, 10), compute_partial(job, source, 10, 20))
    assert both["index"].tolist() == [19, 19]


@pytest.mark.parametrize(("spec", "said"), [
    ("values:1,1e999", "'1e999' is beyond float64"),
    ("values:\uff11\uff12,3", "ASCII digits only"),
    ("random:n=10,seed=" + "9" * 39, "below 2**128"),
])
def test_values_and_seeds_past_their_types_are_refused(spec: str, said: str, tmp_path: Path) -> None:
    refused_fast(spec, tmp_path, said)


def test_literal_infinities_and_nans_are_still_numbers() -> None:
    values = open_source("values:1,inf,-Infinity,nan")
    assert values.rows == 4


def test_a_histogram_range_whose_width_overflows_says_so() -> None:
    with pytest.raises(InvalidField, match=r"range: HI - LO must be finite"):
        validate_job(Job("histogram", "values:1", bins=4, range_lo=-1e308, range_hi=1e308), None, None)


def test_a_problem_quoting_a_megabyte_is_cut_to_a_status_grpc_carries() -> None:
    for text in ("x" * (1 << 20), "\u6570" * (1 << 18)):  # ASCII, and three bytes a character
        error = InvalidField("source", text)
        assert len(error.problem.encode()) < PROBLEM_BYTES + 40, len(error.problem.encode())
        assert error.problem.endswith(f"({len(text.encode()) - PROBLEM_BYTES} more bytes)")


def test_a_fifo_swapped_in_after_the_check_is_refused_without_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    np.save(tmp_path / "x.npy", np.arange(3.0))
    import node.core.sources as sources

    checked = sources.confined_path

    def swap(kind: str, text: str, root: Path | None) -> Any:
        found = checked(kind, text, root)
        (tmp_path / "x.npy").unlink()
        os.mkfifo(tmp_path / "x.npy")  # a writer in the data root, between the check and the open
        return found

    monkeypatch.setattr(sources, "confined_path", swap)
    refused_fast("npy:x.npy", tmp_path, "is not a regular file")
