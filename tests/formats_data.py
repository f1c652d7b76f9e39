"""Writing the same array as Zarr, HDF5 or Parquet, the way their users do, for the format tests."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy.typing as npt

Array = npt.NDArray[Any]

#: Every store layout the readers must handle, by name: (format, writer options).
LAYOUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "zarr3": ("zarr", {"zarr_format": 3, "compressed": False}),
    "zarr3-zstd": ("zarr", {"zarr_format": 3, "compressed": True}),
    "zarr3-sharded": ("zarr", {"zarr_format": 3, "compressed": True, "sharded": True}),
    "zarr2-blosc": ("zarr", {"zarr_format": 2, "compressed": True}),
    "zarr2": ("zarr", {"zarr_format": 2, "compressed": False}),
    "hdf5-chunked": ("hdf5", {"chunked": True, "compressed": True}),
    "hdf5-chunked-plain": ("hdf5", {"chunked": True, "compressed": False}),
    "hdf5-contiguous": ("hdf5", {"chunked": False, "compressed": False}),
    "parquet-file": ("parquet", {"files": 1}),
    "parquet-dir": ("parquet", {"files": 3}),
}


def write(layout: str, root: Path, name: str, data: Array, chunk_rows: int) -> str:
    """Write `data` under `root` in `layout`, stored in blocks of `chunk_rows` rows; its source spec.

    Parquet holds 1-D data only (one column); 2-D data must not come here as Parquet.
    """
    kind, options = LAYOUTS[layout]
    if kind == "zarr":
        return write_zarr(root / f"{name}.zarr", data, chunk_rows, root=root, **options)
    if kind == "hdf5":
        return write_hdf5(root / f"{name}.h5", data, chunk_rows, root=root, **options)
    return write_parquet(root / name, data, chunk_rows, root=root, **options)


def write_zarr(path: Path, data: Array, chunk_rows: int, root: Path, zarr_format: int = 3,
               compressed: bool = False, sharded: bool = False) -> str:  # fmt: skip
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    chunks = (chunk_rows, *data.shape[1:])
    options: dict[str, Any] = {"zarr_format": zarr_format}
    if zarr_format == 2:
        from numcodecs import Blosc

        options["compressors"] = Blosc(cname="zstd", clevel=1, shuffle=Blosc.SHUFFLE) if compressed else None
    else:
        options["compressors"] = (ZstdCodec(level=1),) if compressed else None
        if sharded:
            # Zarr shards of three chunks each: a shard file need not fit the data evenly either.
            options["shards"] = (3 * chunk_rows, *data.shape[1:])
            options["compressors"] = (BloscCodec(cname="zstd", clevel=1),)
    array = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                              fill_value=0, **options)
    array[...] = data
    return f"zarr:{path.relative_to(root)}"


def write_hdf5(path: Path, data: Array, chunk_rows: int, root: Path, chunked: bool = True,
               compressed: bool = False, dataset: str = "/group/values") -> str:  # fmt: skip
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset(
            dataset, data=data,
            # HDF5 wants a chunk no longer than a fixed-size dataset.
            chunks=(min(chunk_rows, len(data)), *data.shape[1:]) if chunked else None,
            compression="gzip" if compressed else None,
            shuffle=compressed,
        )
    return f"hdf5:{path.relative_to(root)}#{dataset}"


def write_parquet(path: Path, data: Array, chunk_rows: int, root: Path, files: int = 1,
                  column: str = "x") -> str:  # fmt: skip
    """One file, or a directory of `files` files cut at uneven places (so shards end mid-file)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if data.ndim != 1:
        raise ValueError("Parquet holds one column: 1-D data only")
    if files == 1:
        target = path.with_suffix(".parquet")
        pq.write_table(pa.table({column: data, "label": [str(i % 7) for i in range(len(data))]}),
                       target, row_group_size=chunk_rows)
        return f"parquet:{target.relative_to(root)}#{column}"
    path.mkdir()
    # Uneven cuts, never on a multiple of chunk_rows by design.
    cuts = sorted({0, len(data), *(min(len(data), len(data) * k // (files + 1) + k) for k in range(1, files))})
    for number, (lo, hi) in enumerate(itertools.pairwise(cuts)):
        pq.write_table(pa.table({column: data[lo:hi]}), path / f"part-{number:03d}.parquet",
                       row_group_size=chunk_rows)
    (path / "_SUCCESS").write_text("")  # what Spark leaves beside its output: not data
    return f"parquet:{path.relative_to(root)}#{column}"
