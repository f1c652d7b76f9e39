"""Plain numpy on one process: the memory-bandwidth ceiling of one core.

`python numpy_runner.py SPEC_JSON`. The map is opened once and reused
across reps. Sum: `np.sum(map)`. Square-then-sum: `peerdata.square_sum`, a
block of 2^16 elements squared at a time, as distnode does (no temporary past
the cache). Vector reduce:
`np.sum(matrix, axis=0)` over the (3, N) map. Formats: the format's own
library reads the whole array, then `np.sum` (format_jobs.py). Warm-ups
dropped; prints one `BENCH_RESULT {json}` line.

With `"serve": true` in the spec it times nothing by itself: it reads one
figure name per line on stdin, runs it once and prints one `BENCH_REP`
line, until `quit` (the bench's interleaved rounds, benchlib/rounds.py).
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

    spec = json.loads(sys.argv[1])
    if spec.get("serve"):
        return serve(spec)
    reps, warmup = int(spec["reps"]), int(spec["warmup"])
    out: dict[str, Any] = {"processes": 1, "numpy": np.__version__}

    def timed(body: Callable[[], Any]) -> tuple[list[float], Any]:
        return peerdata.timed(body, reps, warmup)

    figures = spec["figures"]
    if "big_sum" in figures or "big_square_sum" in figures:
        data = peerdata.memmap(spec["big"])
        if "big_sum" in figures:
            samples, value = timed(lambda: float(np.sum(data)))
            out["big_sum"] = {**peerdata.summary(samples), "result": value}
        if "big_square_sum" in figures:
            samples, value = timed(lambda: peerdata.square_sum(data))
            out["big_square_sum"] = {**peerdata.summary(samples), "result": value}
    if "vector_reduce" in figures:
        matrix = peerdata.memmap(spec["vec"])
        samples, value = timed(lambda: float(np.sum(matrix, axis=0)[0]))
        out["vector_reduce"] = {**peerdata.summary(samples), "result_first": value}
    if "formats" in figures:
        import format_jobs

        jobs = {name: format_jobs.read_whole(file) for name, file in spec["formats"].items()}
        out["formats"] = format_jobs.interleaved(jobs, reps, warmup)
    peerdata.emit(out)
    return 0


def serve(spec: dict[str, Any]) -> int:
    import peerdata

    data = peerdata.memmap(spec["big"])
    matrix = peerdata.memmap(spec["vec"])
    bodies: dict[str, Callable[[], float]] = {
        "big_sum": lambda: float(np.sum(data)),
        "big_square_sum": lambda: peerdata.square_sum(data),
        "vector_reduce": lambda: float(np.sum(matrix, axis=0)[0]),
    }
    for line in sys.stdin:
        figure = line.strip()
        if figure == peerdata.QUIT:
            break
        cpu0_s, t0 = time.process_time(), time.perf_counter()
        value = bodies[figure]()
        elapsed_s = time.perf_counter() - t0
        peerdata.emit_rep(figure, elapsed_s, value, time.process_time() - cpu0_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
