"""Counters and histograms kept in plain Python, for metrics.py to expose.

prometheus-client's own `Counter` and `Histogram` would do the counting,
but importing the package imports its HTTP exposition too (http.server,
wsgiref, urllib's request machinery): about 27 ms of CPU, a sixth of a
daemon's imports, paid by every daemon as it starts whether or not it is
ever scraped; a 16-node cluster starting on two cores paid it sixteen times
(docs/timeline.md, "Starting a large cluster"). Counting takes a few lines,
so it is done here, and the library is imported only by whoever reads the
metrics (metrics.py's registry: a node serving `--http`, a test), as the
collector of numbers kept elsewhere that its documentation describes.
Names, labels, buckets and values come out as the library's own types
would give them (tests/test_tally.py).

Each family takes a lock around its updates: shards are counted in the
compute threads, journal writes in the writer's.
"""

from __future__ import annotations

import bisect
import itertools
import math
import threading
from collections.abc import Sequence


class Counted:
    """A counter family: one value per tuple of label values (one, `()`, without labels)."""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name, self.help_text, self.label_names = name, help_text, tuple(label_names)
        self.values: dict[tuple[str, ...], float] = {} if label_names else {(): 0.0}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, labels: tuple[str, ...] = ()) -> None:
        with self._lock:
            self.values[labels] = self.values.get(labels, 0.0) + amount

    def labels(self, *values: str) -> Child:
        """The family's value for `values`, exported from now on (at 0 until counted)."""
        with self._lock:
            self.values.setdefault(values, 0.0)
        return Child(self, values)

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        with self._lock:
            return sorted(self.values.items())


class Child:
    """One labelled value of a `Counted`, looked up once where it is counted often."""

    __slots__ = ("family", "labels")

    def __init__(self, family: Counted, labels: tuple[str, ...]) -> None:
        self.family, self.labels = family, labels

    def inc(self, amount: float = 1.0) -> None:
        self.family.inc(amount, self.labels)


class Timed:
    """A histogram family over fixed bucket bounds (inclusive, as Prometheus' `le`)."""

    def __init__(
        self, name: str, help_text: str, bounds: Sequence[float], label_names: Sequence[str] = ()
    ) -> None:
        self.name, self.help_text, self.label_names = name, help_text, tuple(label_names)
        self.bounds = tuple(bounds)
        #: label values -> (observations per bucket, the last past every bound), their sum.
        self.values: dict[tuple[str, ...], tuple[list[int], float]] = {}
        self._lock = threading.Lock()
        if not label_names:
            self.values[()] = self._empty()

    def observe(self, seconds: float, labels: tuple[str, ...] = ()) -> None:
        """One observation; NaN goes into the sum only, in no bucket, as the library does."""
        slot = bisect.bisect_left(self.bounds, seconds)
        with self._lock:
            counts, total = self.values.get(labels) or self._empty()
            if not math.isnan(seconds):
                counts[slot] += 1
            self.values[labels] = (counts, total + seconds)

    def _empty(self) -> tuple[list[int], float]:
        return [0] * (len(self.bounds) + 1), 0.0

    def labels(self, *values: str) -> TimedChild:
        """The family's histogram for `values`, exported from now on (empty until observed)."""
        with self._lock:
            self.values.setdefault(values, self._empty())
        return TimedChild(self, values)

    def samples(self) -> list[tuple[tuple[str, ...], list[int], float]]:
        """Per label values: the cumulative count at each bound and past the last, and the sum."""
        with self._lock:
            found = [(labels, list(counts), total) for labels, (counts, total) in self.values.items()]
        return [(labels, list(itertools.accumulate(counts)), total)
                for labels, counts, total in sorted(found)]


class TimedChild:
    """One labelled histogram of a `Timed`, looked up once where it is observed often."""

    __slots__ = ("family", "labels")

    def __init__(self, family: Timed, labels: tuple[str, ...]) -> None:
        self.family, self.labels = family, labels

    def observe(self, seconds: float) -> None:
        self.family.observe(seconds, self.labels)

