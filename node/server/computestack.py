"""numpy and the job code, imported in the compute thread once a leader is known.

A daemon starts, votes and leads before it loads the compute stack (see
node/core/job.py for why); the import runs off the event loop, after the
start-up storm of elections, and every job awaits `ready()` first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from concurrent.futures import Executor

log = logging.getLogger("distnode")


class ComputeStack:
    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._preload: concurrent.futures.Future[None] | None = None

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
