"""numpy and the job code, imported in the compute thread once a leader is known.

A daemon starts, votes and leads before it loads the compute stack (see
node/core/job.py for why); the import runs off the event loop, after the
start-up storm of elections, and every job awaits `ready()` first.

The leader loads it at once (the first job needs it); a follower at a random
point of FOLLOWER_PRELOAD_S after it learns the leader. When all sixteen
nodes of a fresh cluster loaded numpy the moment their first leader was
known, on 2 cores, the new leader could not read its followers' answers
within its first CheckQuorum window and stepped down (docs/timeline.md).
A job that needs a follower's stack sooner loads it then (`ready()`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
from concurrent.futures import Executor

log = logging.getLogger("distnode")

#: Seconds after learning the leader within which a follower loads its compute stack.
FOLLOWER_PRELOAD_S = (0.5, 3.0)


class ComputeStack:
    def __init__(self, executor: Executor, rng: random.Random | None = None) -> None:
        self.executor = executor
        self._preload: concurrent.futures.Future[None] | None = None
        self._rng = rng or random.Random()

    def preload_soon(self, leading: bool) -> None:
        """A leader is known: load now if this node leads, else a little later (see above)."""
        if self._preload is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet: nothing to wait for
            leading = True
        if leading:
            self.preload()
            return
        loop.call_later(self._rng.uniform(*FOLLOWER_PRELOAD_S), self._preload_quietly)

    def _preload_quietly(self) -> None:
        with contextlib.suppress(RuntimeError):  # the daemon stopped meanwhile: its executor is gone
            self.preload()

    def preload(self) -> concurrent.futures.Future[None]:
        """Start the import in the compute thread, once."""
        if self._preload is None:
            self._preload = self.executor.submit(_import_compute_stack)
            self._preload.add_done_callback(_log_preload_failure)
        return self._preload

    async def ready(self) -> None:
        """Wait, without blocking the event loop, until the job code can be built."""
        try:
            preload = self.preload()
        except RuntimeError:  # shutting down: the executor is gone
            return
        if not preload.done():
            with contextlib.suppress(Exception):  # logged; the import is retried on use
                await asyncio.wrap_future(preload)


def _import_compute_stack() -> None:
    import node.server.jobs
    import node.server.worker  # noqa: F401


def _log_preload_failure(preload: concurrent.futures.Future[None]) -> None:
    if not preload.cancelled() and preload.exception() is not None:
        log.error("loading the compute stack failed", exc_info=preload.exception())
