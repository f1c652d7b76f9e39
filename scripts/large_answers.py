"""Detached jobs with large answers, one after another: what a full job table costs a cluster.

    python scripts/large_answers.py [--jobs 20] [--cols 1000000] [--ref DIR] [--rounds 1] [--json PATH]

A (3, `--cols`) float64 `.npy` is written to a temporary directory; a 3-node
`LocalCluster` runs `--jobs` detached `sum --axis 0` over it, each waited for
(`result`) before the next is submitted, so each answer is `--cols` float64
(8 MB by default) and the job table fills to `--keep-result-bytes` (64 MiB)
of them. Reported per tree: the median and the longest job (submit to
answer, or to the client's giving up: ClusterUnavailable after its 30 s,
counted), the whole run, how many terms passed and how often a leader
changed (there is no reason for either), and from the nodes' logs the
late wake-ups of their event loops ("the clock woke N ms late") and the
peers declared dead, with each node's snapshot file at the end; and how long
each job stopped the leader's event loop and the followers' (a thread per
node calls its `Status` every 5 ms, benchlib/loopprobe.py: the longest round
trip during the job, medians and worst over the jobs; the probe runs in this
process, beside the client, alike for both trees). Each job is followed by
0.3 s for the followers to write and apply it, not counted in the whole run.

`--ref DIR` (an unpacked tree: `git archive REV | tar -x -C DIR`) runs the
same jobs on that tree's daemons first; `--rounds N` does both N times, the
order turned each round, so the host's drift lands on both alike (each
round's figures are listed, and the medians of the per-job stalls over all
rounds).

Why: a node rewrote its whole snapshot, tens of MB here, on its event loop
after every such job; each stalled its peers' view of it and its clients
(docs/journal.md, "Large answers in the table").
"""

from __future__ import annotations

import argparse
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

from benchlib import compile_tree, in_tree, print_json, turn_order  # noqa: E402
from benchlib.loopprobe import Probe  # noqa: E402

LATE = re.compile(r"the clock woke (\d+) ms late")


def run(tree: Path, jobs: int, workdir: Path) -> dict[str, Any]:
    from node import LocalCluster
    from node.errors import ClusterUnavailable, JobPending

    with in_tree(tree):
        cluster = LocalCluster(nodes=3, workdir=workdir / "nodes", data_root=workdir).start()
    probe = None
    try:
        first = cluster.status()
        leaders, elapsed_ms, unavailable, started_s = {first.leader}, [], [], time.monotonic()
        probe = Probe(dict(zip(cluster.ids, cluster.addresses, strict=True)))
        leader_stall_ms: list[float] = []
        follower_stall_ms: list[float] = []
        settle_s = 0.0
        for _ in range(jobs):
            probe.reset()
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
            time.sleep(0.3)  # the followers' writes and applies of the job's last record
            settle_s += 0.3
            leader = cluster.status().leader
            leaders.add(leader)
            if leader in probe.longest_s:  # else an election: the job's stalls are nobody's
                leader_stall_ms.append(probe.longest_s[leader] * 1000)
                follower_stall_ms.append(max(s for n, s in probe.longest_s.items() if n != leader) * 1000)
        total_s = time.monotonic() - started_s - settle_s
        last = cluster.status()
        logs = cluster.logs()
    finally:
        if probe is not None:
            probe.close()
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
        "leader_stall_ms": stalls(leader_stall_ms), "follower_stall_ms": stalls(follower_stall_ms),
        "leader_stalls": [round(ms, 1) for ms in leader_stall_ms],
        "follower_stalls": [round(ms, 1) for ms in follower_stall_ms],
    }


def stalls(samples: list[float]) -> dict[str, float]:
    if not samples:  # every job met an election
        return {}
    return {"median": round(statistics.median(samples), 1), "worst": round(max(samples), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--cols", type=int, default=1_000_000)
    parser.add_argument("--ref", type=Path, default=None, help="an unpacked older tree, run first")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import numpy as np

    trees = {"ref": args.ref.resolve()} if args.ref else {}
    trees["this"] = ROOT
    for tree in trees.values():
        compile_tree(tree)
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for number in range(args.rounds):
        for name in turn_order(list(trees), number):
            with tempfile.TemporaryDirectory(prefix="distnode-large-answers-") as tmp:
                workdir = Path(tmp)
                np.save(workdir / "vec.npy", np.random.default_rng(7).random((3, args.cols)))
                rounds[name].append(run(trees[name], args.jobs, workdir))
    found: dict[str, Any] = {name: runs[0] if args.rounds == 1 else {
        "rounds": runs,
        "leader_stall_ms": stalls([ms for run in runs for ms in run["leader_stalls"]]),
        "follower_stall_ms": stalls([ms for run in runs for ms in run["follower_stalls"]]),
    } for name, runs in rounds.items()}
    print_json(found, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
