"""A worker reuses the source a job's first call opened, for that job's later calls only, and
only briefly (node/server/worker.py, RecentSources)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node._proto import distnode_pb2 as pb
from node.core.halt import Halt
from node.core.job import Job
from node.core.sources import DataSource, ValuesSource
from node.server import worker
from node.server.stealing import CallSkips, Skips
from node.server.worker import RecentSources, Worker

JOB = Job(op="sum", source="values:1,2,3")


def source() -> ValuesSource:
    return ValuesSource(np.array([1.0, 2.0, 3.0]))


def test_a_jobs_later_call_takes_the_source_its_first_opened() -> None:
    now = [100.0]
    recent, opened = RecentSources(clock=lambda: now[0]), source()
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


def test_a_workers_calls_of_one_job_open_its_source_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    np.save(tmp_path / "x.npy", np.arange(100.0))
    opened: list[str] = []

    def counted(job: Job, *rest: Any) -> DataSource:
        opened.append(job.source)
        return validate(job, *rest)

    validate = worker.validate_job
    monkeypatch.setattr(worker, "validate_job", counted)
    sent: list[int] = []

    def send(partial: pb.Partial) -> None:
        sent.append(partial.shard)

    job = Job(op="sum", source="npy:x.npy")
    with ThreadPoolExecutor(1) as pool:
        node = Worker("n2", None, pool, tmp_path, lambda leader: None)  # type: ignore[arg-type]
        for job_id, ranges in (("j1", [(0, 0, 50)]), ("j1", [(1, 50, 100)]), ("j2", [(0, 0, 100)])):
            skips = CallSkips(Skips(), [index for index, _, _ in ranges])
            node.compute_in_pool(job_id, job, ranges, Halt(), send, skips, 0)  # a compute link's call
    assert sent == [0, 1, 0] and opened == ["npy:x.npy", "npy:x.npy"], "j1 once, j2 once"
