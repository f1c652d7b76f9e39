"""Data sources: the `--source` spec strings and the arrays they name.

A source is addressed by row ranges, never read whole: the leader only needs
its shape (`rows`, `cols`, `dtype`) to cut fixed shards, and each node reads
just the rows of the shards it was given. So every source here is defined by
its spec string alone and `read(start, stop)` returns the same rows whoever
calls it, in whatever pieces:

- `range:n=N`        int64 0..N-1, computed on demand.
- `random:n=N,seed=S[,dist=uniform|normal]`  float64 made in fixed blocks of
  RANDOM_BLOCK_ELEMS elements, block b from `default_rng([seed, b])`; a read only
  generates the blocks it overlaps.
- `npy:PATH`         a 1-D or 2-D numeric `.npy` file, memory-mapped; a read
  slices the map, so only the pages of those rows are touched.
- `values:1,2,3`     small inline data (int64 if every token is an integer).
- `zarr:PATH`, `hdf5:PATH#/DATASET`, `parquet:PATH#COLUMN`: files in the
  formats people keep their data in, read by well-kept libraries (the
  "formats" extra) in node/formats/. The daemon hands their `openers` in;
  the core never imports them. They are stored in chunks or row groups,
  which the shard plan follows (`ChunkedSource`, `BlockedSource`).

Every path obeys the same rules, and every array the same shapes and dtypes
(sourcechecks.py). Errors are
`InvalidField(field, problem)`; the service turns them into INVALID_ARGUMENT
(and `SourceNotFound` into NOT_FOUND) with the message as is.
"""

from __future__ import annotations

import contextlib
import functools
import mmap
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from node.core.sourcechecks import check_array, confined_path
from node.errors import InvalidField, MissingExtra

Array = npt.NDArray[Any]

RANDOM_BLOCK_ELEMS = 1 << 20
DISTRIBUTIONS = ("uniform", "normal")
SOURCE_KINDS = ("range", "random", "npy", "values", "zarr", "hdf5", "parquet")
#: Kinds read by optional libraries (node/formats/, the "formats" extra).
FORMAT_KINDS = ("zarr", "hdf5", "parquet")
MAX_COUNT = (1 << 63) - 1
NPY_CACHE_SIZE = 16
NPY_MAGIC = b"\x93NUMPY"
#: numpy itself writes headers of a few hundred bytes; anything this big is hostile.
MAX_NPY_HEADER_BYTES = 64 * 1024

_COUNT_RE = re.compile(r"[0-9][0-9_]*(\.[0-9_]*)?([eE]\+?[0-9]+)?")


class DataSource(Protocol):
    """What the planner and the kernels need to know about a source."""

    @property
    def rows(self) -> int: ...  # length of axis 0
    @property
    def cols(self) -> int | None: ...  # None for 1-D data
    @property
    def dtype(self) -> np.dtype[Any]: ...
    def read(self, start: int, stop: int) -> Array: ...  # rows [start, stop)


#: Opens `KIND:TEXT` (TEXT without the kind) under a data root.
Opener = Callable[[str, Path | None], DataSource]


class ChunkedSource(DataSource, Protocol):
    """A source stored in chunks along axis 0: reading part of a chunk decodes
    all of it, so shards hold whole chunks.

    `chunk_rows`: the rows of each level of stored unit, coarsest first (a
    Zarr 3 shard file, then the chunks inside it); the last level is the one
    that is decoded whole. The last chunk of the data may be shorter.
    """

    @property
    def chunk_rows(self) -> tuple[int, ...]: ...


class PieceSource(DataSource, Protocol):
    """A source that hands rows out as several arrays, without joining them
    (memory-mapped chunk files; Parquet row groups, each decoded when it is
    asked for); compute.compute_partial reduces each."""

    def read_pieces(self, start: int, stop: int) -> Iterable[tuple[int, Array]]: ...  # (first row, rows)


class BlockedSource(DataSource, Protocol):
    """A source stored in blocks of differing sizes (Parquet row groups): shards
    hold whole blocks."""

    def row_blocks(self) -> list[int]: ...  # the blocks' row counts, in order, summing to `rows`


def parse_count(text: str, field: str) -> int:
    """`"1e8"`, `"1000000"`, `"1_000"` -> int; anything else is a InvalidField."""
    if text.isascii() and text.isdigit() and len(text) <= 18:  # the common case, "1000"
        count = int(text)
        if count > 0:
            return count
    problem = f"must be a positive integer, got {text!r}"
    if not _COUNT_RE.fullmatch(text):
        raise InvalidField(field, problem)
    try:
        number = Decimal(text.replace("_", ""))
    except InvalidOperation:
        raise InvalidField(field, problem) from None
    # Check the magnitude before int(): "1e999999999" must not build a huge int.
    if number.adjusted() > 18:
        raise InvalidField(field, f"must be at most {MAX_COUNT}, got {text!r}")
    if number != number.to_integral_value() or number <= 0:
        raise InvalidField(field, problem)
    count = int(number)
    if count > MAX_COUNT:
        raise InvalidField(field, f"must be at most {MAX_COUNT}, got {text!r}")
    return count


@dataclass(frozen=True)
class RangeSource:
    """`range:n=N`: 0..N-1 as int64, so exact answers are known."""

    rows: int
    cols: None = None

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.int64)

    def read(self, start: int, stop: int) -> Array:
        return np.arange(start, stop, dtype=np.int64)


@dataclass(frozen=True)
class RandomSource:
    """`random:...`: element i depends on (n, seed, dist) only."""

    rows: int
    seed: int
    dist: str = "uniform"
    cols: None = None

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(np.float64)

    def read(self, start: int, stop: int) -> Array:
        out = np.empty(max(0, stop - start), dtype=np.float64)
        if stop <= start:
            return out
        for block in range(start // RANDOM_BLOCK_ELEMS, (stop - 1) // RANDOM_BLOCK_ELEMS + 1):
            block_start = block * RANDOM_BLOCK_ELEMS
            values = self.block(block)
            lo, hi = max(start, block_start), min(stop, block_start + len(values))
            out[lo - start : hi - start] = values[lo - block_start : hi - block_start]
        return out

    def block(self, block: int) -> Array:
        """The whole of block `block` (the last one is shorter)."""
        length = min(RANDOM_BLOCK_ELEMS, self.rows - block * RANDOM_BLOCK_ELEMS)
        rng = np.random.default_rng([self.seed, block])
        if self.dist == "normal":
            return rng.standard_normal(length)
        return rng.random(length)


class ArrayBacked:
    """What a source that holds an array-like in `array` (a numpy array or memory map,
    a zarr array, an h5py dataset) says about it: shape, dtype, and a row slice as a
    plain ndarray (a view where the array is one: no copy)."""

    array: Any

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
        return np.asarray(self.array[start:stop])


@dataclass(frozen=True, eq=False)
class NpySource(ArrayBacked):
    """`npy:PATH`: a memory-mapped 1-D or 2-D numeric array (pages load as they are read)."""

    path: Path
    array: np.memmap[Any, np.dtype[Any]]


@dataclass(frozen=True, eq=False)
class ValuesSource(ArrayBacked):
    """`values:1,2,3`: small inline 1-D data; also any array already in memory."""

    array: Array


def source_kind(spec: str) -> str:
    """The KIND of a `KIND:ARGS` source spec (what is before the first colon)."""
    return spec.partition(":")[0]


def open_source(
    spec: str, data_root: Path | None = None, openers: Mapping[str, Opener] | None = None
) -> DataSource:
    """Parse a `--source` spec and open what it names (cheaply: no data is read).

    `openers`: the readers of the FORMAT_KINDS this node serves (built by
    node/formats/, which the core does not import); another kind is
    MissingExtra.
    """
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise InvalidField("source", f"expected KIND:ARGS, got {spec!r}")
    if kind == "range":
        params = _parse_params(rest, required=("n",), optional=())
        return RangeSource(rows=_count_param(params, "n"))
    if kind == "random":
        return _open_random(rest)
    if kind == "npy":
        return _open_npy(rest, data_root)
    if kind == "values":
        return ValuesSource(_parse_values(rest))
    if kind in FORMAT_KINDS:
        return _open_format(kind, rest, data_root, openers)
    expected = ", ".join(SOURCE_KINDS)
    raise InvalidField("source", f"unknown kind {kind!r} (expected {expected})")


def _parse_params(
    text: str, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidField("source", f"expected KEY=VALUE, got {item.strip()!r}")
        if key not in required and key not in optional:
            known = ", ".join(required + optional)
            raise InvalidField("source", f"unknown parameter {key!r} (expected {known})")
        if key in params:
            raise InvalidField("source", f"parameter {key!r} given twice")
        params[key] = value.strip()
    for key in required:
        if key not in params:
            raise InvalidField("source", f"missing parameter {key}=...")
    return params


def _count_param(params: dict[str, str], key: str) -> int:
    try:
        return parse_count(params[key], key)
    except InvalidField as exc:  # report it against --source, naming the parameter
        raise InvalidField("source", f"{key} {exc.problem}") from None


def _open_random(text: str) -> RandomSource:
    params = _parse_params(text, required=("n", "seed"), optional=("dist",))
    rows = _count_param(params, "n")
    seed_text = params["seed"]
    if not seed_text.isascii() or not seed_text.isdigit() or len(seed_text) > 39 or int(seed_text) >> 128:
        problem = f"seed must be a non-negative integer below 2**128, got {seed_text!r}"
        raise InvalidField("source", problem)
    dist = params.get("dist", "uniform")
    if dist not in DISTRIBUTIONS:
        expected = ", ".join(DISTRIBUTIONS)
        raise InvalidField("source", f"unknown dist {dist!r} (expected {expected})")
    return RandomSource(rows=rows, seed=int(seed_text), dist=dist)


def _parse_values(text: str) -> Array:
    tokens = [token.strip() for token in text.split(",")]
    if not text.strip():
        raise InvalidField("source", "values: needs at least one number")
    if "" in tokens:
        raise InvalidField("source", f"values: empty item in {text!r}")
    if not text.isascii():  # int() and float() read other scripts' digits; range: does not
        raise InvalidField("source", "values: numbers in ASCII digits only")
    try:
        return np.array([int(token) for token in tokens], dtype=np.int64)
    except OverflowError:
        raise InvalidField("source", "values: integer out of int64 range") from None
    except ValueError:
        pass
    try:
        values = np.array([float(token) for token in tokens], dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        raise InvalidField("source", f"values: not a number: {bad!r}") from None
    if not np.isfinite(values).all():  # inf and nan as written are numbers; 1e999 is not
        spelled = next((t for t, v in zip(tokens, values, strict=True) if not np.isfinite(v)
                        and t.lower().lstrip("+-") not in ("inf", "infinity", "nan")), None)
        if spelled is not None:
            raise InvalidField("source", f"values: {spelled[:40]!r} is beyond float64")
    return values


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _open_npy(text: str, data_root: Path | None) -> NpySource:
    """Open `npy:PATH` if, and only if, it is a regular file inside the data root."""
    path, info = confined_path("npy", text, data_root)
    if not stat.S_ISREG(info.st_mode):
        raise InvalidField("source", f"{text!r} is not a regular file (directory, FIFO or device)")
    _check_npy_header(path, text)
    array = _load_memmap(str(path), info.st_mtime_ns, info.st_size)
    return NpySource(path=path, array=array)


def _open_format(
    kind: str, text: str, data_root: Path | None, openers: Mapping[str, Opener] | None
) -> DataSource:
    opener = (openers or {}).get(kind)
    if opener is None:
        raise MissingExtra(
            f"source: this node does not read {kind}: sources "
            "(its reader is the 'formats' extra: pip install 'distnode[formats]')"
        )
    return opener(text, data_root)


def _check_npy_header(path: Path, text: str) -> None:
    """Refuse files that are not .npy or whose header is absurdly long (`_opened`)."""
    with _opened(path, text) as handle:
        prefix = handle.read(12)
    if not prefix.startswith(NPY_MAGIC) or len(prefix) < 10:
        raise InvalidField("source", f"not a valid .npy file: {text!r} (bad magic)")
    major = prefix[6]
    if major == 1:
        header_bytes = int.from_bytes(prefix[8:10], "little")
    elif len(prefix) == 12:
        header_bytes = int.from_bytes(prefix[8:12], "little")
    else:
        raise InvalidField("source", f"not a valid .npy file: {text!r} (truncated header)")
    if header_bytes > MAX_NPY_HEADER_BYTES:
        problem = f"{text!r} has a {header_bytes}-byte header (limit {MAX_NPY_HEADER_BYTES})"
        raise InvalidField("source", problem)


def in_huge_pages(array: np.memmap[Any, np.dtype[Any]]) -> np.memmap[Any, np.dtype[Any]]:
    """Ask the kernel to map `array`'s file in 2 MiB pages (MADV_HUGEPAGE); returns `array`.

    Pages not yet in the page cache are then read in 2 MiB folios and mapped
    whole, where the kernel's transparent huge pages allow it: one TLB entry
    per 2 MiB instead of 512. Summing 10^8 float64 took 48 ms that way, 78 ms
    in 4 KiB pages, on one host (docs/timeline.md, "The page cache's page
    size"). Where THP is "madvise", the common default, only an advised map
    gets them. A kernel that refuses the advice costs nothing: the map works
    as before.
    """
    mapped = getattr(array, "_mmap", None)  # numpy's memmap keeps its mmap here
    if isinstance(mapped, mmap.mmap) and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):
            mapped.madvise(mmap.MADV_HUGEPAGE)
    return array


@functools.lru_cache(maxsize=NPY_CACHE_SIZE)
def _load_memmap(path: str, mtime_ns: int, size: int) -> np.memmap[Any, np.dtype[Any]]:
    """Map a .npy file once per (path, mtime, size): a rewritten file is remapped.

    Errors are not cached (lru_cache does not store exceptions).
    """
    del mtime_ns, size  # only part of the cache key
    with _opened(path, path) as handle:  # mapped from what was checked, not opened by name again
        try:
            version = np.lib.format.read_magic(handle)
            if version not in ((1, 0), (2, 0), (3, 0)):  # the versions np.load reads
                raise ValueError(f"format version {version[0]}.{version[1]}")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(handle)
            check_array(repr(path), dtype, shape)
            array = np.memmap(handle, dtype=dtype, mode="r", shape=shape, order="F" if fortran_order else "C",
                              offset=handle.tell())
        except (ValueError, OSError, EOFError, OverflowError, TypeError) as exc:  # a header's absurd shape
            raise InvalidField("source", f"not a valid .npy file: {path!r} ({exc})") from None
    return in_huge_pages(array)


@contextlib.contextmanager
def _opened(path: str | Path, text: str) -> Iterator[BinaryIO]:
    """`path` opened for reading without blocking or following a link, and checked a
    regular file once open: it may have been swapped for a FIFO since it was checked,
    whose open by name would wait for a writer, on the event loop."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidField("source", f"cannot read {text!r}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidField("source", f"{text!r} is not a regular file (directory, FIFO or device)")
        yield handle
