"""Snapshots (compaction.py): when one is due, and that it is written beside the event loop,
adopted after, superseded by the leader's, and tried again after a failed write."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from pathlib import Path
from typing import Any, cast

import pytest
from inproc import poll

from node.core.election import Election
from node.core.raftlog import Entry, RaftLog
from node.server import compaction, durable
from node.server.compaction import Compactor
from node.server.journal import NEXT_SNAPSHOT_FILE, SNAPSHOT_FILE, Journal, Snapshot
from node.server.logwriter import LogWriter


class Core:
    """What the compactor asks of the consensus core: its log, and `compact`."""

    def __init__(self, log: RaftLog) -> None:
        self.log = log
        self.compacted: list[int] = []

    def compact(self, index: int, snapshot: bytes) -> None:
        self.log.compact(index)
        self.compacted.append(index)


class Node:
    """A journal, its writer, a core holding the same log, and a table of records."""

    def __init__(self, tmp_path: Path) -> None:
        self.journal = Journal(tmp_path)
        self.core = Core(self.journal.open())
        self.writer = LogWriter(self.journal)
        self.records: list[bytes] = []
        #: What the core's Replication.snapshot_wanted would say.
        self.wanted = 0
        self.compactor = Compactor(self.journal, self.writer, cast(Election, self.core), lambda: self.records,
                                   lambda: self.wanted)

    def apply(self, count: int, size: int, term: int = 1) -> int:
        """`count` committed entries of `size` bytes, durable and applied; the last index."""
        after = self.core.log.last_index
        entries = tuple(Entry(after + i, term, "command", bytes([i % 256]) * size) for i in range(1, count + 1))
        self.journal.append(after, entries)
        self.core.log.replace_after(after, entries)
        self.records.extend(entry.data for entry in entries)
        self.compactor.applied(entries)
        return entries[-1].index

    def on_disk(self) -> Snapshot:
        reopened = Journal(self.journal.dir.parent)
        reopened.open()
        reopened.close()
        return reopened.snapshot


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compaction, "COMPACT_BYTES", 1_000)
    monkeypatch.setattr(compaction, "COMPACT_ENTRIES", 1 << 30)


def held_write(monkeypatch: pytest.MonkeyPatch, journal: Journal) -> tuple[threading.Event, list[Any]]:
    """Make `write_next_snapshot` wait for the returned event; the list gets, per call, the
    thread it ran in and whether the event came within 10 s."""
    release, calls = threading.Event(), []
    real = journal.write_next_snapshot

    def held(snapshot: Snapshot) -> bool:
        call = [threading.get_ident(), None]
        calls.append(call)
        call[1] = release.wait(10)
        return real(snapshot)

    monkeypatch.setattr(journal, "write_next_snapshot", held)
    return release, calls


async def held_snapshot(node: Node, monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[Any], int]:
    """Five entries applied and a snapshot of them begun, its write held (`held_write`):
    the event that lets it go, the write's calls, and the index it is taken at."""
    release, calls = held_write(monkeypatch, node.journal)
    applied = node.apply(5, 300)
    node.compactor.step(applied)
    await poll(lambda: calls, what="the write begun")
    return release, calls, applied


async def test_a_snapshot_is_written_beside_the_event_loop_then_adopted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: None
) -> None:
    node = Node(tmp_path)
    release, calls, applied = await held_snapshot(node, monkeypatch)
    # The loop runs on while the write is held: the snapshot is neither live nor adopted yet.
    await asyncio.sleep(0.05)
    assert node.core.compacted == [] and node.journal.snapshot.index == 0
    assert not (node.journal.dir / SNAPSHOT_FILE).exists()
    release.set()
    await poll(lambda: node.core.compacted, what="the snapshot adopted")
    (thread, released), = calls
    assert thread != threading.get_ident(), "written on the event loop's thread"
    assert released, "the write did not wait for the loop's release: it ran before the loop went on"
    assert node.core.compacted == [applied] and node.journal.snapshot.index == applied
    assert node.journal.log.snapshot_index == applied, "the journal's own log was not compacted"
    assert node.on_disk() == Snapshot(applied, 1, b"\n".join(node.records))
    assert not (node.journal.dir / NEXT_SNAPSHOT_FILE).exists()
    node.writer.close()


async def test_a_snapshot_a_follower_needs_is_taken_at_once_once_its_entry_is_applied(tmp_path: Path) -> None:
    """Far under both thresholds, a leader snapshots as soon as a follower can take the log
    again only from a snapshot (an entry that fits no message to it), once that entry is
    applied here: not before, as a snapshot must reach past it."""
    node = Node(tmp_path)
    applied = node.apply(3, 100)
    node.compactor.step(applied)
    assert node.compactor._writing is None, "under the thresholds, nobody waiting: no snapshot"
    node.wanted = applied + 1  # not applied here yet
    node.compactor.step(applied)
    assert node.compactor._writing is None
    applied = node.apply(1, 100)
    node.compactor.step(applied)
    assert node.compactor._writing is not None, "begun at once"
    await poll(lambda: node.core.compacted, what="the snapshot adopted")
    assert node.core.compacted == [applied] and node.on_disk() == Snapshot(applied, 1, b"\n".join(node.records))
    node.writer.close()


async def test_the_next_snapshot_waits_for_as_many_bytes_as_the_last_one_held(
    tmp_path: Path, small: None
) -> None:
    node = Node(tmp_path)
    node.compactor.step(node.apply(10, 500))  # 5,000 bytes applied: due (1,000)
    await poll(lambda: node.core.compacted, what="the first snapshot")
    first = len(node.journal.snapshot.data)
    assert first > 5_000
    applied = node.apply(9, 500)  # 4,500 bytes since: past COMPACT_BYTES, short of the snapshot's size
    node.compactor.step(applied)
    await asyncio.sleep(0.05)
    assert len(node.core.compacted) == 1, "a second snapshot before the log held as many bytes as the first"
    applied = node.apply(2, 500)  # 5,500: past the first snapshot's 5,009 bytes
    node.compactor.step(applied)
    await poll(lambda: len(node.core.compacted) == 2, what="the second snapshot")
    assert node.journal.snapshot.index == applied
    node.writer.close()


async def test_a_leader_snapshot_that_came_meanwhile_supersedes_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: None
) -> None:
    node = Node(tmp_path)
    release, _, ours = await held_snapshot(node, monkeypatch)
    # Meanwhile the leader's snapshot, further on, replaces the follower's state (as
    # ElectionDriver does for a RestoreSnapshot): journal, core, then the compactor.
    leaders = Snapshot(ours + 10, 2, b"the leader's table")
    node.writer.run(node.journal.save_snapshot, leaders, False)
    node.core.log.restore(leaders.index, leaders.term)
    node.compactor.restored(leaders.data)
    release.set()
    await poll(lambda: not (node.journal.dir / NEXT_SNAPSHOT_FILE).exists(), what="ours dropped")
    await asyncio.sleep(0.05)
    assert node.core.compacted == [], "our older snapshot was adopted over the leader's"
    assert node.journal.snapshot == leaders and node.on_disk() == leaders
    node.writer.close()


async def test_a_write_that_fails_is_said_and_tried_again_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: None, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compaction, "RETRY_S", 0.3)
    node = Node(tmp_path)
    real, tries = node.journal.write_next_snapshot, []

    def full(snapshot: Snapshot) -> bool:
        tries.append(snapshot.index)
        if len(tries) == 1:
            raise OSError(28, "No space left on device")
        return real(snapshot)

    monkeypatch.setattr(node.journal, "write_next_snapshot", full)
    applied = node.apply(5, 300)
    with caplog.at_level(logging.WARNING, logger="distnode"):
        node.compactor.step(applied)
        await poll(lambda: "cannot write a snapshot" in caplog.text, what="the warning")
    node.compactor.step(applied)  # before RETRY_S: no second try
    await asyncio.sleep(0.05)
    assert tries == [applied] and node.core.compacted == []
    await asyncio.sleep(0.3)
    node.compactor.step(applied)  # the bytes applied before the failure still count
    await poll(lambda: node.core.compacted, what="the second try adopted")
    assert tries == [applied, applied] and node.on_disk().index == applied
    node.writer.close()


def test_a_next_snapshot_cut_short_is_removed_at_open_and_never_read(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, (Entry(1, 1, "command", b"a"), Entry(2, 1, "command", b"b")))
    journal.save_snapshot(Snapshot(1, 1, b"table@1"))
    (journal.dir / NEXT_SNAPSHOT_FILE).write_bytes(b"half a snap")
    journal.close()
    again = Journal(tmp_path)
    log = again.open()
    assert again.snapshot == Snapshot(1, 1, b"table@1") and log.last_index == 2
    assert not (again.dir / NEXT_SNAPSHOT_FILE).exists()
    again.close()


def test_a_next_snapshot_older_than_the_one_on_disk_is_not_renamed_over_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, tuple(Entry(i, 1, "command", b"x") for i in range(1, 6)))
    journal.save_snapshot(Snapshot(4, 1, b"leader's@4"), keep_log=False)
    assert journal.write_next_snapshot(Snapshot(3, 1, b"ours@3")) is False
    assert not journal.adopt_snapshot(Snapshot(3, 1, b"ours@3"))
    journal.close()
    again = Journal(tmp_path)
    again.open()
    assert again.snapshot == Snapshot(4, 1, b"leader's@4")
    assert not (again.dir / NEXT_SNAPSHOT_FILE).exists()
    again.close()


async def test_a_covered_segment_that_cannot_be_deleted_leaves_the_snapshot_adopted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: None, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(tmp_path)
    node.journal.segment_bytes = 1_000  # a segment per append: the first snapshot covers some
    for _ in range(4):
        node.apply(1, 300)
    real_unlink = Path.unlink

    def busy(path: Path, missing_ok: bool = False) -> None:
        if path.name.startswith("segment-"):
            raise OSError(16, "Device or resource busy")
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", busy)
    applied = node.apply(1, 300)
    with caplog.at_level(logging.WARNING, logger="distnode"):
        node.compactor.step(applied)
        await poll(lambda: node.core.compacted, what="the snapshot adopted")
        await poll(lambda: "which the snapshot covers" in caplog.text, what="the failed delete said")
    segments = sorted(node.journal.dir.glob("segment-*.log"))
    assert len(segments) > 1 and node.journal.snapshot.index == applied
    # The journal goes on, and the next snapshot deletes what this one could not.
    monkeypatch.setattr(Path, "unlink", real_unlink)
    node.compactor.step(node.apply(6, 300))  # 1,800 bytes: past the first snapshot's 1,504
    await poll(lambda: len(node.core.compacted) == 2, what="the second snapshot")
    await poll(lambda: not any(path.exists() for path in segments[:-1]), what="the covered segments deleted")
    node.writer.close()


async def test_covered_segments_are_deleted_beside_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: None
) -> None:
    """The unlink of a segment of large entries took the loop 40-60 ms: it is done in the
    journal's aside thread, after the snapshot is adopted."""
    node = Node(tmp_path)
    node.journal.segment_bytes = 1_000
    for _ in range(4):
        node.apply(1, 300)
    real_unlink, deleted_in = Path.unlink, []

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if path.name.startswith("segment-"):
            deleted_in.append(threading.get_ident())
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    node.compactor.step(node.apply(1, 300))
    await poll(lambda: node.core.compacted and len(list(node.journal.dir.glob("segment-*.log"))) == 1,
               what="the covered segments deleted")
    assert deleted_in and threading.get_ident() not in deleted_in
    node.writer.close()


async def test_adoption_waits_for_the_appends_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: None
) -> None:
    node = Node(tmp_path)
    applied = node.apply(5, 300)
    release, appended = threading.Event(), []
    real_append = node.journal.append

    def slow_append(after: int, entries: tuple[Entry, ...]) -> None:
        release.wait(10)
        real_append(after, entries)

    monkeypatch.setattr(node.journal, "append", slow_append)
    node.writer.append_later(applied, (Entry(applied + 1, 1, "command", b"late"),), appended.append)
    node.compactor.step(applied)
    await poll(lambda: (node.journal.dir / SNAPSHOT_FILE).exists(), what="the snapshot renamed into place")
    await asyncio.sleep(0.05)
    node.compactor.step(applied)  # as the driver does after each batch of outputs
    assert node.core.compacted == [], "adopted while an append was being written"
    release.set()
    await poll(lambda: appended, what="the append back")
    node.compactor.step(applied)
    assert node.core.compacted == [applied] and node.journal.log.last_index == applied + 1
    node.writer.close()


def test_a_crash_between_the_rename_and_the_adoption_reopens_at_the_snapshot(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, tuple(Entry(i, 1, "command", b"e%d" % i) for i in range(1, 8)))
    assert journal.write_next_snapshot(Snapshot(5, 1, b"table@5"))
    journal.close()  # the process stops here: memory never followed
    again = Journal(tmp_path)
    log = again.open()
    assert again.snapshot == Snapshot(5, 1, b"table@5")
    assert (log.snapshot_index, log.last_index) == (5, 7) and log.entry(6).data == b"e6"
    again.close()


async def test_a_failed_write_leaves_no_file_and_waits_longer_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: None, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(tmp_path)

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(durable, "SYNC_SLICE_BYTES", 256)  # so the write syncs a slice, and fails there
    monkeypatch.setattr(durable, "_sync_data", full)
    applied = node.apply(5, 300)
    with caplog.at_level(logging.WARNING, logger="distnode"):
        for attempt in range(1, 4):
            node.compactor._retry_at = 0.0  # as if the wait had passed
            node.compactor.step(applied)
            said = functools.partial(lambda n: caplog.text.count("cannot write a snapshot") == n, attempt)
            await poll(said, what="the warning")
            assert not (node.journal.dir / NEXT_SNAPSHOT_FILE).exists(), "a failed write left its file"
    waits = [line.rsplit("next try in ", 1)[1] for line in caplog.text.splitlines() if "next try in" in line]
    assert waits == ["5 s", "10 s", "20 s"]
    assert node.core.compacted == [] and node.journal.snapshot.index == 0
    node.writer.close()
