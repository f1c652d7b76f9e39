"""Ray peer: `python ray_runner.py SPEC_JSON`.

`ray.init(num_cpus=3)` (local, no dashboard); start-up is outside the timed
region. Remote functions come from `peerdata` (imported by reference, so each
Ray worker process keeps its own memory map open across reps).

- big sum / square-then-sum: three tasks, one per contiguous third (as the
  MPI ranks), `ray.get` of the three partials summed by the driver.
- vector reduce: three tasks each returning one row of the (3, N) .npy
  (through the object store), summed element-wise by the driver.
- small job: `ray.get(small_sum.remote(1000))` round trip; throughput: 32
  tasks kept in flight with `ray.wait` for the given seconds.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def main() -> int:
    import peerdata
    import ray

    spec = json.loads(sys.argv[1])
    reps, warmup = int(spec["reps"]), int(spec["warmup"])
    figures = spec["figures"]
    out: dict[str, Any] = {"num_cpus": 3, "ray": ray.__version__}

    def timed(body: Callable[[], Any], count: int = reps, skip: int = warmup) -> tuple[list[float], Any]:
        return peerdata.timed(body, count, skip)

    t0 = time.perf_counter()
    # Workers inherit this process's environment (PYTHONPATH names this folder).
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    part_sum = ray.remote(peerdata.part_sum)
    row = ray.remote(peerdata.row)
    small_sum = ray.remote(peerdata.small_sum)
    ray.get([small_sum.remote(1) for _ in range(3)])  # workers up before any clock starts
    out["start_s"] = time.perf_counter() - t0
    try:
        if "big_sum" in figures or "big_square_sum" in figures:
            path, n = spec["big"], int(spec["n"])
            parts = peerdata.thirds(n)

            def big(square: bool) -> float:
                return float(sum(ray.get([part_sum.remote(path, a, b, square) for a, b in parts])))

            if "big_sum" in figures:
                samples, value = timed(lambda: big(False))
                out["big_sum"] = {**peerdata.summary(samples), "result": value}
            if "big_square_sum" in figures:
                samples, value = timed(lambda: big(True))
                out["big_square_sum"] = {**peerdata.summary(samples), "result": value}
        if "vector_reduce" in figures:
            vec = spec["vec"]
            rows = int(spec["vec_shape"][0])

            def vector() -> float:
                total = np.sum(ray.get([row.remote(vec, i) for i in range(rows)]), axis=0)
                return float(total[0])

            samples, value = timed(vector)
            out["vector_reduce"] = {**peerdata.summary(samples), "result_first": value}
        if "small" in figures:
            samples, value = timed(
                lambda: ray.get(small_sum.remote(1000)),
                count=int(spec["small_jobs"]), skip=int(spec["small_warmup"]),
            )
            out["small"] = {**peerdata.summary(samples), "result": value}
        if "throughput" in figures:
            out["throughput"] = _throughput(ray, small_sum, float(spec["throughput_s"]),
                                            int(spec["inflight"]))
    finally:
        ray.shutdown()
    peerdata.emit(out)
    return 0


def _throughput(ray: Any, small_sum: Any, seconds: float, inflight: int) -> dict[str, Any]:
    ray.get([small_sum.remote(1000) for _ in range(inflight)])  # warm-up
    done = 0
    started = time.perf_counter()
    stop_at = started + seconds
    pending = [small_sum.remote(1000) for _ in range(inflight)]
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)
        done += len(ready)
        if time.perf_counter() < stop_at:
            pending.append(small_sum.remote(1000))
    elapsed = time.perf_counter() - started
    return {"jobs": done, "seconds": elapsed, "jobs_per_s": done / elapsed, "inflight": inflight}


if __name__ == "__main__":
    sys.exit(main())
