"""What counting metrics costs the small-job path (#17): one tree, metrics on and off.

    python scripts/metrics_cost.py [--rev HEAD] [--rounds 16] [--json PATH]

Two copies of `--rev` are unpacked with `git archive`. In one, every event
hook of `NodeMetrics` is replaced by nothing (`timed_shard` returns the
compute function itself, `observe` leaves the daemon's hooks at their no-op
defaults), so the two trees differ only in whether metrics are counted.
`scripts/journal_bench.py --parts ab` then runs both 3-node clusters side by
side, a separate client alternating between them round by round, and prints
the medians and the median of the rounds' ratios (on over off) for the
sequential small job's p50/p99 and the 32-in-flight throughput.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Appended to node/server/metrics.py in the "off" copy.
SWITCH_OFF = """

# metrics_cost.py: this copy counts nothing.
NodeMetrics.observe = lambda self, daemon: None  # type: ignore[method-assign]
NodeMetrics.job_ended = lambda self, op, outcome, seconds: None  # type: ignore[method-assign]
NodeMetrics.timed_shard = lambda self, compute: compute  # type: ignore[method-assign]
NodeMetrics.journal_appended = lambda self, entries, seconds: None  # type: ignore[method-assign]
NodeMetrics.role_changed = lambda self, role, leader: None  # type: ignore[method-assign]
"""


def unpack(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="the commit measured (default HEAD)")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distnode-metrics-cost-") as tmp:
        on = unpack(args.rev, Path(tmp) / "on")
        off = unpack(args.rev, Path(tmp) / "off")
        with (off / "node/server/metrics.py").open("a") as metrics:
            metrics.write(SWITCH_OFF)
        command = [sys.executable, str(on / "scripts/journal_bench.py"), "--ref", str(off),
                   "--after", str(on), "--parts", "ab", "--rounds", str(args.rounds), "--acks", "20"]
        if args.json is not None:
            command += ["--json", str(args.json.resolve())]
        return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
