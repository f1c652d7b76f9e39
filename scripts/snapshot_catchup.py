"""A follower caught up from its leader's snapshot, on this tree against another: how long
each node's event loop stops serving, and whether the leader keeps its term.

    python scripts/snapshot_catchup.py --ref DIR [--after DIR] [--rounds 6] [--busy K] [--json PATH]

DIR is an unpacked tree (`git archive REV | tar -x -C DIR`); `--after` defaults to this
one. Each round, on each tree in turn (the order turned every round): a 3-node
`LocalCluster` with the default timings whose daemons run the tree's code (they start in
its folder), four detached `sum --axis 0` over a (3, 10^6) float64 `.npy` (8 MB answers,
which the table keeps: the leader's snapshot holds them, 42 MB), then one follower is
killed, its `journal/` moved aside as docs/operations.md tells an operator to, and the
node started again: only the leader's snapshot can catch it up. Meanwhile one thread per
node calls its `Status` every PROBE_S; a call's round trip is at least how long that
node's event loop did not serve. Reported per tree, from the restart until the snapshot
is on the follower's disk and a second more: the longest round trip of the leader, of
the follower caught up and of the other follower (medians and worst over rounds), and
the rounds whose leader or term changed. `--busy K` runs K processes that spin for the
whole run, as on a loaded host.

Why: the leader once copied and serialized the whole snapshot on its event loop (docs/
journal.md, "A snapshot in chunks"); no beat left it meanwhile, and on a loaded host its
other followers' election timers ran out.
"""

from __future__ import annotations

import argparse
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

from benchlib import add_tree_options, in_tree, print_json, trees_compared, turn_order  # noqa: E402
from benchlib.loopprobe import Probe  # noqa: E402

#: How long the snapshot may take to reach the follower's disk before the round fails.
CATCH_UP_S = 60.0
ROLES = ("leader", "caught_up", "other")


def one_round(tree: Path, workdir: Path) -> dict[str, Any]:
    """One catch-up on `tree`'s daemons: the longest Status round trip of each role (ms), and
    whether the leader and term held."""
    from node import LocalCluster

    with in_tree(tree):
        cluster = LocalCluster(nodes=3, workdir=workdir / "nodes", data_root=workdir).start()
    probe = None
    try:
        cluster.wait_for_leader()
        for _ in range(4):
            job_id = cluster.client.submit(op="sum", source="npy:vec.npy", axis=0, detach=True)
            cluster.client.result(job_id, wait=60)
        leader = cluster.wait_for_leader()  # now: the leader may have changed during the jobs
        term = cluster.status().term
        if cluster.status().leader != leader:
            raise RuntimeError("the leader changed while the round began; run it again")
        victim = next(n for n in cluster.ids if n != leader)
        other = next(n for n in cluster.ids if n not in (leader, victim))
        probe = Probe({n: a for n, a in zip(cluster.ids, cluster.addresses, strict=True)})
        cluster.kill(victim)
        (workdir / "nodes" / victim / "journal").rename(workdir / "journal-aside")
        with in_tree(tree):
            cluster.restart(victim)
        probe.reset()
        snapshot = workdir / "nodes" / victim / "journal" / "snapshot"
        deadline = time.monotonic() + CATCH_UP_S
        while not (snapshot.exists() and snapshot.stat().st_size > 30_000_000):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no snapshot on {victim}'s disk after {CATCH_UP_S} s\n{cluster.logs()}")
            time.sleep(0.02)
        time.sleep(1.0)
        if not all(probe.calls.values()):
            raise RuntimeError(f"a node's Status was never answered: {probe.calls}")
        longest = {role: round(probe.longest_s[node] * 1000, 1)
                   for role, node in zip(ROLES, (leader, victim, other), strict=True)}
        status = cluster.status()
        return {**longest, "kept": (status.leader, status.term) == (leader, term)}
    finally:
        if probe is not None:
            probe.close()
        cluster.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_tree_options(parser, ROOT)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--busy", type=int, default=0, help="processes spinning for the whole run")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    import numpy as np

    trees = trees_compared(args)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"]) for _ in range(args.busy)]
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        for number in range(args.rounds):
            for name in turn_order(list(trees), number):
                with tempfile.TemporaryDirectory(prefix="snapshot-catchup-") as scratch:
                    workdir = Path(scratch)
                    np.save(workdir / "vec.npy", np.random.default_rng(3).random((3, 1_000_000)))
                    result = one_round(trees[name], workdir)
                rounds[name].append(result)
                print(f"round {number + 1} {name}: {result}", flush=True)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    summary: dict[str, Any] = {"rounds": args.rounds, "busy": args.busy}
    for name, results in rounds.items():
        summary[name] = {
            **{f"{role}_ms": {"median": statistics.median(r[role] for r in results),
                              "worst": max(r[role] for r in results)} for role in ROLES},
            "elections": sum(not r["kept"] for r in results),
        }
    print_json(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
