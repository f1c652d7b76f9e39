"""The leader's detached runs: at most N driven at once, the others waiting their turn in
order, and only while the node leads (a node that leads again resumes every live job from
its table, so one that stepped down forgets what waited)."""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Callable, Coroutine
from typing import Any

Drive = Callable[[str], Coroutine[Any, Any, None]]


class Slots:
    def __init__(self, limit: int, is_leader: Callable[[], bool], drive: Drive) -> None:
        self._limit = max(1, limit)
        self._is_leader = is_leader
        self._drive = drive
        self._waiting: collections.deque[str] = collections.deque()
        self._driving: dict[str, asyncio.Task[None]] = {}

    def __contains__(self, job_id: str) -> bool:
        """Is the job driven now, or waiting for a slot?"""
        return job_id in self._driving or job_id in self._waiting

    def schedule(self, job_id: str) -> None:
        """Drive the job once a slot is free, unless it is driven or waiting already. A node
        that does not lead drives nothing and keeps nothing waiting: a job left waiting there
        would be taken for one on its way when the node leads again, and never run."""
        if not self._is_leader():
            return
        if job_id not in self:
            self._waiting.append(job_id)
        self._pump()

    def _pump(self) -> None:
        while self._waiting and len(self._driving) < self._limit and self._is_leader():
            job_id = self._waiting.popleft()
            task = asyncio.get_running_loop().create_task(self._drive(job_id))
            self._driving[job_id] = task
            task.add_done_callback(functools.partial(self._drove, job_id))

    def _drove(self, job_id: str, _: asyncio.Task[None]) -> None:
        self._driving.pop(job_id, None)
        self._pump()

    def stop(self) -> list[asyncio.Task[None]]:
        """Not the leader any more: what waited is forgotten, what runs is cancelled (its tasks)."""
        self._waiting.clear()
        tasks = list(self._driving.values())
        for task in tasks:
            task.cancel()
        return tasks
