"""A worker reuses the source a job's first call opened, for that job's later calls only, and
only briefly (node/server/worker.py, RecentSources)."""

from __future__ import annotations

import numpy as np
import pytest

from node.core.job import Job
from node.core.sources import ValuesSource
from node.server import worker
from node.server.worker import RecentSources

JOB = Job(op="sum", source="values:1,2,3")


def source() -> ValuesSource:
    return ValuesSource(np.array([1.0, 2.0, 3.0]))


def test_a_jobs_later_call_takes_the_source_its_first_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(worker.time, "monotonic", lambda: now[0])
    recent, opened = RecentSources(), source()
    recent.keep("j1", JOB, opened)
    assert recent.get("j1", JOB) is opened
    assert recent.get("j2", JOB) is None, "another job: opened again"
    assert recent.get("j1", Job(op="max", source="values:1,2,3")) is None, "another job under that id"
    now[0] += worker.SOURCE_REUSE_S + 0.01
    assert recent.get("j1", JOB) is None, "too old: opened again (the file may have changed)"


def test_only_the_most_recent_are_kept() -> None:
    recent = RecentSources()
    for number in range(worker.SOURCES_KEPT + 1):
        recent.keep(f"j{number}", JOB, source())
    assert recent.get("j0", JOB) is None
    assert recent.get(f"j{worker.SOURCES_KEPT}", JOB) is not None
