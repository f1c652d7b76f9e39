"""The ledger (node/server/ledger.py) without a cluster: proposals, commits, and what a
client that hung up leaves behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools

import pytest

from node.core.job import Job
from node.core.jobtable import JobTable
from node.core.raftlog import Entry
from node.errors import NotLeader
from node.server.api import Outcome
from node.server.ledger import JobLedger


def ledger(proposed: list[Entry]) -> JobLedger:
    indices = itertools.count(1)

    def propose(data: tuple[bytes, ...]) -> tuple[Entry, ...]:
        entries = tuple(Entry(next(indices), 1, "command", item) for item in data)
        proposed.extend(entries)
        return entries

    async def run(job_id: str, job: Job) -> Outcome:
        raise AssertionError("not run in these tests")

    return JobLedger(JobTable(), propose, lambda: True, lambda: 1, run, lambda job_id: None,
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
