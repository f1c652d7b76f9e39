"""`zarr:PATH`: a Zarr array, format 2 or 3, in a directory store, read by zarr.

The shard plan cuts at chunk boundaries along axis 0 (`chunk_rows`), and
with Zarr 3's sharding codec at the boundaries of Zarr's shards (the unit
stored in one file) when one fits in a distnode shard: no chunk is decoded
for two of our shards.

Untrusted stores: the metadata must describe a 1-D or 2-D numeric array whose
codecs are plain compressors and byte shufflers (ALLOWED_CODECS: no pickle,
no object codecs, nothing that runs code); every file read from the store
must be a regular file inside the data root (a symlink out of it is refused,
as for `npy:`). A damaged chunk is InvalidField naming the rows.
"""

from __future__ import annotations

import functools
import math
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from node.core import halt
from node.core.sourcechecks import (
    check_array,
    check_chunk,
    confined_path,
    one_line,
    plain_path,
    rows_read,
)
from node.core.sources import Array, ArrayBacked
from node.errors import InvalidField, SourceForbidden
from node.formats.mapped import ChunkPieces

#: Codec names (Zarr 3) and numcodecs ids (Zarr 2) a store may use.
ALLOWED_CODECS = frozenset({
    "bytes", "endian", "transpose", "sharding_indexed", "crc32c",
    "blosc", "zstd", "gzip", "zlib", "lz4", "bz2", "lzma", "shuffle", "bitshuffle", "delta",
})
#: Metadata larger than this is not a Zarr array's.
MAX_METADATA_BYTES = 1 << 20
#: What a codec may add to a chunk, at most, beyond twice its decoded bytes (gzip's header
#: and trailer, a block's framing): a chunk of a few bytes may grow past twice its size.
CODEC_FRAMING_BYTES = 64
CACHE_SIZE = 16


@dataclass(frozen=True, eq=False)
class ZarrSource(ArrayBacked):
    path: Path
    array: Any  # zarr.Array
    chunk_rows: tuple[int, ...]  # (shard rows, chunk rows) with Zarr 3 sharding, else (chunk rows,)

    def read(self, start: int, stop: int) -> Array:
        """Rows [start, stop), decoded by zarr a run of chunks at a time (halt.py): a shard of
        a great many tiny chunks can be stopped between runs."""
        return halt.read_in_runs(start, stop, self._run_rows(), self._read, self._blank, self._read_into)

    def _run_rows(self) -> int:
        """About RUN_CHUNKS chunks of rows; whole shard files where the store has them, as zarr
        reads one with a single request when a read covers it."""
        array, cols = self.array, int(self.array.shape[1]) if self.array.ndim == 2 else 1
        unit = array.shards or array.chunks
        inner = math.prod(array.shards) // math.prod(array.chunks) if array.shards else 1
        bands = -(-cols // int(unit[1])) if array.ndim == 2 else 1
        return halt.run_rows(int(unit[0]), inner * bands)

    def _blank(self, rows: int) -> Array:
        shape = (rows, *(int(n) for n in self.array.shape[1:]))
        order: Literal["C", "F"] = "F" if self.array.order == "F" else "C"  # Zarr 2 may store columns first
        return np.empty(shape, dtype=np.dtype(self.array.dtype), order=order)

    def _read(self, start: int, stop: int) -> Array:
        with rows_read(f"zarr: {self.path.name}", start, stop):
            return np.asarray(self.array[start:stop])

    def _read_into(self, start: int, stop: int, out: Array) -> None:
        from zarr.core.buffer import cpu

        with rows_read(f"zarr: {self.path.name}", start, stop):
            self.array.get_basic_selection(slice(start, stop), out=cpu.NDBuffer.from_numpy_array(out))


@dataclass(frozen=True, eq=False)
class MappedZarrSource(ZarrSource):
    """Uncompressed chunk files, read in place (mapped.py) instead of through zarr."""

    pieces: ChunkPieces | None = None

    def read(self, start: int, stop: int) -> Array:
        assert self.pieces is not None
        return self.pieces.read(start, stop)

    def read_pieces(self, start: int, stop: int) -> list[tuple[int, Array]]:
        assert self.pieces is not None
        return self.pieces.read_pieces(start, stop)


def open_zarr(text: str, data_root: Path | None) -> ZarrSource:
    path, info = confined_path("zarr", text, data_root)
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidField("source", f"zarr: {text!r} is not a directory store")
    metadata = _metadata_file(path, text)
    meta_info = metadata.stat()
    root = (data_root if data_root is not None else Path.cwd()).resolve()
    return _open_cached(str(path), str(root), meta_info.st_mtime_ns, meta_info.st_size)


def _metadata_file(path: Path, text: str) -> Path:
    for name in ("zarr.json", ".zarray"):
        candidate = path / name
        if candidate.is_file():
            if candidate.stat().st_size > MAX_METADATA_BYTES:
                raise InvalidField("source", f"zarr: {text!r} has a {name} over {MAX_METADATA_BYTES} bytes")
            return candidate
    raise InvalidField("source", f"zarr: {text!r} holds no Zarr array (no zarr.json or .zarray)")


@functools.lru_cache(maxsize=CACHE_SIZE)
def _open_cached(path: str, root: str, mtime_ns: int, size: int) -> ZarrSource:
    """Open once per (path, root, metadata mtime and size); errors are not cached."""
    del mtime_ns, size  # only part of the cache key
    import zarr

    name = Path(path).name
    store = _confined_store(path, Path(root))
    try:
        array = zarr.open_array(store=store, mode="r")
    except Exception as exc:  # unknown codec, bad JSON, not an array: zarr's many errors
        raise InvalidField("source", f"zarr: {name!r} cannot be opened: {one_line(exc)}") from None
    codecs = _codec_names(array.metadata)
    if codecs - ALLOWED_CODECS:
        refused = ", ".join(sorted(codecs - ALLOWED_CODECS))
        raise InvalidField("source", f"zarr: {name!r} uses codecs distnode does not read: {refused}")
    check_array(f"zarr: {name!r}", np.dtype(array.dtype), tuple(array.shape))
    check_chunk(f"zarr: {name!r}", math.prod(array.chunks))
    # What a read may bring: a file read whole, at most twice its chunks' bytes decoded and
    # a codec's framing for each (a codec's worst case), a shard's index and 64 KiB; a range
    # of one (an inner chunk, or the index) as much for one chunk. A sparse 2 GiB file once
    # was read whole.
    itemsize = np.dtype(array.dtype).itemsize
    inner = math.prod(array.shards) // math.prod(array.chunks) if array.shards else 1
    index = 16 * inner + 4 if array.shards else 0
    framed = 2 * math.prod(array.chunks) * itemsize + CODEC_FRAMING_BYTES
    store.max_file_bytes = framed * inner + index + (64 << 10)
    store.max_range_bytes = max(framed, index) + (64 << 10)
    stored = (array.shards[0], array.chunks[0]) if array.shards else (array.chunks[0],)
    units = tuple(int(u) for u in stored)
    if not _plain_layout(array):
        return ZarrSource(Path(path), array, units)
    metadata = array.metadata
    second = (0,) if array.ndim == 2 else ()

    store, resolved_root = Path(path), Path(root)

    def locate(index: int) -> tuple[Path, int] | None:
        found = _confined_key(store, resolved_root, metadata.encode_chunk_key((index, *second)))
        return None if found is None else (found, 0)

    pieces = ChunkPieces(
        f"zarr: {name}", int(array.shape[0]), int(array.shape[1]) if array.ndim == 2 else None,
        np.dtype(array.dtype), units[-1], locate, 0 if array.fill_value is None else array.fill_value,
        exact_files=True,
    )
    return MappedZarrSource(Path(path), array, units, pieces)


def _plain_layout(array: Any) -> bool:
    """Chunk files that are the chunk's bytes as numpy lays them out: no codec but `bytes` in
    this machine's byte order, chunks spanning every column (so a row range is contiguous)."""
    if not np.dtype(array.dtype).isnative or (array.ndim == 2 and array.chunks[1] != array.shape[1]):
        return False
    metadata = array.metadata
    if metadata.zarr_format == 2:
        return bool(metadata.compressor is None and not metadata.filters and metadata.order == "C")
    codecs = [codec.to_dict() for codec in metadata.codecs]
    if len(codecs) != 1 or codecs[0].get("name") != "bytes":
        return False
    endian = (codecs[0].get("configuration") or {}).get("endian")
    return endian in (None, sys.byteorder)


def _confined_store(path: str, root: Path) -> Any:
    """A read-only LocalStore that reads only regular files inside `root`.

    Checked at every read rather than by walking the store at open: a store
    may hold millions of chunk files, and a file swapped for a symlink after
    the job started is caught all the same.
    """
    from zarr.storage import LocalStore

    class ConfinedStore(LocalStore):
        #: What a read may bring, whole or a range: the metadata's bound until the array is open.
        max_file_bytes = max_range_bytes = MAX_METADATA_BYTES

        def check(self, key: str, byte_range: Any) -> None:
            """`key` confined to the root, and the read within what its chunks hold."""
            found = _confined_key(Path(path), root, key)
            if found is not None:
                wanted = _range_bytes(byte_range, found.stat().st_size)
                limit = self.max_file_bytes if byte_range is None else self.max_range_bytes
                if wanted > limit:
                    raise InvalidField("source", f"zarr: {Path(path).name}/{key}: a read of {wanted} bytes "
                                                 f"where its chunks hold at most {limit}")

        async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
            self.check(key, byte_range)
            return await super().get(key, prototype, byte_range)

        async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
            key_ranges = list(key_ranges)
            for key, byte_range in key_ranges:
                self.check(key, byte_range)
            return await super().get_partial_values(prototype, key_ranges)  # its reads at once, in threads

    return ConfinedStore(path, read_only=True)


def _range_bytes(byte_range: Any, size: int) -> int:
    """The bytes a zarr byte request reads of a file of `size` (zarr's RangeByteRequest,
    OffsetByteRequest, SuffixByteRequest, or None for all of it)."""
    if byte_range is None:
        return size
    start, end = getattr(byte_range, "start", None), getattr(byte_range, "end", None)
    if start is not None and end is not None:
        return max(0, min(int(end), size) - int(start))
    if getattr(byte_range, "offset", None) is not None:
        return max(0, size - int(byte_range.offset))
    if getattr(byte_range, "suffix", None) is not None:
        return min(int(byte_range.suffix), size)
    return size


def _confined_key(store: Path, root: Path, key: str) -> Path | None:
    """The regular file inside `root` that `key` names in the store; None if there is none
    (a chunk never written, which reads as the fill value)."""
    plain = plain_path(root, f"{store}/{key}")  # a few lstat calls where nothing is linked (sourcechecks.py)
    if plain is not None:
        target, mode = plain[0], plain[1].st_mode
    else:
        try:
            target = (store / key).resolve()
        except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError on 3.11)
            raise InvalidField("source", f"zarr: {store.name}/{key} cannot be resolved: {exc}") from None
        if not target.is_relative_to(root):
            raise SourceForbidden("source", f"zarr: {store.name}/{key} leads out of the data root")
        try:
            mode = target.stat().st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:  # not an absent chunk (read as fill): one that cannot be read
            raise InvalidField("source", f"zarr: {store.name}/{key} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise InvalidField("source", f"zarr: {store.name}/{key} is not a regular file")
    return target


def _codec_names(metadata: Any) -> set[str]:
    if metadata.zarr_format == 2:
        parts = [metadata.compressor, *(metadata.filters or ())]
        return {str(codec.codec_id) for codec in parts if codec is not None}
    names: set[str] = set()
    stack = [codec.to_dict() for codec in metadata.codecs]
    while stack:
        codec = stack.pop()
        names.add(str(codec.get("name")))
        config = codec.get("configuration") or {}
        for key in ("codecs", "index_codecs"):
            stack.extend(config.get(key) or ())
    return names
