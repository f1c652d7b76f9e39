"""Helpers shared by the peer runners (imported by their worker processes too).

Every peer opens the benchmark's `.npy` files as read-only memory maps and
keeps them open across repetitions (one map per process, like distnode's
per-node memmap cache), so no system pays for re-opening the file per rep.

`summary` is also the bench's own (scripts/benchlib imports it as
`bench_peers.peerdata`): every system's reps are summarised by one function.
This module imports nothing but numpy, because Dask and Ray workers import it.
"""

from __future__ import annotations

import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

RESULT_PREFIX = "BENCH_RESULT "
#: A serving runner's answer to one figure it was asked for on stdin (`emit_rep`).
REP_PREFIX = "BENCH_REP "
#: What a serving runner reads on stdin to end.
QUIT = "quit"
#: Dask/Ray chunk size in elements: distnode's default --shard-elems.
CHUNK = 1 << 23


@functools.lru_cache(maxsize=8)
def memmap(path: str) -> np.ndarray:
    return np.load(path, mmap_mode="r", allow_pickle=False)


#: Elements squared at a time by `square_sum`: distnode's BLOCK_ELEMS (node/core/compute.py).
SQUARE_BLOCK = 1 << 16


def square_sum(part: np.ndarray) -> float:
    """The sum of the squares of `part`, squared a block of SQUARE_BLOCK at a time into one
    buffer and summed, as distnode's kernels do. `np.sum(np.square(part))` over a third of
    the file writes and reads back a 267 MB temporary in fresh pages: the peers measured
    that kernel's memory traffic, not their reduction (their square-then-sum took 4.4x
    their sum, distnode's 1.9x its own)."""
    buffer = np.empty(min(SQUARE_BLOCK, len(part)), dtype=np.float64)
    total = 0.0
    for first in range(0, len(part), SQUARE_BLOCK):
        block = part[first:first + SQUARE_BLOCK]
        total += float(np.sum(np.square(block, out=buffer[:len(block)])))
    return total


def part_sum(path: str, start: int, stop: int, square: bool = False) -> float:
    """Sum (of squares) of elements [start, stop) of a 1-D .npy."""
    part = memmap(path)[start:stop]
    return square_sum(part) if square else float(np.sum(part))


def row(path: str, index: int) -> np.ndarray:
    """Row `index` of a 2-D .npy, as a view of the map."""
    return np.asarray(memmap(path)[index])


def small_sum(n: int) -> float:
    """The small job: sum of 0..n-1, generated where it runs (like distnode's `range:n=N`)."""
    return float(np.arange(n, dtype=np.int64).sum())


def thirds(n: int, parts: int = 3) -> list[tuple[int, int]]:
    step = math.ceil(n / parts)
    return [(i * step, min(n, (i + 1) * step)) for i in range(parts)]


def chunks(n: int, size: int = CHUNK) -> list[tuple[int, int]]:
    return [(start, min(n, start + size)) for start in range(0, n, size)]


def timed(body: Callable[[], Any], count: int, skip: int) -> tuple[list[float], Any]:
    """Run `body` skip + count times; the times of the last `count` runs and the
    last value (mpi_reduce.py times its ranks its own way)."""
    samples, value = [], None
    for rep in range(skip + count):
        t0 = time.perf_counter()
        value = body()
        elapsed = time.perf_counter() - t0
        if rep >= skip:
            samples.append(elapsed)
    return samples, value


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, q in 0..100: always one of the measured values."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def summary(samples_s: list[float]) -> dict[str, Any]:
    """Median and nearest-rank p99 in ms, the spread (min, p25, p75, max in ms)
    and the raw samples; None for each figure when there are no samples."""
    figures_ms: dict[str, float | None] = dict.fromkeys(
        ("median_ms", "p99_ms", "min_ms", "p25_ms", "p75_ms", "max_ms"))
    if samples_s:
        figures_ms.update(
            median_ms=statistics.median(samples_s) * 1000, p99_ms=percentile(samples_s, 99) * 1000,
            min_ms=min(samples_s) * 1000, p25_ms=percentile(samples_s, 25) * 1000,
            p75_ms=percentile(samples_s, 75) * 1000, max_ms=max(samples_s) * 1000,
        )
    return {"samples_s": samples_s, "n": len(samples_s), **figures_ms}


def emit(payload: dict[str, Any]) -> None:
    """The runner's only machine-read output: one line on stdout."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def emit_rep(figure: str, seconds: float, value: Any, cpu_s: float) -> None:
    """A serving runner's answer to one figure: its wall time, its value and the CPU time the
    system spent on it (every process of it, summed)."""
    sys.stdout.write(REP_PREFIX + json.dumps({"figure": figure, "s": seconds, "value": value,
                                              "cpu_s": cpu_s}) + "\n")
    sys.stdout.flush()
