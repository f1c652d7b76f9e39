"""What the leader records of a job asked for with `trace` (node/wire/trace.py says the format).

Shard times are taken wherever a shard is computed, traced or not: three
clock reads a shard (`to_pool` when it is queued, `clocked` when its thread
begins and ends it), which travel in every partial so a worker need not
know whether anyone looks. The leader keeps spans only for a traced run
(`JobTrace`), so an untraced job pays nothing more.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import msgspec

from node.wire.trace import Span

R = TypeVar("R")
#: A `clocked` computation handed to a pool: its result, and when the thread began and ended it.
InPool = asyncio.Future[tuple[R, int, int]]


class ShardTimes(msgspec.Struct, frozen=True):
    """A worker's wall clock (ns): the shard handed to its pool, begun in a thread, done."""

    queued_ns: int
    started_ns: int
    finished_ns: int


def clocked(compute: Callable[..., R]) -> Callable[..., tuple[R, int, int]]:
    """`compute`, returning with its result when it began and ended (in the pool's thread)."""
    def run(*args: Any) -> tuple[R, int, int]:
        started_ns = time.time_ns()
        result = compute(*args)
        return result, started_ns, time.time_ns()
    return run


def to_pool(
    executor: Executor, compute: Callable[..., tuple[R, int, int]], *args: Any
) -> tuple[int, InPool[R]]:
    """Hand `compute(*args)` (a `clocked` function) to `executor` now: when (ns), and its future."""
    queued_ns = time.time_ns()
    return queued_ns, asyncio.get_running_loop().run_in_executor(executor, compute, *args)


class JobTrace:
    """The spans of one traced run, recorded on the leader `node_id`."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.started_ns = time.time_ns()
        self.spans: list[Span] = []
        #: shard -> the remote lane it was last handed to, so the worker's spans say which call.
        self.lane_of: dict[int, str] = {}
        #: Spans begun and not yet ended (an RPC under way), by key.
        self._open: dict[int, tuple[str, str, int, dict[str, Any]]] = {}
        self._keys = itertools.count()
        self._ended = False

    def span(self, name: str, lane: str, start_ns: int, end_ns: int, node: str | None = None,
             **args: Any) -> None:
        if not self._ended:  # the answer has gone with the spans it had
            self.spans.append(Span(name, node or self.node_id, lane, start_ns, end_ns, args))

    def begin(self, name: str, lane: str, **args: Any) -> int:
        """A span that starts now and ends at `end(key)`, or when the run ends if that is sooner
        (a worker's last Compute call returns after the leader has merged its partials)."""
        key = next(self._keys)
        self._open[key] = (name, lane, time.time_ns(), args)
        return key

    def end(self, key: int, **args: Any) -> None:
        opened = self._open.pop(key, None)
        if opened is not None:
            name, lane, start_ns, begun_with = opened
            self.span(name, lane, start_ns, time.time_ns(), **begun_with, **args)

    def shard(self, shard: int, node: str, times: ShardTimes, received_ns: int | None = None) -> None:
        """A shard computed on `node`: queued and computed there; a remote one's trip up its
        Reduce stream (worker's clock to the leader's) when `received_ns` is given."""
        lane = "compute" if node == self.node_id else f"shards for {self.lane_of.get(shard, 'rpc')}"
        self.span(f"shard {shard} queued", lane, times.queued_ns, times.started_ns, node, shard=shard)
        self.span(f"shard {shard}", lane, times.started_ns, times.finished_ns, node, shard=shard)
        if received_ns is not None and times.finished_ns:
            self.span(f"shard {shard} from {node}", f"reduce from {node}", times.finished_ns, received_ns,
                      shard=shard)

    def finish(self, op: str, shards: int) -> list[Span]:
        """The run ended now: its own span, the ones still open cut here, and every span recorded."""
        for key in list(self._open):
            self.end(key, open_when_the_job_ended=True)
        self.span(f"job {op}", "job", self.started_ns, time.time_ns(), shards=shards)
        self._ended = True
        return self.spans
