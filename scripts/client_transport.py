"""Each client's ways to send a small job, side by side: a node's local socket, a gRPC stream, a unary call.

    python scripts/client_transport.py [--runs 2] [--blocks 40] [--block-jobs 50] [--flight-s 1.0]

A 3-node `LocalCluster`; for each run a separate client process sends `sum`
over `range:n=1000` in blocks of `--block-jobs` sequential jobs, each block
one way, the ways turned by one every block (the first round of blocks is
warm-up), so the machine's drift lands on all alike:

- blocking `Client`: `local` (the default: the node's local socket once it
  has named it), `stream` (`local_socket=False`: its gRPC SubmitBatches
  stream) and `unary` (gRPC unary Submit, what the Client does for a node
  without SubmitBatches; set privately, for this measurement only);
- `AsyncClient`: `local` and `stream`, sequential jobs as above, then 32 jobs
  in flight for `--flight-s` seconds a block, in turn, as jobs per second.

Each client is built once and warmed up before its first block. Prints
p50/p99 per way and the ratios of p50s, per run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node import AsyncClient, Client, LocalCluster  # noqa: E402

SOURCE = "range:n=1000"
WARMUP_JOBS = 200
IN_FLIGHT = 32


def percentiles(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    at = [ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000 for q in (0.5, 0.99)]
    return "p50 {:.3f} ms, p99 {:.3f} ms".format(*at)


def check(result: object) -> None:
    if result != 499500:
        raise SystemExit(f"wrong answer {result!r}")


def blocking(addresses: list[str], blocks: int, block_jobs: int) -> dict[str, list[float]]:
    clients = {"local": Client(addresses, timeout=30),
               "stream": Client(addresses, timeout=30, local_socket=False),
               "unary": Client(addresses, timeout=30, local_socket=False)}
    clients["unary"]._streams.unsupported = set(addresses)  # private: unary Submit everywhere
    samples: dict[str, list[float]] = {way: [] for way in clients}
    try:
        for client in clients.values():
            for _ in range(WARMUP_JOBS):
                check(client.submit(op="sum", source=SOURCE).result)
        ways = list(clients)
        for block in range(blocks + len(ways)):
            way = ways[block % len(ways)]
            for _ in range(block_jobs):
                started = time.perf_counter()
                answer = clients[way].submit(op="sum", source=SOURCE)
                took_s = time.perf_counter() - started
                check(answer.result)
                if block >= len(ways):
                    samples[way].append(took_s)
    finally:
        for client in clients.values():
            client.close()
    return samples


async def asynchronous(
    addresses: list[str], blocks: int, block_jobs: int, flight_s: float
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    clients = {"local": AsyncClient(addresses, timeout=30),
               "stream": AsyncClient(addresses, timeout=30, local_socket=False)}
    samples: dict[str, list[float]] = {way: [] for way in clients}
    rates: dict[str, list[float]] = {way: [] for way in clients}

    async def in_flight(client: AsyncClient) -> float:
        done = 0
        deadline = time.monotonic() + flight_s

        async def lane() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                check((await client.submit(op="sum", source=SOURCE)).result)
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
        return done / (time.monotonic() - started)

    try:
        for client in clients.values():
            for _ in range(WARMUP_JOBS):
                check((await client.submit(op="sum", source=SOURCE)).result)
        ways = list(clients)
        for block in range(blocks + len(ways)):
            way = ways[block % len(ways)]
            for _ in range(block_jobs):
                started = time.perf_counter()
                answer = await clients[way].submit(op="sum", source=SOURCE)
                took_s = time.perf_counter() - started
                check(answer.result)
                if block >= len(ways):
                    samples[way].append(took_s)
            rate = await in_flight(clients[way])
            if block >= len(ways):
                rates[way].append(rate)
    finally:
        for client in clients.values():
            await client.close()
    return samples, rates


def report(name: str, samples: dict[str, list[float]]) -> None:
    for way, taken in samples.items():
        print(f"{name} {way}: {percentiles(taken)}")
    local = statistics.median(samples["local"])
    for way in samples:
        if way != "local":
            print(f"{name} p50 local / {way}: {local / statistics.median(samples[way]):.3f}")


def client(addresses: list[str], blocks: int, block_jobs: int, flight_s: float) -> None:
    """The client process: both clients, every way in turn, then the figures."""
    report("Client", blocking(addresses, blocks, block_jobs))
    samples, rates = asyncio.run(asynchronous(addresses, blocks, block_jobs, flight_s))
    report("AsyncClient", samples)
    for way, per_s in rates.items():
        print(f"AsyncClient {way}, {IN_FLIGHT} in flight: {statistics.median(per_s):,.0f} jobs/s")
    print(f"AsyncClient {IN_FLIGHT} in flight, local / stream: "
          f"{statistics.median(rates['local']) / statistics.median(rates['stream']):.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--block-jobs", type=int, default=50)
    parser.add_argument("--flight-s", type=float, default=1.0)
    parser.add_argument("--client", default=None, help=argparse.SUPPRESS)  # the client process
    args = parser.parse_args()
    if args.client is not None:
        client(args.client.split(","), args.blocks, args.block_jobs, args.flight_s)
        return 0
    with LocalCluster(nodes=3) as cluster:
        leader = cluster.wait_for_leader(timeout_s=30)
        first = [cluster.address(leader)] + [cluster.address(n) for n in cluster.ids if n != leader]
        for run in range(args.runs):
            print(f"run {run + 1}:", flush=True)
            subprocess.run([sys.executable, __file__, "--client", ",".join(first),
                            "--blocks", str(args.blocks), "--block-jobs", str(args.block_jobs),
                            "--flight-s", str(args.flight_s)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
