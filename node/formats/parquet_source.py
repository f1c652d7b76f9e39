"""`parquet:PATH#COLUMN`: one numeric column of a Parquet file, or of a directory of them, read by pyarrow.

A directory's files are taken in sorted name order (hidden files and those
starting with "_", such as `_SUCCESS` and `_metadata`, are not data), then
each file's row groups in order: that order is the rows' order. The shard
plan gathers whole row groups (`row_blocks`), so none is decoded twice.

Nulls are refused, not skipped: a reduction over a column with nulls has no
numpy answer to be bit-identical to, and silently dropping values changes
`count` and `mean`. The error names the file and row group. NaN in a float
column is a value, and follows numpy's rules like any other source.

Untrusted files: the footer must parse, the column must be a plain integer,
float or boolean column (no strings, lists, structs or dictionaries), and
every file must lie inside the data root.
"""

from __future__ import annotations

import bisect
import functools
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from node.core.sourcechecks import check_array, check_chunk, confined_path, one_line, split_inner
from node.core.sources import Array
from node.errors import InvalidField

#: A directory of more files than this is refused rather than opened file by file.
MAX_FILES = 10_000
CACHE_SIZE = 16


@dataclass(frozen=True)
class _Group:
    path: str
    metadata: Any  # the file's pyarrow.parquet.FileMetaData, parsed once
    index: int  # the row group's index in its file
    start: int  # its first row in the whole column


@dataclass(frozen=True, eq=False)
class ParquetSource:
    column: str
    groups: tuple[_Group, ...]
    sizes: tuple[int, ...]
    kind: np.dtype[Any]

    @functools.cached_property
    def starts(self) -> list[int]:
        return [group.start for group in self.groups]

    @property
    def rows(self) -> int:
        return sum(self.sizes)

    @property
    def cols(self) -> None:
        return None

    @property
    def dtype(self) -> np.dtype[Any]:
        return self.kind

    def row_blocks(self) -> list[int]:
        return list(self.sizes)

    def read(self, start: int, stop: int) -> Array:
        parts = [values for _, values in self.read_pieces(start, stop)]
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def read_pieces(self, start: int, stop: int) -> Iterator[tuple[int, Array]]:
        """Rows [start, stop) one row group at a time, each decoded when it is asked for:
        `compute_partial` reduces each as it comes, so a shard's groups are never joined
        (a copy of every byte) nor all held at once."""
        first = bisect.bisect_right(self.starts, start) - 1
        for group in self.groups[first:]:
            if group.start >= stop:
                break
            values = self._read_group(group)
            lo, hi = max(start, group.start) - group.start, min(stop, group.start + len(values)) - group.start
            yield group.start + lo, values[lo:hi]

    def _read_group(self, group: _Group) -> Array:
        """One row group, the file opened for it alone (its footer is not parsed again)."""
        import pyarrow.parquet as pq

        where = f"parquet: {Path(group.path).name} row group {group.index}"
        try:
            with pq.ParquetFile(group.path, metadata=group.metadata) as handle:
                table = handle.read_row_group(group.index, columns=[self.column])
        except Exception as exc:  # a truncated or corrupt page, a file replaced under us
            raise InvalidField("source", f"{where}: cannot be read: {one_line(exc)}") from None
        column = table.column(0)
        if column.null_count:
            raise InvalidField("source", f"{where}: column {self.column!r} holds {column.null_count} nulls")
        return np.asarray(column.to_numpy(), dtype=self.kind)


def open_parquet(text: str, data_root: Path | None) -> ParquetSource:
    path_text, column = split_inner("parquet", text, "COLUMN")
    path, info = confined_path("parquet", path_text, data_root)
    files = [path] if stat.S_ISREG(info.st_mode) else _data_files(path, path_text, data_root)
    key = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    return _open_cached(key, column)


def _data_files(directory: Path, text: str, data_root: Path | None) -> list[Path]:
    try:
        names = sorted(p.name for p in directory.iterdir() if not p.name.startswith((".", "_")))
    except OSError as exc:  # a directory this node may not list
        raise InvalidField("source", f"parquet: cannot list {text!r}: {exc.strerror}") from None
    if not names:
        raise InvalidField("source", f"parquet: {text!r} holds no data files")
    if len(names) > MAX_FILES:
        raise InvalidField("source", f"parquet: {text!r} holds over {MAX_FILES} files")
    files = []
    for name in names:
        path, info = confined_path("parquet", str(Path(text) / name), data_root)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidField("source", f"parquet: {text!r} holds {name!r}, not a regular file")
        files.append(path)
    return files


@functools.lru_cache(maxsize=CACHE_SIZE)
def _open_cached(files: tuple[tuple[str, int, int], ...], column: str) -> ParquetSource:
    """Read every footer once per (files, their mtimes and sizes); errors are not cached."""
    import pyarrow.parquet as pq

    groups: list[_Group] = []
    sizes: list[int] = []
    kinds: set[np.dtype[Any]] = set()
    total = 0
    for path, _, _ in files:
        name = Path(path).name
        try:
            handle = pq.ParquetFile(path)
        except Exception as exc:  # not Parquet, a corrupt or truncated footer
            problem = f"not a readable Parquet file: {one_line(exc)}"
            raise InvalidField("source", f"parquet: {name}: {problem}") from None
        with handle:
            kinds.add(_column_dtype(handle, column, name))
            metadata = handle.metadata
        for index in range(metadata.num_row_groups):
            _refuse_nulls(metadata, index, column, name)
            size = metadata.row_group(index).num_rows
            check_chunk(f"parquet: {name} row group {index}", size)
            groups.append(_Group(path, metadata, index, total))
            sizes.append(size)
            total += size
    if len(kinds) != 1:
        names = ", ".join(sorted(str(kind) for kind in kinds))
        raise InvalidField("source", f"parquet: column {column!r} has different types across files: {names}")
    kind = kinds.pop()
    check_array(f"parquet: column {column!r}", kind, (total,))
    keep = [i for i, size in enumerate(sizes) if size]  # empty row groups hold nothing to plan
    return ParquetSource(column, tuple(groups[i] for i in keep), tuple(sizes[i] for i in keep), kind)


def _column_dtype(handle: Any, column: str, name: str) -> np.dtype[Any]:
    import pyarrow as pa

    schema = handle.schema_arrow
    if column not in schema.names:
        raise InvalidField("source", f"parquet: {name} has no column {column!r} (it has {schema.names[:10]})")
    kind = schema.field(column).type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise InvalidField("source", f"parquet: {name}: column {column!r} is {kind}, not numbers")
    dtype: np.dtype[Any] = np.dtype(kind.to_pandas_dtype())
    return dtype


def _refuse_nulls(metadata: Any, index: int, column: str, name: str) -> None:
    """Refuse nulls the footer's statistics already count (the rest are caught on read)."""
    group = metadata.row_group(index)
    for i in range(group.num_columns):
        chunk = group.column(i)
        if chunk.path_in_schema == column and chunk.statistics is not None and chunk.statistics.null_count:
            raise InvalidField(
                "source", f"parquet: {name} row group {index}: column {column!r} holds "
                f"{chunk.statistics.null_count} nulls"
            )
