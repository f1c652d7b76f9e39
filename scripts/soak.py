"""Soak: default timing, a steady job stream, no faults, and not one leader change.

    python scripts/soak.py [--nodes 3] [--duration 600] [--clients 3] [--seed N] [--json PATH]

DESIGN §3 promises defaults "safe on a loaded 2-core machine (no spurious
elections)". This runs a LocalCluster at the default timing (heartbeat 50 ms,
election 250-500 ms) while client tasks keep a few jobs in flight (the job mix
of scripts/chaos.py, answers checked), and counts from every node's log the
leader elections after the first one and the followers' election timeouts
(`became pre-candidate`), which are the near misses.

Exit status 0 only with zero leader changes, zero wrong or lost jobs and no
crash, traceback or ERROR in the logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chaos import (
    SHARD_ELEMS,
    JobStream,
    Record,
    bad_log_entries,
    leaders_by_term,
    longest_gap,
    prober,
    random_pool,
    say,
    submit_until_answered,
)

from node import AsyncClient, LocalCluster


def follower_timeouts(cluster: LocalCluster) -> int:
    """Election timeouts (`became pre-candidate`) after the first leader was elected: near misses."""
    lines = [line for n in cluster.ids for line in cluster.log(n).splitlines()]
    first_leader = min((line[:23] for line in lines if " became leader " in line), default="")
    return sum(1 for line in lines if " became pre-candidate " in line and line[:23] > first_leader)


async def timed_submitter(addresses: list[str], stream: JobStream, record: Record,
                          stop: asyncio.Event, latencies: list[float]) -> None:
    async with AsyncClient(addresses) as client:
        while not stop.is_set():
            job_id, spec = stream.next()
            record.submitted[job_id] = spec
            started = time.monotonic()
            await submit_until_answered(client, job_id, spec, record, [time.monotonic() + 300])
            latencies.append(time.monotonic() - started)


async def workload(cluster: LocalCluster, args: argparse.Namespace, record: Record,
                   latencies: list[float]) -> dict[str, float]:
    stream = JobStream(args.seed, random_pool(args.seed, 6))
    stop = asyncio.Event()
    started = time.monotonic()
    tasks = [asyncio.create_task(timed_submitter(cluster.addresses, stream, record, stop, latencies))
             for _ in range(args.clients)]
    probe = asyncio.create_task(prober(cluster.addresses, args.seed, record, stop))
    next_report = started + 60
    while (now := time.monotonic()) < started + args.duration:
        await asyncio.sleep(min(1.0, started + args.duration - now))
        if time.monotonic() >= next_report:
            next_report += 60
            say(f"{time.monotonic() - started:.0f} s: {len(record.answered)} jobs answered, "
                f"{len(leaders_by_term(cluster)) - 1} leader changes")
    ended = time.monotonic()
    stop.set()
    await asyncio.gather(probe, *tasks)
    return {"run_s": ended - started, "longest_probe_gap_s": longest_gap(record.probe_ok, started, ended)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--clients", type=int, default=3, help="jobs in flight")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--link-faults", action="store_true",
                        help="route peer traffic through the (idle) fault proxies too")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here")
    args = parser.parse_args(argv)
    args.seed = args.seed if args.seed is not None else random.randrange(10**6)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="distnode-soak-"))
    record, latencies = Record(), []
    cluster = LocalCluster(nodes=args.nodes, shard_elems=SHARD_ELEMS, workdir=workdir,
                           link_faults=args.link_faults)
    try:
        cluster.start()
        say(f"{args.nodes} nodes, default timing, leader {cluster.leader()}; "
            f"{args.duration:g} s of jobs, no faults; logs in {workdir}")
        outcome = asyncio.run(workload(cluster, args, record, latencies))
        terms = leaders_by_term(cluster)
        timeouts = follower_timeouts(cluster)
        bad = bad_log_entries(cluster)
        crashed = [f"{n} pid {p} exited with {rc}" for n, p, rc in cluster.exits()]
    finally:
        cluster.close()
    lost = len(set(record.submitted) - set(record.answered))
    wrong = len(record.wrong) + len(record.invalid)
    ordered = sorted(latencies) or [0.0]
    summary: dict[str, Any] = {
        "seed": args.seed, "nodes": args.nodes, "duration_s": args.duration,
        "jobs_answered": len(record.answered), "jobs_wrong": wrong, "jobs_lost": lost,
        "jobs_per_s": round(len(record.answered) / outcome["run_s"], 1),
        "latency_ms": {
            "p50": round(1000 * statistics.median(ordered), 1),
            "p99": round(1000 * ordered[int(0.99 * (len(ordered) - 1))], 1),
            "max": round(1000 * ordered[-1], 1),
        },
        "failed_attempts": record.failed_attempts,
        "longest_unavailable_s": round(outcome["longest_probe_gap_s"], 3),
        "leader_changes": max(0, len(terms) - 1),
        "leaders_by_term": {str(t): sorted(n) for t, n in sorted(terms.items())},
        "follower_timeouts": timeouts,
        "crashed": crashed, "bad_log_entries": bad[:10],
    }
    summary["ok"] = (summary["leader_changes"] == 0 and wrong == 0 and lost == 0
                     and not crashed and not bad)
    for key, value in summary.items():
        print(f"  {key:<22} {value}")
    print(f"\n  {'PASS' if summary['ok'] else 'FAIL'}")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    if summary["ok"] and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"  logs kept in {workdir}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
