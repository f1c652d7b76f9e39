"""A shard under way stops between pieces once its results are no longer wanted (node/core/halt.py).

1. `under` and `check`: a halted shard raises ShardHalted at the next check, and not
   before it began if halted after; `check` outside `under` does nothing.
2. Every reader that goes piece by piece looks: mapped chunk files (while locating
   them), Parquet row groups, a Zarr or HDF5 library read in runs of chunks. A read in
   runs gives the bits of one read.
3. A job that ends frees its nodes' pools: on the leader (its own shard) and on a
   worker (a Compute call cancelled), a shard of a million tiny chunks stops, and the
   next job runs, where before it queued behind minutes of chunk lookups.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from formats_data import write
from inproc import StartCluster, poll

from node import AsyncClient, JobError
from node.core import halt
from node.core.compute import compute_partial, validate_job
from node.core.job import Job
from node.core.limits import Limits
from node.formats import openers
from node.formats.hdf5_source import Hdf5Source
from node.formats.zarr_source import ZarrSource

OPENERS = openers()


def test_a_halted_shard_stops_at_the_next_check() -> None:
    stop = halt.Halt()
    checks: list[int] = []

    def compute(pieces: int) -> int:
        for piece in range(pieces):
            halt.check()
            checks.append(piece)
            if piece == 2:
                stop.set()  # as the event loop would, from another thread
        return pieces

    with pytest.raises(halt.ShardHalted):
        halt.under(stop, compute)(10)
    assert checks == [0, 1, 2]
    with pytest.raises(halt.ShardHalted, match="before it began"):
        halt.under(stop, compute)(10)
    assert checks == [0, 1, 2]
    halt.check()  # outside `under`: this thread's earlier halt is not its concern any more
    assert halt.under(halt.Halt(), compute)(4) == 4


def test_a_read_in_runs_has_the_bits_of_one_read_and_stops_between_runs() -> None:
    data = np.asfortranarray(np.random.default_rng(3).standard_normal((1000, 3)) * 1e12)
    reads: list[tuple[int, int]] = []

    def read(start: int, stop: int) -> Any:
        return data[start:stop]

    def read_into(start: int, stop: int, out: Any) -> None:
        reads.append((start, stop))
        out[...] = data[start:stop]

    def blank(rows: int) -> Any:
        return np.empty((rows, 3), order="F")

    whole = halt.read_in_runs(100, 1000, 128, read, blank, read_into)
    assert whole.flags.f_contiguous and whole.tobytes() == data[100:].tobytes()
    for axis in (0, None):
        assert np.add.reduce(whole, axis=axis).tobytes() == np.add.reduce(data[100:], axis=axis).tobytes()
    assert reads[0] == (100, 228) and reads[-1] == (996, 1000) and len(reads) == 8
    assert halt.read_in_runs(0, 128, 128, read, blank, read_into) is not None and len(reads) == 8
    assert halt.run_rows(unit_rows=4, chunks_per_band=1) == 4 * halt.RUN_CHUNKS
    assert halt.run_rows(unit_rows=4, chunks_per_band=halt.RUN_CHUNKS * 2) == 4

    stop, reads[:] = halt.Halt(), []

    def halting(start: int, stop_row: int, out: Any) -> None:
        if len(reads) == 2:
            stop.set()
        read_into(start, stop_row, out)

    with pytest.raises(halt.ShardHalted):
        halt.under(stop, halt.read_in_runs)(0, 1000, 100, read, blank, halting)
    assert len(reads) == 3  # the run under way when it was halted ends; no other begins


def tiny_chunk_zarr(root: Path, name: str, elements: int, compressed: bool) -> str:
    """A Zarr 3 array of one-element chunks, none written: every chunk reads as the fill value,
    each costing zarr (or the mapped reader's lookup) microseconds of Python. A few hundred
    bytes on disk."""
    import zarr
    from zarr.codecs import ZstdCodec

    zarr.create_array(store=str(root / name), shape=(elements,), chunks=(1,), dtype="float64",
                      fill_value=1.0, compressors=(ZstdCodec(level=1),) if compressed else None)
    return f"zarr:{name}"


def halted_within(source: Any, job: Job, lookups: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """Compute the whole of `source` under a halt set after `lookups` chunk reads; how many
    chunk reads the shard made in all."""
    stop, counted = halt.Halt(), [0]
    original = source.array.store.get

    async def counting(key: str, *args: Any, **kwargs: Any) -> Any:
        if not key.endswith("zarr.json"):
            counted[0] += 1
            if counted[0] == lookups:
                stop.set()
        return await original(key, *args, **kwargs)

    monkeypatch.setattr(source.array.store, "get", counting)
    with pytest.raises(halt.ShardHalted):
        halt.under(stop, compute_partial)(job, source, 0, source.rows)
    return counted[0]


@pytest.mark.parametrize("compressed", [True, False], ids=["zarr-library", "mapped-chunks"])
def test_zarr_shards_of_tiny_chunks_stop_between_runs(
    tmp_path: Path, compressed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(halt, "RUN_CHUNKS", 64)
    spec = tiny_chunk_zarr(tmp_path, "tiny.zarr", 1000, compressed)
    job = Job(op="sum", source=spec)
    source = validate_job(job, tmp_path, OPENERS)
    assert compute_partial(job, source, 0, source.rows)["sum"] == 1000.0
    if compressed:
        assert isinstance(source, ZarrSource) and not hasattr(source, "read_pieces")
        assert halted_within(source, job, 10, monkeypatch) == 64  # the run under way ends
    else:
        looked: list[int] = []
        stop = halt.Halt()
        pieces = source.pieces  # type: ignore[attr-defined]
        original = pieces.locate

        def locate(index: int) -> Any:
            looked.append(index)
            if len(looked) == 10:
                stop.set()
            return original(index)

        looking = dataclasses.replace(source, pieces=dataclasses.replace(pieces, locate=locate))
        with pytest.raises(halt.ShardHalted):
            halt.under(stop, compute_partial)(job, looking, 0, source.rows)
        assert len(looked) == 10  # each lookup is checked: not one chunk more


def test_a_library_read_in_runs_keeps_every_layouts_bits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs of a few chunks against one read, for every op's partials along both axes: Zarr 3
    plain, zstd and sharded, Zarr 2 in C order, in Fortran order and big-endian, a Zarr grid
    chunked along both axes, HDF5 chunked."""
    import zarr

    matrix = np.random.default_rng(5).standard_normal((3000, 5)) * 1e9
    specs = [write(layout, tmp_path, layout, matrix, 40) for layout in ("zarr3-zstd", "zarr3-sharded",
                                                                       "zarr2-blosc", "hdf5-chunked")]
    zarr.create_array(store=str(tmp_path / "grid.zarr"), data=matrix, chunks=(40, 2))
    zarr.create_array(store=str(tmp_path / "fortran.zarr"), data=matrix, chunks=(40, 5), zarr_format=2,
                      order="F")
    zarr.create_array(store=str(tmp_path / "big.zarr"), data=matrix.astype(">f8"), chunks=(40, 5),
                      zarr_format=2)
    specs += ["zarr:grid.zarr", "zarr:fortran.zarr", "zarr:big.zarr"]
    runs_read = [0]
    for kind in (ZarrSource, Hdf5Source):
        def counted(self: Any, *args: Any, into: Any = kind._read_into) -> None:
            runs_read[0] += 1
            into(self, *args)
        monkeypatch.setattr(kind, "_read_into", counted)
    for spec in specs:
        before = runs_read[0]
        for op, axis in (("sum", None), ("var", None), ("argmax", None), ("sum", 0), ("var", 0), ("max", 0)):
            job = Job(op=op, source=spec, axis=axis)
            monkeypatch.setattr(halt, "RUN_CHUNKS", 1 << 20)
            once = compute_partial(job, validate_job(job, tmp_path, OPENERS), 0, 3000)
            monkeypatch.setattr(halt, "RUN_CHUNKS", 4)
            runs = compute_partial(job, validate_job(job, tmp_path, OPENERS), 0, 3000)
            assert once.keys() == runs.keys()
            for key in once:
                assert once[key].dtype == runs[key].dtype, (spec, op, axis, key)
                assert once[key].tobytes() == runs[key].tobytes(), (spec, op, axis, key)
        assert runs_read[0] > before + 6, f"{spec}: not read in runs"


def test_a_sharded_zarr_is_read_in_whole_shard_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """zarr reads a shard file that a read covers with one request, and each of its inner
    chunks with one request each where a read covers part of it: runs are whole shard files."""
    spec = write("zarr3-sharded", tmp_path, "sharded", np.arange(48_000, dtype=np.float64), 40)
    monkeypatch.setattr(halt, "RUN_CHUNKS", 4)
    source = validate_job(Job(op="sum", source=spec), tmp_path, OPENERS)
    outer, inner = source.chunk_rows  # type: ignore[attr-defined]
    assert outer > inner and source._run_rows() % outer == 0  # type: ignore[attr-defined]


def test_parquet_row_groups_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write("parquet-file", tmp_path, "pq", np.arange(10_000, dtype=np.float64), 1000)
    job = Job(op="sum", source=spec)
    source = validate_job(job, tmp_path, OPENERS)
    stop, decoded = halt.Halt(), [0]
    original = type(source)._read_group

    def read_group(self: Any, group: Any) -> Any:
        decoded[0] += 1
        if decoded[0] == 3:
            stop.set()
        return original(self, group)

    monkeypatch.setattr(type(source), "_read_group", read_group)
    with pytest.raises(halt.ShardHalted):
        halt.under(stop, compute_partial)(job, source, 0, source.rows)
    assert decoded[0] == 3


# --- 3. a job that ends frees its nodes' pools ---------------------------------------------

#: One-element chunks, none stored: the mapped reader looks each up (tens of microseconds);
#: a shard of them kept a pool's thread for about a minute before it could be halted.
TINY_ELEMENTS = 1 << 20


class Watched:
    """A node's shard computation, watched from the pool's thread: whether one began, and how
    each ended (its partial, or halted)."""

    def __init__(self, compute: Any) -> None:
        self.compute, self.began, self.ended = compute, threading.Event(), list[str]()

    def __call__(self, *args: Any) -> Any:
        self.began.set()
        try:
            result = self.compute(*args)
        except halt.ShardHalted:
            self.ended.append("halted")
            raise
        self.ended.append("done")
        return result


def watch_leader(daemon: Any, monkeypatch: pytest.MonkeyPatch) -> Watched:
    """The leader's own shards: its lanes' and those of a job of one shard."""
    watched = Watched(daemon.jobs.compute)
    monkeypatch.setattr(daemon.jobs, "compute", watched)
    monkeypatch.setattr(daemon.jobs.lanes, "compute", watched)
    return watched


async def test_a_timed_out_job_halts_the_leaders_shard(
    start_cluster: StartCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny_chunk_zarr(tmp_path, "tiny.zarr", TINY_ELEMENTS, compressed=False)
    cluster = await start_cluster(1, limits=Limits(job_timeout_s=3))
    shards = watch_leader(cluster.daemons[0], monkeypatch)
    async with AsyncClient(cluster.addresses) as client:
        with pytest.raises(JobError, match="DEADLINE_EXCEEDED: job-timeout-s"):
            await client.submit(op="sum", source=spec)  # its shard began well within the 3 s
        # Before, the shard ran to its end: over a minute of chunk lookups, then "done".
        await poll(lambda: shards.ended == ["halted"], timeout_s=20, what="the shard halted")
        assert (await client.submit(op="sum", source="range:n=300000")).result == 299999 * 300000 // 2


async def test_a_cancelled_job_of_one_shard_halts_it(
    start_cluster: StartCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job of one shard (too big to compute on the event loop) is a task of its run, as
    lanes are, so a cancel ends it at once; it was awaited in the run itself, which kept
    waiting for the shard's end."""
    spec = tiny_chunk_zarr(tmp_path, "tiny.zarr", TINY_ELEMENTS, compressed=False)
    cluster = await start_cluster(1, limits=Limits(job_timeout_s=300))
    shards = watch_leader(cluster.daemons[0], monkeypatch)
    async with AsyncClient(cluster.addresses) as client:
        await client.enqueue(op="sum", source=spec, job_id="tiny")  # detached: it can be cancelled
        await poll(shards.began.is_set, timeout_s=20, what="the leader to begin the shard")
        assert (await client.cancel("tiny")).state == "cancelled"
        await poll(lambda: shards.ended == ["halted"], timeout_s=20, what="the shard halted")


async def test_a_cancelled_call_halts_the_workers_shard(
    start_cluster: StartCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny_chunk_zarr(tmp_path, "tiny.zarr", TINY_ELEMENTS, compressed=False)
    cluster = await start_cluster(2, shard_elems=TINY_ELEMENTS // 4, limits=Limits(job_timeout_s=300))
    leader = await cluster.wait_for_leader()
    worker = next(d for d in cluster.daemons if d is not leader).worker
    shards = Watched(worker._compute_shard)
    monkeypatch.setattr(worker, "_compute_shard", shards)
    async with AsyncClient(cluster.addresses) as client:
        await client.enqueue(op="sum", source=spec, job_id="tiny")
        await poll(shards.began.is_set, timeout_s=20, what="the worker to begin a shard")
        assert (await client.cancel("tiny")).state == "cancelled"
        # One shard or two (its calls are cancelled one after the other): each halted, none done.
        await poll(lambda: bool(shards.ended) and set(shards.ended) == {"halted"}, timeout_s=20,
                   what="the worker's shards halted")
