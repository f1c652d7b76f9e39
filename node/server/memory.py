"""Keep big buffers' pages mapped between jobs (glibc's malloc, Linux).

A vector answer of 10^6 float64 is 8 MB, and the daemon makes several such
buffers per job: numpy's output in a compute thread, the serialised reply,
gRPC's send slices. With glibc's defaults each is a fresh mapping that is
handed back to the kernel when freed (thread arenas give their free top
back with MADV_DONTNEED; big blocks are their own mmap), so the next job
page-faults every 4 KiB page again: ~4,400 faults and ~25 ms of CPU per such
job on our 2-core test machine, several times the arithmetic.

`tune_malloc()` asks glibc to keep them: one arena for all threads (so the
compute thread's blocks come from the main heap, which is only trimmed above
the threshold below), blocks up to 32 MiB from the heap instead of their own
mapping, and freed memory kept until 256 MiB is free (glibc caps the mmap
threshold at 32 MiB, so shard-sized temporaries of a 2^23-element shard,
64 MiB, are still fresh mappings each time). The cost is that a
daemon keeps the memory of its biggest recent job resident (bounded by the
trim threshold); it does not raise the idle footprint of a fresh daemon.
The bench's vector reduce is the figure this serves (docs/benchmarks.md).

Set DISTNODE_MALLOC=default to leave glibc alone. On other C libraries
(musl, macOS) this does nothing. ctypes rather than the GLIBC_TUNABLES
environment variable because the daemon is started by users and by our
harness alike and the variable must be set before the process starts.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("distnode.memory")

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

#: glibc refuses an mmap threshold above half its 64 MiB heap size.
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def tune_malloc() -> bool:
    """Apply the settings above; True if glibc took all three."""
    if os.environ.get("DISTNODE_MALLOC", "") == "default":
        return False
    try:
        # The process's own symbols, the C library's among them: `ctypes.util.find_library`
        # would run `ldconfig -p` in a subprocess, ~2 ms of CPU at every daemon's start.
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (M_ARENA_MAX, 1), (M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
    )
    taken = [mallopt(param, value) == 1 for param, value in settings]
    if not all(taken):
        log.debug("mallopt refused some settings: %s", taken)
    return all(taken)
