"""JobManager on its own: one node, no workers, no RPC."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from node.compute import Job
from node.jobs import ANSWER_CACHE_BYTES, JobManager
from node.membership import PeerTable


async def test_answer_cache_is_bounded_by_bytes(tmp_path: Any) -> None:
    """Remembered answers are evicted oldest first once they pass the byte budget."""
    vector_elems = 1 << 20  # 8 MiB of float64 per answer
    matrix = tmp_path / "m.npy"
    np.save(matrix, np.ones((2, vector_elems)))
    jobs = JobManager(
        "n1", PeerTable((), failure_ms=1000), remote=_no_remote, executor=ThreadPoolExecutor(1),
        shard_elems=1 << 22, data_root=tmp_path,
    )
    job = Job(op="sum", source="npy:m.npy", axis=0)
    answers = ANSWER_CACHE_BYTES // (8 * vector_elems) + 4
    for i in range(answers):
        outcome = await jobs.submit(f"job-{i}", job)
        assert outcome.result.shape == (vector_elems,)
    kept = [i for i in range(answers) if jobs.progress(f"job-{i}")[0]]
    assert kept == list(range(answers - len(kept), answers))  # the newest ones
    assert 0 < len(kept) * 8 * vector_elems <= ANSWER_CACHE_BYTES


async def _no_remote(*args: Any) -> None:
    await asyncio.sleep(0)
    raise AssertionError("a one-node job must not call workers")
