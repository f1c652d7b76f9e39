"""A source's shards read cold, then warm, with the node's maps advised to use 2 MiB pages and not.

    python scripts/cold_read.py --data-root DIR --source SPEC [--rounds 2] [--json PATH]

SPEC is a mapped source under DIR (`npy:big.npy`, or `zarr:big.zarr` /
`hdf5:big.h5#/x` written uncompressed). Each round runs two fresh
processes, one with `in_huge_pages` (node/core/sources.py) as it is and one
with it turned into a no-op: each drops the source's files from the page
cache, sums every shard once (cold: read from disk through the node's maps)
and five times more (warm; the median of the last four), and reports the
share of the mapped bytes the kernel mapped in 2 MiB pages.

Why: whether a file's pages come into the page cache in 4 KiB or 2 MiB
folios decides how fast it is summed for as long as it stays there
(docs/timeline.md, "The page cache's page size").
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import print_json  # noqa: E402

#: Run in a fresh interpreter: prints {"cold_ms", "warm_ms", "huge_share"}.
TIMER = """
import json, os, statistics, sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[1], str(Path(sys.argv[1]) / "scripts")]
from benchlib.data import huge_share
from node.core import sources
from node.core.compute import reduce_all
from node.core.job import Job
from node.formats import mapped, openers
if sys.argv[4] == "plain":
    sources.in_huge_pages = mapped.in_huge_pages = lambda array: array
root, spec = Path(sys.argv[2]), sys.argv[3]
target = root / spec.partition(":")[2].partition("#")[0]
files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
for file in files:
    with file.open("rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
source = sources.open_source(spec, root, openers())
job, times = Job("sum", spec), []
for _ in range(6):
    started = time.perf_counter()
    reduce_all(job, source)
    times.append((time.perf_counter() - started) * 1000)
share = huge_share(files)
print(json.dumps({"cold_ms": times[0], "warm_ms": statistics.median(times[2:]), "huge_share": share}))
"""


def one(variant: str, data_root: Path, spec: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", TIMER, str(ROOT), str(data_root), spec, variant],
                          check=True, capture_output=True, text=True)
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {"advised": [], "plain": []}
    for number in range(args.rounds):
        for variant in ("advised", "plain") if number % 2 == 0 else ("plain", "advised"):
            runs[variant].append(one(variant, args.data_root.resolve(), args.source))
    result: dict[str, Any] = {"source": args.source, "rounds": args.rounds}
    for variant, figures in runs.items():
        result[variant] = {key: round(statistics.median(run[key] for run in figures), digits)
                           for key, digits in (("cold_ms", 1), ("warm_ms", 1), ("huge_share", 3))}
    result["warm_advised_over_plain"] = round(result["advised"]["warm_ms"] / result["plain"]["warm_ms"], 3)
    print_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
