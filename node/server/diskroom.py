"""Room on the data dir's disk for the job table's records.

Below MIN_FREE_BYTES free, detached jobs are refused and attached jobs'
records skipped: what is left is kept for the log's own entries. An
attached job asks on its way to its record, so the answer is trusted for
FREE_SPACE_TTL_S (a statvfs per job is a few percent of the leader's time);
a detached job, refused to its client when there is no room, asks the disk
each time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from node.errors import LimitExceeded

log = logging.getLogger("distnode.ledger")

MIN_FREE_BYTES = 1 << 20
#: How long the attached path trusts its last look at the free space.
FREE_SPACE_TTL_S = 1.0


class DiskRoom:
    def __init__(self, disk_free: Callable[[], int], who: Callable[[], str]) -> None:
        #: Bytes free in --data-dir (shutil.disk_usage's), asked of the disk.
        self.disk_free = disk_free
        self._who = who
        self._free, self._free_at = 0, -FREE_SPACE_TTL_S

    def for_record(self) -> bool:
        """Room for an attached job's record, as last seen. A disk that cannot be asked (a data
        dir gone) has none; that is said once per FREE_SPACE_TTL_S, not once a job."""
        now = time.monotonic()
        if now - self._free_at > FREE_SPACE_TTL_S:
            try:
                free = self.disk_free()
            except OSError as exc:
                log.error("data-dir: its free space cannot be had (%s): attached jobs are not recorded", exc)
                free = 0
            self._free, self._free_at = free, now
        return self._free >= MIN_FREE_BYTES

    def forget(self) -> None:
        """Ask the disk again at the next record (tests: a disk that changed)."""
        self._free_at = -FREE_SPACE_TTL_S

    def check_detached(self) -> None:
        """LimitExceeded unless there is room for a detached job's records, asked now."""
        free = self.disk_free()
        if free < MIN_FREE_BYTES:
            raise LimitExceeded(f"data-dir: {free} bytes free on {self._who()}, under {MIN_FREE_BYTES}; "
                                "detached jobs are refused until there is room (attached jobs still run)")
