"""The blocking Client's two ways to send a small job, side by side: a stream or a unary call.

    python scripts/client_transport.py [--runs 2] [--blocks 60] [--block-jobs 50]

A 3-node `LocalCluster`; for each run a separate client process sends
`sum` over `range:n=1000` with one blocking `Client`, in blocks of
`--block-jobs` jobs that alternate between its SubmitBatches stream and unary
`Submit` (the order flips every block, the first four blocks are warm-up),
so the machine's drift lands on both alike. Prints p50/p90/p99 of each and
the p50 ratio, stream over unary, per run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node import Client, LocalCluster  # noqa: E402

SOURCE = "range:n=1000"
WARMUP_BLOCKS = 4


def percentiles(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    at = [ordered[int(len(ordered) * q)] * 1000 for q in (0.5, 0.9, 0.99)]
    return "p50 {:.3f} ms, p90 {:.3f} ms, p99 {:.3f} ms".format(*at)


def client(addresses: list[str], blocks: int, block_jobs: int) -> None:
    """The client process: alternate the two ways block by block, then print the figures."""
    unary_s: list[float] = []
    stream_s: list[float] = []
    with Client(addresses, timeout=30) as blocking:
        for block in range(blocks):
            for way in ("stream", "unary") if block % 2 == 0 else ("unary", "stream"):
                # A node in this set gets unary Submit: what the Client does for a node
                # without SubmitBatches. Private, and only for this measurement.
                blocking._streams.unsupported = set(addresses) if way == "unary" else set()
                for _ in range(block_jobs):
                    started = time.perf_counter()
                    answer = blocking.submit(op="sum", source=SOURCE)
                    took_s = time.perf_counter() - started
                    if answer.result != 499500:
                        raise SystemExit(f"wrong answer {answer.result!r}")
                    if block >= WARMUP_BLOCKS:
                        (unary_s if way == "unary" else stream_s).append(took_s)
    print(f"unary:  {percentiles(unary_s)}")
    print(f"stream: {percentiles(stream_s)}")
    print(f"p50 stream / unary: {statistics.median(stream_s) / statistics.median(unary_s):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=60)
    parser.add_argument("--block-jobs", type=int, default=50)
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)  # the client process
    args = parser.parse_args()
    if args.client is not None:
        client(args.client.split(","), args.blocks, args.block_jobs)
        return 0
    with LocalCluster(nodes=3) as cluster:
        for run in range(args.runs):
            print(f"run {run + 1}:", flush=True)
            subprocess.run([sys.executable, __file__, "--client", ",".join(cluster.addresses),
                            "--blocks", str(args.blocks), "--block-jobs", str(args.block_jobs)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
