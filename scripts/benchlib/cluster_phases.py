"""The distnode figures measured on one 3-node cluster: idle, small jobs, throughput, big jobs,
the file formats, a big job crossing a leader kill, failover.

They share a cluster because starting one costs a second and they do not
disturb each other in this order: idle first (nothing has run but one small
job), the kills last (each restarts the killed node and waits until all are
alive again).
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_peers.peerdata import summary
from cluster_timing import SETTLE_S, election_counts, started_cluster, time_failovers

from benchlib import log, process_cpu_s
from benchlib.big_rounds import BIG_JOB_TIMEOUT_S, measure_big
from benchlib.clients import SMALL_SOURCE, client_process
from benchlib.data import Data, Params, close_enough
from benchlib.formats_phase import measure_formats
from benchlib.loadwatch import LoadWatch
from benchlib.rounds import cpu_between_s, thread_times_s
from node import Client, LocalCluster


def record(out: dict[str, Any], errors: dict[str, str], name: str, step: Callable[[], Any]) -> None:
    """`out[name] = step()`; a failure goes to `errors` and the run goes on with the next figure."""
    try:
        out[name] = step()
    except Exception as exc:
        errors[f"distnode.{name}"] = f"{type(exc).__name__}: {exc}"[:4000]
        log(f"distnode {name} failed: {exc!r}")


def measure_main_cluster(data: Data, p: Params, res: dict[str, Any], watch: LoadWatch) -> None:
    """Everything that runs on one 3-node cluster, in an order that keeps each figure clean."""
    out, errors = res["distnode"], res["errors"]
    # The daemons read npy: files only under their --data-root.
    with contextlib.closing(started_cluster(log, nodes=3, data_root=data.big.parent)) as cluster:
        cluster.wait_all_alive(timeout_s=30.0)
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("idle", lambda: measure_idle(cluster, p.idle_s)),
            ("small", lambda: small_jobs(cluster, p.small_jobs, p.small_warmup)),
            ("throughput", lambda: client_process(
                cluster, "throughput", seconds=p.throughput_s, inflight=p.inflight)),
            ("big", lambda: measure_big(cluster, data, p, res)),
            *([("formats", lambda: measure_formats(cluster, data, p))] if data.formats else []),
            ("kill_crossing", lambda: measure_kill_crossing(cluster, data, p.kill_pairs)),
            ("failover", lambda: measure_failover(cluster, p.kills)),
        ]
        for name, step in steps:
            watch.enter(f"distnode: {name}")
            record(out, errors, name, when_all_alive(cluster, step))
        out["elections_main"] = election_counts(cluster)


def when_all_alive(cluster: LocalCluster, step: Callable[[], Any]) -> Callable[[], Any]:
    """`step`, started only once every node is alive: a figure never begins on a node still restarting."""
    def run() -> Any:
        cluster.wait_all_alive(timeout_s=30.0)
        return step()

    return run


# -- idle -------------------------------------------------------------------------


def proc_sample(pid: int) -> tuple[float, int, int]:
    """(cpu seconds, VmRSS bytes, RssAnon bytes) of a process, from /proc."""
    cpu = process_cpu_s(pid)
    rss = anon = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("RssAnon:"):
            anon = int(line.split()[1]) * 1024
    return cpu, rss, anon


def measure_idle(cluster: LocalCluster, seconds: float) -> dict[str, Any]:
    """RSS and CPU of each daemon over `seconds` of doing nothing after one small job; max over nodes."""
    cluster.client.submit(op="sum", source=SMALL_SOURCE)
    time.sleep(1.0)
    pids = {nid: pid for nid in cluster.ids if (pid := cluster.pid(nid))}
    before = {nid: (proc_sample(pid)[0], thread_times_s(pid)) for nid, pid in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall_s = time.monotonic() - t0
    nodes = {}
    for nid, pid in pids.items():
        cpu_s, rss, anon = proc_sample(pid)
        (cpu0_s, threads0), threads1 = before[nid], thread_times_s(pid)
        ticks_pct = (cpu_s - cpu0_s) / wall_s * 100  # ticks, but threads that ended are in them
        cpu_pct = ticks_pct
        if threads0 is not None and threads1 is not None:
            cpu_pct = cpu_between_s(threads0, threads1) / wall_s * 100
            if set(threads0) - set(threads1):  # what an ended thread spent is only in the ticks
                cpu_pct = max(cpu_pct, ticks_pct)
        nodes[nid] = {"cpu_pct": cpu_pct, "cpu_pct_ticks": ticks_pct,
                      "rss_mb": rss / 2**20, "rss_anon_mb": anon / 2**20}
    return {
        "seconds": wall_s, "nodes": nodes, "leader": cluster.leader(),
        "rss_mb": max(v["rss_mb"] for v in nodes.values()),
        "cpu_pct": max(v["cpu_pct"] for v in nodes.values()),
    }


# -- jobs -------------------------------------------------------------------------


def small_jobs(cluster: LocalCluster, jobs: int, warmup: int) -> dict[str, Any]:
    latencies = client_process(cluster, "latency", jobs=jobs, warmup=warmup)["latencies_s"]
    return summary(latencies)


# -- faults -----------------------------------------------------------------------


def measure_kill_crossing(cluster: LocalCluster, data: Data, pairs: int) -> dict[str, Any]:
    """`pairs` times: the big sum clean, then again with the leader killed once a shard is merged."""
    with Client(cluster.addresses, timeout=BIG_JOB_TIMEOUT_S) as client:
        runs = [kill_pair(cluster, client, f"npy:{data.big}", pair, pairs) for pair in range(pairs)]
    # A kill after the last shard was merged crosses nothing: only mid-job kills are the figure.
    crossed = [run for run in runs if run["landed_mid_job"]]
    clean_s, kill_s = [run["clean_s"] for run in crossed], [run["kill_s"] for run in crossed]
    correct = all(run["bit_identical"] and close_enough(run["result"], data.expected_sum) for run in runs)
    result: dict[str, Any] = {"runs": runs, "correct": correct}
    if not kill_s:
        result["note"] = "no kill landed mid-job (the job was merged before the kill); no figure"
        return result
    result.update(clean_median_ms=statistics.median(clean_s) * 1000,
                  kill_median_ms=statistics.median(kill_s) * 1000)
    # Each pair's own difference: a clean run and its kill run are minutes from the next pair's.
    extra_s = [kill - clean for kill, clean in zip(kill_s, clean_s, strict=True)]
    result["extra_ms"] = statistics.median(extra_s) * 1000
    result.update(clean=summary(clean_s), crossing=summary(kill_s))
    return result


def kill_pair(cluster: LocalCluster, client: Client, source: str, pair: int, pairs: int) -> dict[str, Any]:
    """One clean run, then one with a leader kill, both timed by the client's clock from its
    call to its answer; the killed node is restarted afterwards, and given one job untimed,
    so that the next pair's clean run does not pay for its cold start (it did: 110-121 ms
    against 38 ms for the first)."""
    cluster.wait_all_alive(timeout_s=30.0)
    time.sleep(SETTLE_S)
    started_s = time.perf_counter()
    clean = client.submit(op="sum", source=source)
    clean_s = time.perf_counter() - started_s
    leader = cluster.leader()
    try:
        run = cluster.run_with_fault(
            lambda: cluster.kill(leader), after_shards=1, client=client, timeout_s=BIG_JOB_TIMEOUT_S,
            op="sum", source=source, job_id=f"bench-kill-{uuid.uuid4()}",
        )
    except Exception as exc:
        raise RuntimeError(f"job across the kill failed: {exc!r}\n{cluster.logs()}") from exc
    answer, killed = run.answer, run.fault_after_s is not None
    same = float(answer.result).hex() == float(clean.result).hex()
    log(f"kill crossing {pair + 1}/{pairs}: clean {clean.elapsed_ms:.0f} ms, with kill of "
        f"{leader} at {(run.fault_after_s or 0) * 1000:.0f} ms: {run.elapsed_s * 1000:.0f} ms, "
        f"retries {answer.retries}, bit-identical {same}, mid-job {run.landed_mid_job}")
    if killed:
        cluster.restart(leader)
        cluster.wait_all_alive(timeout_s=30.0)
        client.submit(op="sum", source=source)  # its maps, pages and links, warm again
    return {"clean_s": clean_s, "kill_s": run.elapsed_s, "killed_at_s": run.fault_after_s,
            "killed": leader if killed else None, "retries": answer.retries,
            "new_leader": answer.leader, "bit_identical": same, "result": answer.result,
            "landed_mid_job": run.landed_mid_job}


def measure_failover(cluster: LocalCluster, kills: int) -> dict[str, Any]:
    times_s = time_failovers(cluster, kills, log)
    return {**summary(times_s), "max_ms": max(times_s) * 1000}
