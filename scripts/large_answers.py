"""Detached jobs with large answers, one after another: what a full job table costs a cluster.

    python scripts/large_answers.py [--jobs 20] [--cols 1000000] [--ref DIR] [--json PATH]

A (3, `--cols`) float64 `.npy` is written to a temporary directory; a 3-node
`LocalCluster` runs `--jobs` detached `sum --axis 0` over it, each waited for
(`result`) before the next is submitted, so each answer is `--cols` float64
(8 MB by default) and the job table fills to `--keep-result-bytes` (64 MiB)
of them. Reported per tree: the median and the longest job (submit to
answer, or to the client's giving up: ClusterUnavailable after its 30 s,
counted), the whole run, how many terms passed and how often a leader
changed (there is no reason for either), and from the nodes' logs the
late wake-ups of their event loops ("the clock woke N ms late") and the
peers declared dead, with each node's snapshot file at the end.

`--ref DIR` (an unpacked tree: `git archive REV | tar -x -C DIR`) runs the
same jobs on that tree's daemons first. The two differ by far more than this
host drifts, so they are not interleaved.

Why: a node rewrote its whole snapshot, tens of MB here, on its event loop
after every such job; each stalled its peers' view of it and its clients
(docs/journal.md, "Large answers in the table").
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import compile_tree, print_json  # noqa: E402

LATE = re.compile(r"the clock woke (\d+) ms late")


def run(tree: Path, jobs: int, workdir: Path) -> dict[str, Any]:
    from node import LocalCluster
    from node.errors import ClusterUnavailable, JobPending

    here = os.getcwd()
    os.chdir(tree)  # the daemons start in the tree's folder: `python -m cli` is its own
    try:
        cluster = LocalCluster(nodes=3, workdir=workdir / "nodes", data_root=workdir).start()
    finally:
        os.chdir(here)
    try:
        first = cluster.status()
        leaders, elapsed_ms, unavailable, started_s = {first.leader}, [], [], time.monotonic()
        for _ in range(jobs):
            job_s = time.monotonic()
            try:
                job_id = cluster.client.submit(op="sum", source="npy:vec.npy", axis=0, detach=True)
                while True:
                    try:
                        cluster.client.result(job_id, wait=60)
                        break
                    except JobPending:
                        continue
            except ClusterUnavailable as exc:  # the client's timeout (30 s) passed: said, and on
                unavailable.append(str(exc))
            elapsed_ms.append((time.monotonic() - job_s) * 1000)
            leaders.add(cluster.status().leader)
        total_s = time.monotonic() - started_s
        last = cluster.status()
        logs = cluster.logs()
    finally:
        cluster.close()
    files = (workdir / "nodes").glob("*/journal/snapshot")
    snapshots = {path.parent.parent.name: path.stat().st_size for path in files}
    late = [int(ms) for ms in LATE.findall(logs)]
    return {
        "tree": str(tree), "jobs": jobs,
        "job_median_ms": round(statistics.median(elapsed_ms), 1), "job_max_ms": round(max(elapsed_ms), 1),
        "total_s": round(total_s, 2), "terms_passed": last.term - first.term, "leaders_seen": len(leaders),
        "client_gave_up": len(unavailable), "first_give_up": unavailable[0] if unavailable else "",
        "late_wakeups": len(late), "latest_wakeup_ms": max(late, default=0),
        "peers_declared_dead": logs.count("missed heartbeats: dead"), "snapshot_bytes": snapshots,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--cols", type=int, default=1_000_000)
    parser.add_argument("--ref", type=Path, default=None, help="an unpacked older tree, run first")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import numpy as np

    found: dict[str, Any] = {}
    trees = {"ref": args.ref.resolve()} if args.ref else {}
    trees["this"] = ROOT
    for name, tree in trees.items():
        compile_tree(tree)
        with tempfile.TemporaryDirectory(prefix="distnode-large-answers-") as tmp:
            workdir = Path(tmp)
            np.save(workdir / "vec.npy", np.random.default_rng(7).random((3, args.cols)))
            found[name] = run(tree, args.jobs, workdir)
    print_json(found, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
