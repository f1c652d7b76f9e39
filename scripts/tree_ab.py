"""A job's time on this tree against another, clusters side by side, in interleaved rounds.

    python scripts/tree_ab.py --ref DIR [--after DIR] [--job big|vector|small|throughput] [--rounds 15]
                              [--reps 3] [--n 100000000] [--map KERNEL] [--source SPEC --data-dir DIR]
                              [--turn-s S] [--fsync-ms MS]
                              [--slow-worker-nice N | --busy-worker K] [--json PATH]

DIR is an unpacked tree (`git archive REV | tar -x -C DIR`); `--after`
defaults to this one. Both trees are byte-compiled, then one 3-node
`LocalCluster` per tree starts, each daemon in its tree's folder (so it runs
that tree's code), and both stay up. Each round runs `--reps` jobs on one
cluster then on the other, the order turned every round, so the host's
drift lands on both alike; the figure is the median over rounds of
after / before (each round's medians), beside each tree's absolute median.

`--job big`: `sum` over a float64 `.npy` of `--n` elements (`--map square`
applies a kernel first, as bench.py's `--map square` row), or over
`--source SPEC` (e.g. `zarr:big.zarr`, a path under `--data-dir`); `vector`: `sum
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

`--turn-s S` (big, vector): each turn runs jobs back to back for S seconds
instead of `--reps` jobs, and the p90 of each tree is reported beside the
medians. Two ways to make one worker (a node that is not the leader) of each
cluster slower than its peers, once the clusters are up: `--slow-worker-nice
N` renices its every thread to N; `--busy-worker K` pins its threads to the
last CPU and starts K processes that spin there for the whole run, so it
gets 1/(K+1) of that CPU, as on a host busy with something else.
`--fsync-ms MS` makes every daemon's `os.fsync` take MS longer, as on a
slow disk (a `sitecustomize` module on the daemons' PYTHONPATH wraps it;
the journal and the term-and-vote file both fsync through it).

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
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_peers.peerdata import percentile  # noqa: E402
from benchlib import add_tree_options, in_tree, print_json, trees_compared, turn_order  # noqa: E402
from cpu_per_job import write_big  # noqa: E402

SMALL_SOURCE = "range:n=1000"
#: The CPU `--busy-worker` shares between one worker of each cluster and spinning processes.
BUSY_CPU = (os.cpu_count() or 1) - 1


def write_vector(workdir: Path) -> str:
    import numpy as np

    path = workdir / "vec.npy"
    np.save(path, np.random.default_rng(1).random((3, 10**6)))
    float(np.load(path, mmap_mode="r").sum())
    return f"npy:{path}"


#: Imported by every daemon (it is on their PYTHONPATH) when `--fsync-ms` is given.
SLOW_FSYNC = """import os, time
_delay_s = float(os.environ["TREE_AB_FSYNC_MS"]) / 1000
_fsync = os.fsync
def _slow_fsync(fd):
    time.sleep(_delay_s)
    _fsync(fd)
os.fsync = _slow_fsync
"""


def slow_disks(fsync_ms: float, workdir: Path) -> None:
    """Every daemon started from now on waits `fsync_ms` more in each fsync."""
    hook = workdir / "slow-fsync"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_FSYNC)
    os.environ["TREE_AB_FSYNC_MS"] = str(fsync_ms)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))


def renice(pid: int, nice: int) -> None:
    """Every thread of `pid` to `nice` (setpriority on a pid reaches only its main thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.setpriority(os.PRIO_PROCESS, int(tid), nice)


def one_worker_pid(cluster: Any) -> int:
    """The process of one node that is not the leader."""
    worker = next(node_id for node_id in cluster.ids if node_id != cluster.leader())
    pid = cluster.pid(worker)
    assert pid is not None
    return int(pid)


def pin(pid: int, cpu: int) -> None:
    """Every thread of `pid` to `cpu` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


def spinner(cpu: int) -> subprocess.Popen[bytes]:
    """A process that keeps `cpu` busy until killed."""
    code = f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True:\n    pass\n"
    return subprocess.Popen([sys.executable, "-c", code])


def compare(
    trees: dict[str, Path], job: dict[str, Any], rounds: int, reps: int, workdir: Path, turn_s: float = 0.0,
    slow_nice: int = 0, busy_worker: int = 0,
) -> dict[str, Any]:
    from node import LocalCluster

    clusters: dict[str, Any] = {}
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        for name, tree in trees.items():
            with in_tree(tree):
                clusters[name] = LocalCluster(nodes=3, data_root=workdir).start()
        if job.get("source") == SMALL_SOURCE:
            return compare_small(trees, clusters, rounds, reps)
        if job.get("throughput"):
            return compare_throughput(trees, clusters, rounds, reps)
        for cluster in clusters.values():
            for _ in range(2 * reps):
                cluster.client.submit(**job)
            if slow_nice:
                renice(one_worker_pid(cluster), slow_nice)
            if busy_worker:
                pin(one_worker_pid(cluster), BUSY_CPU)
        spinners.extend(spinner(BUSY_CPU) for _ in range(busy_worker))
        times: dict[str, list[float]] = {name: [] for name in trees}
        ratios = []
        names = list(trees)
        for number in range(rounds):
            medians = {}
            for name in turn_order(names, number):
                elapsed = timed_turn(clusters[name], job, reps, turn_s)
                times[name].extend(elapsed)
                medians[name] = statistics.median(elapsed)
            ratios.append(medians["after"] / medians["before"])
    finally:
        for cluster in clusters.values():
            cluster.close()
        for spinning in spinners:
            spinning.kill()
            spinning.wait()
    return {
        "job": job, "rounds": rounds, "reps": reps,
        "before_median_ms": round(statistics.median(times["before"]), 2),
        "after_median_ms": round(statistics.median(times["after"]), 2),
        "after_over_before": round(statistics.median(ratios), 3),
        "each_round": [round(r, 3) for r in ratios],
        "before_p90_ms": round(percentile(times["before"], 90), 2),
        "after_p90_ms": round(percentile(times["after"], 90), 2),
        "jobs": {name: len(samples) for name, samples in times.items()},
    }


def timed_turn(cluster: Any, job: dict[str, Any], reps: int, turn_s: float) -> list[float]:
    """One cluster's turn: `reps` jobs, or as many as `turn_s` seconds take (so that what a
    cluster does every so often, such as its journal's flush, falls inside the turns)."""
    if turn_s <= 0:
        return [cluster.client.submit(**job).elapsed_ms for _ in range(reps)]
    elapsed: list[float] = []
    stop_s = time.monotonic() + turn_s
    while time.monotonic() < stop_s:
        elapsed.append(cluster.client.submit(**job).elapsed_ms)
    return elapsed


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
                for name in turn_order(names, number)}
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
        for name in turn_order(names, number):
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
    add_tree_options(parser, ROOT)
    parser.add_argument("--job", choices=("big", "vector", "small", "throughput"), default="big")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=10**8)
    parser.add_argument("--map", default=None, help="a kernel applied before a big job's sum")
    parser.add_argument("--source", default=None, help="big: sum this source instead of a written .npy")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="with --source: the clusters' data root (where its relative path lies)")
    parser.add_argument("--fsync-ms", type=float, default=0.0, help="each daemon fsync takes MS longer")
    parser.add_argument("--slow-worker-nice", type=int, default=0, metavar="N",
                        help="big/vector: one worker of each cluster at nice N")
    parser.add_argument("--busy-worker", type=int, default=0, metavar="K",
                        help="big/vector: one worker of each cluster shares a CPU with K spinning processes")
    parser.add_argument("--turn-s", type=float, default=0.0, help="big/vector: jobs for S seconds per turn")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    trees = trees_compared(args)
    with tempfile.TemporaryDirectory(prefix="distnode-tree-ab-") as tmp:
        workdir = Path(tmp)
        if args.fsync_ms > 0:
            slow_disks(args.fsync_ms, workdir)
        job: dict[str, Any]
        if args.job == "big":
            source = args.source or write_big(args.n, workdir)
            job = {"op": "sum", "source": source}
            if args.map is not None:
                job["map"] = args.map
        elif args.job == "vector":
            job = {"op": "sum", "axis": 0, "source": write_vector(workdir)}
        elif args.job == "throughput":
            job = {"throughput": True}
        else:
            job = {"op": "sum", "source": SMALL_SOURCE}
        data_root = args.data_dir.resolve() if args.source and args.data_dir else workdir
        found = compare(trees, job, args.rounds, args.reps, data_root, args.turn_s, args.slow_worker_nice,
                        args.busy_worker)
        print_json({**found, "fsync_ms_added": args.fsync_ms, "slow_worker_nice": args.slow_worker_nice,
                    "busy_worker": args.busy_worker}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
