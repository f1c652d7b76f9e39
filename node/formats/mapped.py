"""Uncompressed chunks read in place: the file's pages, memory-mapped, as numpy arrays.

An uncompressed chunk (a Zarr chunk file with the plain `bytes` codec, an
HDF5 chunk without filters) is its array's bytes, so the reader can hand
out a view of the mapped file instead of copying it into a fresh buffer:
the library's read costs two copies of every byte, the map none (about 3x
the `.npy` time becomes about 1x; docs/benchmarks.md). The rows come out as
`pieces`, one per run of chunks that lie back to back in one file, which
`compute_partial` reduces one by one.

Maps are cached per file version (path, inode, mtime, size), at most
MAX_MAPS of them, like `npy:`'s memmaps. As for `npy:`, a file truncated
while it is mapped would fault the node on the missing pages: files in the
data root are expected to change only by being replaced.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from node.core import halt
from node.core.sources import Array, in_huge_pages
from node.errors import InvalidField

#: Files mapped at once per node (each map is one of the kernel's vm.max_map_count, 65,530 by default).
MAX_MAPS = 1024

#: Where chunk `i` lies: (file, byte offset), or None for a chunk never written (it reads as the fill value).
Locate = Callable[[int], tuple[Path, int] | None]


def file_bytes(path: Path) -> Array:
    """The whole file, mapped read-only (cached per version)."""
    info = os.stat(path)
    return _mapped(str(path), info.st_ino, info.st_mtime_ns, info.st_size)


@functools.lru_cache(maxsize=MAX_MAPS)
def _mapped(path: str, inode: int, mtime_ns: int, size: int) -> Array:
    del inode, mtime_ns  # only part of the cache key
    if size == 0:
        return np.zeros(0, dtype=np.uint8)  # mmap refuses an empty file
    # A plain ndarray over the map (which it keeps alive): a memmap's slices each run
    # numpy's Python-level __array_finalize__, a tenth of a Zarr job's piecing.
    return in_huge_pages(np.memmap(path, dtype=np.uint8, mode="r")).view(np.ndarray)


@dataclass(frozen=True)
class ChunkPieces:
    """Rows of a 1-D or 2-D array stored in chunks of `chunk_rows` whole rows, uncompressed."""

    label: str  # names the data in errors
    rows: int
    cols: int | None
    dtype: np.dtype[Any]
    chunk_rows: int
    locate: Locate
    fill: Any
    #: Zarr: a chunk file holds exactly one chunk (anything else is damage).
    exact_files: bool

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        return (self.chunk_rows,) if self.cols is None else (self.chunk_rows, self.cols)

    def read_pieces(self, start: int, stop: int) -> list[tuple[int, Array]]:
        """Rows [start, stop) as (first row, rows) views, one per run of chunks stored back to back.

        Chunks that follow each other in one file (HDF5 writes them so) are
        one piece: numpy reduces 2^23 elements in one call about a tenth
        faster than in eight calls of 2^20. Which chunks are adjacent is the
        file's layout, so the pieces still depend on the data alone.
        """
        c = self.chunk_rows
        pieces = []
        for first, count, where in self._runs(start // c, (stop - 1) // c + 1):
            halt.check()
            lo, hi = max(start, first * c), min(stop, (first + count) * c)
            pieces.append((lo, self._chunks(first, count, where)[lo - first * c:hi - first * c]))
        return pieces

    def _runs(self, begin: int, end: int) -> list[tuple[int, int, tuple[Path, int] | None]]:
        """Chunks [begin, end) as (first chunk, count, where the first lies) runs, each run
        contiguous in one file."""
        runs: list[tuple[int, int, tuple[Path, int] | None]] = []
        size = self._chunk_bytes()
        previous: tuple[Path, int] | None = None
        for index in range(begin, end):
            halt.check()  # locating a chunk file costs microseconds: a store may hold millions
            where = self.locate(index)
            if runs and where is not None and previous is not None and not self.exact_files and (
                where[0] == previous[0] and where[1] == previous[1] + size
            ):
                runs[-1] = (runs[-1][0], runs[-1][1] + 1, runs[-1][2])
            else:
                runs.append((index, 1, where))
            previous = where
        return runs

    def _chunk_bytes(self) -> int:
        return math.prod(self.chunk_shape) * self.dtype.itemsize

    def read(self, start: int, stop: int) -> Array:
        pieces = [piece for _, piece in self.read_pieces(start, stop)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _chunks(self, first: int, count: int, where: tuple[Path, int] | None) -> Array:
        """`count` chunks from chunk `first`, which `_runs` found back to back at `where`, as one
        array of rows."""
        if where is None:
            return np.full(self.chunk_shape, self.fill, dtype=self.dtype)
        path, offset = where
        data = file_bytes(path)
        size = self._chunk_bytes()
        end = offset + count * size
        if len(data) < end or (self.exact_files and len(data) != size):
            short = first + min(count - 1, max(0, len(data) - offset) // size)  # the first chunk cut off
            rows = f"[{short * self.chunk_rows}, {min(self.rows, (short + 1) * self.chunk_rows)})"
            held = len(data) - offset - (short - first) * size
            raise InvalidField(
                "source", f"{self.label}: cannot read rows {rows}: the chunk holds "
                f"{held} bytes, an uncompressed chunk {size}"
            )
        shape = (count * self.chunk_rows, *self.chunk_shape[1:])
        return data[offset:end].view(self.dtype).reshape(shape)
