"""The formats figure for the peers: the sum of the big array in each file format.

`spec["formats"]` maps a name to the file (`kind` zarr | hdf5 | parquet,
`path`, `dataset`, `column`; benchlib/format_files.py wrote them). Each
runner turns a file into a job (a function returning the sum) and
`interleaved` times the jobs in rounds, one of each per round, warm-up
rounds dropped, like distnode's side (benchlib/formats_phase.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import peerdata


def interleaved(jobs: dict[str, Callable[[], float]], reps: int, warmup: int) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name in jobs}
    values: dict[str, float] = {}
    for round_number in range(warmup + reps):
        for name, job in jobs.items():
            t0 = time.perf_counter()
            values[name] = float(job())
            elapsed = time.perf_counter() - t0
            if round_number >= warmup:
                samples[name].append(elapsed)
    return {name: {**peerdata.summary(samples[name]), "result": values[name]} for name in jobs}


def read_whole(file: dict[str, Any]) -> Callable[[], float]:
    """One process, the format's own library: read all of it, then `np.sum`."""
    kind, path = file["kind"], file["path"]
    if kind == "zarr":
        import zarr

        array = zarr.open_array(path, mode="r")
        return lambda: float(np.sum(array[:]))
    if kind == "hdf5":
        import h5py

        dataset = h5py.File(path, "r")[file["dataset"]]
        return lambda: float(np.sum(dataset[:]))
    import pyarrow.parquet as pq

    column = file["column"]
    return lambda: float(np.sum(pq.read_table(path, columns=[column]).column(column).to_numpy()))


def dask_job(file: dict[str, Any]) -> Callable[[], float]:
    """Dask as its users reach for it: `from_zarr`, `from_array` over the h5py dataset (its own
    chunks), `dask.dataframe.read_parquet`; the graph built inside every job."""
    import dask.array as da

    kind, path = file["kind"], file["path"]
    if kind == "zarr":
        return lambda: float(da.from_zarr(path).sum().compute())
    if kind == "hdf5":
        import h5py

        dataset = h5py.File(path, "r")[file["dataset"]]
        return lambda: float(da.from_array(dataset, chunks=dataset.chunks).sum().compute())
    import dask.dataframe as dd

    column = file["column"]
    return lambda: float(dd.read_parquet(path, columns=[column])[column].sum().compute())
