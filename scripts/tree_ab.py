"""A job's time on this tree against another, clusters side by side, in interleaved rounds.

    python scripts/tree_ab.py --ref DIR [--after DIR] [--job big|vector|small|throughput] [--rounds 15]
                              [--reps 3] [--n 100000000] [--map KERNEL] [--json PATH]

DIR is an unpacked tree (`git archive REV | tar -x -C DIR`); `--after`
defaults to this one. Both trees are byte-compiled, then one 3-node
`LocalCluster` per tree starts, each daemon in its tree's folder (so it runs
that tree's code), and both stay up. Each round runs `--reps` jobs on one
cluster then on the other, the order turned every round, so the host's
drift lands on both alike; the figure is the median over rounds of
after / before (each round's medians), beside each tree's absolute median.

`--job big`: `sum` over a float64 `.npy` of `--n` elements (`--map square`
applies a kernel first, as bench.py's `--map square` row); `vector`: `sum
--axis 0` over a (3, 10^6) float64 `.npy` (bench.py's vector reduce). The
files are written to a temporary directory and read once first (page cache).
`small`: `--reps` sequential `sum` jobs over `range:n=1000` per turn, sent
by a separate client process of the tree's own code (bench.py's latency
client, 50 untimed first), so a change to the client is measured too; the
figures are p50 and p99 of each tree over all rounds, and the per-round
ratios of each (a p99 needs thousands of jobs: `--reps 500 --rounds 12`).
`throughput`: per turn, bench.py's throughput client of the tree's own code
(one AsyncClient, 32 small jobs in flight for `--reps` seconds); the figure
is the median over rounds of after / before in jobs per second.

Why: a change to the job path moves a big job by a few per cent, less than
this host drifts in a quarter of an hour (docs/timeline.md); only a
comparison within one run, turn by turn, resolves it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_peers.peerdata import percentile  # noqa: E402
from benchlib import compile_tree, print_json  # noqa: E402
from cpu_per_job import write_big  # noqa: E402

SMALL_SOURCE = "range:n=1000"


def write_vector(workdir: Path) -> str:
    import numpy as np

    path = workdir / "vec.npy"
    np.save(path, np.random.default_rng(1).random((3, 10**6)))
    float(np.load(path, mmap_mode="r").sum())
    return f"npy:{path}"


def compare(
    trees: dict[str, Path], job: dict[str, Any], rounds: int, reps: int, workdir: Path
) -> dict[str, Any]:
    from node import LocalCluster

    clusters: dict[str, Any] = {}
    here = os.getcwd()
    try:
        for name, tree in trees.items():
            os.chdir(tree)  # the daemons start in the tree's folder: `python -m cli` is its own
            clusters[name] = LocalCluster(nodes=3, data_root=workdir).start()
        os.chdir(here)
        if job.get("source") == SMALL_SOURCE:
            return compare_small(trees, clusters, rounds, reps)
        if job.get("throughput"):
            return compare_throughput(trees, clusters, rounds, reps)
        for cluster in clusters.values():
            for _ in range(2 * reps):
                cluster.client.submit(**job)
        times: dict[str, list[float]] = {name: [] for name in trees}
        ratios = []
        names = list(trees)
        for number in range(rounds):
            medians = {}
            for name in names if number % 2 == 0 else names[::-1]:
                elapsed = [clusters[name].client.submit(**job).elapsed_ms for _ in range(reps)]
                times[name].extend(elapsed)
                medians[name] = statistics.median(elapsed)
            ratios.append(medians["after"] / medians["before"])
    finally:
        os.chdir(here)
        for cluster in clusters.values():
            cluster.close()
    return {
        "job": job, "rounds": rounds, "reps": reps,
        "before_median_ms": round(statistics.median(times["before"]), 2),
        "after_median_ms": round(statistics.median(times["after"]), 2),
        "after_over_before": round(statistics.median(ratios), 3),
        "each_round": [round(r, 3) for r in ratios],
    }


def small_turn(tree: Path, cluster: Any, jobs: int) -> list[float]:
    """`jobs` sequential small jobs' round trips (s) from a client process of `tree`'s code."""
    command = [sys.executable, str(tree / "scripts" / "bench.py"), "--client-worker", "latency",
               "--cluster", ",".join(cluster.addresses), "--jobs", str(jobs), "--warmup", "50"]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"client of {tree.name} exited {done.returncode}:\n{done.stderr[-3000:]}")
    latencies: list[float] = json.loads(done.stdout.strip().splitlines()[-1])["latencies_s"]
    return latencies


def throughput_turn(tree: Path, cluster: Any, seconds: float) -> float:
    """Jobs per second, 32 in flight for `seconds`, from a client process of `tree`'s code."""
    command = [sys.executable, str(tree / "scripts" / "bench.py"), "--client-worker", "throughput",
               "--cluster", ",".join(cluster.addresses), "--seconds", str(seconds), "--inflight", "32"]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"client of {tree.name} exited {done.returncode}:\n{done.stderr[-3000:]}")
    rate: float = json.loads(done.stdout.strip().splitlines()[-1])["jobs_per_s"]
    return rate


def compare_throughput(
    trees: dict[str, Path], clusters: dict[str, Any], rounds: int, seconds: float
) -> dict[str, Any]:
    """Each round one throughput client per tree in turn (order flipped every round)."""
    rates: dict[str, list[float]] = {name: [] for name in trees}
    ratios = []
    names = list(trees)
    for number in range(rounds):
        turn = {name: throughput_turn(trees[name], clusters[name], seconds)
                for name in (names if number % 2 == 0 else names[::-1])}
        for name, rate in turn.items():
            rates[name].append(rate)
        ratios.append(turn["after"] / turn["before"])
    return {
        "job": "throughput", "rounds": rounds, "seconds": seconds,
        **{f"{name}_jobs_per_s": round(statistics.median(rates[name])) for name in names},
        "after_over_before": round(statistics.median(ratios), 3),
        "each_round": [round(r, 3) for r in ratios],
    }


def quantile_ms(samples_s: list[float], q: float) -> float:
    """The median, or a nearest-rank percentile (bench.py's p99), in ms."""
    return (statistics.median(samples_s) if q == 50 else percentile(samples_s, q)) * 1000


def compare_small(trees: dict[str, Path], clusters: dict[str, Any], rounds: int, reps: int) -> dict[str, Any]:
    """Small jobs: each round one client process per tree in turn (order flipped every round)."""
    times: dict[str, list[float]] = {name: [] for name in trees}
    ratios: dict[str, list[float]] = {"p50": [], "p99": []}
    names = list(trees)
    for number in range(rounds):
        turn = {}
        for name in names if number % 2 == 0 else names[::-1]:
            turn[name] = small_turn(trees[name], clusters[name], reps)
            times[name].extend(turn[name])
        for label, q in (("p50", 50), ("p99", 99)):
            ratios[label].append(quantile_ms(turn["after"], q) / quantile_ms(turn["before"], q))
    result: dict[str, Any] = {"job": "small", "rounds": rounds, "reps": reps}
    for label, q in (("p50", 50), ("p99", 99)):
        for name in names:
            result[f"{name}_{label}_ms"] = round(quantile_ms(times[name], q), 3)
        result[f"after_over_before_{label}"] = round(statistics.median(ratios[label]), 3)
        result[f"each_round_{label}"] = [round(r, 3) for r in ratios[label]]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ref", type=Path, required=True, help="the tree to compare against")
    parser.add_argument("--after", type=Path, default=ROOT, help="the tree measured (default: this one)")
    parser.add_argument("--job", choices=("big", "vector", "small", "throughput"), default="big")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=10**8)
    parser.add_argument("--map", default=None, help="a kernel applied before a big job's sum")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    trees = {"before": args.ref.resolve(), "after": args.after.resolve()}
    for tree in trees.values():
        compile_tree(tree)
    with tempfile.TemporaryDirectory(prefix="distnode-tree-ab-") as tmp:
        workdir = Path(tmp)
        job: dict[str, Any]
        if args.job == "big":
            job = {"op": "sum", "source": write_big(args.n, workdir)}
            if args.map is not None:
                job["map"] = args.map
        elif args.job == "vector":
            job = {"op": "sum", "axis": 0, "source": write_vector(workdir)}
        elif args.job == "throughput":
            job = {"throughput": True}
        else:
            job = {"op": "sum", "source": SMALL_SOURCE}
        print_json(compare(trees, job, args.rounds, args.reps, workdir), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
