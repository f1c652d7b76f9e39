"""When a node snapshots its state machine (Raft §7), and the snapshot's write off the event loop.

When. A snapshot is due once the log holds COMPACT_ENTRIES applied entries
or COMPACT_BYTES of them, both scaled by how many times COMPACT_BYTES the
last snapshot held (at least once): so a snapshot of S bytes waits for S
bytes of entries, or for S / COMPACT_BYTES * COMPACT_ENTRIES entries, and
compaction writes about as much as the log took in (at most a KiB a small
entry), whatever the table holds. Fixed thresholds did not: a detached
job's answer may be 16 MiB and the table keeps up to `--keep-result-bytes`
of them, so a table of large vector answers was rewritten whole, 43-85 MB,
on every node after every such job (docs/journal.md, "Large answers in the
table"). A leader also snapshots as soon as a follower can take the log again
only from a snapshot: an entry written before the leader heard of that
follower's smaller --max-message-bytes fits no message to it
(`Replication.snapshot_wanted`; docs/journal.md, "Followers with a smaller
limit").

How. The table's records are taken on the event loop (a list of the bytes
of each, which nothing changes later); they are joined, checksummed and
written to `snapshot.next`, synced a slice at a time, and renamed over the
live snapshot in a thread of the journal's writer that no append waits for
(`LogWriter.aside`, `Journal.write_next_snapshot`). The loop goes on
serving meanwhile, answering its leader and its clients. Back on the loop,
once no append is pending, the journal forgets the entries the snapshot
holds and the segments it covers, and the core's log is compacted
(`Journal.adopt_snapshot`); the segments are deleted in that thread again
(`Journal.delete_covered`). Written on the loop, a snapshot of 75 MB held
it 230-530 ms, and its peers declared it dead.

A snapshot that the leader sent meanwhile (a follower that fell behind)
supersedes ours: the rename or the adoption finds the journal past it, and
ours is dropped. A write that fails is said, its file removed, and tried
again after RETRY_S, twice as long after each failure in a row (at most
MAX_RETRY_S).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from node.core.election import Election
from node.core.raftlog import Entry
from node.server.journal import Journal, Snapshot
from node.server.logwriter import LogWriter

log = logging.getLogger("distnode")

#: A snapshot is due once the log holds this many applied entries, or this many bytes of
#: them; both times the last snapshot's size over COMPACT_BYTES, where that is more than 1.
COMPACT_ENTRIES = 4096
COMPACT_BYTES = 4 << 20
#: After a snapshot could not be written, the seconds before the next try; doubled after
#: each failure in a row, up to MAX_RETRY_S.
RETRY_S = 5.0
MAX_RETRY_S = 300.0


class Compactor:
    """One node's snapshots: `applied` and `restored` count, `step` (on the event loop,
    after each batch of the core's outputs) starts a write or adopts a finished one."""

    def __init__(
        self, journal: Journal, writer: LogWriter, election: Election, records: Callable[[], Sequence[bytes]],
        snapshot_wanted: Callable[[], int] = lambda: 0,
    ) -> None:
        self._journal = journal
        self._writer = writer
        self._election = election
        #: The state machine's records; the snapshot is them, one per line.
        self._records = records
        #: The index a snapshot must reach now, or 0 (Replication.snapshot_wanted).
        self._snapshot_wanted = snapshot_wanted
        #: Bytes of the entries applied since the last snapshot (taken here, or the leader's).
        self._applied_bytes = 0
        #: Bytes of that snapshot: the yardstick of the second rule.
        self._snapshot_bytes = len(journal.snapshot.data)
        self._writing: asyncio.Future[Snapshot | None] | None = None
        #: On disk, not adopted in memory yet.
        self._written: Snapshot | None = None
        #: Bytes counted when the write under way began, given back if it fails.
        self._counted = 0
        self._retry_at = 0.0
        self._failures = 0

    def applied(self, entries: tuple[Entry, ...]) -> None:
        self._applied_bytes += sum(len(entry.data) for entry in entries)

    def restored(self, data: bytes) -> None:
        """The leader's snapshot replaced the state machine: count from it."""
        self._applied_bytes, self._counted, self._snapshot_bytes = 0, 0, len(data)

    def step(self, applied: int) -> None:
        if self._writer.closed:  # the daemon is stopping
            return
        if self._written is not None:
            self._adopt()
            return
        if self._writing is not None or time.monotonic() < self._retry_at:
            return
        raft_log = self._election.log
        held = applied - raft_log.snapshot_index
        scale = max(1.0, self._snapshot_bytes / COMPACT_BYTES)
        # A follower that can take the log again only from a snapshot (Replication.snapshot_wanted)
        # gets one now, once the entry it cannot take is applied here.
        wanted = 0 < self._snapshot_wanted() <= applied
        if held <= 0 or (not wanted and held < COMPACT_ENTRIES * scale
                         and self._applied_bytes < COMPACT_BYTES * scale):
            return
        term = raft_log.term_at(applied) or 0
        records = list(self._records())
        self._counted, self._applied_bytes = self._applied_bytes, 0
        self._writing = self._writer.aside(self._write, applied, term, records)
        self._writing.add_done_callback(self._wrote)

    def _write(self, index: int, term: int, records: list[bytes]) -> Snapshot | None:
        """In the writer's aside thread: the snapshot on disk, or None if the leader's
        newer one is there."""
        snapshot = Snapshot(index, term, b"\n".join(records))
        return snapshot if self._journal.write_next_snapshot(snapshot) else None

    def _wrote(self, writing: asyncio.Future[Snapshot | None]) -> None:
        self._writing = None
        if writing.cancelled():  # the daemon is stopping
            return
        error = writing.exception()
        if error is not None:
            self._failed(error)
            return
        self._written = writing.result()
        if self._written is None:
            self._superseded()
            return
        self._adopt()

    def _adopt(self) -> None:
        """Memory follows the snapshot on disk, once no append is pending (one at a time
        touches the journal); until then `step` tries again after each batch of outputs."""
        snapshot = self._written
        if snapshot is None or self._writer.in_flight or self._writer.closed:
            return
        self._written = None
        try:
            adopted = self._writer.run(self._journal.adopt_snapshot, snapshot)
        except OSError as exc:  # an earlier write failed and memory is going back to the disk
            self._failed(exc)
            return
        raft_log = self._election.log
        ours = raft_log.snapshot_index < snapshot.index and raft_log.term_at(snapshot.index) == snapshot.term
        if not (adopted and ours):
            self._superseded()
            return
        self._election.compact(snapshot.index, snapshot.data)
        self._writer.aside(self._journal.delete_covered).add_done_callback(_said)
        self._snapshot_bytes = len(snapshot.data)
        self._counted = self._failures = 0

    def _superseded(self) -> None:
        """The leader's snapshot came while ours was written (`restored` counts from it); the
        next is not tried at once, should the journal be past ours for another reason."""
        self._applied_bytes += self._counted
        self._counted = 0
        self._retry_at = time.monotonic() + RETRY_S

    def _failed(self, error: BaseException) -> None:
        wait_s = min(MAX_RETRY_S, RETRY_S * 2 ** min(self._failures, 16))
        self._failures += 1
        log.warning("cannot write a snapshot in %s: %s; the log keeps growing, next try in %.0f s",
                    self._journal.dir, error, wait_s)
        self._applied_bytes += self._counted
        self._counted = 0
        self._retry_at = time.monotonic() + wait_s


def _said(deleting: asyncio.Future[None]) -> None:
    """A deletion that failed in a way `delete_covered` does not expect is said, not lost."""
    if not deleting.cancelled() and deleting.exception() is not None:
        log.error("deleting the segments a snapshot covers failed", exc_info=deleting.exception())
