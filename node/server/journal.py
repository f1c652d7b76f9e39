"""The journal on disk: Raft's log as append-only, checksummed segment files, and a snapshot.

What the consensus core asks (`AppendLog(after, entries)`: drop what follows
`after`, append these) becomes one record appended to the active segment and
one fsync, however many entries arrived together. Replaying the records in
order rebuilds the log; the snapshot (one file, replaced atomically) holds the
state machine up to its index, and segments wholly below it are deleted.

A record is `length (u32) | crc32 (u32) | payload`, the payload `after (u64)`
then per entry `index (u64) | term (u64) | kind (u8) | size (u32) | data`.
The snapshot file is `index (u64) | term (u64) | first SEQ replayed (u64) |
crc32 (u32) of those fields and the data | size (u32) | data` (an earlier
version's crc32 covers the data alone, and is still read).
Segments are `segment-SEQ.log`, replayed in SEQ order. On open, a damaged
record in the newest segment with no valid record anywhere after it is a
write that never finished: it is cut, never trusted, and logged. Any other
damage may hold entries this node acknowledged: the node refuses to start,
naming the file and the offset, rather than silently forget them.

Why our own format rather than SQLite in WAL mode (stdlib, checksummed): its
recovery stops at the first frame whose cumulative checksum fails, so one bad
sector in the middle of the WAL silently drops every commit after it; it
cannot tell a torn tail from damage, and Raft must (a node that forgets an
acknowledged entry can undo a majority). LMDB would need a binding and a fixed
map size. The access pattern, append and sometimes cut a suffix or a prefix,
is a log's, and this module is the whole of it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgspec

from node.core.raftlog import KINDS, Entry, RaftLog
from node.errors import StateFileError
from node.server.durable import fsync_dir, replace_durably, write_synced

log = logging.getLogger("distnode")

JOURNAL_DIR = "journal"
SNAPSHOT_FILE = "snapshot"
#: This node's next snapshot while it is written off the event loop, until renamed over SNAPSHOT_FILE.
NEXT_SNAPSHOT_FILE = "snapshot.next"
#: A new segment is started once the active one passes this size.
SEGMENT_BYTES = 8 << 20

_RECORD = struct.Struct("<II")  # payload length, crc32 of the payload
_AFTER = struct.Struct("<Q")
_ENTRY = struct.Struct("<QQBI")  # index, term, kind, data size
_SNAPSHOT = struct.Struct("<QQQII")  # index, term, first segment replayed, crc32, data size
_SNAPSHOT_FIELDS = struct.Struct("<QQQ")  # what the crc32 covers before the data (an earlier version: none)


class JournalDamaged(StateFileError):
    """The journal holds damage that is not a torn last write; the node will not guess."""


class Snapshot(msgspec.Struct, frozen=True):
    index: int = 0
    term: int = 0
    data: bytes = b""


class _Segment(msgspec.Struct):
    seq: int
    path: Path
    last_index: int  # the largest index a record in it holds (0: none)


def encode_record(after: int, entries: tuple[Entry, ...]) -> bytes:
    parts = [_AFTER.pack(after)]
    for entry in entries:
        parts.append(_ENTRY.pack(entry.index, entry.term, KINDS.index(entry.kind), len(entry.data)))
        parts.append(entry.data)
    payload = b"".join(parts)
    return _RECORD.pack(len(payload), zlib.crc32(payload)) + payload


def decode_payload(payload: bytes) -> tuple[int, tuple[Entry, ...]]:
    """A checksummed payload back into (after, entries); ValueError if it does not parse."""
    try:
        (after,) = _AFTER.unpack_from(payload)
        entries = []
        offset = _AFTER.size
        while offset < len(payload):
            index, term, kind, size = _ENTRY.unpack_from(payload, offset)
            offset += _ENTRY.size
            if offset + size > len(payload):
                raise ValueError("an entry runs past its record")
            entries.append(Entry(index, term, KINDS[kind], payload[offset:offset + size]))
            offset += size
    except (struct.error, IndexError) as exc:
        raise ValueError(str(exc)) from exc
    return after, tuple(entries)


def _damage(data: bytes, offset: int) -> str | None:
    """Why the record at `offset` is not whole and valid, or None if it is."""
    if len(data) - offset < _RECORD.size:
        return "short header"
    length, crc = _RECORD.unpack_from(data, offset)
    end = offset + _RECORD.size + length
    if end > len(data):
        return "length past the end"
    if length < _AFTER.size or zlib.crc32(data[offset + _RECORD.size:end]) != crc:
        return "checksum"
    return None


def _valid_record_after(data: bytes, offset: int) -> bool:
    """Is there a whole, valid record starting anywhere after `offset`? (Slow; only on damage.)"""
    return any(_damage(data, start) is None for start in range(offset + 1, len(data) - _RECORD.size + 1))


class Journal:
    """One node's durable log. `open()` once; then `append`, `save_snapshot`, `restore`."""

    def __init__(self, data_dir: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = data_dir / JOURNAL_DIR
        self.segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._fd = -1
        self._size = 0
        #: The highest segment number created or found: a number is tried once (`_roll`).
        self._last_seq = 0
        #: A failed write's bytes could not be cut off yet: the next append cuts them first.
        self._torn = False
        self.snapshot = Snapshot()
        #: What the disk holds, kept in step with every write that returned.
        self.log = RaftLog()
        #: The index of the snapshot file on disk, and who may replace that file: the event
        #: loop's writes and the thread that writes this node's own (write_next_snapshot).
        self._snapshot_on_disk = 0
        self._first_seq_on_disk = 0
        self._replacing = threading.Lock()
        #: Segments an adopted snapshot covers, oldest first, still to delete (`delete_covered`):
        #: the event loop adds to them, a thread deletes them, one thread at a time.
        self._covered: list[Path] = []
        self._covering = threading.Lock()
        self._deleting = threading.Lock()

    # ---- opening --------------------------------------------------------------

    def open(self) -> RaftLog:
        """Read the snapshot and replay the segments after it; cut a torn tail; the log they hold."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for cut_short in (NEXT_SNAPSHOT_FILE, f"{SNAPSHOT_FILE}.tmp"):  # writes never renamed
            (self.dir / cut_short).unlink(missing_ok=True)
        self.snapshot, first_seq = self._read_snapshot()
        self._snapshot_on_disk, self._first_seq_on_disk = self.snapshot.index, first_seq
        # Entries after the snapshot. Records of older segments may hold entries that a
        # later record cut, so the log is only checked once every record is replayed.
        held: list[Entry] = []
        found = sorted((int(p.stem.removeprefix("segment-")), p) for p in self.dir.glob("segment-*.log"))
        self._last_seq = max([0, *(seq for seq, _ in found)])
        for number, (seq, path) in enumerate(found):
            if seq < first_seq:
                path.unlink()  # void: a snapshot installed without the log before it
                continue
            last = 0
            for after, entries in self._records(path, newest=number == len(found) - 1):
                self._replay(held, path, after, entries)
                last = max([last, *(e.index for e in entries)])
            self._segments.append(_Segment(seq, path, last))
        try:
            raft_log = RaftLog(self.snapshot.index, self.snapshot.term, held)
        except ValueError as exc:
            raise JournalDamaged(f"journal {self.dir}: the replayed log is not a log: {exc}") from exc
        if self._segments and self._segments[-1].path.stat().st_size == 0:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)  # nothing in it yet: go on
            self._size = 0
        else:
            self._roll()
        self.log = raft_log.copy()
        return raft_log

    def _records(self, path: Path, newest: bool) -> Iterator[tuple[int, tuple[Entry, ...]]]:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            problem = _damage(data, offset)
            if problem is None:
                length, _ = _RECORD.unpack_from(data, offset)
                try:
                    yield decode_payload(data[offset + _RECORD.size:offset + _RECORD.size + length])
                except ValueError as exc:
                    raise JournalDamaged(
                        f"journal {path}: the record at offset {offset} does not parse: {exc}"
                    ) from exc
                offset += _RECORD.size + length
                continue
            if not newest or _valid_record_after(data, offset):
                raise JournalDamaged(
                    f"journal {path} is damaged at offset {offset} ({problem}), with records after it;"
                    " it may hold entries this node acknowledged: restore the file, or move"
                    f" {self.dir} aside and let the node catch up (when that is safe: docs/operations.md)"
                )
            log.warning("journal %s: cut %d bytes of a write that never finished, at offset %d (%s)",
                        path, len(data) - offset, offset, problem)
            with open(path, "r+b") as handle:
                handle.truncate(offset)
                handle.flush()
                os.fsync(handle.fileno())
            return

    def _replay(self, held: list[Entry], path: Path, after: int, entries: tuple[Entry, ...]) -> None:
        base = self.snapshot.index
        kept = [e for e in entries if e.index > base]
        after = max(after, base)
        if after > base + len(held) or (kept and kept[0].index != after + 1):
            raise JournalDamaged(f"journal {path}: a record appends after {after} to a log that ends at"
                                 f" {base + len(held)}: a segment is missing")
        del held[after - base:]
        held.extend(kept)

    def _read_snapshot(self) -> tuple[Snapshot, int]:
        path = self.dir / SNAPSHOT_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return Snapshot(), 0
        if len(data) < _SNAPSHOT.size:
            raise JournalDamaged(f"snapshot {path} is damaged at offset 0: {len(data)} bytes, no header")
        index, term, first_seq, crc, size = _SNAPSHOT.unpack_from(data)
        body = data[_SNAPSHOT.size:]
        # The header's fields are checked too: `open` deletes the segments below `first_seq`, and
        # replays over `index`. A file of an earlier version checks its data alone.
        whole = crc == _snapshot_crc(index, term, first_seq, body) or crc == zlib.crc32(body)
        if len(body) != size or not whole:
            raise JournalDamaged(f"snapshot {path} is damaged: its header or data fail the checksum")
        return Snapshot(index, term, body), first_seq

    # ---- writing --------------------------------------------------------------

    def append(self, after: int, entries: tuple[Entry, ...]) -> None:
        """One record, one fsync: durable when this returns. OSError if the disk refused
        (the segment is cut back to its last whole record, so a later append is clean)."""
        self._cut_torn()
        if self._size >= self.segment_bytes:
            self._roll()
        record = encode_record(after, entries)
        try:
            written = os.write(self._fd, record)
            if written != len(record):
                raise OSError(28, f"short write to {self._segments[-1].path}")
            os.fsync(self._fd)
        except OSError:
            self._torn = True
            with contextlib.suppress(OSError):  # the write's error is the one to tell
                os.ftruncate(self._fd, self._size)
                self._torn = False
            raise
        self._size += written
        self.log.replace_after(after, entries)
        if entries:
            segment = self._segments[-1]
            segment.last_index = max(segment.last_index, entries[-1].index)

    def save_snapshot(self, snapshot: Snapshot, keep_log: bool = True) -> None:
        """Replace the snapshot atomically, then delete the segments it covers. Without
        `keep_log` (a follower given the leader's snapshot over a log that disagrees) every
        older segment is void; the snapshot file says so, so a crash at any point is whole."""
        self._roll()
        first_seq = self._first_seq_on_disk if keep_log else self._segments[-1].seq  # older ones: void
        with self._replacing:
            replace_durably(self.dir / SNAPSHOT_FILE, _snapshot_header(snapshot, first_seq), snapshot.data)
            self._snapshot_on_disk, self._first_seq_on_disk = snapshot.index, first_seq
        self._adopted(snapshot, keep_log)
        self.delete_covered(wait=False)  # in the journal's thread already; appends wait for it

    def write_next_snapshot(self, snapshot: Snapshot) -> bool:
        """Write `snapshot` (this node's own: its log kept) and rename it over the live one;
        False, and nothing replaced, if a newer snapshot is there already (the leader's).
        Then `adopt_snapshot` makes memory and the segments follow. It touches nothing an
        append touches, so it runs in a thread of its own while appends go on (compaction.py);
        its data is synced a slice at a time (`write_synced`), so those appends' fsyncs do
        not wait for all of it."""
        path = self.dir / NEXT_SNAPSHOT_FILE
        try:
            # The live file's first segment stays the first: older ones are void (save_snapshot).
            write_synced(path, _snapshot_header(snapshot, self._first_seq_on_disk), snapshot.data)
        except BaseException:
            path.unlink(missing_ok=True)  # a full disk gets its space back for the log's appends
            raise
        with self._replacing:
            if snapshot.index <= self._snapshot_on_disk:
                path.unlink()
                return False
            os.replace(path, self.dir / SNAPSHOT_FILE)
            fsync_dir(self.dir)
            self._snapshot_on_disk = snapshot.index
        return True

    def adopt_snapshot(self, snapshot: Snapshot) -> bool:
        """`write_next_snapshot` put `snapshot` on disk: forget the entries it holds and the
        segments it covers, which `delete_covered` deletes (in a thread: the unlink of a
        segment of large entries took the loop 40-60 ms here). False if memory has moved past
        it (a leader's snapshot)."""
        if snapshot.index <= self.snapshot.index or self.log.term_at(snapshot.index) != snapshot.term:
            return False
        self._adopted(snapshot, keep_log=True)
        return True

    def _adopted(self, snapshot: Snapshot, keep_log: bool) -> None:
        """The snapshot file on disk is `snapshot`: memory and the segments follow it."""
        self.snapshot = snapshot
        if keep_log and self.log.term_at(snapshot.index) == snapshot.term:
            self.log.compact(snapshot.index)
        else:
            self.log = RaftLog(snapshot.index, snapshot.term)
        # Oldest first, and only while a whole segment is covered: a later segment may
        # cut entries of an earlier one, so none is dropped from the middle.
        while len(self._segments) > 1 and (not keep_log or self._segments[0].last_index <= snapshot.index):
            with self._covering:
                self._covered.append(self._segments.pop(0).path)

    def delete_covered(self, wait: bool = True) -> None:
        """Delete the segments adopted snapshots cover, oldest first. One that cannot be
        deleted stops the rest, and they are tried again at the next snapshot: the snapshot
        stands, a covered segment only costs its space (a start replays and drops it).
        Without `wait`, nothing is done while another thread deletes (the next call will)."""
        if not self._deleting.acquire(blocking=wait):
            return
        try:
            with self._covering:
                covered, self._covered = self._covered, []
            for number, path in enumerate(covered):
                try:
                    path.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("cannot delete %s, which the snapshot covers: %s; "
                                "trying again at the next one", path, exc)
                    with self._covering:
                        self._covered[:0] = covered[number:]
                    return
        finally:
            self._deleting.release()

    def disk_bytes(self) -> int:
        """The journal's files' sizes; read on the event loop while the writer thread may be
        replacing the snapshot and deleting the segments it covers."""
        total = 0
        with self._covering:
            covered = list(self._covered)  # still on disk until deleted
        for path in [*covered, *[s.path for s in list(self._segments)], self.dir / SNAPSHOT_FILE]:
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _cut_torn(self) -> None:
        """Cut a failed write's bytes that are still there (their cut failed): nothing may
        follow them, in this segment or after it. OSError while the disk refuses."""
        if self._torn:
            os.ftruncate(self._fd, self._size)
            os.fsync(self._fd)
            self._torn = False

    def _roll(self) -> None:
        """Start a new, empty segment (unless the active one is still empty). All or nothing: a
        disk that refuses the file or its directory entry leaves the active segment active (a
        number is never tried twice, so a file left behind does not block the next try)."""
        self._cut_torn()
        if self._fd >= 0 and self._size == 0:
            return
        self._last_seq += 1  # `open` set it to the highest number in the directory
        seq = self._last_seq
        path = self.dir / f"segment-{seq:010d}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fsync_dir(self.dir)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        self.close()
        self._fd, self._size = fd, 0
        self._segments.append(_Segment(seq, path, 0))


def _snapshot_header(snapshot: Snapshot, first_seq: int) -> bytes:
    crc = _snapshot_crc(snapshot.index, snapshot.term, first_seq, snapshot.data)
    return _SNAPSHOT.pack(snapshot.index, snapshot.term, first_seq, crc, len(snapshot.data))


def _snapshot_crc(index: int, term: int, first_seq: int, data: bytes) -> int:
    """The crc32 of the header's fields, then the data."""
    return zlib.crc32(data, zlib.crc32(_SNAPSHOT_FIELDS.pack(index, term, first_seq)))
