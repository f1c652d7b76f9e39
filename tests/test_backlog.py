"""Committed entries applied a slice at a time (node/server/backlog.py), and a follower's
ledger that reads, waits and snapshots as if everything were applied at once."""

from __future__ import annotations

import asyncio
import math

import pytest
from inproc import poll
from test_ledger import ledger

from node.core.jobtable import JobRecord, JobTable, Result, encode_command
from node.core.raftlog import Entry
from node.server import backlog as backlog_module
from node.server.backlog import Backlog
from node.server.ledger import JobLedger


def record(job_id: str, state: str, detached: bool = False, result_bytes: int = 0) -> JobRecord:
    result = Result("<u1", (result_bytes,), bytes(result_bytes)) if result_bytes else None
    return JobRecord(job_id, "sum", "range:n=10", state, result=result, detached=detached)


def batch(index: int, *records: JobRecord) -> Entry:
    """One command entry holding `records`, one per line, as the leader batches attached jobs."""
    return Entry(index, 1, "command", b"\n".join(encode_command(r) for r in records))


def history() -> tuple[Entry, ...]:
    """Attached batches, a detached job's life across entries, a no-op, a line that is no
    record, and enough finished jobs that retention forgets some on the way."""
    attached = [record(f"a{i}", "done", result_bytes=i % 5) for i in range(40)]
    return (
        batch(1, *attached[:15]),
        batch(2, record("d", "queued", detached=True)),
        Entry(3, 1, "noop", b""),
        batch(4, *attached[15:33], record("d", "running", detached=True)),
        Entry(5, 1, "command", encode_command(attached[33]) + b"\nnot a record\n" + encode_command(attached[34])),
        batch(6, record("d", "done", detached=True, result_bytes=3), *attached[35:]),
    )


def reference() -> tuple[JobTable, list[str]]:
    table = JobTable(keep_jobs=12, keep_result_bytes=40)
    return table, table.apply(history())


@pytest.mark.parametrize("slice_records", [1, 2, 3, 7, 1000])
def test_slices_of_any_size_give_the_table_of_one_apply(slice_records: int) -> None:
    whole, whole_changed = reference()
    table = JobTable(keep_jobs=12, keep_result_bytes=40)
    ended: list[int] = []
    changed: list[str] = []

    def on_applied(entries: list[Entry], ids: list[str]) -> None:
        ended.extend(entry.index for entry in entries)
        changed.extend(ids)

    pending = Backlog(table, on_applied)
    pending.add(history())
    turns = 0
    while len(pending):
        pending.apply(slice_records)
        turns += 1
        assert turns < 1000, "the backlog never empties"
    assert table.snapshot() == whole.snapshot()
    assert [r.job_id for r in table.jobs(limit=100)] == [r.job_id for r in whole.jobs(limit=100)]
    assert changed == whole_changed
    assert ended == [1, 2, 3, 4, 5, 6], "each entry reported once, in order, once its last record is in"
    if slice_records == 1:
        assert turns >= 41, "one record a turn"


async def test_pace_applies_a_slice_now_and_the_rest_on_later_turns() -> None:
    table = JobTable()
    pending = Backlog(table, lambda entries, ids: None)
    pending.add((batch(1, *(record(f"a{i}", "done") for i in range(30))),))
    pending.pace()
    assert len(table) == backlog_module.SLICE_RECORDS, "one slice at once, not the whole entry"
    pending.pace()  # slices already under way: nothing more at once
    assert len(table) == backlog_module.SLICE_RECORDS
    await poll(lambda: len(pending) == 0, what="the backlog applied")
    assert len(table) == 30


async def test_a_large_backlog_takes_larger_slices_so_it_ends_within_its_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gap_s, within_s = 0.003, 0.09
    monkeypatch.setattr(backlog_module, "GAP_S", gap_s)
    monkeypatch.setattr(backlog_module, "WITHIN_S", within_s)
    table = JobTable()
    turns: list[int] = []
    pending = Backlog(table, lambda entries, ids: turns.append(len(ids)))
    records = 3000
    pending.feed((batch(1, *(record(f"a{i}", "done") for i in range(records))),), None, at_once=False)
    assert turns == [math.ceil(records * gap_s / within_s)] and turns[0] > backlog_module.SLICE_RECORDS
    await poll(lambda: len(pending) == 0, what="the backlog applied")
    assert len(table) == records
    assert len(turns) <= math.ceil(within_s / gap_s) + 1, "the slices shrank as the backlog did"
    pending.feed((batch(2, *(record(f"b{i}", "done") for i in range(10))),), None, at_once=False)
    assert turns[-1] == backlog_module.SLICE_RECORDS, "an emptied backlog starts again at the least slice"
    pending.close()


def follower(leading: list[bool]) -> JobLedger:
    """A ledger that follows until `leading[0]` is set."""
    return ledger([], lambda: leading[0])


async def test_a_follower_applies_in_slices_yet_reads_and_snapshots_everything() -> None:
    desk = follower([False])
    attached = [record(f"a{i}", "done") for i in range(50)]
    desk.apply((batch(1, *attached), Entry(2, 1, "noop", b"")))
    assert desk.applied == 0, "a follower takes a slice, not the entry, in its first turn"
    assert desk.table.get("a49") is not None, "a read applies what was still to go"
    assert desk.applied == 2
    whole = JobTable()
    whole.apply((batch(1, *attached),))
    desk.apply((batch(3, *(record(f"b{i}", "done") for i in range(20))),))
    assert desk.table.snapshot() != whole.snapshot(), "the snapshot holds the later entry too"
    whole.apply((batch(3, *(record(f"b{i}", "done") for i in range(20))),))
    assert desk.table.snapshot() == whole.snapshot()


async def test_a_waiter_on_a_follower_hears_its_record_from_the_slice_that_applied_it() -> None:
    desk = follower([False])
    desk.apply((batch(1, record("d", "queued", detached=True)),))
    waiting = asyncio.create_task(desk.wait("d", 10.0))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()
    others = [record(f"a{i}", "done") for i in range(40)]
    desk.apply((batch(2, record("d", "done", detached=True), *others),))
    assert desk.applied == 1, "the entry is not wholly applied yet"
    finished = await asyncio.wait_for(waiting, 5.0)
    assert finished is not None and finished.state == "done"


async def test_a_follower_that_becomes_leader_applies_the_rest_at_its_next_commit() -> None:
    leading = [False]
    desk = follower(leading)
    desk.apply((batch(1, *(record(f"a{i}", "done") for i in range(30))),))
    assert desk.applied == 0
    leading[0] = True
    desk.apply((Entry(2, 2, "noop", b""),))
    assert desk.applied == 2 and len(desk._table) == 30
    await desk.close()
