"""The node's own counters and histograms (node/server/tally.py), read through metrics.py's
registry: the same text prometheus-client's Counter and Histogram give for the same
updates, none lost between threads."""

from __future__ import annotations

import math
import random
import sys
import threading
from typing import cast

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from node.server.metrics import BUCKETS_S, OUTCOMES, NodeMetrics
from node.server.tally import Counted, Timed


def text(registry: CollectorRegistry) -> list[str]:
    """The exposition's lines but the `_created` ones (when a metric was made: ours have none)."""
    return sorted(line for line in generate_latest(registry).decode().splitlines() if "_created" not in line)


def mirror(ours: NodeMetrics) -> tuple[CollectorRegistry, dict[str, Counter | Histogram]]:
    """prometheus-client's own Counter and Histogram for each of `ours`'s families."""
    theirs = CollectorRegistry()
    made: dict[str, Counter | Histogram] = {}
    for counted in ours._counted:
        made[counted.name] = Counter(counted.name, counted.help_text, counted.label_names, registry=theirs)
    for timed in ours._timed:
        made[timed.name] = Histogram(timed.name, timed.help_text, timed.label_names, buckets=timed.bounds,
                                     registry=theirs)
    return theirs, made


def test_every_family_reads_as_prometheus_clients_own_types_give_it() -> None:
    """The same updates on every family of a NodeMetrics and on the library's own types made
    alike: the same text, HELP and TYPE lines, names, labels, buckets and values."""
    ours = NodeMetrics()
    theirs, made = mirror(ours)
    for outcome in OUTCOMES:  # NodeMetrics exports every outcome from the start
        cast(Counter, made["distnode_jobs"]).labels(outcome)
    rng = random.Random(7)
    # On a bound (counted in that bucket), between bounds, past the last, zero, NaN (the sum only).
    seconds = [*BUCKETS_S, 0.0, 0.0003, 7.0, 61.0, 1e9, math.nan] + [rng.uniform(0, 2) for _ in range(50)]
    for counted in ours._counted:
        for _ in range(20):
            labels = tuple(rng.choice(("a", "b", "sum")) for _ in counted.label_names)
            amount = rng.choice((1.0, 2.5, 1000.0))
            (counted.labels(*labels).inc(amount) if labels else counted.inc(amount))
            theirs_family = cast(Counter, made[counted.name])
            (theirs_family.labels(*labels) if labels else theirs_family).inc(amount)
    for timed in ours._timed:
        for value in seconds:
            labels = tuple(rng.choice(("a", "b")) for _ in timed.label_names)
            (timed.labels(*labels).observe(value) if labels else timed.observe(value))
            theirs_timing = cast(Histogram, made[timed.name])
            (theirs_timing.labels(*labels) if labels else theirs_timing).observe(value)
    ours.job_ended("var", "done", 0.25)
    cast(Counter, made["distnode_jobs"]).labels("done").inc()
    cast(Histogram, made["distnode_job_duration_seconds"]).labels("var").observe(0.25)
    assert text(ours.registry) == text(theirs)


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
