"""Readers of the formats people keep their data in: Zarr, HDF5 (and netCDF4), Parquet.

Each is a source with `npy:`'s guarantees: opened from a path inside the
data root (core/sources.py's `confined_path`), read by row ranges without
loading the rest, and stored in blocks the shard plan follows, so no chunk or
row group is decoded for two shards and the plan depends on the data alone.
Their libraries (the "formats" extra: zarr, h5py, pyarrow) load only when a
job names the format. The daemon hands `openers()` to the core's
`open_source`; a node without a format's library answers FAILED_PRECONDITION
and is given no shards of it (nodes advertise what they read in Status).

The files are untrusted: a reader checks the metadata before it reads a
byte of data (dtype numeric, 1-D or 2-D, codecs and filters from a short
list of plain compressors, no links out of the file or the data root), and
turns whatever its library raises on a damaged file into InvalidField naming
the path. Nothing from a file is ever unpickled or run.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy and the readers load with the first job, not with the daemon
    from node.core.sources import DataSource, Opener

#: Format -> the library that reads it.
LIBRARIES = {"zarr": "zarr", "hdf5": "h5py", "parquet": "pyarrow"}


@functools.cache
def available() -> frozenset[str]:
    """The formats whose library is installed (found, not imported: that is costly)."""
    return frozenset(kind for kind, library in LIBRARIES.items() if importlib.util.find_spec(library))


def openers(served: Collection[str] | None = None) -> dict[str, Opener]:
    """The readers this node offers: the formats in `served` (None: all) whose library is installed.

    Each imports its library when it first opens a file.
    """
    wanted = available() if served is None else available() & frozenset(served)
    return {kind: functools.partial(_open, kind) for kind in sorted(wanted)}


def _open(kind: str, text: str, data_root: Path | None) -> DataSource:
    if kind == "zarr":
        from node.formats.zarr_source import open_zarr

        return open_zarr(text, data_root)
    if kind == "hdf5":
        from node.formats.hdf5_source import open_hdf5

        return open_hdf5(text, data_root)
    from node.formats.parquet_source import open_parquet

    return open_parquet(text, data_root)
