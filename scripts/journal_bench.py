"""The durable-job figures (#14), in one run: what the journal costs and what it buys.

    python scripts/journal_bench.py [--ref REV] [--rounds 8] [--json PATH] [--quick]

1. fsync: `Journal.append` of one 200-byte entry, p50/p99 (one fsync each), in
   this run's temporary directory.
2. Attached small jobs, before and after: two 3-node clusters run at once, one
   from `--ref` (default: the last commit before the job table, e4e0078; its
   tree is unpacked with `git archive`) and one from this tree. A separate
   client process alternates between them round by round (the order flips
   every round): `--jobs` sequential `sum` over `range:n=1000` on unary Submit
   (p50, p99; the server's cost, as the "before" tree has no SubmitBatches) on
   each, then 32 in flight for 2 s (jobs/s) on each in the reverse order, so
   no latency phase starts while its own cluster digests the jobs of its
   throughput phase. Medians over the rounds, and ratios after/before:
   machine drift lands on both alike.
3. Detached submit -> acknowledged, p50/p99, on this tree's cluster: sequential
   `submit(detach=True)` of tiny jobs, each acknowledged once its record is
   committed (fsync'd on a majority).
4. Leader kill with 100 detached jobs queued: a fresh 3-node cluster, 100
   detached `sum` jobs of 2 x 10^7 elements submitted, the leader SIGKILLed at
   once; the time from the kill until `result` says done for all 100, and
   the same run without a kill, for reference.
5. Journal size after 1,000,000 small jobs with default retention: a one-node
   daemon in this process records 10^6 answered jobs through its ledger (the
   attached path: batches, fsync, the table, snapshots every 4096 entries or 4 MiB),
   and the journal's bytes on disk are read at 10^4, 10^5 and 10^6 jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import print_json, turn_order  # noqa: E402

from node import AsyncClient, Client, LocalCluster  # noqa: E402
from node.testing.ports import free_ports  # noqa: E402

BEFORE_REF = "e4e0078"
SMALL = "range:n=1000"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---- 1. one fsync ------------------------------------------------------------------------


def fsync_cost(workdir: Path, count: int) -> dict[str, float]:
    from node.core.raftlog import Entry
    from node.server.journal import Journal

    journal = Journal(workdir / "fsync")
    journal.open()
    samples = []
    for index in range(1, count + 1):
        started = time.perf_counter()
        journal.append(index - 1, (Entry(index, 1, "command", b"x" * 200),))
        samples.append((time.perf_counter() - started) * 1e6)
    journal.close()
    return {"append_p50_us": round(percentile(samples, 0.5), 1),
            "append_p99_us": round(percentile(samples, 0.99), 1)}


# ---- 2 and 3. two clusters side by side, one client process ------------------------------


def start_cluster(tree: Path, workdir: Path) -> tuple[list[str], list[subprocess.Popen[bytes]]]:
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    processes = []
    for i, address in enumerate(addresses):
        node = f"n{i + 1}"
        peers = ",".join(a for a in addresses if a != address)
        log = open(workdir / f"{node}.log", "wb")  # noqa: SIM115 - closed with the process
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "cli", "start", "--id", node, "--listen", address, "--peers", peers,
             "--data-dir", str(workdir / node), "--parent-pid", str(os.getpid())],
            stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=tree,
        ))
    return addresses, processes


def client_main(spec_path: str) -> None:
    """The separate client process: alternate the clusters round by round."""
    spec = json.loads(Path(spec_path).read_text())
    clients = {}
    for name, addresses in spec["clusters"].items():
        client = Client(addresses, timeout=30)
        # Unary Submit on both sides: the figure is what the journal costs the server, and the
        # "before" tree has no SubmitBatches (the blocking Client would fall back there anyway).
        client._streams.unsupported.update(addresses)
        client.wait_for_leader(timeout=30)
        for _ in range(100):  # warm-up: connections, leader discovery, the compute stack
            client.submit(op="sum", source=SMALL)
        clients[name] = client
    names = list(clients)
    rounds: list[dict[str, Any]] = []
    for round_ in range(spec["rounds"]):
        # Latency first, each cluster in turn, then throughput in the reverse order, so no
        # latency phase follows its own cluster's throughput phase: a cluster that just ran
        # thousands of jobs is still replicating and applying their records for a while.
        order = turn_order(names, round_)
        row: dict[str, Any] = {}
        for name in order:
            latencies = []
            for _ in range(spec["jobs"]):
                started = time.perf_counter()
                assert clients[name].submit(op="sum", source=SMALL).result == 499500
                latencies.append((time.perf_counter() - started) * 1000)
            row[name] = {"p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99)}
        for name in order[::-1]:
            row[name]["jobs_per_s"] = asyncio.run(throughput(spec["clusters"][name], spec["seconds"]))
        rounds.append(row)
    acks = []
    detached = clients["after"]
    ids = []
    for _ in range(spec["acks"]):
        started = time.perf_counter()
        ids.append(detached.submit(op="sum", source="values:1,2,3", detach=True))
        acks.append((time.perf_counter() - started) * 1000)
    assert all(detached.result(i, wait=30).result == 6 for i in ids)
    for client in clients.values():
        client.close()
    print(json.dumps({"rounds": rounds, "ack_ms": acks}))


async def throughput(addresses: list[str], seconds: float, inflight: int = 32) -> float:
    async with AsyncClient(addresses, timeout=30) as client:
        done = 0
        stop_at = time.perf_counter() + seconds

        async def lane() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await client.submit(op="sum", source=SMALL)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(inflight)))
        return done / (time.perf_counter() - started)


def side_by_side(
    ref: str, workdir: Path, rounds: int, jobs: int, seconds: float, acks: int, after: Path = ROOT
) -> dict[str, Any]:
    if Path(ref).is_dir():  # a tree already unpacked (e.g. this one with a change undone)
        before = Path(ref)
        workdir.mkdir(parents=True)
    else:
        before = workdir / "before-tree"
        before.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
    clusters, processes = {}, []
    try:
        for name, tree in (("before", before), ("after", after)):
            (workdir / name).mkdir()
            clusters[name], started = start_cluster(tree, workdir / name)
            processes += started
        spec = workdir / "spec.json"
        spec.write_text(json.dumps({"clusters": clusters, "rounds": rounds, "jobs": jobs,
                                    "seconds": seconds, "acks": acks}))
        out = subprocess.run([sys.executable, __file__, "--client-spec", str(spec)],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"client process failed:\n{out.stderr[-4000:]}")
        raw = json.loads(out.stdout)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
    per_round = raw["rounds"]

    def median(name: str, key: str) -> float:
        return float(statistics.median(r[name][key] for r in per_round))

    def ratio(key: str) -> float:
        return float(statistics.median(r["after"][key] / r["before"][key] for r in per_round))

    return {
        "ref_before": ref,
        "rounds": rounds,
        "before": {key: round(median("before", key), 3) for key in ("p50_ms", "p99_ms", "jobs_per_s")},
        "after": {key: round(median("after", key), 3) for key in ("p50_ms", "p99_ms", "jobs_per_s")},
        "ratio_after_over_before": {key: round(ratio(key), 3) for key in ("p50_ms", "p99_ms", "jobs_per_s")},
        "detached_ack_ms": {"p50": round(percentile(raw["ack_ms"], 0.5), 3),
                            "p99": round(percentile(raw["ack_ms"], 0.99), 3), "n": len(raw["ack_ms"])},
        "per_round": per_round,
    }


# ---- 4. leader kill with 100 queued jobs -------------------------------------------------


def leader_kill(workdir: Path, jobs: int, kill: bool) -> float:
    with LocalCluster(nodes=3, workdir=workdir) as cluster:
        leader = cluster.wait_for_leader()
        with Client(cluster.addresses, timeout=60) as client:
            n = 20_000_000
            ids = [client.submit(op="sum", source=f"range:n={n + i}", detach=True) for i in range(jobs)]
            started = time.perf_counter()
            if kill:
                cluster.kill(leader)
            for i, job_id in enumerate(ids):
                answer = client.result(job_id, wait=300)
                assert answer.result == (n + i) * (n + i - 1) // 2, (job_id, answer.result)
            return time.perf_counter() - started


# ---- 5. journal size after a million small jobs ------------------------------------------


async def until(predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the one-node daemon did not get there in time")
        await asyncio.sleep(0.001)


def recorded(daemon: Any, job_id: str) -> bool:
    return daemon.ledger.table.get(job_id) is not None


async def journal_size(workdir: Path, total: int) -> dict[str, Any]:
    import numpy as np

    from node.core.job import Job
    from node.server.api import Outcome
    from node.server.config import NodeConfig
    from node.server.daemon import Daemon

    port = free_ports(1)[0]
    daemon = Daemon(NodeConfig(node_id="n1", listen=f"127.0.0.1:{port}", peers=(), data_dir=workdir / "n1"))
    task = asyncio.create_task(daemon.serve(handle_signals=False))
    await until(lambda: daemon.is_leader and daemon.ledger.caught_up_term > 0)
    job = Job("sum", SMALL)
    answer = np.array(499500)
    marks: dict[str, int] = {}
    started = time.perf_counter()
    for i in range(1, total + 1):
        outcome = Outcome(f"job-{i}", "sum", answer, 1, ("n1",), 0.05)
        daemon.ledger.record_attached(f"job-{i}", job, outcome, time.time())
        if i % 200 == 0:  # the attached path's batch: what a busy leader answers per flush
            await asyncio.sleep(0.006)
        if i in (10_000, 100_000, total):
            await until(functools.partial(recorded, daemon, f"job-{i}"))
            marks[str(i)] = daemon.journal.disk_bytes()
    elapsed = time.perf_counter() - started
    table = len(daemon.ledger.table)
    daemon.stop()
    await task
    return {"jobs": total, "disk_bytes_at": marks, "table_jobs": table, "seconds": round(elapsed, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--ref", default=BEFORE_REF,
                        help=f"the 'before' tree: a git revision or a directory (default {BEFORE_REF})")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=300, help="sequential small jobs per round and cluster")
    parser.add_argument("--acks", type=int, default=1000, help="detached submits timed")
    parser.add_argument("--quick", action="store_true", help="2 rounds, 10^5 journal jobs, 20 queued")
    parser.add_argument("--after", type=Path, default=ROOT, help="the 'after' tree (default: this one)")
    parser.add_argument("--parts", default="fsync,ab,kill,size",
                        help="which figures: fsync, ab (attached before/after and detached acks), kill, size")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--client-spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_spec:
        client_main(args.client_spec)
        return 0
    rounds, queued, total = (2, 20, 100_000) if args.quick else (args.rounds, 100, 1_000_000)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="distnode-journal-bench-") as tmp:
        workdir = Path(tmp)
        parts = set(args.parts.split(","))
        if "fsync" in parts:
            out["fsync"] = fsync_cost(workdir, 2000)
            print(f"fsync: {out['fsync']}", file=sys.stderr, flush=True)
        if "ab" in parts:
            out["attached"] = side_by_side(args.ref, workdir / "ab", rounds, args.jobs, 2.0, args.acks,
                                           args.after)
            print(f"attached: {out['attached']['ratio_after_over_before']}", file=sys.stderr, flush=True)
        if "kill" in parts:
            out["leader_kill"] = {
                "queued_jobs": queued,
                "with_kill_s": round(leader_kill(workdir / "kill", queued, kill=True), 2),
                "without_kill_s": round(leader_kill(workdir / "nokill", queued, kill=False), 2),
            }
            print(f"leader kill: {out['leader_kill']}", file=sys.stderr, flush=True)
        if "size" in parts:
            out["journal_size"] = asyncio.run(journal_size(workdir / "size", total))
    print_json(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
