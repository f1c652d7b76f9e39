"""Does it matter which shards a process reads? Processes sum a big `.npy` with nothing around them.

    python scripts/shard_affinity.py [--procs 3] [--jobs 20] [--n 100000000] [--npy PATH [--refresh]]
                                     [--mpi-rounds R] [--json PATH]

Each job, every process sums its share of the file between two barriers.
The shares, one after the other within each job:
- `third`: a fixed 1/procs of the file in one `np.sum` (what bench.py's
  mpi4py ranks do);
- `third_shards`: the same fixed part, as the 2^23-element shards inside it;
- `rotate`: the shards dealt round-robin, the deal turned by one every job;
- `random`: the shards dealt in a new random order every job.
The figures: CPU per job summed over the processes (each one's thread time
while summing) and the wall time from the first process's start to the
last one's end, medians over the jobs after two warm-ups. `huge_mapped` is
the share of the file a process found mapped in 2 MiB pages; `--refresh`
drops the `--npy` file from the page cache and reads it back first, as
bench.py does (a file written here is fresh already).

`--mpi-rounds R` (needs mpi4py and mpiexec, bench.py's peer): R rounds,
each bench.py's mpi4py peer at `--procs` ranks (its own launch, `--jobs`
timed sums of its third after two warm-ups) then the processes above,
so the host's drift lands on both; per round the median of each and
`third` over mpi4py, and the median of those ratios: how far above MPI
processes that sleep between jobs start, before any cluster is involved.

Why: #16 asked whether a stable shard-to-node affinity, as MPI ranks have,
would save the page-table or TLB cost of touching other pages every job;
and what a big sum costs on this host with no RPC, no event loop and no
schedule, only the same numpy in the same number of processes. The answers
are in docs/timeline.md ("What a big sum costs without a cluster").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_peers.peerdata import RESULT_PREFIX  # noqa: E402
from benchlib import print_json  # noqa: E402
from benchlib.data import huge_mapped_fraction, refresh_cache  # noqa: E402
from cpu_per_job import write_big  # noqa: E402

SHARD_ELEMS = 1 << 23
MODES = ("third", "third_shards", "rotate", "random")
WARMUP_JOBS = 2


def share(mode: str, rank: int, procs: int, job: int, rows: int) -> list[tuple[int, int]]:
    """The [start, stop) ranges process `rank` sums in job number `job`."""
    shards = [(start, min(rows, start + SHARD_ELEMS)) for start in range(0, rows, SHARD_ELEMS)]
    if mode == "third":
        return [(rank * rows // procs, (rank + 1) * rows // procs)]
    if mode == "third_shards":
        return [shard for index, shard in enumerate(shards) if index * procs // len(shards) == rank]
    if mode == "rotate":
        return [shard for index, shard in enumerate(shards) if (index + job) % procs == rank]
    order = list(range(len(shards)))
    random.Random(job).shuffle(order)
    return [shards[index] for position, index in enumerate(order) if position % procs == rank]


def summer(rank: int, procs: int, path: str, jobs: int, barrier: Any, results: Any) -> None:
    import numpy as np

    data = np.load(path, mmap_mode="r")
    rows = int(data.shape[0])
    timed: list[tuple[int, str, float, float, float]] = []
    for job in range(jobs):
        for mode in MODES:
            ranges = share(mode, rank, procs, job, rows)
            barrier.wait()
            start_s, cpu_s = time.monotonic(), time.thread_time()
            for start, stop in ranges:
                float(np.sum(data[start:stop]))
            timed.append((job, mode, time.thread_time() - cpu_s, start_s, time.monotonic()))
            barrier.wait()
    results.put(timed)


def measure(procs: int, jobs: int, path: str) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(procs), context.Queue()
    workers = [context.Process(target=summer, args=(rank, procs, path, jobs, barrier, results))
               for rank in range(procs)]
    for worker in workers:
        worker.start()
    rows = [row for _ in workers for row in results.get()]
    for worker in workers:
        worker.join()
    out: dict[str, Any] = {"procs": procs, "jobs": jobs - WARMUP_JOBS}
    for mode in MODES:
        cpu_ms, wall_ms = [], []
        for job in range(WARMUP_JOBS, jobs):
            mine = [row for row in rows if row[0] == job and row[1] == mode]
            cpu_ms.append(sum(row[2] for row in mine) * 1000)
            wall_ms.append((max(row[4] for row in mine) - min(row[3] for row in mine)) * 1000)
        out[mode] = {"cpu_ms_per_job": round(statistics.median(cpu_ms), 1),
                     "wall_ms": round(statistics.median(wall_ms), 1)}
    return out


def mpi_median_ms(procs: int, jobs: int, path: str) -> float:
    """bench.py's mpi4py peer at `procs` ranks: the median of `jobs` timed sums of the file."""
    from benchlib.peers import mpi_command

    spec = json.dumps({"big": path, "n": 0, "vec": "", "vec_shape": [0, 0], "reps": jobs - WARMUP_JOBS,
                       "warmup": WARMUP_JOBS, "figures": ["big_sum"]})
    command, env = mpi_command(spec, procs)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return float(json.loads(line.removeprefix(RESULT_PREFIX))["big_sum"]["median_ms"])
    raise SystemExit(f"mpi4py peer gave no result (exit {done.returncode}): {done.stderr[-2000:]}")


def against_mpi(procs: int, jobs: int, path: str, rounds: int) -> dict[str, Any]:
    each = []
    for _ in range(rounds):
        mpi_ms = mpi_median_ms(procs, jobs, path)
        bare_ms = measure(procs, jobs, path)["third"]["wall_ms"]
        each.append({"mpi4py_ms": round(mpi_ms, 2), "third_ms": bare_ms, "ratio": round(bare_ms / mpi_ms, 3)})
    return {"rounds": each, "third_over_mpi4py": round(statistics.median(r["ratio"] for r in each), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--procs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--n", type=int, default=10**8, help="elements of the file written (without --npy)")
    parser.add_argument("--npy", type=Path, default=None, help="a float64 .npy to read instead")
    parser.add_argument("--refresh", action="store_true", help="drop --npy from the page cache, read it back")
    parser.add_argument("--mpi-rounds", type=int, default=0, help="alternate with mpi4py, this many rounds")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.jobs <= WARMUP_JOBS:
        parser.error(f"--jobs: must be more than the {WARMUP_JOBS} warm-ups")
    with tempfile.TemporaryDirectory(prefix="distnode-shard-affinity-") as tmp:
        path = str(args.npy) if args.npy is not None else write_big(args.n, Path(tmp)).removeprefix("npy:")
        if args.refresh:
            refresh_cache(Path(path))
        huge = huge_mapped_fraction(Path(path))
        if args.mpi_rounds > 0:
            result = against_mpi(args.procs, args.jobs, path, args.mpi_rounds)
        else:
            result = measure(args.procs, args.jobs, path)
        print_json({**result, "huge_mapped": round(huge, 3)}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
