"""The daemon's open-files limit, raised to what the system allows before it serves.

A node keeps an open descriptor per cached memory map (numpy's memmap
holds a duplicate of the file's: up to MAX_MAPS chunk files and
NPY_CACHE_SIZE `.npy` files), besides its sockets, journal and logs. Many
systems start processes with a soft limit of 1,024 descriptors and a hard
limit far above it; at the soft limit a node reading a Zarr array of a
thousand chunk files could no longer accept a connection. Raising the soft
limit to the hard one is what servers do (Go's runtime does it for every
program); an unprivileged process may always do it.
"""

from __future__ import annotations

import resource


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):  # a sandbox that refuses it: keep what we were given
        return soft
    return hard
