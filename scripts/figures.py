"""Measure distnode's baseline figures on this machine and print them as a markdown table.

Usage:

    python scripts/figures.py [--quick] [--reps N] [--json PATH]

Every figure runs against real daemon processes (`node.LocalCluster`, 3 nodes on
127.0.0.1) with the default timing (no heartbeat/election overrides) and the
default shard size:

- start:    wall time of `LocalCluster(nodes=3).start()` (spawn 3 daemons, wait until
            a status names a leader), median of --reps clusters; also the time until
            all 3 daemons printed DISTNODE_LISTENING (mtime of their stdout files).
- failover: on one cluster, --kills times: SIGKILL the leader, poll `status()` on the
            survivors every 5 ms until a new leader is named; restart the old leader
            and wait until all 3 are alive again. Median and max.
- small:    a separate client process runs `sum` over `range:n=1000` sequentially
            (20 warm-ups, then --jobs timed jobs); median and p99 round trip.
- big:      `sum` over a 10^8-element float64 .npy file (800 MB, temporary), median
            client-observed wall time of --reps jobs after 1 warm-up; the answer is
            checked against `np.sum` of the memmap (rel 1e-9) and across reps (bits).

`--quick` (reps 2, kills 3, small jobs 50, big n=10^7) finishes in under a minute.
Progress goes to stderr, the table to stdout, raw numbers to `--json PATH`.
For each figure the cluster logs are grepped for `became candidate` and
`became pre-candidate` before the cluster closes, to spot spurious elections.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_peers.peerdata import percentile
from benchlib.clients import SMALL_SOURCE, latencies_s
from benchlib.data import fill_uniform
from cluster_timing import election_counts, last_listening_s, time_failovers, timed_start

from node import Client, LocalCluster

SMALL_WARMUP = 20


def log(message: str) -> None:
    print(f"[figures {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- figures ------------------------------------------------------------------


def measure_start(reps: int) -> dict[str, Any]:
    leader_s: list[float] = []
    listening_s: list[float] = []
    elections: list[dict[str, int]] = []
    for rep in range(reps):
        cluster, wall0_ns, start_s = timed_start(log, nodes=3)
        try:
            leader_s.append(start_s)
            listening_s.append(last_listening_s(cluster, wall0_ns))
            elections.append(election_counts(cluster))
        finally:
            cluster.close()
        log(f"start rep {rep + 1}/{reps}: leader after {leader_s[-1] * 1000:.0f} ms, "
            f"all listening after {listening_s[-1] * 1000:.0f} ms, logs {elections[-1]}")
    return {
        "leader_s": leader_s, "listening_s": listening_s, "elections": elections,
        "median_ms": median(leader_s) * 1000, "listening_median_ms": median(listening_s) * 1000,
    }


def measure_failover(kills: int) -> dict[str, Any]:
    with LocalCluster(nodes=3) as cluster:
        times_s = time_failovers(cluster, kills, log)
        elections = election_counts(cluster)
    log(f"failover logs: {elections}")
    return {
        "times_s": times_s, "elections": elections,
        "median_ms": median(times_s) * 1000, "max_ms": max(times_s) * 1000,
    }


def client_worker(cluster: str, jobs: int, warmup: int) -> None:
    """Child process: run the small job `warmup + jobs` times, print latencies (s) as JSON."""
    print(json.dumps({"latencies_s": latencies_s(cluster.split(","), jobs, warmup)}), flush=True)


def measure_small(jobs: int) -> dict[str, Any]:
    with LocalCluster(nodes=3) as cluster:
        cluster.wait_all_alive(timeout_s=30.0)
        command = [
            sys.executable, str(Path(__file__).resolve()), "--client-worker",
            "--cluster", ",".join(cluster.addresses), "--jobs", str(jobs),
            "--warmup", str(SMALL_WARMUP),
        ]
        log(f"small: {SMALL_WARMUP} warm-ups + {jobs} jobs from a separate client process")
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"client worker failed ({done.returncode}):\n{done.stderr}")
        latencies = json.loads(done.stdout.strip().splitlines()[-1])["latencies_s"]
        elections = election_counts(cluster)
    log(f"small logs: {elections}")
    return {
        "latencies_s": latencies, "elections": elections,
        "median_ms": median(latencies) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
    }


def measure_big(n: int, reps: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="distnode-figures-"))
    try:
        path = tmp / "big.npy"
        t0 = time.perf_counter()
        fill_uniform(path, n, np.random.default_rng(0))
        expected = float(np.sum(np.load(path, mmap_mode="r")))
        log(f"big: wrote {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f} s, "
            f"np.sum = {expected!r}")
        with LocalCluster(nodes=3, data_root=path.parent) as cluster:
            cluster.wait_all_alive(timeout_s=30.0)
            times_s: list[float] = []
            results: list[float] = []
            answers: list[dict[str, Any]] = []
            with Client(cluster.addresses, timeout=300.0) as client:
                for rep in range(reps + 1):
                    t0 = time.perf_counter()
                    answer = client.submit(op="sum", source=f"npy:{path}")
                    elapsed = time.perf_counter() - t0
                    results.append(float(answer.result))
                    answers.append({**answer.as_dict(), "wall_s": elapsed})
                    label = "warm-up" if rep == 0 else f"rep {rep}/{reps}"
                    if rep > 0:
                        times_s.append(elapsed)
                    log(f"big {label}: {elapsed * 1000:.0f} ms, {answer.shards} shards on "
                        f"{','.join(answer.nodes)}, result {answer.result!r}")
            elections = election_counts(cluster)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"big logs: {elections}")
    rel_errors = [abs(r - expected) / abs(expected) for r in results]
    return {
        "n": n, "times_s": times_s, "results": results, "expected": expected,
        "answers": answers, "elections": elections,
        "median_ms": median(times_s) * 1000,
        "max_rel_error": max(rel_errors),
        "within_tolerance": all(e <= 1e-9 for e in rel_errors),
        "bit_identical": len({r.hex() for r in results}) == 1,
    }


# -- report -------------------------------------------------------------------


def table(figures: dict[str, Any], opts: argparse.Namespace) -> str:
    start, fail, small, big = (figures[k] for k in ("start", "failover", "small", "big"))
    check = (
        f"{'ok' if big['within_tolerance'] else 'FAIL'} (max rel err {big['max_rel_error']:.1e}), "
        f"{'bit-identical' if big['bit_identical'] else 'NOT bit-identical'} across "
        f"{len(big['results'])} runs"
    )
    rows = [
        ("start", f"{start['median_ms']:.0f} ms",
         f"`LocalCluster(nodes=3).start()` until a status names a leader, median of {opts.reps}"),
        ("start (listening)", f"{start['listening_median_ms']:.0f} ms",
         "spawn until all 3 printed DISTNODE_LISTENING (stdout mtime), median"),
        ("failover median", f"{fail['median_ms']:.0f} ms",
         f"SIGKILL leader until survivors' status names a new one (5 ms polls), {opts.kills} kills"),
        ("failover max", f"{fail['max_ms']:.0f} ms", "same runs, worst"),
        ("small median", f"{small['median_ms']:.2f} ms",
         f"`sum` over `{SMALL_SOURCE}` from a separate client process, {opts.jobs} sequential jobs "
         f"after {SMALL_WARMUP} warm-ups"),
        ("small p99", f"{small['p99_ms']:.2f} ms", "same jobs, nearest-rank p99"),
        ("big median", f"{big['median_ms']:.0f} ms",
         f"`sum` over npy float64 n={big['n']:.0e} ({big['n'] * 8 / 1e6:.0f} MB), client wall time, "
         f"median of {opts.reps} after 1 warm-up"),
        ("big check", check, "vs `np.sum` of the memmap, rel tol 1e-9"),
    ]
    lines = ["| figure | value | how measured |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "| cluster logs | became candidate | became pre-candidate | became leader |",
              "|---|---|---|---|"]
    start_totals = {
        key: sum(e[key] for e in start["elections"]) for key in ("candidate", "pre_candidate", "leader")
    }
    for name, counts in (
        (f"start ({opts.reps} clusters)", start_totals),
        (f"failover ({opts.kills} kills)", fail["elections"]),
        ("small", small["elections"]),
        ("big", big["elections"]),
    ):
        lines.append(f"| {name} | {counts['candidate']} | {counts['pre_candidate']} | {counts['leader']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts, finishes in < 1 min")
    parser.add_argument("--reps", type=int, help="start clusters and big jobs (default 5, quick 2)")
    parser.add_argument("--kills", type=int, help="failovers (default 10, quick 3)")
    parser.add_argument("--jobs", type=int, help="timed small jobs (default 300, quick 50)")
    parser.add_argument("--big-n", type=float, help="elements of the big .npy (default 1e8, quick 1e7)")
    parser.add_argument("--json", metavar="PATH", help="also write the raw numbers here")
    parser.add_argument("--client-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cluster", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=SMALL_WARMUP, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)

    if opts.client_worker:
        client_worker(opts.cluster, opts.jobs, opts.warmup)
        return 0

    quick = opts.quick
    opts.reps = opts.reps or (2 if quick else 5)
    opts.kills = opts.kills or (3 if quick else 10)
    opts.jobs = opts.jobs or (50 if quick else 300)
    big_n = int(opts.big_n or (1e7 if quick else 1e8))

    began = time.perf_counter()
    figures: dict[str, Any] = {}
    log(f"start: {opts.reps} clusters")
    figures["start"] = measure_start(opts.reps)
    log(f"failover: {opts.kills} kills")
    figures["failover"] = measure_failover(opts.kills)
    figures["small"] = measure_small(opts.jobs)
    log(f"big: n={big_n}, {opts.reps} reps")
    figures["big"] = measure_big(big_n, opts.reps)
    total_s = time.perf_counter() - began

    print(table(figures, opts))
    print(f"\n{os.cpu_count()} CPUs, python {sys.version.split()[0]}, took {total_s:.0f} s")
    if opts.json:
        payload = {
            "quick": quick, "reps": opts.reps, "kills": opts.kills, "jobs": opts.jobs,
            "cpus": os.cpu_count(), "total_s": total_s, "figures": figures,
        }
        Path(opts.json).write_text(json.dumps(payload, indent=2) + "\n")
        log(f"wrote {opts.json}")
    return 0 if figures["big"]["within_tolerance"] else 1


if __name__ == "__main__":
    sys.exit(main())
