"""The daemon's job table, kept from the log; and, on the leader, the jobs it drives.

Every node applies the committed log to a JobTable (node/core/jobtable.py),
so any node answers `Result` and `Jobs`, and the table survives a restart of
every node (the journal holds the log and the table's snapshot).

Only the leader proposes, and only these records:
- a detached job's `queued` record, acknowledged to the client once it is
  committed: from then on the job is a fact the cluster cannot forget;
- `running`, then `done` (with the result's bytes) or `failed`, as the leader
  drives a detached job; a new leader drives every job the table shows
  queued or running once its own first entry (the no-op) is applied, so it
  resumes them without any client. Shards are not recorded: a resumed job is
  recomputed, and the fixed shard plan gives the same bits;
- `cancelled`, which ends the run on the leader when it is applied;
- an attached job's `done`, after its client has its answer: a client that
  waits pays no replication round trip. These are batched, one entry (one
  record per line, one fsync) every ATTACHED_FLUSH_S, and skipped while the disk is nearly full,
  so attached jobs keep being served when detached ones are refused.

Proposals made in the same turn of the event loop share one entry batch. A
follower applies committed records a slice at a time (backlog.py); whatever
reads `table` applies the rest first. The leader applies them at once.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from msgspec.structs import replace

from node.core.job import Job
from node.core.jobtable import (
    FINISHED,
    JobRecord,
    JobTable,
    Proposed,
    job_spec,
    record_job,
    same_job,
)
from node.core.limits import MAX_MESSAGE_BYTES
from node.core.raftlog import Entry
from node.errors import JobConflict, JobError, JobFinished, LimitExceeded, NotLeader, UnknownJob
from node.server import detachedrun, recordsize
from node.server.backlog import Backlog
from node.server.diskroom import DiskRoom
from node.server.slots import Slots

if TYPE_CHECKING:
    from node.server.api import Outcome

log = logging.getLogger("distnode.ledger")

LIVE = ("queued", "running")
#: Attached jobs' records wait this long for company before they are proposed:
#: each proposal is an fsync on every node (docs/journal.md).
ATTACHED_FLUSH_S = 0.1
#: Detached jobs queued or running at once, and their sources' bytes together (a `values:`
#: source may be 1 MiB, kept until the job ends); more are refused (RESOURCE_EXHAUSTED).
MAX_LIVE_JOBS, MAX_LIVE_SOURCE_BYTES = 10_000, 64 << 20
#: A detached job still running after this long is recorded as running.
RUNNING_AFTER_S = 0.1

Propose = Callable[[tuple[bytes, ...]], tuple[Entry, ...]]


class JobLedger:
    def __init__(
        self, table: JobTable, propose: Propose, is_leader: Callable[[], bool], term: Callable[[], int],
        run: detachedrun.Run, stop_run: Callable[[str], None], disk_free: Callable[[], int], max_running: int,
        who: Callable[[], str], message_bytes: Callable[[], int] = lambda: MAX_MESSAGE_BYTES,
    ) -> None:
        self._table = table
        self._propose = propose
        self._is_leader = is_leader
        self._term = term
        self._run = run
        self._stop_run = stop_run
        self._who = who
        #: Room on the data dir's disk for records (diskroom.py).
        self.room = DiskRoom(disk_free, who)
        self._max_bytes = message_bytes  # the cluster's least --max-message-bytes: what a record must fit
        #: The last index applied to the table.
        self.applied = 0
        self._pending: list[tuple[Proposed, asyncio.Future[bool] | None]] = []
        #: Index -> what this leader proposed there, until it is applied (JobTable.apply).
        self._proposed: dict[int, Proposed] = {}
        self._flush_soon: asyncio.Handle | None = None
        self._flush_later: asyncio.TimerHandle | None = None
        #: Index -> (term, future) of proposals whose client waits for their commit.
        self._commits: dict[int, tuple[int, asyncio.Future[bool]]] = {}
        #: Detached jobs whose `queued` record is proposed, not yet committed.
        self._enqueuing: dict[str, asyncio.Future[bool]] = {}
        self._watchers: dict[str, list[asyncio.Future[None]]] = collections.defaultdict(list)
        #: Leader only: the detached jobs driven, and those waiting for a slot.
        self._slots = Slots(max_running, is_leader, self._drive)
        self.skipped_records = 0
        self._closed = False
        #: Attached jobs whose record is waiting for the next flush, or proposed and not yet committed.
        self._recording: set[str] = set()
        #: Attached jobs' records (record, command bytes) waiting for the next flush.
        self._attached: list[tuple[JobRecord, bytes]] = []
        #: The term whose leader's no-op this node has applied: as leader, its table holds
        #: everything committed before its term, and it may answer reads (Raft §8).
        self.caught_up_term = 0
        self._backlog = Backlog(table, self._applied)  # committed entries not yet wholly applied

    @property
    def table(self) -> JobTable:
        """The job table with every committed entry applied."""
        self._backlog.drain()
        return self._table

    @property
    def caught_up(self) -> bool:
        """As leader: the table holds everything committed before this term (Raft §8)."""
        return self.caught_up_term == self._term()

    # ---- the state machine ----------------------------------------------------

    def apply(self, entries: tuple[Entry, ...]) -> None:
        """Committed entries, in log order: the leader applies them now, a follower in slices."""
        self._backlog.feed(entries, self._proposed, at_once=self._is_leader())

    def _applied(self, entries: list[Entry], changed: list[str]) -> None:
        """Release the waiters of what was applied (`entries` wholly); as leader, act on it."""
        for entry in entries:
            self._proposed.pop(entry.index, None)
            waiter = self._commits.pop(entry.index, None)
            if waiter is not None and not waiter[1].done():
                waiter[1].set_result(entry.term == waiter[0])
        self.applied = entries[-1].index if entries else self.applied
        for job_id in changed:
            for future in self._watchers.pop(job_id, ()):
                if not future.done():
                    future.set_result(None)
        if not self._is_leader():
            return
        term = self._term()
        if any(entry.kind == "noop" and entry.term == term for entry in entries):
            self.caught_up_term = term
            self._resume_all()  # the table now holds everything committed before this term
            return
        loop = asyncio.get_running_loop()
        for job_id in changed:
            record = self._table.get(job_id)
            if record is not None and record.state == "queued":
                # A turn later: the acknowledgement this commit releases goes out
                # before the job's first step takes the loop (a small job's ~0.3 ms).
                loop.call_soon(self._slots.schedule, job_id)
            elif record is not None and record.state == "cancelled":
                self._stop_run(job_id)

    def restore(self, data: bytes, index: int) -> None:
        """The leader's snapshot replaced our log: the table is the snapshot's."""
        self.table.restore(data)
        self.applied = index
        for futures in self._watchers.values():
            for future in futures:
                if not future.done():
                    future.set_result(None)
        self._watchers.clear()

    # ---- proposals --------------------------------------------------------------

    def _propose_record(self, record: JobRecord, urgent: bool) -> asyncio.Future[bool]:
        """Queue a record for the next proposal; the future says whether it committed."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)  # whoever awaits it may be gone (a client that hung up)
        self._pending.append((Proposed.of((recordsize.fitting(record, self._max_bytes()),)), future))
        if urgent:
            self._hurry()
        elif self._flush_later is None and self._flush_soon is None:
            self._flush_later = asyncio.get_running_loop().call_later(ATTACHED_FLUSH_S, self._flush)
        return future

    def _hurry(self) -> None:
        """Propose what is pending at the next turn rather than at the flush timer."""
        if self._pending and self._flush_soon is None:
            self._flush_soon = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        for handle in filter(None, (self._flush_soon, self._flush_later)):
            handle.cancel()
        self._flush_soon = self._flush_later = None
        pending, self._pending = self._pending, []
        while self._attached:
            pending.extend(self._attached_batch())
        if not pending:
            return
        entries = self._propose(tuple(proposed.data for proposed, _ in pending)) if self._is_leader() else ()
        if not entries:
            for _, future in pending:
                if future is not None and not future.done():
                    future.set_exception(NotLeader(f"{self._who()} could not append the job's record"))
            return
        for entry, (proposed, future) in zip(entries, pending, strict=True):
            if entry.index > self.applied:
                self._proposed[entry.index] = proposed
            if future is None or future.done():
                continue
            if entry.index <= self.applied:  # committed within the proposal: a one-node cluster
                future.set_result(True)
            else:
                self._commits[entry.index] = (entry.term, future)

    def _attached_batch(self) -> list[tuple[Proposed, asyncio.Future[bool]]]:
        """Attached records, as many as fit a message, as one entry (one per line): a few a second;
        none if each was left out (a smaller bound heard of since it was sized: skipped)."""
        batch, self._attached = recordsize.first_batch(consumed := self._attached, self._max_bytes())
        taken = consumed[:len(consumed) - len(self._attached)]  # the left out too
        self.skipped_records += len(taken) - len(batch)
        job_ids = [record.job_id for record, _ in taken]
        if not batch:
            self._recording.difference_update(job_ids)
            return []
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        future.add_done_callback(lambda _: self._recording.difference_update(job_ids))
        return [(Proposed.of(batch), future)]

    async def _committed(self, future: asyncio.Future[bool]) -> None:
        if not await asyncio.shield(future):
            raise NotLeader(f"{self._who()} lost the leadership before the job's record was committed; retry")

    def record_attached(self, job_id: str, job: Job, outcome: Outcome, submitted_at: float) -> None:
        """An attached job was answered: record it, batched, if the table does not know it yet.
        Its record is sized (60 us a job on a busy host) two turns of the event loop on: a
        local socket writes the reply one turn after its stream has it (jobstream.py), so the
        reply goes first. Not all at the flush: that would hold the loop for a batch."""
        if self.table.get(job_id) is not None or job_id in self._recording or not self._is_leader():
            return  # known, or on its way (a retried submit answered twice)
        self._recording.add(job_id)
        loop = asyncio.get_running_loop()
        loop.call_soon(loop.call_soon, self._size_attached, job_id, job, outcome, submitted_at, time.time())

    def _size_attached(self, job_id: str, job: Job, outcome: Outcome, submitted_at: float,
                       finished_at: float) -> None:
        """The record, as it fits one message, waiting for the next flush; skipped if it does
        not fit, if there is no room on disk, or if the ledger closed or stopped leading since."""
        if self._closed or not self._is_leader():
            self._recording.discard(job_id)
            return
        try:
            result, note, nodes = recordsize.kept(outcome, False, self._max_bytes(), job_id, job.source,
                                                  self._table.keep_result_bytes)
            record = JobRecord(job_id, job.op, job.source, "done", job_spec(job), outcome.shards, nodes,
                               submitted_at, finished_at, outcome.elapsed_ms, result, note)
            record, command = recordsize.fitting(record, self._max_bytes())
            kept = self.room.for_record() and recordsize.fits(command, self._max_bytes())
        except Exception:  # a fault of ours: logged, the answer given anyway
            log.exception("job %s: its record could not be made", job_id, extra={"job_id": job_id})
            kept = False
        if not kept:
            self.skipped_records += 1  # no room on disk, or in a message to the followers (its source)
            self._recording.discard(job_id)
            return
        self._attached.append((record, command))
        if self._flush_later is None and self._flush_soon is None:
            self._flush_later = asyncio.get_running_loop().call_later(ATTACHED_FLUSH_S, self._flush)

    # ---- client calls -----------------------------------------------------------

    def known(self, job_id: str, job: Job) -> JobRecord | None:
        """The record of `job_id` if the table has one; JobConflict if it is for another job."""
        record = self.table.get(job_id)
        if record is not None and ((record.op, record.source) != (job.op, job.source)
                                   or not same_job(record.spec, job_spec(job))):
            raise JobConflict(f"job_id: {job_id!r} was already used for a different job")
        return record

    async def enqueue(self, job_id: str, job: Job) -> JobRecord:
        """A detached job: its `queued` record committed (or the record already there)."""
        record = self.known(job_id, job)
        if record is not None:
            return record
        joining = self._enqueuing.get(job_id)
        if joining is None:
            self._check_room(job.source)
            queued = JobRecord(job_id, job.op, job.source, "queued", job_spec(job), submitted_at=time.time(),
                               detached=True)
            if recordsize.command_of(queued, limit := self._max_bytes()) is None:
                raise LimitExceeded(f"source: the job's record would be over --max-message-bytes "
                                    f"({limit}), which no follower could take")
            joining = self._enqueuing[job_id] = self._propose_record(queued, urgent=True)
            joining.add_done_callback(lambda _: self._enqueuing.pop(job_id, None))
        await self._committed(joining)
        record = self.known(job_id, job)
        if record is None:  # committed, then dropped by retention at once: keep-jobs of 0
            raise JobError(f"job {job_id} was committed but is past retention already (--keep-jobs)")
        return record

    def _check_room(self, source: str) -> None:
        self.room.check_detached()
        live, held = self.table.live, self.table.live_source_bytes
        if live >= MAX_LIVE_JOBS:
            raise LimitExceeded(f"detached jobs: {live} queued or running, the most a cluster holds")
        if held + len(source) > MAX_LIVE_SOURCE_BYTES:
            raise LimitExceeded(f"source: the detached jobs queued or running hold {held} bytes of sources,"
                                f" and {len(source)} more would pass {MAX_LIVE_SOURCE_BYTES}")

    async def cancel(self, job_id: str) -> JobRecord:
        record = self.table.get(job_id)
        if record is None:
            raise UnknownJob(f"job_id: no job {job_id!r} on {self._who()}")
        if record.state == "cancelled":  # asked again (a retry whose first answer was lost): done
            return record
        if record.state in FINISHED:
            raise JobFinished(f"job_id: job {job_id} is already {record.state}; only a queued or running "
                              "job can be cancelled")
        await self._committed(self._propose_record(replace(record, state="cancelled",
                                                           finished_at=time.time()), urgent=True))
        final = self.table.get(job_id)
        if final is None or final.state != "cancelled":
            state = "gone" if final is None else final.state
            raise JobFinished(f"job_id: job {job_id} ended ({state}) before the cancel was committed")
        return final

    async def wait(self, job_id: str, wait_s: float) -> JobRecord | None:
        """The job's record once it is finished, or as it is when `wait_s` has passed."""
        deadline = time.monotonic() + wait_s
        while True:
            record = self.table.get(job_id)
            left = deadline - time.monotonic()
            if record is None or record.state in FINISHED or left <= 0:
                return record
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._watchers[job_id].append(future)
            self._hurry()  # its final record may be waiting for company (_finish)
            try:
                await asyncio.wait_for(future, left)
            except TimeoutError:
                return self.table.get(job_id)
            finally:
                self._unwatch(job_id, future)

    def _unwatch(self, job_id: str, future: asyncio.Future[None]) -> None:
        """A wait that ended without its record's change (out of time, or its client gone)."""
        watchers = self._watchers.get(job_id)
        if watchers is not None and future in watchers:
            watchers.remove(future)
            if not watchers:
                del self._watchers[job_id]

    # ---- the leader's runs ------------------------------------------------------

    def _resume_all(self) -> None:
        for record in reversed(self.table.jobs(state="running", limit=MAX_LIVE_JOBS)):
            self._slots.schedule(record.job_id)
        for record in reversed(self.table.jobs(state="queued", limit=MAX_LIVE_JOBS)):
            self._slots.schedule(record.job_id)

    async def _drive(self, job_id: str) -> None:
        record = self.table.get(job_id)
        if record is None or record.state in FINISHED:
            return
        try:
            job = record_job(record)
        except ValueError as exc:
            self._finish(record, "failed", error=str(exc))
            return
        if record.state == "queued":
            # Said only of a job that takes a while: a small one goes from queued to done,
            # one proposal (one fsync on every node) fewer.
            running = replace(record, state="running")
            handle = asyncio.get_running_loop().call_later(
                RUNNING_AFTER_S, lambda: self._propose_record(running, urgent=True))
        else:
            handle = None
        try:
            await self._run_to_end(job_id, job, record)
        finally:
            if handle is not None:
                handle.cancel()

    async def _run_to_end(self, job_id: str, job: Job, record: JobRecord) -> None:
        wanted = functools.partial(self._wanted, job_id)  # a cancel while it waited for a slot: not run
        outcome = await detachedrun.run_to_end(self._run, job_id, job, wanted)
        if isinstance(outcome, str):
            self._finish(record, "failed", error=outcome)
        if outcome is None or isinstance(outcome, str):
            return
        result, note, nodes = recordsize.kept(outcome, True, self._max_bytes(), job_id, job.source,
                                              self._table.keep_result_bytes)
        ran = replace(record, shards=outcome.shards, nodes=nodes, elapsed_ms=outcome.elapsed_ms)
        self._finish(replace(ran, result=result, error=note), "done")

    def _wanted(self, job_id: str) -> bool:
        record = self.table.get(job_id)
        return record is not None and record.state not in FINISHED

    def _finish(self, record: JobRecord, state: str, error: str = "") -> None:
        """Propose the job's final record: at once if a client waits for it, else with the
        next flush (ATTACHED_FLUSH_S), where many jobs' records share one proposal, so a
        stream of small detached jobs costs the log one round trip each, not two."""
        error = (error or record.error)[:recordsize.ERROR_CHARS]  # an exception's message may be long
        final = replace(record, state=state, finished_at=time.time(), error=error)
        self._propose_record(final, urgent=bool(self._watchers.get(record.job_id)))

    async def close(self) -> None:
        """The daemon stops: no more proposals, no run left behind, no waiter left hanging."""
        self._closed = True
        self._backlog.close()
        for handle in (self._flush_soon, self._flush_later):
            if handle is not None:
                handle.cancel()
        self._flush_soon = self._flush_later = None
        pending, self._pending = self._pending, []
        self._attached.clear()  # answered already; a record not yet proposed is only a record lost
        self._recording.clear()
        for _, future in pending:
            if future is not None and not future.done():
                future.set_exception(NotLeader(f"{self._who()} is shutting down; retry"))
                future.exception()  # seen now: the loop may not turn again to run its callbacks
        tasks = self._slots.stop()
        self.step_down()
        await asyncio.gather(*tasks, return_exceptions=True)

    def step_down(self) -> None:
        """Not the leader any more: the next one drives the jobs; waiting clients retry."""
        self._slots.stop()
        for _, future in self._commits.values():
            if not future.done():
                future.set_exception(NotLeader(f"{self._who()} lost the leadership; retry"))
        self._commits.clear()
        self._proposed.clear()


def _retrieve(future: asyncio.Future[bool]) -> None:
    """A proposal's outcome, seen here, so asyncio never logs it as lost when nobody waits."""
    if not future.cancelled():
        future.exception()
