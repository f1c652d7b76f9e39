"""Where an MPI rep's clock starts: rank 0's own start against the earliest rank's.

    python scripts/mpi_clock.py [--ranks 3] [--n 100000000] [--reps 40] [--npy PATH] [--json PATH]

Runs `mpiexec -n RANKS` over a float64 `.npy` (written to a temporary
directory and read once unless `--npy` names one). Every rep: `Barrier`,
each rank's clock start (CLOCK_MONOTONIC, one clock for a host's
processes), its contiguous share summed with numpy, `comm.reduce(SUM,
root=0)`; after the rep, off the clock, rank 0 gathers the starts. It
prints the median and minimum of both figures, rank 0's end minus its own
start and minus the earliest start, and in how many reps rank 0 started
last.

Why: the bench's mpi4py runner (bench_peers/mpi_reduce.py) once timed a rep
from rank 0's own start, as MPI codes often do. With more ranks than cores
the other ranks leave the Barrier first and begin summing while rank 0
waits for a core, so that clock left out their head start; a distnode job's
time, read by its client, counts everything (docs/timeline.md, "mpi4py's
clock").
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import print_json  # noqa: E402
from cpu_per_job import write_big  # noqa: E402

#: Run by every rank; prints one JSON line on rank 0.
RANK_CODE = """
import json, statistics, sys, time
import numpy as np
from mpi4py import MPI
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
data = np.load(sys.argv[1], mmap_mode="r")
bounds = [data.shape[0] * i // size for i in range(size + 1)]
mine = data[bounds[rank]:bounds[rank + 1]]
reps, warmup = int(sys.argv[2]), 3
own_ms, first_ms, last = [], [], 0
for rep in range(warmup + reps):
    comm.Barrier()
    start = time.monotonic()
    comm.reduce(float(np.sum(mine)), op=MPI.SUM, root=0)
    end = time.monotonic()
    starts = comm.gather(start, root=0)
    if rank == 0 and rep >= warmup:
        own_ms.append((end - start) * 1e3)
        first_ms.append((end - min(starts)) * 1e3)
        last += start == max(starts)
if rank == 0:
    print(json.dumps({"own_ms": own_ms, "first_ms": first_ms, "rank0_last": last}))
"""


def measure(ranks: int, npy: str, reps: int) -> dict[str, Any]:
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        raise SystemExit("mpiexec not found (Debian: apt-get install openmpi-bin)")
    command = [mpiexec, "--allow-run-as-root", "--oversubscribe", "-n", str(ranks),
               sys.executable, "-c", RANK_CODE, npy, str(reps)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"mpiexec exited {done.returncode}:\n{done.stderr[-3000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    own, first = found["own_ms"], found["first_ms"]
    ratios = [f / o for f, o in zip(first, own, strict=True)]
    return {
        "ranks": ranks, "reps": reps,
        "rank0_clock_median_ms": round(statistics.median(own), 2), "rank0_clock_min_ms": round(min(own), 2),
        "first_start_median_ms": round(statistics.median(first), 2),
        "first_start_min_ms": round(min(first), 2),
        "first_over_rank0_median": round(statistics.median(ratios), 3),
        "rank0_started_last": found["rank0_last"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ranks", type=int, default=3)
    parser.add_argument("--n", type=int, default=10**8)
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--npy", default=None, help="sum this float64 .npy instead of writing one")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distnode-mpi-clock-") as tmp:
        npy = args.npy or write_big(args.n, Path(tmp)).partition(":")[2]
        found = measure(args.ranks, npy, args.reps)
    print_json(found, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
