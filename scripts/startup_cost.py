"""What starting costs, this tree against another, in interleaved rounds.

    python scripts/startup_cost.py --ref DIR [--after DIR] [--rounds 6] [--nodes 16]
                                   [--cli-runs 16] [--json PATH] [--as-is]

DIR is an unpacked tree (`git archive REV | tar -x -C DIR`); `--after`
defaults to this one. Two figures, each tree taking turns (the order flips
every round, so the host's drift lands on both alike):

- the CPU of one command-line call, `distnode status --help` (it parses and
  exits: what every command and every daemon pays before its own work),
  medians of `--cli-runs` calls each;
- a `--nodes`-node `LocalCluster`: spawn until the first node logs "became
  leader", and until the last one serves (bench.py's scale figure, taken the
  same way), medians of `--rounds`.

Both trees are byte-compiled first, as an installed package is, unless
`--as-is`: then each runs as it is, which is how to measure what compiling
saves (DIR a fresh `git archive`, --after the same tree compiled with
`python -m compileall node cli`).

Each tree's code runs from its own folder: the daemons are spawned with that
folder as their working directory, so `python -m cli` is that tree's.

Why: on 2 cores, 16 daemons starting at once queue for the CPU, so what one
process spends on imports is most of a large cluster's start-up time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import add_tree_options, print_json, trees_compared, turn_order  # noqa: E402

#: Run in each tree's folder: start a cluster, print its start-up times as JSON.
START = r"""
import json, os, sys, tempfile
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "scripts")]
from cluster_timing import first_leader_s, last_listening_s, timed_start
cluster, wall0_ns, _ = timed_start(lambda line: None, nodes=int(sys.argv[1]), workdir=tempfile.mkdtemp())
try:
    print(json.dumps({"leader_s": first_leader_s(cluster, wall0_ns),
                      "listening_s": last_listening_s(cluster, wall0_ns)}))
finally:
    cluster.close()
"""


def cli_cpu_ms(tree: Path) -> float:
    """CPU (user + system) of one `distnode status --help` run from `tree`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "cli", "status", "--help"], cwd=tree, capture_output=True,
                   check=True, env={**os.environ, "PYTHONPATH": str(tree)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000


def start_times(tree: Path, nodes: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", START, str(nodes)], cwd=tree, capture_output=True,
                          text=True, timeout=300, check=True)
    found: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return found


def measure(trees: dict[str, Path], rounds: int, nodes: int, cli_runs: int) -> dict[str, Any]:
    cli: dict[str, list[float]] = {name: [] for name in trees}
    starts: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    names = list(trees)
    for run in range(cli_runs):
        for name in turn_order(names, run):
            cli[name].append(cli_cpu_ms(trees[name]))
    for number in range(rounds):
        for name in turn_order(names, number):
            starts[name].append(start_times(trees[name], nodes))
            print(f"round {number + 1}: {name} {starts[name][-1]}", file=sys.stderr, flush=True)
    found: dict[str, Any] = {"nodes": nodes, "rounds": rounds, "cli_runs": cli_runs}
    for name in names:
        leader = [s["leader_s"] for s in starts[name] if s["leader_s"] is not None]
        found[name] = {
            "cli_cpu_ms": round(statistics.median(cli[name]), 1),
            "spawn_to_leader_s": round(statistics.median(leader), 3),
            "spawn_to_all_listening_s": round(statistics.median(s["listening_s"] for s in starts[name]), 3),
        }
    before, after = found["before"], found["after"]
    found["after_over_before"] = {key: round(after[key] / before[key], 3) for key in before}
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_tree_options(parser, ROOT)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--cli-runs", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--as-is", action="store_true",
                        help="do not byte-compile the trees first (to measure what compiling saves)")
    args = parser.parse_args()
    trees = trees_compared(args, compiled=not args.as_is)
    print_json(measure(trees, args.rounds, args.nodes, args.cli_runs), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
