"""The job table's calls, as the servicer makes them on a node: Enqueue, Result, Jobs, Cancel.

A follower relays what needs the leader (Enqueue and Cancel always; Result and
Jobs while its own table may be behind the leader's), and answers from its own
table when no leader can be asked, so finished jobs stay readable from any node;
but only a leader says that a job id is unknown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from msgspec.structs import replace

from node.core.job import Job
from node.core.jobtable import JobRecord
from node.errors import NotLeader, UnknownJob
from node.server.api import JobView
from node.server.ledger import LIVE

if TYPE_CHECKING:
    from node.core.election import Election
    from node.server.admission import ClientSlots
    from node.server.elections import ElectionDriver
    from node.server.jobs import JobManager
    from node.server.ledger import JobLedger
    from node.server.relay import Relay


class DeskNode(Protocol):
    """What the desk uses of its node (the daemon)."""

    relay: Relay
    clients: ClientSlots
    ledger: JobLedger
    elections: ElectionDriver

    @property
    def node_id(self) -> str: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def election(self) -> Election: ...

    @property
    def jobs(self) -> JobManager: ...

    def who(self) -> str: ...

    def shard_progress(self, job_id: str) -> tuple[int, int]: ...

    async def compute_ready(self) -> None: ...


class JobDesk:
    def __init__(self, node: DeskNode) -> None:
        self.node = node

    def _view(self, record: JobRecord) -> JobView:
        done = total = 0
        if self.node.is_leader and record.state == "running":
            done, total = self.node.shard_progress(record.job_id)
        election = self.node.election
        return JobView(record, self.node.node_id, election.leader or "", election.term, done,
                       self.node.relay.leader_address(), total)

    async def enqueue(self, job_id: str, job: Job, client: str, forwarded: bool) -> JobView:
        """A detached job, counted against its client's limit where the client is, as
        `submit` does: on the node it called, not on the leader a follower relays to (where
        every client of that follower would share one connection's limit)."""
        if forwarded:
            return await self._enqueue(job_id, job, forwarded)
        with self.node.clients.take(client):
            return await self._enqueue(job_id, job, forwarded)

    async def _enqueue(self, job_id: str, job: Job, forwarded: bool) -> JobView:
        if not self.node.is_leader:
            return await self.node.relay.enqueue(job_id, job, forwarded, None)
        await self.node.compute_ready()
        await self.node.jobs.validate(job)  # a bad job is refused now, not failed later
        # The shard size goes into the record: whichever leader resumes it cuts the same shards.
        job = replace(job, shard_elems=job.shard_elems or self.node.jobs.shard_elems)
        return self._view(await self.node.ledger.enqueue(job_id, job))

    async def result(self, job_id: str, wait_s: float, forwarded: bool) -> JobView:
        known = self.node.ledger.table.get(job_id)
        if (known is None or known.state in LIVE) and not self.node.is_leader and not forwarded:
            # The leader commits before its followers hear of it: ask it, so a client reads
            # its own submit or cancel at once; without a leader, this node's table answers.
            relayed = await self.node.relay.result(job_id, wait_s)
            if relayed is not None:
                return relayed
        if known is None and not self.node.is_leader:
            # A job acknowledged just before its leader died may be in no follower's table
            # yet (the commit index reaches them with the next beat): only a leader that has
            # caught up may say an id is unknown. The client asks again, elsewhere.
            raise NotLeader(f"{self.node.who()} has no leader to ask, and job_id {job_id!r} is not in its"
                            " table (yet); retry")
        self._check_reads()
        record = await self.node.ledger.wait(job_id, wait_s)
        if record is None or record.state in LIVE:
            self._check_reads()  # again: the loop may have stalled while it waited
        if record is None:
            raise UnknownJob(f"job_id: no job {job_id!r} in the job table of {self.node.who()}")
        return self._view(record)

    async def list_jobs(self, state: str | None, limit: int, forwarded: bool) -> list[JobView]:
        if not self.node.is_leader and not forwarded:
            relayed = await self.node.relay.jobs(state, limit)
            if relayed is not None:
                return relayed
        self._check_reads()
        return [self._view(record) for record in self.node.ledger.table.jobs(state, limit)]

    def _check_reads(self) -> None:
        """A leader answers from its table only once that holds everything committed before
        its term (its no-op is applied) and while a quorum hears it: never an older state
        than a client may already have seen (Raft §8). Followers answer from theirs."""
        if not self.node.is_leader:
            return
        self.node.elections.catch_up()  # a stall this handler is the first to find holds reads now
        if not self.node.is_leader or not self.node.ledger.caught_up or not self.node.election.may_read():
            raise NotLeader(f"{self.node.who()} leads but has not caught up with a quorum yet; retry")

    async def cancel(self, job_id: str, forwarded: bool) -> JobView:
        if not self.node.is_leader:
            return await self.node.relay.cancel(job_id, forwarded, None)
        self._check_reads()  # a table behind its term's would call a live job unknown, or finished
        return self._view(await self.node.ledger.cancel(job_id))

