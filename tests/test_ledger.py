"""The ledger (node/server/ledger.py) without a cluster: proposals, commits, and what a
client that hung up leaves behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from inproc import poll

from node.core import jobtable
from node.core.job import Job
from node.core.jobtable import JobRecord, JobTable, decode_command
from node.core.limits import MAX_MESSAGE_BYTES
from node.core.raftlog import Entry
from node.errors import NotLeader
from node.server.api import Outcome
from node.server.ledger import JobLedger
from node.server.recordsize import ENVELOPE_BYTES


def ledger(proposed: list[Entry], leading: Callable[[], bool] = lambda: True) -> JobLedger:
    """A ledger whose proposals commit as `proposed` entries; it leads while `leading()`."""
    indices = itertools.count(1)

    def propose(data: tuple[bytes, ...]) -> tuple[Entry, ...]:
        entries = tuple(Entry(next(indices), 1, "command", item) for item in data)
        proposed.extend(entries)
        return entries

    async def run(job_id: str, job: Job) -> Outcome:
        raise AssertionError("not run in these tests")

    return JobLedger(JobTable(), propose, leading, lambda: 1, run, lambda job_id: None,
                     lambda: 1 << 30, 4, lambda: "n1 (term 1)")


async def test_one_proposal_per_turn_and_an_acknowledgement_only_at_commit() -> None:
    proposed: list[Entry] = []
    desk = ledger(proposed)
    first = asyncio.create_task(desk.enqueue("a", Job("sum", "values:1")))
    second = asyncio.create_task(desk.enqueue("b", Job("sum", "values:2")))
    again = asyncio.create_task(desk.enqueue("a", Job("sum", "values:1")))
    for _ in range(3):
        await asyncio.sleep(0)
    assert [e.index for e in proposed] == [1, 2], "one batch, and a repeat joins the first"
    assert not first.done() and not second.done(), "acknowledged before the commit"
    desk.apply(tuple(proposed))
    assert (await first).state == (await second).state == (await again).state == "queued"


async def test_a_client_that_hung_up_leaves_no_unretrieved_error_when_the_leader_steps_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proposed: list[Entry] = []
    desk = ledger(proposed)
    task = asyncio.create_task(desk.enqueue("a", Job("sum", "values:1")))
    for _ in range(3):
        await asyncio.sleep(0)
    assert proposed, "not proposed"
    task.cancel()  # the client went away while its record waited for the commit
    with contextlib.suppress(asyncio.CancelledError):
        await task
    waiting = asyncio.create_task(desk.enqueue("b", Job("sum", "values:2")))
    for _ in range(3):
        await asyncio.sleep(0)
    desk.step_down()
    with pytest.raises(NotLeader, match="lost the leadership"):
        await waiting
    del task
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


def running_ledger(
    proposed: list[Entry], max_message_bytes: int = MAX_MESSAGE_BYTES, nodes: tuple[str, ...] = ("n1",),
    run: Callable[[str, Job], Any] | None = None, bound: Callable[[], int] | None = None,
    leading: Callable[[], bool] = lambda: True, table: JobTable | None = None,
) -> JobLedger:
    """A leader's ledger whose runs end at once with the answer 6, computed by `nodes`; or whose
    runs are `run`; its records sized by `bound` (the cluster's least limit) if given."""
    indices = itertools.count(1)

    def propose(data: tuple[bytes, ...]) -> tuple[Entry, ...]:
        entries = tuple(Entry(next(indices), 1, "command", item) for item in data)
        proposed.extend(entries)
        return entries

    async def answer(job_id: str, job: Job) -> Outcome:
        return Outcome(job_id, job.op, np.array(6.0), 1, nodes, 0.1)

    desk = JobLedger(table if table is not None else JobTable(), propose, leading, lambda: 1, run or answer, lambda job_id: None,
                     lambda: 1 << 30, 4, lambda: "n1 (term 1)", bound or (lambda: max_message_bytes))
    desk.caught_up_term = 1
    return desk


async def enqueued(desk: JobLedger, proposed: list[Entry], job_id: str) -> None:
    """`job_id` enqueued on `desk` (a sum of 1, 2, 3) and its `queued` record committed."""
    ack = asyncio.create_task(desk.enqueue(job_id, Job("sum", "values:1,2,3")))
    await turns()
    desk.apply(tuple(proposed))
    assert (await ack).state == "queued"


async def turns(count: int = 10) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def states(entries: list[Entry]) -> list[tuple[str, str]]:
    return [(decode_command(entry.data).job_id, decode_command(entry.data).state) for entry in entries]


async def test_a_final_record_nobody_waits_for_waits_for_the_flush_and_a_waiter_hurries_it() -> None:
    proposed: list[Entry] = []
    desk = running_ledger(proposed)
    ack = asyncio.create_task(desk.enqueue("a", Job("sum", "values:1,2,3")))
    await turns()
    desk.apply(tuple(proposed))
    assert (await ack).state == "queued"
    await turns()  # the run ends; its `done` record waits for company (ATTACHED_FLUSH_S)
    assert states(proposed) == [("a", "queued")]
    waiter = asyncio.create_task(desk.wait("a", 5.0))
    await turns()  # a client waits: the record goes at once
    assert states(proposed) == [("a", "queued"), ("a", "done")]
    desk.apply(tuple(proposed[1:]))
    record = await waiter
    assert record is not None and record.state == "done"

    # A client already waiting when the run ends: proposed at the next turn.
    ack = asyncio.create_task(desk.enqueue("b", Job("sum", "values:1,2,3")))
    await turns()
    desk.apply(tuple(proposed[2:]))
    waiter = asyncio.create_task(desk.wait("b", 5.0))  # registered before the run starts
    assert (await ack).state == "queued"
    await turns()
    assert states(proposed)[-1] == ("b", "done")
    desk.apply(tuple(proposed[3:]))
    record = await waiter
    assert record is not None and record.state == "done"
    await desk.close()


async def test_the_leader_applies_its_own_records_without_decoding_them_and_to_the_same_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("node.server.ledger.ATTACHED_FLUSH_S", 0.0)
    proposed: list[Entry] = []
    desk = running_ledger(proposed)
    for number in range(5):
        job = Job("sum", f"values:{number}")
        desk.record_attached(f"a{number}", job, Outcome(f"a{number}", "sum", np.array(float(number)), 1,
                                                        ("n1",), 0.2), 1.5e9)
    ack = asyncio.create_task(desk.enqueue("d", Job("sum", "values:7")))
    await turns()
    assert len(proposed) == 2, "the detached record, and the attached ones as one entry"

    decodes = 0
    real_decode = jobtable.decode_command

    def counted(data: bytes) -> JobRecord:
        nonlocal decodes
        decodes += 1
        return real_decode(data)

    monkeypatch.setattr(jobtable, "decode_command", counted)
    desk.apply(tuple(proposed))
    assert decodes == 0, "the leader decoded what it had proposed"
    assert (await ack).state == "queued"
    follower = JobTable()
    follower.apply(tuple(proposed))
    assert decodes == 6 and follower.snapshot() == desk.table.snapshot()
    assert [r.job_id for r in follower.jobs()] == [r.job_id for r in desk.table.jobs()]

    # Another leader's entry at an index this one proposed at (it lost the leadership
    # before the commit) is that entry's records, not the ones proposed here.
    desk.record_attached("mine", Job("sum", "values:1"), Outcome("mine", "sum", np.array(1.0), 1, ("n1",), 0.2),
                         1.5e9)
    await turns()
    theirs = JobRecord("theirs", "sum", "values:2", "queued")
    overwritten = Entry(proposed[-1].index, 2, "command", jobtable.encode_command(theirs))
    desk.apply((overwritten,))
    assert desk.table.get("theirs") == theirs and desk.table.get("mine") is None
    await desk.close()


async def test_attached_records_go_in_entries_that_fit_a_message_and_one_that_cannot_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under a 256 KiB message limit, five attached records of 60 KB sources each go in
    entries of at most half a message (recordsize.py), in order; a record whose source
    alone would not fit is skipped (no follower could take it), and the others are kept."""
    monkeypatch.setattr("node.server.ledger.ATTACHED_FLUSH_S", 0.0)
    proposed: list[Entry] = []
    limit = 256 << 10
    desk = running_ledger(proposed, limit)
    for number in range(5):
        job = Job("sum", f"values:{number}," + "1," * 30_000 + "1")
        desk.record_attached(f"a{number}", job, Outcome(f"a{number}", "sum", np.array(6.0), 1, ("n1",), 0.2),
                             1.5e9)
    huge = Job("sum", "values:" + "1," * 130_000 + "1")  # 260 KB: over the message alone
    desk.record_attached("huge", huge, Outcome("huge", "sum", np.array(6.0), 1, ("n1",), 0.2), 1.5e9)
    await turns()
    assert desk.skipped_records == 1
    assert all(len(entry.data) <= limit // 2 for entry in proposed) and len(proposed) == 3
    batched = [decode_command(line).job_id for entry in proposed for line in entry.data.split(b"\n")]
    assert batched == [f"a{number}" for number in range(5)]
    desk.apply(tuple(proposed))
    assert desk.table.get("huge") is None
    records = [desk.table.get(f"a{n}") for n in range(5)]
    assert all(r is not None and r.result is not None for r in records), "each with its answer"
    await desk.close()


async def test_an_attached_record_still_to_be_sized_when_the_ledger_closes_is_not_proposed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job answered just before the node stops: its record, sized two turns of the loop
    later, was put back among those to propose after `close` had cleared them, and armed a new
    flush that proposed it on a closing journal."""
    monkeypatch.setattr("node.server.ledger.ATTACHED_FLUSH_S", 0.0)
    proposed: list[Entry] = []
    desk = running_ledger(proposed)
    outcome = Outcome("late", "sum", np.array(6.0), 1, ("n1",), 0.2)
    desk.record_attached("late", Job("sum", "values:1,2,3"), outcome, 1.5e9)
    await desk.close()
    await turns()
    await asyncio.sleep(0.01)  # any flush armed meanwhile has run
    assert proposed == [] and desk.skipped_records == 0


async def test_a_record_left_out_under_a_bound_that_shrank_is_recorded_once_it_fits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An attached record is sized just after its job is answered and proposed at the next
    flush: a smaller limit heard of meanwhile (a follower's) sizes it again, and one whose source alone
    is over it is left out, and counted skipped; with nothing left, nothing is proposed (an
    empty entry was). Its job id stayed among those on their way, so the job answered again
    was never recorded, even once the bound grew back."""
    monkeypatch.setattr("node.server.ledger.ATTACHED_FLUSH_S", 0.0)
    proposed: list[Entry] = []
    bound = [MAX_MESSAGE_BYTES]
    desk = running_ledger(proposed, bound=lambda: bound[0])
    job = Job("sum", "values:" + "1," * 40_000 + "1")  # an 80 KB source
    outcome = Outcome("big", "sum", np.array(6.0), 1, ("n1",), 0.2)
    desk.record_attached("big", job, outcome, 1.5e9)
    for _ in range(2):  # its record is sized two turns of the loop on, under the bound then
        await asyncio.sleep(0)
    assert desk.skipped_records == 0
    bound[0] = 64 << 10  # heard of before the flush
    await turns()
    desk.apply(tuple(proposed))
    await turns()
    assert proposed == [] and desk.skipped_records == 1
    assert desk.table.get("big") is None
    bound[0] = MAX_MESSAGE_BYTES
    desk.record_attached("big", job, outcome, 1.5e9)
    await turns()
    desk.apply(tuple(proposed))
    record = desk.table.get("big")
    assert record is not None and record.state == "done"
    await desk.close()


async def test_a_final_record_that_grew_past_a_message_is_proposed_without_its_nodes() -> None:
    """A detached job's `queued` record fitted; its `done` record adds the nodes that ran
    it, which no check bounded: 3,000 ids of 40 characters under 64 KiB messages. It goes
    without them (said in its error), with its answer, and fits (the log once stopped at
    any record over the limit: recordsize.py)."""
    proposed: list[Entry] = []
    limit = 64 << 10
    many = tuple(f"node-{number:04d}-" + "x" * 30 for number in range(3000))
    desk = running_ledger(proposed, limit, nodes=many)
    ack = asyncio.create_task(desk.enqueue("a", Job("sum", "values:1,2,3")))
    await turns()
    desk.apply(tuple(proposed))
    assert (await ack).state == "queued"
    waiter = asyncio.create_task(desk.wait("a", 5.0))
    await turns()
    assert states(proposed) == [("a", "queued"), ("a", "done")]
    assert len(proposed[1].data) + ENVELOPE_BYTES <= limit
    desk.apply(tuple(proposed[1:]))
    record = await waiter
    assert record is not None and record.state == "done" and record.nodes == ()
    assert record.result is not None and np.frombuffer(record.result.data, record.result.dtype)[0] == 6.0
    assert "the 3000 nodes that ran it were not kept" in record.error
    await desk.close()


async def test_a_detached_job_whose_joined_run_was_abandoned_gets_a_run_of_its_own() -> None:
    """Its drive had joined an attached submit's run of the same id, whose client hung up:
    it took the RunAbandoned for a lost leadership and stopped, the job left queued."""
    from node.errors import RunAbandoned

    proposed: list[Entry] = []
    tries: list[str] = []

    async def run(job_id: str, job: Job) -> Outcome:
        tries.append(job_id)
        if len(tries) == 1:
            raise RunAbandoned(f"job_id: the run of {job_id!r} ended with its first caller; retry")
        return Outcome(job_id, job.op, np.array(6.0), 1, ("n1",), 0.1)

    desk = running_ledger(proposed, run=run)
    await enqueued(desk, proposed, "a")
    waiter = asyncio.create_task(desk.wait("a", 5.0))
    await turns()
    desk.apply(tuple(proposed[1:]))
    record = await waiter
    assert tries == ["a", "a"] and record is not None and record.state == "done"


async def test_a_detached_job_cancelled_while_it_waits_for_a_slot_is_not_run() -> None:
    from node.errors import LimitExceeded

    proposed: list[Entry] = []
    busy, tries = [True], [0]

    async def run(job_id: str, job: Job) -> Outcome:
        tries[0] += 1
        if busy[0]:
            raise LimitExceeded("max-jobs: 1 jobs already running on the leader")
        return Outcome(job_id, job.op, np.array(6.0), 1, ("n1",), 0.1)

    desk = running_ledger(proposed, run=run)
    await enqueued(desk, proposed, "a")
    await poll(lambda: tries[0] >= 2, what="the drive to be refused a slot twice")
    cancel = asyncio.create_task(desk.cancel("a"))
    await turns()
    desk.apply(tuple(proposed[1:]))
    assert (await cancel).state == "cancelled"
    refused, busy[0] = tries[0], False  # a slot is free: a drive still retrying would run it now
    await poll(lambda: "a" not in desk._slots, what="the drive to end")
    assert tries[0] == refused and ("a", "done") not in states(proposed)


async def test_a_wait_that_ends_without_the_record_leaves_no_watcher() -> None:
    """Each `result --wait` that ran out of time (or whose client went) on a live job left its
    future behind until the job's state changed; a polling client collected them, and they
    made the job's final record look awaited (proposed at once, not with the next flush)."""
    proposed: list[Entry] = []
    desk = running_ledger(proposed, run=lambda job_id, job: asyncio.Event().wait())  # runs for ever
    await enqueued(desk, proposed, "a")
    for _ in range(3):
        record = await desk.wait("a", 0.001)
        assert record is not None and record.state in ("queued", "running")
    gone = asyncio.create_task(desk.wait("a", 60.0))
    await turns()
    gone.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await gone
    assert "a" not in desk._watchers
    await desk.close()


async def test_a_job_committed_as_its_leader_steps_down_runs_when_it_leads_again() -> None:
    """The `queued` record's commit schedules its run a turn later; a leader that stepped
    down within that turn put the job in its waiting line anyway, and when it led again it
    took the job for one on its way and never ran it."""
    proposed: list[Entry] = []
    leading = [True]
    desk = running_ledger(proposed, leading=lambda: leading[0])
    ack = asyncio.create_task(desk.enqueue("a", Job("sum", "values:1,2,3")))
    await turns()
    desk.apply(tuple(proposed))  # the commit: the run is scheduled for the next turn
    leading[0] = False
    desk.step_down()  # in the same turn
    assert (await ack).state == "queued"
    await turns()
    assert "a" not in desk._slots, "a node that does not lead keeps nothing waiting"
    leading[0] = True  # elected again: its no-op applied
    desk.apply((Entry(len(proposed) + 1, 1, "noop", b""),))
    waiter = asyncio.create_task(desk.wait("a", 5.0))
    await poll(lambda: ("a", "done") in states(proposed), what="the job's run")
    desk.apply(tuple(entry for entry in proposed if entry.index > 1))
    record = await waiter
    assert record is not None and record.state == "done"


async def test_a_detached_answer_past_what_the_table_keeps_leaves_a_done_record() -> None:
    """It was forgotten as its record was applied: `result --wait` said "no job"."""
    proposed: list[Entry] = []

    async def run(job_id: str, job: Job) -> Outcome:
        return Outcome(job_id, job.op, np.zeros(300_000), 1, ("n1",), 0.1)  # 2.4 MB

    desk = running_ledger(proposed, run=run, table=JobTable(keep_result_bytes=1 << 20))
    await enqueued(desk, proposed, "a")
    waiter = asyncio.create_task(desk.wait("a", 5.0))
    await poll(lambda: ("a", "done") in states(proposed), what="the job's run")
    desk.apply(tuple(proposed[1:]))
    record = await waiter
    assert record is not None and record.state == "done" and record.result is None
    assert "the result (2400000 bytes) was not kept" in record.error


def test_a_disk_that_cannot_be_asked_has_no_room_and_is_asked_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A data dir gone: every attached job asked the disk again and logged a traceback."""
    from node.server.diskroom import DiskRoom

    asked: list[int] = []

    def gone() -> int:
        asked.append(1)
        raise FileNotFoundError("no such data dir")

    room = DiskRoom(gone, lambda: "n1 (term 1)")
    assert not any(room.for_record() for _ in range(100))
    said = [r for r in caplog.records if "free space cannot be had" in r.getMessage()]
    assert len(asked) == 1 and len(said) == 1 and said[0].exc_info is None
    room.disk_free = lambda: 1 << 30
    assert not room.for_record(), "trusted for FREE_SPACE_TTL_S"
    room.forget()
    assert room.for_record()
