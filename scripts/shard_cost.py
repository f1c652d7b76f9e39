"""What reducing a big file's shards costs in one thread, per job, with no cluster around it.

    python scripts/shard_cost.py [--ref DIR] [--n 100000000] [--rounds 3] [--json PATH]
                                 [--data-root DIR --source SPEC] [--only LABEL,...]

A float64 `.npy` of `--n` elements is written to a temporary directory and
read once (page cache), unless `--source` names a source under
`--data-root` (any format this machine reads). Each round, this tree (and
`--ref DIR`, an unpacked `git archive`, when given) reduces a few jobs with
`reduce_all` (every shard's partial, merged in order, as one node does), in
a fresh process per tree (each job's second pass is timed), the trees'
order flipped every round; the figure is each tree's median per job and,
with `--ref`, this tree's median over the ref's.

Why: a change to `node/core/compute.py` moves a job's CPU, which a cluster's
wall time on two cores shows only through its scheduling; this measures the
numpy work alone (docs/timeline.md, "A map's temporaries").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import print_json, turn_order  # noqa: E402
from cpu_per_job import write_big  # noqa: E402

#: (label, op, kernel, bins)
Spec = tuple[str, str, str, int]
#: What the rounds time; histograms take the range [0, 1).
JOBS: list[Spec] = [
    ("sum", "sum", "identity", 0),
    ("square sum", "sum", "square", 0),
    ("var", "var", "identity", 0),
    ("sqrt argmax", "argmax", "sqrt", 0),
    ("square histogram", "histogram", "square", 100),
]

#: Run in a fresh interpreter with the tree first on sys.path: prints {label: ms}.
TIMER = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from node.core.compute import reduce_all
from node.core.job import Job
from node.core.sources import open_source
from node.formats import openers
from node.server.memory import tune_malloc
tune_malloc()  # as a daemon does: freed temporaries stay in the heap for the next shard
source = open_source(sys.argv[2], Path(sys.argv[3]), openers())
times = {}
for label, op, kernel, bins in json.loads(sys.argv[4]):
    job = Job(op, sys.argv[2], kernel, None, bins, 0.0 if bins else None, 1.0 if bins else None)
    for _ in range(2):  # the first pass maps the file and grows the heap, as a daemon's first job does
        started = time.perf_counter()
        reduce_all(job, source)
        times[label] = (time.perf_counter() - started) * 1000
print(json.dumps(times))
"""



def one_pass(tree: Path, source: str, workdir: Path, jobs: list[Spec]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", TIMER, str(tree), source, str(workdir), json.dumps(jobs)],
                          check=True, capture_output=True, text=True)
    times: dict[str, float] = json.loads(done.stdout)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ref", type=Path, default=None, help="an unpacked tree to compare against")
    parser.add_argument("--n", type=int, default=10**8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-root", type=Path, default=None, help="where --source lies")
    parser.add_argument("--source", default=None, help="a source to time instead of a written .npy")
    parser.add_argument("--only", default="", help="comma-separated labels of the jobs to time")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    wanted = {label.strip() for label in args.only.split(",") if label.strip()}
    jobs = [job for job in JOBS if not wanted or job[0] in wanted]
    if args.source is not None and args.data_root is None:
        parser.error("--source needs --data-root")
    trees = {"after": ROOT} if args.ref is None else {"before": args.ref.resolve(), "after": ROOT}
    times: dict[str, dict[str, list[float]]] = {name: {label: [] for label, *_ in jobs} for name in trees}
    with tempfile.TemporaryDirectory(prefix="distnode-shard-cost-") as tmp:
        workdir = Path(tmp) if args.source is None else args.data_root.resolve()
        source = write_big(args.n, workdir) if args.source is None else args.source
        names = list(trees)
        for number in range(args.rounds):
            for name in turn_order(names, number):
                for label, ms in one_pass(trees[name], source, workdir, jobs).items():
                    times[name][label].append(ms)
    result: dict[str, Any] = {"source": source, "rounds": args.rounds}
    for label, *_ in jobs:
        row = {f"{name}_ms": round(statistics.median(times[name][label]), 1) for name in trees}
        if "before" in trees:
            row["after_over_before"] = round(row["after_ms"] / row["before_ms"], 3)
        result[label] = row
    print_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
