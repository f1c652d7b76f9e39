"""When a node loads numpy and the job code (node/server/computestack.py): a leader at
once, a follower a little later, and any node at once when a job needs them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from node.server import computestack
from node.server.computestack import ComputeStack


class CountingExecutor(concurrent.futures.Executor):
    """Runs nothing; counts what it was asked to run, and refuses once shut down."""

    def __init__(self) -> None:
        self.submitted = 0
        self.closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if self.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        self.submitted += 1
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(None)
        return future


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_a_leader_loads_at_once_and_a_follower_later(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(computestack, "FOLLOWER_PRELOAD_S", (0.05, 0.1))
    leader, follower = CountingExecutor(), CountingExecutor()
    ComputeStack(leader).preload_soon(leading=True)
    assert leader.submitted == 1
    stack = ComputeStack(follower, random.Random(1))
    stack.preload_soon(leading=False)
    assert follower.submitted == 0, "a follower loaded with the leader"
    await wait_for(lambda: follower.submitted == 1)
    stack.preload_soon(leading=False)  # a new leader later: loaded already
    await asyncio.sleep(0.15)
    assert follower.submitted == 1


async def test_a_job_loads_a_followers_stack_at_once_and_a_stopped_node_not_at_all(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(computestack, "FOLLOWER_PRELOAD_S", (0.05, 0.1))
    executor = CountingExecutor()
    stack = ComputeStack(executor)
    stack.preload_soon(leading=False)
    await stack.ready()  # a Compute call came before the delay ran out
    assert executor.submitted == 1
    await asyncio.sleep(0.15)
    assert executor.submitted == 1

    stopped = CountingExecutor()
    ComputeStack(stopped).preload_soon(leading=False)
    stopped.closed = True  # the daemon stopped before the delay ran out
    await asyncio.sleep(0.15)
    assert stopped.submitted == 0 and not [r for r in caplog.records if r.levelname == "ERROR"]
