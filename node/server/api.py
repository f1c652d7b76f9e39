"""The calls the gRPC servicer makes on its node, and what they return.

The servicer (service.py) turns each request into one of these calls and the
result, or the exception from node/errors.py, into a reply or a status; the
daemon (daemon.py) implements them. Nothing here knows protobuf or gRPC, so
the servicer can be tested against a fake node (tests/test_service.py) and
the daemon without a server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol

import msgspec

from node.core.job import Job
from node.core.jobtable import JobRecord
from node.core.messages import Heartbeat, InstallSnapshot
from node.server.tracing import ShardTimes
from node.wire.trace import Span

if TYPE_CHECKING:  # numpy: loaded with the compute stack, after the election
    import numpy as np

    from node._proto import distnode_pb2 as pb
    from node.core.compute import Partial
    from node.server.computelink import Computed
    from node.server.linkserve import LinkHost

#: (shard index, first row, end row) of one shard handed to a worker.
ShardRange = tuple[int, int, int]


class Caller(Protocol):
    """Who sent a job, as a job's run needs to know it: a gRPC call's context, or a
    local socket's connection (localsocket.py)."""

    def peer(self) -> str: ...
    def time_remaining(self) -> float | None: ...


class Outcome(msgspec.Struct, frozen=True):
    """A finished job on the leader: its answer and how it was made."""

    job_id: str
    op: str
    result: np.ndarray
    shards: int
    nodes: tuple[str, ...]
    elapsed_ms: float
    #: The run's timeline, when it was asked for with `trace`.
    trace: tuple[Span, ...] = ()


class VoteAnswer(msgspec.Struct, frozen=True):
    term: int
    granted: bool


class BeatAnswer(msgspec.Struct, frozen=True):
    """A follower's answer to one heartbeat: its term and role."""

    term: int
    role: str
    #: Why this node cannot write its durable state ("" while it can).
    storage_error: str = ""
    #: AppendEntries: the beat's previous entry was not in this node's log.
    refused: bool = False
    #: The last index known to match the leader's log (refused: where to try next).
    match_index: int = 0
    #: A bare beat answered, not stepped, while this node writes its journal: it is alive
    #: and follows the beat's leader; `refused` and `match_index` mean nothing.
    writing: bool = False
    #: The answered beat's `serial` (0: not numbered).
    serial: int = 0


#: Takes a beat's answer, at once or once the entries it counts are durable.
BeatReply = Callable[[BeatAnswer], None]


class Answered(msgspec.Struct, frozen=True):
    """The leader ran the job (or remembered it): the answer and who gave it."""

    outcome: Outcome
    leader: str
    term: int
    leader_address: str


class Relayed(msgspec.Struct, frozen=True):
    """A follower relayed the job: the leader's reply, passed on byte for byte."""

    reply: bytes


Submitted = Answered | Relayed


class IncomingPartial(msgspec.Struct, frozen=True):
    """One partial from a worker's Reduce stream, already turned into arrays."""

    job_id: str
    shard: int
    node_id: str
    state: Partial
    times: ShardTimes | None = None
    #: The shard's rows in the plan it was handed from; None from a worker that does not say.
    rows: tuple[int, int] | None = None
    #: The number of the run whose call it answers; 0 from a worker that does not say.
    run: int = 0


class ReduceCount(msgspec.Struct, frozen=True):
    accepted: int
    dropped: int


class JobProgress(msgspec.Struct, frozen=True):
    known: bool
    shards_done: int
    shards_total: int
    #: Shards each node (by id) has delivered, while the job runs on this leader.
    by_node: dict[str, int] = msgspec.field(default_factory=dict)


class JobView(msgspec.Struct, frozen=True):
    """One job as the answering node's job table holds it, and who answered."""

    record: JobRecord
    answered_by: str
    leader: str
    term: int
    #: Shards merged so far; known only on the leader that runs the job.
    shards_done: int = 0
    #: The leader's address as the answering node knows it; "" if none.
    leader_address: str = ""
    #: The job's shards in all while it runs (its record says how many once it is done);
    #: known only on the leader that runs it, 0 elsewhere.
    shards_total: int = 0


class NodeView(msgspec.Struct, frozen=True):
    """One node as the answering node sees it."""

    id: str
    address: str
    role: str
    term: int
    alive: bool
    #: Milliseconds since it was last heard; None if never.
    last_heartbeat_ms: float | None
    #: Why it cannot write its durable state ("" while it can, or not known).
    storage_error: str = ""
    #: Why the answering node's last contact with it failed ("" once it answered since).
    problem: str = ""
    #: The answering node's failed contacts with it since it started.
    failures: int = 0


class StatusView(msgspec.Struct, frozen=True):
    node_id: str
    role: str
    term: int
    leader_id: str
    leader_address: str
    nodes: list[NodeView]
    #: The source kinds this node reads.
    sources: tuple[str, ...] = ()
    #: This node's log: its last index and its commit index.
    log_index: int = 0
    commit_index: int = 0
    #: The settings peers compare with theirs (discovery.py), by StatusReply field name.
    settings: dict[str, int] = msgspec.field(default_factory=dict)


class NodeApi(Protocol):
    """What a node does for the servicer. Errors are node.errors classes."""

    @property
    def node_id(self) -> str: ...

    #: What its compute links run on (linkserve.py).
    links: LinkHost

    #: The node's clock grain: durations in a beat travel in ms, the core counts ticks.
    tick_ms: int
    #: Its --max-message-bytes, which its heartbeat replies state.
    max_bytes: int

    async def request_vote(
        self, candidate_id: str, term: int, pre_vote: bool, last_index: int, last_term: int
    ) -> VoteAnswer: ...

    async def heartbeat(self, beat: Heartbeat | InstallSnapshot, beacon_key: bytes, reply: BeatReply) -> None:
        """Admit and step `beat`; `reply` gets its answer at once, or once the entries it counts
        are durable. Returns once it is stepped (or waits its turn), before it is answered."""

    def leader_stream_closed(self, leader_id: str, term: int) -> None: ...

    async def submit(
        self, job_id: str, job: Job, client: str, forwarded: bool, timeout_s: float | None,
        trace: bool = False, answer_file: pb.AnswerFile | None = None,
    ) -> Submitted: ...

    async def compute(
        self, job_id: str, job: Job, shards: list[ShardRange], leader_id: str, timeout_s: float | None,
        run: int = 0,
    ) -> Computed: ...

    async def skip(self, job_id: str, shards: list[int], leader_id: str) -> list[int]: ...

    async def reduce(self, partials: AsyncIterator[IncomingPartial]) -> ReduceCount: ...

    async def progress(self, job_id: str) -> JobProgress: ...

    async def status(self) -> StatusView: ...

    async def enqueue(self, job_id: str, job: Job, client: str, forwarded: bool) -> JobView: ...

    async def result(self, job_id: str, wait_s: float, forwarded: bool) -> JobView: ...

    async def list_jobs(self, state: str | None, limit: int, forwarded: bool) -> list[JobView]: ...

    async def cancel(self, job_id: str, forwarded: bool) -> JobView: ...
