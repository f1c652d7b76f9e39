"""The big array again in the file formats people keep data in, for the formats figures.

The same N float64 values as the big `.npy` (read back from its map, slab by
slab), written the way each format's users write big data:

- `zarr3`: Zarr 3, chunks of 2^20 elements, no compressor;
- `zarr3_zstd`: the same with Blosc (Zstd, level 1, byte shuffle);
- `hdf5`: one HDF5 dataset, chunks of 2^20 elements, no filter;
- `parquet`: a directory of Parquet files of 2^23 rows each, row groups of
  2^20, Snappy (pyarrow's default), one float64 column: the shape Spark and
  Dask leave behind.

Every unit is 2^20 elements, so distnode's default shard (2^23) holds eight
whole units and the shard plan equals the `.npy` plan: the answers must be
the `.npy` answers to the bit. The files need the `formats` extra; without
it `write` returns nothing and the figures are skipped with that reason.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import log

UNIT = 1 << 20
#: name -> how the table calls it, in the table's order.
LABELS = {
    "zarr3": "Zarr 3, uncompressed",
    "zarr3_zstd": "Zarr 3, Blosc/Zstd",
    "hdf5": "HDF5, chunked",
    "parquet": "Parquet (Snappy), row groups of 2^20",
}
#: Rows per Parquet file: one distnode shard.
FILE_ROWS = 1 << 23
#: Elements written at once: whole units, 64 MB.
SLAB = 8 * UNIT
DATASET = "/x"
COLUMN = "x"


@dataclass(frozen=True)
class FormatFile:
    name: str
    kind: str  # zarr | hdf5 | parquet
    path: Path
    spec: str  # distnode's --source
    label: str  # for the table

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "path": str(self.path), "spec": self.spec,
                "label": self.label, "dataset": DATASET, "column": COLUMN}


def missing_libraries() -> list[str]:
    return [m for m in ("zarr", "h5py", "pyarrow") if importlib.util.find_spec(m) is None]


def write(directory: Path, big: Path) -> dict[str, FormatFile]:
    """Each format's copy of `big` in `directory` (kept if already there), by name."""
    if missing_libraries():
        return {}
    source = np.load(big, mmap_mode="r")
    n = int(source.shape[0])
    kinds = {"zarr3": "zarr", "zarr3_zstd": "zarr", "hdf5": "hdf5", "parquet": "parquet"}
    names = {"zarr3": f"big-{n}.zarr", "zarr3_zstd": f"big-{n}-zstd.zarr", "hdf5": f"big-{n}.h5",
             "parquet": f"big-{n}.parquet"}
    files = {name: FormatFile(name, kinds[name], directory / names[name], "", label)
             for name, label in LABELS.items()}
    writers = {"zarr3": _zarr, "zarr3_zstd": _zarr, "hdf5": _hdf5, "parquet": _parquet}
    t0 = time.perf_counter()
    out = {}
    for name, file in files.items():
        done_marker = file.path.with_name(file.path.name + ".done")
        if not done_marker.exists():
            remove(file.path)
            writers[name](file, source, n)
            done_marker.write_text("")
        spec = {"zarr": f"zarr:{file.path}", "hdf5": f"hdf5:{file.path}#{DATASET}",
                "parquet": f"parquet:{file.path}#{COLUMN}"}[file.kind]
        out[name] = FormatFile(file.name, file.kind, file.path, spec, file.label)
    log(f"formats: {', '.join(out)} written from {big.name} in {time.perf_counter() - t0:.1f} s")
    return out


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    path.with_name(path.name + ".done").unlink(missing_ok=True)


def _slabs(n: int) -> list[tuple[int, int]]:
    return [(a, min(n, a + SLAB)) for a in range(0, n, SLAB)]


def _zarr(file: FormatFile, source: np.ndarray, n: int) -> None:
    import zarr
    from zarr.codecs import BloscCodec, BloscShuffle

    compressors = (BloscCodec(cname="zstd", clevel=1, shuffle=BloscShuffle.shuffle)
                   if file.name.endswith("zstd") else None)
    array = zarr.create_array(store=str(file.path), shape=(n,), chunks=(UNIT,), dtype="f8",
                              compressors=compressors, fill_value=0.0)
    for a, b in _slabs(n):
        array[a:b] = source[a:b]


def _hdf5(file: FormatFile, source: np.ndarray, n: int) -> None:
    import h5py

    with h5py.File(file.path, "w") as handle:
        dataset = handle.create_dataset(DATASET, shape=(n,), dtype="f8", chunks=(min(UNIT, n),))
        for a, b in _slabs(n):
            dataset[a:b] = source[a:b]


def _parquet(file: FormatFile, source: np.ndarray, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file.path.mkdir(parents=True)
    for number, start in enumerate(range(0, n, FILE_ROWS)):
        part = np.ascontiguousarray(source[start:min(n, start + FILE_ROWS)])
        pq.write_table(pa.table({COLUMN: part}), file.path / f"part-{number:05d}.parquet",
                       row_group_size=UNIT, compression="snappy")  # pyarrow's default
