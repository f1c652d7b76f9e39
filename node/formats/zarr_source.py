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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from node.core.sources import Array, check_array, check_chunk, confined_path, one_line
from node.errors import InvalidField

#: Codec names (Zarr 3) and numcodecs ids (Zarr 2) a store may use.
ALLOWED_CODECS = frozenset({
    "bytes", "endian", "transpose", "sharding_indexed", "crc32c",
    "blosc", "zstd", "gzip", "zlib", "lz4", "bz2", "lzma", "shuffle", "bitshuffle", "delta",
})
#: Metadata larger than this is not a Zarr array's.
MAX_METADATA_BYTES = 1 << 20
CACHE_SIZE = 16


@dataclass(frozen=True, eq=False)
class ZarrSource:
    path: Path
    array: Any  # zarr.Array
    chunk_rows: tuple[int, ...]  # (shard rows, chunk rows) with Zarr 3 sharding, else (chunk rows,)

    @property
    def rows(self) -> int:
        return int(self.array.shape[0])

    @property
    def cols(self) -> int | None:
        return int(self.array.shape[1]) if self.array.ndim == 2 else None

    @property
    def dtype(self) -> np.dtype[Any]:
        dtype: np.dtype[Any] = np.dtype(self.array.dtype)
        return dtype

    def read(self, start: int, stop: int) -> Array:
        try:
            return np.asarray(self.array[start:stop])
        except InvalidField:
            raise  # the store's own check (_confined_store): said as is
        except Exception as exc:  # a truncated or corrupt chunk, whatever zarr calls it
            problem = f"cannot read rows [{start}, {stop}): {one_line(exc)}"
            raise InvalidField("source", f"zarr: {self.path.name}: {problem}") from None


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
    try:
        array = zarr.open_array(store=_confined_store(path, Path(root)), mode="r")
    except Exception as exc:  # unknown codec, bad JSON, not an array: zarr's many errors
        raise InvalidField("source", f"zarr: {name!r} cannot be opened: {one_line(exc)}") from None
    codecs = _codec_names(array.metadata)
    if codecs - ALLOWED_CODECS:
        refused = ", ".join(sorted(codecs - ALLOWED_CODECS))
        raise InvalidField("source", f"zarr: {name!r} uses codecs distnode does not read: {refused}")
    check_array(f"zarr: {name!r}", np.dtype(array.dtype), tuple(array.shape))
    check_chunk(f"zarr: {name!r}", math.prod(array.chunks))
    units = (array.shards[0], array.chunks[0]) if array.shards else (array.chunks[0],)
    return ZarrSource(Path(path), array, tuple(int(u) for u in units))


def _confined_store(path: str, root: Path) -> Any:
    """A read-only LocalStore that reads only regular files inside `root`.

    Checked at every read rather than by walking the store at open: a store
    may hold millions of chunk files, and a file swapped for a symlink after
    the job started is caught all the same.
    """
    from zarr.storage import LocalStore

    def check(key: str) -> None:
        target = (Path(path) / key).resolve()
        if not target.is_relative_to(root):
            raise InvalidField("source", f"zarr: {Path(path).name}/{key} leads out of the data root")
        try:
            mode = target.stat().st_mode
        except OSError:
            return  # missing: zarr's own answer (a chunk never written reads as fill_value)
        if not stat.S_ISREG(mode):
            raise InvalidField("source", f"zarr: {Path(path).name}/{key} is not a regular file")

    class ConfinedStore(LocalStore):
        async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
            check(key)
            return await super().get(key, prototype, byte_range)

        async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
            key_ranges = list(key_ranges)
            for key, _ in key_ranges:
                check(key)
            return await super().get_partial_values(prototype, key_ranges)

    return ConfinedStore(path, read_only=True)


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
