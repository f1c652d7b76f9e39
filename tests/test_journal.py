"""The journal's files (node/server/journal.py): what was fsync'd comes back, a torn tail is
cut, damage anywhere else is refused with the file and the offset, snapshots bound the disk."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from node.core.raftlog import Entry, RaftLog
from node.server.journal import Journal, JournalDamaged, Snapshot
from node.server.logwriter import LogWriter


def entries(first: int, count: int, term: int, size: int = 10) -> tuple[Entry, ...]:
    return tuple(Entry(i, term, "command", bytes([i % 251]) * size) for i in range(first, first + count))


def content(raft_log: RaftLog) -> tuple[int, int, tuple[Entry, ...]]:
    return raft_log.snapshot_index, raft_log.snapshot_term, raft_log.entries(raft_log.snapshot_index + 1)


def reopen(journal: Journal) -> tuple[Journal, RaftLog]:
    journal.close()
    again = Journal(journal.dir.parent, journal.segment_bytes)
    return again, again.open()


def segments(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "journal").glob("segment-*.log"))


def test_what_was_appended_comes_back_with_one_fsync_per_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path)
    model = journal.open()
    fsyncs = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    for after, batch in [(0, entries(1, 5, 1)), (5, entries(6, 3, 1)), (3, entries(4, 4, 2)), (7, ())]:
        before = len(fsyncs)
        journal.append(after, batch)
        model.replace_after(after, batch)
        assert len(fsyncs) == before + 1, "one fsync for every batch, however many entries"
    journal, again = reopen(journal)
    assert content(again) == content(model) and again.last_index == 7 and again.term_at(4) == 2


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 20, -1])
def test_a_torn_last_write_is_cut_and_never_trusted(
    tmp_path: Path, cut: int, caplog: pytest.LogCaptureFixture
) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, entries(1, 3, 1))
    whole = segments(tmp_path)[-1].stat().st_size
    journal.append(3, entries(4, 2, 1))
    journal.close()
    path = segments(tmp_path)[-1]
    data = path.read_bytes()
    path.write_bytes(data[:whole + (cut if cut > 0 else len(data) - whole - 1)])
    with caplog.at_level(logging.WARNING, logger="distnode"):
        journal, again = reopen(journal)
    assert content(again) == (0, 0, entries(1, 3, 1))
    assert path.stat().st_size == whole, "the torn bytes are cut from the file"
    assert f"journal {path}: cut" in caplog.text and f"at offset {whole}" in caplog.text
    journal.append(3, entries(4, 1, 2))  # and the journal goes on cleanly after the cut
    assert content(reopen(journal)[1]) == (0, 0, entries(1, 3, 1) + entries(4, 1, 2))


def test_zeros_after_the_last_record_are_a_torn_write(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, entries(1, 2, 1))
    journal.close()
    path = segments(tmp_path)[-1]
    path.write_bytes(path.read_bytes() + b"\0" * 4096)
    assert content(reopen(journal)[1]) == (0, 0, entries(1, 2, 1))


@pytest.mark.parametrize("where", ["first record", "length field", "older segment"])
def test_damage_with_records_after_it_is_refused_naming_file_and_offset(tmp_path: Path, where: str) -> None:
    journal = Journal(tmp_path, segment_bytes=200)
    journal.open()
    for first in range(1, 43, 3):  # two records per segment
        journal.append(first - 1, entries(first, 3, 1))
    journal.close()
    paths = segments(tmp_path)
    assert len(paths) > 2
    path = paths[0] if where == "older segment" else paths[-1]
    data = bytearray(path.read_bytes())
    if where == "older segment":
        data[-1] ^= 0xFF  # its last record: a bad checksum at the end of a file that is not the newest
    elif where == "first record":
        data[12] ^= 0xFF
    else:
        data[0:4] = (10_000).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(JournalDamaged, match=f"journal {path} is damaged at offset") as info:
        reopen(journal)
    message = str(info.value)
    assert "restore the file" in message
    if where != "older segment":
        assert "at offset 0 " in message
    assert path.read_bytes() == bytes(data), "nothing is cut from a damaged journal"


def test_snapshots_drop_the_segments_they_cover_and_bound_the_disk(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=4096)
    model = journal.open()
    peak = 0
    for round_ in range(30):
        first = model.last_index + 1
        batch = entries(first, 50, 1, size=40)
        journal.append(first - 1, batch)
        model.replace_after(first - 1, batch)
        if round_ % 3 == 2:
            index = model.last_index - 20
            journal.save_snapshot(Snapshot(index, 1, f"state@{index}".encode()))
            model.compact(index)
        peak = max(peak, journal.disk_bytes())
    assert peak < 40_000, f"the journal grew to {peak} bytes"
    journal, again = reopen(journal)
    assert content(again) == content(model) and journal.snapshot.data == f"state@{model.snapshot_index}".encode()


def test_a_snapshot_installed_over_a_disagreeing_log_voids_it_even_across_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, entries(1, 12, 1))  # 10..12 disagree with the leader's log

    def crash(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "the machine stopped here")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        journal.save_snapshot(Snapshot(9, 3, b"leader's"), keep_log=False)
    monkeypatch.undo()
    journal, again = reopen(journal)
    assert content(again) == (0, 0, entries(1, 12, 1)), "a snapshot not in place changes nothing"

    def crash_before_unlink(self: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EIO, "the machine stopped here")

    monkeypatch.setattr(Path, "unlink", crash_before_unlink)
    journal.save_snapshot(Snapshot(9, 3, b"leader's"), keep_log=False)  # said; the snapshot stands
    monkeypatch.undo()
    assert len(list(journal.dir.glob("segment-*.log"))) > 1, "the void segments were deleted after all"
    journal, again = reopen(journal)  # the snapshot is in place, the old segments not yet gone
    assert content(again) == (9, 3, ()) and journal.snapshot == Snapshot(9, 3, b"leader's")
    journal.save_snapshot(Snapshot(9, 3, b"leader's"), keep_log=False)
    journal, again = reopen(journal)
    assert content(again) == (9, 3, ()) and journal.snapshot == Snapshot(9, 3, b"leader's")
    journal.append(9, entries(10, 2, 3))
    journal, again = reopen(journal)
    assert content(again) == (9, 3, entries(10, 2, 3))


def test_a_damaged_snapshot_is_refused(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, entries(1, 4, 1))
    journal.save_snapshot(Snapshot(2, 1, b"state"))
    journal.close()
    path = tmp_path / "journal" / "snapshot"
    path.write_bytes(path.read_bytes()[:-1] + b"X")
    with pytest.raises(JournalDamaged, match=f"snapshot {path} is damaged: its header or data fail"):
        Journal(tmp_path).open()


def test_a_write_the_disk_refuses_leaves_the_file_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, entries(1, 2, 1))
    size = segments(tmp_path)[-1].stat().st_size
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])  # a short write, as a full disk gives

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError) as info:
        journal.append(2, entries(3, 2, 1))
    assert info.value.errno == errno.ENOSPC and segments(tmp_path)[-1].stat().st_size == size
    monkeypatch.setattr(os, "write", real_write)
    journal.append(2, entries(3, 1, 1))  # room again: the journal goes on
    assert content(reopen(journal)[1]) == (0, 0, entries(1, 3, 1))


@pytest.mark.parametrize("seed", range(20))
def test_random_histories_replay_exactly(tmp_path: Path, seed: int) -> None:
    """Appends, conflicting appends, snapshots, reopenings and torn tails in random order:
    the journal always gives back the model log (a torn tail loses only the last batch)."""
    rng = random.Random(seed)
    journal = Journal(tmp_path, segment_bytes=rng.choice((256, 4096, 1 << 20)))
    model = journal.open()
    term = 1
    for _ in range(60):
        action = rng.random()
        if action < 0.6:
            after = rng.randint(max(model.snapshot_index, model.last_index - 3), model.last_index)
            term += rng.random() < 0.3
            batch = entries(after + 1, rng.randint(0, 4), term, size=rng.randint(0, 30))
            journal.append(after, batch)
            model.replace_after(after, batch)
        elif action < 0.7 and model.last_index > model.snapshot_index:
            index = rng.randint(model.snapshot_index + 1, model.last_index)
            journal.save_snapshot(Snapshot(index, model.term_at(index) or 0, b"s"))
            model.compact(index)
        elif action < 0.85:
            journal, again = reopen(journal)
            assert content(again) == content(model), f"seed={seed}"
        else:
            before = content(model)
            batch = entries(model.last_index + 1, 2, term)
            journal.append(model.last_index, batch)
            journal.close()
            path = segments(tmp_path)[-1]
            data = path.read_bytes()
            path.write_bytes(data[:-rng.randint(1, len(data) and 20)])
            journal = Journal(tmp_path, journal.segment_bytes)
            model = journal.open()
            assert content(model) == before, f"seed={seed}: a torn tail lost more than its batch"


def test_a_restart_that_wrote_nothing_adds_no_segment(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, entries(1, 2, 1))
    for _ in range(3):
        journal = reopen(journal)[0]
    assert len(segments(tmp_path)) == 2, [p.name for p in segments(tmp_path)]
    journal.append(2, entries(3, 1, 1))
    assert content(reopen(journal)[1]) == (0, 0, entries(1, 3, 1))


async def test_an_append_pending_too_long_is_said_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """How long the oldest background append has been pending, past a bound: the measure of
    a slow or stuck disk (a follower's gate, a leader's CheckQuorum), said once."""
    journal = Journal(tmp_path)
    journal.open()
    disk = threading.Event()
    append = journal.append

    def slow(after: int, entries: tuple[Entry, ...]) -> None:
        assert disk.wait(20), "the test never let the write return"
        append(after, entries)

    journal.append = slow  # type: ignore[method-assign]
    writer = LogWriter(journal)
    assert writer.overdue(-1.0) == 0.0 and not writer.stuck(-1.0), "nothing pending is never overdue"
    returned = asyncio.Event()
    writer.append_later(0, entries(1, 1, 1), lambda error: returned.set())
    assert writer.overdue(3600.0) == 0.0 and not writer.stuck(900.0)
    assert writer.overdue(-1.0) >= 0.0 and writer.overdue(-1.0) >= 0.0 and writer.stuck(-1.0)
    said = [r for r in caplog.records if "a journal write has been pending" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"
    disk.set()
    await asyncio.wait_for(returned.wait(), 20)
    assert writer.overdue(-1.0) == 0.0 and not writer.stuck(-1.0)
    writer.close()
    journal.close()


# --- from a review of the journal's durability (2026-12-07) ------------------------------------


def test_a_snapshot_whose_header_is_damaged_is_refused_and_deletes_nothing(tmp_path: Path) -> None:
    """The checksum covered the snapshot's data alone: a damaged first segment number made
    `open` delete every segment after the snapshot (acknowledged entries), without a word."""
    import struct
    import zlib

    journal = Journal(tmp_path, segment_bytes=64)
    journal.open()
    journal.append(0, entries(1, 10, 1))
    journal.save_snapshot(Snapshot(10, 1, b"state"))
    for index in range(11, 41):
        journal.append(index - 1, entries(index, 1, 1))
    journal.close()
    path, kept = tmp_path / "journal" / "snapshot", segments(tmp_path)
    good = path.read_bytes()
    for offset in (0, 16):  # the index; the first segment replayed
        damaged = bytearray(good)
        damaged[offset] ^= 0x10
        path.write_bytes(bytes(damaged))
        with pytest.raises(JournalDamaged, match="its header or data fail the checksum"):
            Journal(tmp_path, segment_bytes=64).open()
        assert segments(tmp_path) == kept
    # A file of the earlier version, whose checksum is its data's alone, still opens.
    index, term, first_seq, _, size = struct.unpack_from("<QQQII", good)
    body = good[32:]
    path.write_bytes(struct.pack("<QQQII", index, term, first_seq, zlib.crc32(body), size) + body)
    again = Journal(tmp_path, segment_bytes=64)
    assert content(again.open()) == (10, 1, tuple(e for i in range(11, 41) for e in entries(i, 1, 1)))


def test_a_new_segment_the_disk_refuses_leaves_the_journal_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory fsync that failed once left the file open but not listed: every later
    append failed with "File exists" until a restart; a file the disk refused to create
    left no file open: every append failed with "Bad file descriptor"."""
    import node.server.journal as journal_module

    journal = Journal(tmp_path, segment_bytes=64)
    journal.open()
    journal.append(0, entries(1, 10, 1))  # past the segment's size: the next append rolls
    real_open = os.open

    def refused_fsync(directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    def refused_create(path: Any, flags: int, *args: Any) -> int:
        if flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args)

    def kept(path: Path, missing_ok: bool = False) -> None:
        raise OSError(errno.EIO, "Input/output error")  # the file the fsync failed for stays

    for refuse in ((journal_module, "fsync_dir", refused_fsync), (os, "open", refused_create)):
        monkeypatch.setattr(*refuse)
        monkeypatch.setattr(Path, "unlink", kept)
        with pytest.raises(OSError):
            journal.append(journal.log.last_index, entries(journal.log.last_index + 1, 1, 1))
        monkeypatch.undo()
        last = journal.log.last_index
        journal.append(last, entries(last + 1, 3, 1))  # the disk takes it again: so does the journal
    assert content(reopen(journal)[1]) == (0, 0, entries(1, 16, 1))


def test_bytes_a_failed_write_left_are_cut_before_the_next_append(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cut that failed after a failed write left its bytes, and the next records went after
    them: the next start found damage with records after it and refused to start."""
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, entries(1, 2, 1))
    real_write, real_truncate = os.write, os.ftruncate

    def half(fd: int, data: bytes) -> int:
        return real_write(fd, data[: len(data) // 2])

    def refused(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "write", half)
    monkeypatch.setattr(os, "ftruncate", refused)
    with pytest.raises(OSError) as info:
        journal.append(2, entries(3, 2, 1))
    assert info.value.errno == errno.ENOSPC  # the write's error, not the cut's
    monkeypatch.setattr(os, "write", real_write)
    with pytest.raises(OSError):
        journal.append(2, entries(3, 2, 1))  # nothing goes after the torn bytes while they stay
    monkeypatch.setattr(os, "ftruncate", real_truncate)
    journal.append(2, entries(3, 2, 1))
    assert content(reopen(journal)[1]) == (0, 0, entries(1, 4, 1))


def test_bytes_a_failed_write_left_are_cut_before_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, when the leader's snapshot comes next: it starts a new segment, which left
    the torn bytes in the old one, before records the next start replays."""
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, entries(1, 5, 1))
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[: len(data) // 2]))
    monkeypatch.setattr(os, "ftruncate", lambda fd, length: (_ for _ in ()).throw(OSError(errno.EIO, "EIO")))
    with pytest.raises(OSError):
        journal.append(5, entries(6, 2, 1))
    monkeypatch.undo()
    journal.save_snapshot(Snapshot(3, 1, b"leader's"))  # over a log that agrees: kept
    journal.append(5, entries(6, 2, 1))
    assert content(reopen(journal)[1]) == (3, 1, entries(4, 4, 1))


def test_a_snapshot_write_the_disk_refuses_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.server.durable as durable

    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, entries(1, 4, 1))
    real = durable.write_synced

    def full(path: Path, *parts: bytes) -> None:
        path.write_bytes(b"x" * 100)  # part of it written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(durable, "write_synced", full)
    with pytest.raises(OSError):
        journal.save_snapshot(Snapshot(2, 1, b"state" * 100))
    assert not (tmp_path / "journal" / "snapshot.tmp").exists()
    monkeypatch.setattr(durable, "write_synced", real)
    journal.close()
    (tmp_path / "journal" / "snapshot.tmp").write_bytes(b"left by an earlier version")
    Journal(tmp_path).open()
    assert not (tmp_path / "journal" / "snapshot.tmp").exists()
