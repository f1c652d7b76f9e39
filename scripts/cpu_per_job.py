"""CPU time per big job, per node and per kind of thread: where a cluster's CPU goes.

    python scripts/cpu_per_job.py [--nodes 3] [--n 100000000] [--seconds 6] [--json PATH]
    python scripts/cpu_per_job.py --source range:n=1000    # the same for a small job

A float64 `.npy` of `--n` elements is written to a temporary directory and
read once (page cache), unless `--source` names what to sum instead; a
`LocalCluster` of `--nodes` nodes sums it three
times untimed, then as many times as fit in `--seconds`, one job after the
other from this process. Each daemon's threads are read from /proc
(schedstat: nanoseconds on a CPU) before and after, and the difference is
divided by the jobs: the event loop (the main thread), the pool threads
(the compute pool, the journal writer), gRPC's own threads. The client's CPU
(this process) is reported beside them.

Why: on a host with fewer cores than nodes, CPU spent outside the compute
pool is taken from the computation; this says how much, and whose it is.
docs/timeline.md has the figures and what they say.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import print_json  # noqa: E402


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """kind of thread -> nanoseconds on a CPU, for the live threads of `pid`."""
    kinds: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            ran_ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # ended between the listing and the read
        kind = "event loop" if int(tid) == pid else "python threads" if name.startswith("python") else "grpc"
        kinds[kind] = kinds.get(kind, 0) + ran_ns
    return kinds


def write_big(n: int, workdir: Path) -> str:
    """A float64 .npy of `n` random elements, read once (into the page cache); its source."""
    import numpy as np

    path = workdir / "big.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n,))
    for start in range(0, n, 10**7):
        data[start:start + 10**7] = np.random.default_rng(start).random(min(10**7, n - start))
    data.flush()
    del data
    float(np.load(path, mmap_mode="r").sum())
    return f"npy:{path}"


def measure(nodes: int, source: str, seconds: float, workdir: Path) -> dict[str, Any]:
    from node import LocalCluster

    job = {"op": "sum", "source": source}
    with LocalCluster(nodes=nodes, data_root=workdir) as cluster:
        for _ in range(3):
            cluster.client.submit(**job)
        leader, pids = cluster.leader(), {nid: cluster.pid(nid) for nid in cluster.ids}
        before = {nid: thread_cpu_ns(pid) for nid, pid in pids.items() if pid}
        client0_s, wall0_s, elapsed_ms = time.process_time(), time.monotonic(), []
        while time.monotonic() - wall0_s < seconds:
            elapsed_ms.append(cluster.client.submit(**job).elapsed_ms)
        client_s = time.process_time() - client0_s
        after = {nid: thread_cpu_ns(pid) for nid, pid in pids.items() if pid}
    jobs = len(elapsed_ms)
    per_node = {}
    for nid, kinds in after.items():
        per_node[nid] = {kind: round((ns - before[nid].get(kind, 0)) / jobs / 1e6, 3)
                         for kind, ns in kinds.items()}
        per_node[nid]["total"] = round(sum(per_node[nid].values()), 3)
    return {"nodes": nodes, "source": source, "jobs": jobs, "leader": leader,
            "median_ms": round(statistics.median(elapsed_ms), 3),
            "client_ms_per_job": round(client_s / jobs * 1000, 3), "cpu_ms_per_job": per_node,
            "cluster_total_ms_per_job": round(sum(v["total"] for v in per_node.values()), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--n", type=int, default=10**8)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--source", default=None, help="sum this source instead of a --n .npy")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distnode-cpu-per-job-") as tmp:
        source = args.source or write_big(args.n, Path(tmp))
        # A file given as the source is read where it lies: its directory is the nodes' data root.
        named = Path(source.partition(":")[2])
        root = named.resolve().parent if args.source and named.parts and named.exists() else Path(tmp)
        found = measure(args.nodes, source, args.seconds, root)
    print_json(found, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
