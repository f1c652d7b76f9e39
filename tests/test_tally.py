"""The node's own counters and histograms (node/server/tally.py), read through metrics.py's
registry: the same samples prometheus-client's Counter and Histogram give for the same
updates, none lost between threads."""

from __future__ import annotations

import sys
import threading

from prometheus_client import CollectorRegistry, Counter, Histogram

from node.server.metrics import BUCKETS_S, NodeMetrics
from node.server.tally import Counted, Timed


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but the `_created` ones (the time a metric was made: ours has none)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples if not s.name.endswith("_created")}


def test_counts_and_timings_read_as_prometheus_clients_own_types_give_them() -> None:
    ours = NodeMetrics()
    theirs = CollectorRegistry()
    rtt = Histogram("distnode_heartbeat_rtt_seconds", "a leader's beat, sent to answered",
                    buckets=BUCKETS_S, registry=theirs)
    took = Histogram("distnode_job_duration_seconds", "jobs run as leader, start to answer", ["op"],
                     buckets=BUCKETS_S, registry=theirs)
    moved = Counter("distnode_shards_moved", "shards taken from a busy node for an idle one, as leader",
                    registry=theirs)
    # On a bound (it counts in that bucket), between bounds, past the last, zero.
    for seconds in (0.0001, 0.0003, 0.001, 0.0025, 7.0, 60.0, 61.0, 0.0):
        ours.heartbeat_rtt.observe(seconds)
        rtt.observe(seconds)
    for op, seconds in (("sum", 0.03), ("sum", 0.5), ("var", 2.5)):
        ours.job_ended(op, "done", seconds)
        took.labels(op).observe(seconds)
    for _ in range(3):
        ours.shards_moved.inc()
        moved.inc()
    mine = samples(ours.registry)
    for name, labels in samples(theirs):
        assert mine[(name, labels)] == samples(theirs)[(name, labels)], (name, labels)
    assert mine[("distnode_heartbeat_rtt_seconds_bucket", (("le", "0.0001"),))] == 2  # 0 and the bound
    assert mine[("distnode_heartbeat_rtt_seconds_bucket", (("le", "+Inf"),))] == 8
    assert mine[("distnode_jobs_total", (("outcome", "done"),))] == 3
    assert mine[("distnode_jobs_total", (("outcome", "failed"),))] == 0, "every outcome is exported"


def test_updates_from_many_threads_are_all_counted() -> None:
    counted, timed = Counted("c", "c"), Timed("t", "t", (0.5,), ["kind"])
    child = timed.labels("x")
    switch_s = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the GIL changes hands all the time: a real race
    try:
        def work() -> None:
            for _ in range(20_000):
                counted.inc()
                child.observe(1.0)
        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switch_s)
    assert counted.samples() == [((), 80_000.0)]
    assert timed.samples() == [(("x",), [0, 80_000], 80_000.0)]
