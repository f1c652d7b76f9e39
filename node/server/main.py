"""`distnode start`'s entry point: logging, the event loop, one Daemon until it stops."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from node.server.config import NodeConfig
from node.server.daemon import Daemon
from node.server.logs import configure_logging


def run(config: NodeConfig) -> int:
    """Blocking entry point used by `distnode start`."""
    formatter = configure_logging(config.node_id, config.log_format)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        daemon = Daemon(config)
        if formatter is not None:
            formatter.term = lambda: daemon.election.term
        runner.run(daemon.serve())
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed, else asyncio's own loop (None).

    gRPC's asyncio server spends most of a small job's CPU in event-loop
    machinery; on uvloop the leader answers ~5-7 % more small jobs per second
    (scripts/bench.py, throughput). DISTNODE_LOOP=asyncio keeps the standard
    loop, e.g. to rule uvloop out when chasing a bug.
    """
    if os.environ.get("DISTNODE_LOOP", "") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
