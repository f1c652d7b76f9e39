"""The separate client process: small jobs and throughput measured from outside the bench.

A user's client is a process of its own, so the small-job figures are not
taken from this process (which also runs the cluster's harness): the bench
re-runs itself with `--client-worker MODE --cluster ADDRESSES` and reads one
JSON line from its stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from node import AsyncClient, Client, LocalCluster

#: The script that re-runs itself as the client worker.
BENCH_SCRIPT = Path(__file__).resolve().parents[1] / "bench.py"
SMALL_SOURCE = "range:n=1000"
SMALL_EXPECTED = 999 * 1000 // 2


def client_process(cluster: LocalCluster, mode: str, **options: Any) -> dict[str, Any]:
    """Run the bench as a separate client process in `mode`; return its JSON answer."""
    command = [sys.executable, str(BENCH_SCRIPT), "--client-worker", mode,
               "--cluster", ",".join(cluster.addresses)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"client worker ({mode}) exited {done.returncode}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def client_worker(opts: argparse.Namespace) -> None:
    """The `--client-worker` mode: measure, print one JSON line."""
    addresses = opts.cluster.split(",")
    if opts.client_worker == "latency":
        print(json.dumps({"latencies_s": latencies_s(addresses, opts.jobs, opts.warmup)}), flush=True)
    elif opts.client_worker == "throughput":
        print(json.dumps(asyncio.run(throughput(addresses, opts.seconds, opts.inflight))), flush=True)
    else:
        raise SystemExit(f"unknown client worker mode {opts.client_worker!r}")


def latencies_s(addresses: list[str], jobs: int, warmup: int) -> list[float]:
    """Round trip of `jobs` sequential small jobs after `warmup` untimed ones, each answer checked."""
    latencies: list[float] = []
    with Client(addresses, timeout=30.0) as client:
        for i in range(warmup + jobs):
            t0 = time.perf_counter()
            answer = client.submit(op="sum", source=SMALL_SOURCE)
            elapsed = time.perf_counter() - t0
            if answer.result != SMALL_EXPECTED:
                raise SystemExit(f"wrong answer {answer.result!r}")
            if i >= warmup:
                latencies.append(elapsed)
    return latencies


async def throughput(addresses: list[str], seconds: float, inflight: int) -> dict[str, Any]:
    """Small jobs done in `seconds` by `inflight` coroutines of one client, after a warm-up."""
    async with AsyncClient(addresses, timeout=30.0) as client:
        async def one() -> None:
            answer = await client.submit(op="sum", source=SMALL_SOURCE)
            if answer.result != SMALL_EXPECTED:
                raise SystemExit(f"wrong answer {answer.result!r}")

        await asyncio.gather(*(one() for _ in range(2 * inflight)))  # warm-up
        done = 0
        started = time.perf_counter()
        stop_at = started + seconds

        async def lane() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await one()
                done += 1

        await asyncio.gather(*(lane() for _ in range(inflight)))
        elapsed = time.perf_counter() - started
    return {"jobs": done, "seconds": elapsed, "jobs_per_s": done / elapsed, "inflight": inflight}
