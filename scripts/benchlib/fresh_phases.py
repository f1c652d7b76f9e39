"""The distnode figures that need clusters of their own: the big sum on 1..4 nodes, start-up,
idle with every heartbeat on gRPC, and 16 nodes; and `run_distnode`, the order in which a run
measures distnode.

Start-up is measured on fresh clusters because a start is the figure; the
gRPC-heartbeat idle figure needs daemons started with `--no-udp-heartbeats`;
the 16-node cluster is too big to share with the 3-node figures.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

from bench_peers.peerdata import summary
from cluster_timing import election_counts, first_leader_s, last_listening_s, started_cluster, timed_start

from benchlib import log
from benchlib.big_rounds import measure_scaling
from benchlib.cluster_phases import measure_idle, measure_main_cluster, record, small_jobs
from benchlib.data import Data, Params
from benchlib.loadwatch import LoadWatch
from node import LocalCluster

#: Groups `--skip-distnode` can leave out, "main" being the 3-node cluster's figures.
GROUPS = ("main", "scaling", "start", "idle_grpc", "scale")


def run_distnode(res: dict[str, Any], data: Data, p: Params, watch: LoadWatch, skip: set[str]) -> None:
    """Every distnode figure into `res["distnode"]`; a figure that fails goes to `res["errors"]`."""
    d, errors = res["distnode"], res["errors"]
    if "main" not in skip:
        measure_main_cluster(data, p, res, watch)
    groups: dict[str, Callable[[], Any]] = {
        "scaling": lambda: measure_scaling(data, p, res["skipped"]),
        "start": lambda: measure_start(p.start_reps),
        "idle_grpc": lambda: measure_idle_grpc(p.idle_s),
        "scale": lambda: measure_scale(p),
    }
    for group, step in groups.items():
        if group in skip:
            continue
        watch.enter(f"distnode: {group}")
        record(d, errors, group, step)


def measure_start(reps: int) -> dict[str, Any]:
    """`start()` of `reps` fresh 3-node clusters, with the last daemon listening and the leader's
    own "became leader" line timed from the same spawn."""
    leader_s, listening_s, elected_s = [], [], []
    for _ in range(reps):
        cluster, wall0_ns, start_s = timed_start(log, nodes=3)
        with contextlib.closing(cluster):
            leader_s.append(start_s)
            listening_s.append(last_listening_s(cluster, wall0_ns))
            elected = first_leader_s(cluster, wall0_ns)
            if elected is not None:
                elected_s.append(elected)
    return {**summary(leader_s), "listening_median_ms": statistics.median(listening_s) * 1000,
            "elected_median_ms": statistics.median(elected_s) * 1000 if elected_s else None}


def measure_idle_grpc(seconds: float) -> dict[str, Any]:
    """The idle figure again on a cluster whose heartbeats all go on gRPC (the fallback path)."""
    with contextlib.closing(started_cluster(log, nodes=3, extra_args=["--no-udp-heartbeats"])) as cluster:
        cluster.wait_all_alive(timeout_s=30.0)
        return measure_idle(cluster, seconds)


def start_scale_cluster(p: Params) -> tuple[LocalCluster, dict[str, float | None]]:
    """Start `p.scale_nodes` daemons; the times from spawn (seconds): a leader
    in its own log, the last daemon listening, and `start()` returning (every
    daemon listening, then a leader seen by a client)."""
    cluster, wall0_ns, harness_s = timed_start(log, nodes=p.scale_nodes, start_timeout_s=60.0)
    times = {"harness_s": harness_s, "listening_s": last_listening_s(cluster, wall0_ns),
             "elected_s": first_leader_s(cluster, wall0_ns)}
    return cluster, times


def scale_starts(p: Params) -> tuple[list[dict[str, float | None]], LocalCluster]:
    """The times of `p.scale_starts` starts; every cluster but the last is closed."""
    starts: list[dict[str, float | None]] = []
    for number in range(p.scale_starts):
        cluster, times = start_scale_cluster(p)
        starts.append(times)
        elected = times["elected_s"]
        log(f"scale: start {number + 1}/{p.scale_starts} of {p.scale_nodes} nodes: leader elected after "
            f"{'?' if elected is None else f'{elected * 1000:.0f}'} ms, all listening after "
            f"{(times['listening_s'] or 0) * 1000:.0f} ms, start() returned after "
            f"{(times['harness_s'] or 0) * 1000:.0f} ms")
        if number < p.scale_starts - 1:
            cluster.close()
    return starts, cluster


def watch_window(cluster: LocalCluster, p: Params) -> dict[str, Any]:
    """Small jobs on the big cluster, then elections counted over `p.scale_window_s` from the first leader."""
    first_term = cluster.client.status().term
    window0 = time.monotonic()
    before = election_counts(cluster)
    logged_before = {node: len(cluster.log(node)) for node in cluster.ids}
    log(f"scale: watching the last cluster for {p.scale_window_s:.0f} s")
    cluster.wait_all_alive(timeout_s=60.0)
    small = small_jobs(cluster, p.scale_small_jobs, p.small_warmup)
    while time.monotonic() - window0 < p.scale_window_s:
        time.sleep(min(1.0, max(0.0, p.scale_window_s - (time.monotonic() - window0))))
    after = election_counts(cluster)
    # Every role change and every stall in the window, as its node logged it: the cluster and
    # its logs are gone once the bench ends, and a spurious election needs its when, who and why.
    lines = [f"{node}: {line}" for node in cluster.ids
             for line in cluster.log(node)[logged_before[node]:].splitlines()]
    changes = [line for line in lines if "became " in line]
    stalls = [line for line in lines if "the clock woke" in line]  # a node that stalled an election timeout
    return {
        "small": small, "window_s": p.scale_window_s,
        "spurious_candidates": after["candidate"] - before["candidate"],
        "spurious_pre_candidates": after["pre_candidate"] - before["pre_candidate"],
        "role_changes": sorted(changes, key=lambda line: line.partition(": ")[2]),
        "stalls": sorted(stalls, key=lambda line: line.partition(": ")[2]),
        "term_first": first_term, "term_last": cluster.client.status().term,
    }


def measure_scale(p: Params) -> dict[str, Any]:
    starts, cluster = scale_starts(p)
    try:
        window = watch_window(cluster, p)
    finally:
        cluster.close()

    def seconds(key: str) -> list[float]:
        return [t[key] for t in starts if t[key] is not None]

    def median_ms(key: str) -> float | None:
        values = seconds(key)
        return statistics.median(values) * 1000 if values else None

    return {
        "nodes": p.scale_nodes, "starts": starts, "elected_ms": median_ms("elected_s"),
        "leader_ms": median_ms("harness_s"), "listening_ms": median_ms("listening_s"), **window,
        "elected": summary(seconds("elected_s")), "ready": summary(seconds("harness_s")),
    }
