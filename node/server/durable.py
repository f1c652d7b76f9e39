"""Files that survive a crash: written whole or not at all, and the directory entry with them."""

from __future__ import annotations

import os
from pathlib import Path

#: Data is synced this many bytes at a time as it is written (`write_synced`).
SYNC_SLICE_BYTES = 4 << 20
#: The data of a file, not its times (fsync where there is no fdatasync: macOS).
_sync_data = getattr(os, "fdatasync", os.fsync)


def replace_durably(path: Path, *parts: bytes) -> None:
    """Write `parts` to a temporary file, fsync it, rename it over `path`, fsync the directory.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    tmp = path.with_suffix(".tmp")
    try:
        write_synced(tmp, *parts)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk gets its space back
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_synced(path: Path, *parts: bytes) -> None:
    """Write `parts` to `path` (created or truncated) and fsync it. Past SYNC_SLICE_BYTES, each
    slice is synced before the next is written: on ext4 (data=ordered) another file's fsync
    waits for every dirty page of the filesystem, and a journal append waited 100-250 ms
    behind a snapshot written whole."""
    with open(path, "wb") as handle:
        unsynced = 0
        for part in parts:
            data = memoryview(part)
            for start in range(0, len(data), SYNC_SLICE_BYTES):
                if unsynced >= SYNC_SLICE_BYTES:
                    handle.flush()
                    _sync_data(handle.fileno())
                    unsynced = 0
                piece = data[start:start + SYNC_SLICE_BYTES]
                handle.write(piece)
                unsynced += len(piece)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a new, renamed or removed file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
