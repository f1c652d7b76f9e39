"""Dask distributed peer: `python dask_runner.py SPEC_JSON`.

`distributed.LocalCluster(n_workers=3, threads_per_worker=1)` (worker
processes, no dashboard) and a `Client` in this process. Cluster start-up is
outside the timed region.

- big sum / square-then-sum: a `dask.array` of 2^23-element chunks (distnode's
  shard size), each chunk a `from_delayed` view of the worker's own memory map
  of the .npy (opened once per worker process and reused, so no data crosses
  the network; `da.from_array(memmap)` would pickle the whole 800 MB map into
  the graph), then `x.sum().compute()` / `da.square(x).sum().compute()`.
  Graph construction is inside the timed region (it is part of every job).
- vector reduce: the (3, N) .npy as three one-row chunks, `.sum(axis=0)`,
  the N-vector returned to this process (as distnode returns it to its client).
- small job: `client.submit(small_sum, 1000, pure=False).result()` round trip
  (`pure=False` so no result is served from a cache); throughput: 32 futures
  kept in flight with `as_completed` for the given seconds.
- formats: `from_zarr`, `from_array(h5py dataset)`, `dask.dataframe.read_parquet`,
  `.sum().compute()`, in interleaved rounds (format_jobs.py).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def main() -> int:
    import dask
    import dask.array as da
    import distributed
    import peerdata

    spec = json.loads(sys.argv[1])
    reps, warmup = int(spec["reps"]), int(spec["warmup"])
    figures = spec["figures"]
    out: dict[str, Any] = {"workers": 3, "threads_per_worker": 1, "chunk_elems": peerdata.CHUNK,
                           "dask": dask.__version__, "distributed": distributed.__version__}

    def timed(body: Callable[[], Any], count: int = reps, skip: int = warmup) -> tuple[list[float], Any]:
        return peerdata.timed(body, count, skip)

    t0 = time.perf_counter()
    cluster = distributed.LocalCluster(
        n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None
    )
    client = distributed.Client(cluster)
    client.wait_for_workers(3)
    out["start_s"] = time.perf_counter() - t0
    try:
        if "big_sum" in figures or "big_square_sum" in figures:
            path = spec["big"]
            n = int(spec["n"])

            def big_array() -> Any:
                blocks = [
                    da.from_delayed(dask.delayed(_view)(path, a, b), shape=(b - a,), dtype=np.float64)
                    for a, b in peerdata.chunks(n)
                ]
                return da.concatenate(blocks)

            if "big_sum" in figures:
                samples, value = timed(lambda: float(big_array().sum().compute()))
                out["big_sum"] = {**peerdata.summary(samples), "result": value}
            if "big_square_sum" in figures:
                samples, value = timed(lambda: float(da.square(big_array()).sum().compute()))
                out["big_square_sum"] = {**peerdata.summary(samples), "result": value}
        if "vector_reduce" in figures:
            vec = spec["vec"]
            rows, cols = (int(x) for x in spec["vec_shape"])

            def vector() -> float:
                blocks = [
                    da.from_delayed(dask.delayed(_row)(vec, i), shape=(1, cols), dtype=np.float64)
                    for i in range(rows)
                ]
                total = np.asarray(da.concatenate(blocks, axis=0).sum(axis=0).compute())
                return float(total[0])

            samples, value = timed(vector)
            out["vector_reduce"] = {**peerdata.summary(samples), "result_first": value}
        if "small" in figures:
            samples, value = timed(
                lambda: client.submit(peerdata.small_sum, 1000, pure=False).result(),
                count=int(spec["small_jobs"]), skip=int(spec["small_warmup"]),
            )
            out["small"] = {**peerdata.summary(samples), "result": value}
        if "throughput" in figures:
            out["throughput"] = _throughput(client, distributed, float(spec["throughput_s"]),
                                            int(spec["inflight"]))
        if "formats" in figures:
            import format_jobs

            jobs = {name: format_jobs.dask_job(file) for name, file in spec["formats"].items()}
            out["formats"] = format_jobs.interleaved(jobs, reps, warmup)
    finally:
        client.close()
        cluster.close()
    peerdata.emit(out)
    return 0


def _view(path: str, start: int, stop: int) -> np.ndarray:
    import peerdata

    return np.asarray(peerdata.memmap(path)[start:stop])


def _row(path: str, index: int) -> np.ndarray:
    import peerdata

    return peerdata.row(path, index)[None, :]


def _throughput(client: Any, distributed: Any, seconds: float, inflight: int) -> dict[str, Any]:
    import peerdata

    def one() -> Any:
        return client.submit(peerdata.small_sum, 1000, pure=False)

    for future in [one() for _ in range(inflight)]:  # warm-up
        future.result()
    done = 0
    started = time.perf_counter()
    stop_at = started + seconds
    pending = distributed.as_completed([one() for _ in range(inflight)])
    for future in pending:
        future.result()
        done += 1
        if time.perf_counter() < stop_at:
            pending.add(one())
    elapsed = time.perf_counter() - started
    return {"jobs": done, "seconds": elapsed, "jobs_per_s": done / elapsed, "inflight": inflight}


if __name__ == "__main__":
    sys.exit(main())
