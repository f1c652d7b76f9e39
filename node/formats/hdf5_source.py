"""`hdf5:PATH#/DATASET`: a dataset of an HDF5 file (netCDF4 variables are HDF5 datasets), read by h5py.

A chunked dataset is planned at chunk boundaries along axis 0 (`chunk_rows`);
a contiguous one in fixed row blocks, like `npy:`.

Untrusted files: the dataset's path is walked one name at a time and every
step must be a hard link, so a soft link (which may loop) or an external
link (which may leave the file and the data root) is refused; so are virtual
datasets and external storage, which read other files too. Filters must be
HDF5's own (deflate, shuffle, Fletcher-32, n-bit, scale-offset) or h5py's
LZF; HDF5's filter plugins are switched off, so no code is ever loaded on a
file's say-so.
"""

from __future__ import annotations

import functools
import math
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from node.core import halt
from node.core.sourcechecks import check_array, check_chunk, confined_path, one_line, rows_read, split_inner
from node.core.sources import Array, ArrayBacked
from node.errors import InvalidField
from node.formats.mapped import ChunkPieces, file_bytes

#: HDF5 filter ids: deflate, shuffle, Fletcher-32, n-bit, scale-offset, and h5py's own LZF.
ALLOWED_FILTERS = frozenset({1, 2, 3, 5, 6, 32000})
CACHE_SIZE = 16


@dataclass(frozen=True, eq=False)
class Hdf5Source(ArrayBacked):
    """A contiguous dataset: any row range reads as well as another."""

    path: Path
    array: Any  # h5py.Dataset

    def read(self, start: int, stop: int) -> Array:
        """Rows [start, stop); a chunked dataset's a run of chunks at a time (halt.py)."""
        chunks = self.array.chunks
        if not chunks:
            return self._read(start, stop)
        bands = 1 if len(chunks) == 1 else -(-int(self.array.shape[1]) // int(chunks[1]))
        rows = halt.run_rows(int(chunks[0]), bands)
        return halt.read_in_runs(start, stop, rows, self._read, self._blank, self._read_into)

    def _blank(self, rows: int) -> Array:
        return np.empty((rows, *self.array.shape[1:]), dtype=self.array.dtype)

    def _read(self, start: int, stop: int) -> Array:
        with rows_read(f"hdf5: {self.path.name}", start, stop):
            return np.asarray(self.array[start:stop])

    def _read_into(self, start: int, stop: int, out: Array) -> None:
        with rows_read(f"hdf5: {self.path.name}", start, stop):
            self.array.read_direct(out, np.s_[start:stop])


@dataclass(frozen=True, eq=False)
class ChunkedHdf5Source(Hdf5Source):
    chunk_rows: tuple[int, ...] = (1,)


@dataclass(frozen=True, eq=False)
class MappedHdf5Source(Hdf5Source):
    """A contiguous dataset without filters, read in place from the mapped file, like `npy:`."""

    offset: int = 0

    def read(self, start: int, stop: int) -> Array:
        dtype, shape = self.dtype, tuple(self.array.shape)
        size = math.prod(shape) * dtype.itemsize
        data = file_bytes(self.path)
        if len(data) < self.offset + size:
            raise InvalidField("source", f"hdf5: {self.path.name}: cannot read rows [{start}, {stop}): "
                                         f"the file ends before its data does")
        whole: Array = data[self.offset:self.offset + size].view(dtype).reshape(shape)
        return whole[start:stop]


@dataclass(frozen=True, eq=False)
class MappedChunkedHdf5Source(ChunkedHdf5Source):
    """Chunks without filters, each read in place from the mapped file (mapped.py)."""

    pieces: ChunkPieces | None = None

    def read(self, start: int, stop: int) -> Array:
        assert self.pieces is not None
        return self.pieces.read(start, stop)

    def read_pieces(self, start: int, stop: int) -> list[tuple[int, Array]]:
        assert self.pieces is not None
        return self.pieces.read_pieces(start, stop)


def open_hdf5(text: str, data_root: Path | None) -> Hdf5Source:
    file_text, name = split_inner("hdf5", text, "/DATASET")
    path, info = confined_path("hdf5", file_text, data_root)
    if not stat.S_ISREG(info.st_mode):
        raise InvalidField("source", f"hdf5: {file_text!r} is not a regular file")
    return _open_cached(str(path), info.st_mtime_ns, info.st_size, name)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _open_cached(path: str, mtime_ns: int, size: int, name: str) -> Hdf5Source:
    """Open once per (file, mtime, size, dataset); errors are not cached."""
    del mtime_ns, size  # only part of the cache key
    h5py = _h5py()
    label = f"hdf5: {Path(path).name}#{name}"
    try:
        handle = h5py.File(path, "r")
    except Exception as exc:  # not HDF5, truncated superblock
        raise InvalidField("source", f"{label}: not a readable HDF5 file: {one_line(exc)}") from None
    dataset = _walk(h5py, handle, name, label)
    if dataset.shape is None:  # h5py.Empty: a dataset without a dataspace
        raise InvalidField("source", f"{label} has no dataspace (an empty dataset)")
    check_array(label, np.dtype(dataset.dtype), tuple(dataset.shape))
    _check_storage(dataset, label)
    plain = _plain_layout(dataset)
    if dataset.chunks is None:
        offset = dataset.id.get_offset() if plain else None
        if offset is None:  # filtered, foreign byte order, or never written
            return Hdf5Source(Path(path), dataset)
        return MappedHdf5Source(Path(path), dataset, int(offset))
    check_chunk(label, math.prod(dataset.chunks))
    units = (int(dataset.chunks[0]),)
    offsets = _chunk_offsets(dataset) if plain else None
    if offsets is None:
        return ChunkedHdf5Source(Path(path), dataset, units)

    def locate(index: int) -> tuple[Path, int] | None:
        offset = offsets.get(index)
        return None if offset is None else (Path(path), offset)

    cols = int(dataset.shape[1]) if dataset.ndim == 2 else None
    pieces = ChunkPieces(label, int(dataset.shape[0]), cols, np.dtype(dataset.dtype), units[0], locate,
                         dataset.fillvalue, exact_files=False)
    return MappedChunkedHdf5Source(Path(path), dataset, units, pieces)


def _plain_layout(dataset: Any) -> bool:
    """Stored as numpy lays it out: no filter, this machine's byte order, and (chunked) chunks
    spanning every column, so a chunk's rows are contiguous bytes."""
    if dataset.id.get_create_plist().get_nfilters() or not np.dtype(dataset.dtype).isnative:
        return False
    return dataset.chunks is None or dataset.ndim == 1 or dataset.chunks[1] == dataset.shape[1]


def _chunk_offsets(dataset: Any) -> dict[int, int] | None:
    """Chunk index (along axis 0) -> its byte offset in the file; None if some chunk is not one
    plain chunk's size (then h5py reads them). Chunks never written are absent (fill value)."""
    chunk_bytes = math.prod(dataset.chunks) * np.dtype(dataset.dtype).itemsize
    rows = int(dataset.chunks[0])
    offsets: dict[int, int] = {}
    sizes_ok = True

    def seen(info: Any) -> None:
        nonlocal sizes_ok
        sizes_ok = sizes_ok and info.size == chunk_bytes
        offsets[int(info.chunk_offset[0]) // rows] = int(info.byte_offset)

    if not hasattr(dataset.id, "chunk_iter"):  # HDF5 before 1.12.3 / 1.14
        return None
    dataset.id.chunk_iter(seen)
    return offsets if sizes_ok else None


def _walk(h5py: Any, handle: Any, name: str, label: str) -> Any:
    """Follow `name` one hard link at a time; anything else is refused."""
    node = handle
    for part in (p for p in name.split("/") if p):
        if not isinstance(node, h5py.Group) or part not in node:
            raise InvalidField("source", f"{label}: no dataset at {name!r}")
        link = node.get(part, getlink=True)
        if not isinstance(link, h5py.HardLink):
            names = {h5py.SoftLink: "a soft link", h5py.ExternalLink: "an external link"}
            kind = names.get(type(link), "a link")
            raise InvalidField("source", f"{label}: {part!r} is {kind}; distnode follows no links")
        node = node[part]
    if not isinstance(node, h5py.Dataset):
        raise InvalidField("source", f"{label}: {name!r} is not a dataset")
    return node


def _check_storage(dataset: Any, label: str) -> None:
    if dataset.is_virtual:
        raise InvalidField("source", f"{label}: a virtual dataset (it reads other files)")
    if dataset.external:
        raise InvalidField("source", f"{label}: its data lives in external files")
    plist = dataset.id.get_create_plist()
    filters = {plist.get_filter(i)[0] for i in range(plist.get_nfilters())}
    if filters - ALLOWED_FILTERS:
        refused = ", ".join(str(f) for f in sorted(filters - ALLOWED_FILTERS))
        raise InvalidField("source", f"{label}: uses HDF5 filters distnode does not read (ids {refused})")


@functools.cache
def _h5py() -> Any:
    """h5py, with HDF5's plugin search path emptied: a file never gets a filter loaded."""
    import h5py

    while h5py.h5pl.size():
        h5py.h5pl.remove(0)
    return h5py
