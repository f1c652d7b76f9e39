"""Stopping a shard under way.

A shard is computed in a pool's thread, and the event loop that handed it over
cannot stop a thread: a job that ended (cancelled, past its deadline, its
leader gone) would keep its node's pool busy until the shard's end. For most
sources that is milliseconds; for a store of a great many tiny chunks, each a
few tens of microseconds of a format library's Python, it was minutes, and
every later job of that node queued behind it.

So whoever hands shards to a pool gives them a `Halt` (`under`), sets it once
their results are no longer wanted, and the pool's thread looks at it
(`check`) between the pieces of a shard: a chunk file, a row group, a run of
chunks a format's library decodes (`read_in_runs`). A halted shard raises
`ShardHalted`, which nobody awaits any more. A piece under way still ends: a
single numpy call over a shard's elements is not cut, and takes milliseconds.

The halt travels in a thread-local, not as an argument: a source's `read` is
called by code that knows nothing of jobs, and every piece loop can look
without a new parameter on every reader.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # the daemon imports this before its compute stack (node/core/job.py)
    import numpy as np

    Array = np.ndarray[Any, Any]

R = TypeVar("R")

#: A format's library reads a shard at most this many stored chunks at a time (`read_in_runs`):
#: at tens of microseconds a chunk, a halt is seen within a fraction of a second.
RUN_CHUNKS = 1024


class ShardHalted(Exception):
    """The shard's results were no longer wanted: its computation stopped between pieces."""


class Halt:
    """Set (from any thread) once the shards handed with it are no longer wanted."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True  # one store: atomic under the GIL, read by the pool's thread

    def is_set(self) -> bool:
        return self._set


_current = threading.local()


def under(halt: Halt, compute: Callable[..., R]) -> Callable[..., R]:
    """`compute`, which runs in a pool's thread, watching `halt` while it runs (`check`)."""
    def run(*args: Any) -> R:
        if halt.is_set():  # halted before the thread came to it
            raise ShardHalted("halted before it began")
        _current.halt = halt
        try:
            return compute(*args)
        finally:
            _current.halt = None
    return run


def check() -> None:
    """Raise ShardHalted if this thread's shard was halted; nothing outside `under`."""
    halt: Halt | None = getattr(_current, "halt", None)
    if halt is not None and halt.is_set():
        raise ShardHalted("halted between pieces")


def read_in_runs(start: int, stop: int, run_rows: int, read: Callable[[int, int], Array],
                 blank: Callable[[int], Array], read_into: Callable[[int, int, Array], None]) -> Array:
    """Rows [start, stop): `read` in one call if they are one run, else `read_into` one array
    from `blank(rows)` (the dtype and memory order one read would give, so a reduction over
    it has the same bits), `run_rows` at a time, with a `check` between runs. Each run is
    written where it belongs: no copy beyond what one read makes."""
    if stop - start <= run_rows:
        return read(start, stop)
    whole = blank(stop - start)
    for lo in range(start, stop, run_rows):
        if lo > start:
            check()
        hi = min(stop, lo + run_rows)
        read_into(lo, hi, whole[lo - start:hi - start])
    return whole


def run_rows(unit_rows: int, chunks_per_band: int) -> int:
    """Rows of about RUN_CHUNKS stored chunks, in whole units along axis 0 (a chunk, or a Zarr
    shard file read whole anyway), each band of `unit_rows` rows holding `chunks_per_band`
    chunks (more than one where columns are chunked too, or a unit holds many)."""
    return max(1, RUN_CHUNKS // max(1, chunks_per_band)) * max(1, unit_rows)
