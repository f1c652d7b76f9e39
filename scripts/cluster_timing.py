"""Cluster timings and log counts shared by bench.py and figures.py.

Both scripts import this module by name: Python puts the running script's
folder first on the import path.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import time
from collections.abc import Callable
from typing import Any

from node import Client, ClusterUnavailable, LocalCluster

#: How often the client asks the survivors who leads while a failover runs.
FAILOVER_POLL_S = 0.005
#: Pause between failovers so the restarted node is a settled follower again.
SETTLE_S = 0.5


def time_failovers(cluster: LocalCluster, kills: int, log: Callable[[str], None]) -> list[float]:
    """Kill the leader `kills` times; seconds from each kill to a new leader
    seen by a client of the survivors. The killed node is restarted each time."""
    times_s: list[float] = []
    for kill in range(kills):
        cluster.wait_all_alive(timeout_s=30.0)
        time.sleep(SETTLE_S)
        old = cluster.leader()
        survivors = [cluster.address(nid) for nid in cluster.ids if nid != old]
        with Client(survivors, timeout=30.0) as client:
            client.status(timeout=5.0)  # channels open before the clock starts
            t0 = time.perf_counter()
            cluster.kill(old)
            deadline = time.monotonic() + 30.0
            new = None
            while time.monotonic() < deadline:
                with contextlib.suppress(ClusterUnavailable):
                    view = client.status(timeout=0.5)
                    if view.leader is not None and view.leader != old:
                        new = view.leader
                        break
                time.sleep(FAILOVER_POLL_S)
            elapsed = time.perf_counter() - t0
        if new is None:
            raise TimeoutError(f"no new leader after killing {old}\n{cluster.logs()}")
        times_s.append(elapsed)
        log(f"failover {kill + 1}/{kills}: {old} killed, {new} leads after {elapsed * 1000:.0f} ms")
        cluster.restart(old)
    cluster.wait_all_alive(timeout_s=30.0)
    return times_s


def timed_start(
    log: Callable[[str], None], attempts: int = 3, **options: Any
) -> tuple[LocalCluster, int, float]:
    """A started LocalCluster, when its successful start began (time.time_ns) and
    how long `start()` took (s); a daemon that lost the race for its free port
    means a fresh try, since a port taken by another process is not a start-up time."""
    for attempt in range(attempts):
        cluster = LocalCluster(**options)
        wall0_ns = time.time_ns()
        t0 = time.perf_counter()
        try:
            cluster.start()
        except RuntimeError as exc:
            cluster.close()
            if "bind" not in str(exc) or attempt == attempts - 1:
                raise
            log(f"a daemon lost its port to another process; starting the cluster again ({exc!s:.80})")
            continue
        return cluster, wall0_ns, time.perf_counter() - t0
    raise AssertionError("unreachable")


def started_cluster(log: Callable[[str], None], attempts: int = 3, **options: Any) -> LocalCluster:
    return timed_start(log, attempts, **options)[0]


def last_listening_s(cluster: LocalCluster, wall0_ns: int) -> float:
    """Seconds from `wall0_ns` (time.time_ns) until the last daemon started serving.

    Each daemon writes exactly one stdout line, DISTNODE_LISTENING, so the
    file's mtime is when that node started serving.
    """
    last = max((cluster.workdir / f"{nid}.out").stat().st_mtime_ns for nid in cluster.ids)
    return (last - wall0_ns) / 1e9


#: A daemon's log line announcing its leadership; the time is local, in ms.
_LEADER_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ INFO became leader ", re.M)


def first_leader_s(cluster: LocalCluster, wall0_ns: int) -> float | None:
    """Seconds from `wall0_ns` (time.time_ns) until the first node logged
    "became leader": when the cluster had a leader, to the millisecond, as
    opposed to when a client polling the nodes first saw one."""
    stamps = [
        datetime.datetime.strptime(match, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for nid in cluster.ids for match in _LEADER_LINE.findall(cluster.log(nid))
    ]
    return min(stamps) - wall0_ns / 1e9 if stamps else None


def election_counts(cluster: LocalCluster) -> dict[str, int]:
    """How often any node of the cluster logged a (pre-)candidacy or leadership so far."""
    text = cluster.logs()
    return {
        "candidate": text.count("became candidate"),
        "pre_candidate": text.count("became pre-candidate"),
        "leader": text.count("became leader"),
    }
