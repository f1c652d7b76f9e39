"""What the clients return: a job's `Answer` and the cluster's `ClusterStatus`."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from node._proto import distnode_pb2 as pb
from node.errors import AttemptFailed, JobError
from node.wire.answerfile import AnswerFile
from node.wire.answers import SubmitAnswer
from node.wire.tensors import result_to_python
from node.wire.trace import Span, spans_from_json, trace_document

#: Called with (shards merged, shards in all) while a long job runs.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True, eq=False)
class Answer:
    """One job's answer; `as_dict()` is the CLI's `--json` object.

    `array` is the answer as numpy gives it (0-d for a scalar); `result` is the
    same as a Python number or list, made on first use (a million-element
    vector costs ~25 ms to turn into a list, so numpy users should use `array`).
    """

    job_id: str
    op: str
    array: np.ndarray
    shards: int
    nodes: list[str]
    elapsed_ms: float
    leader: str
    term: int
    retries: int
    #: With `submit(..., trace=True)`: the job's timeline, a Trace Event Format object
    #: (`json.dump` it and open it in Perfetto or chrome://tracing).
    trace: dict[str, Any] | None = None

    @functools.cached_property
    def result(self) -> int | float | list[int] | list[float]:
        return result_to_python(self.array)

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "op": self.op, "result": self.result,
            "shards": self.shards, "nodes": self.nodes,
            "elapsed_ms": round(self.elapsed_ms, 3), "leader": self.leader,
            "term": self.term, "retries": self.retries,
        }


@dataclass(frozen=True)
class NodeInfo:
    #: None until the answering node has learnt who answers at `address`.
    id: str | None
    address: str
    role: str
    term: int
    alive: bool
    last_heartbeat_ms: float | None
    #: Why that node cannot write its durable state; None while it can (or not known).
    storage_error: str | None = None
    #: Why the answering node's last contact with it failed; None once it answered since.
    problem: str | None = None
    #: The answering node's failed contacts with it since it started.
    failures: int = 0


@dataclass(frozen=True)
class ClusterStatus:
    """The cluster as one node sees it (`answered_by`): the leader's view when it answered.

    `leader` is a node that answered as leader, or None if none could be
    reached; a follower's belief in a leader that did not answer is not
    repeated (its role shows as "unknown").
    """

    leader: str | None
    term: int
    nodes: list[NodeInfo] = field(default_factory=list)
    answered_by: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "term": self.term,
            "nodes": [vars(node).copy() for node in self.nodes],
            "answered_by": self.answered_by,
        }


@contextlib.contextmanager
def answer_file(request: pb.SubmitRequest, on_stream: bool) -> Iterator[AnswerFile | None]:
    """A file for a vector answer to come through if the leader is on this machine
    (node/wire/answerfile.py), named in `request`; removed when the submit ends."""
    target = None if on_stream else AnswerFile.create()
    if target is None:
        yield None
        return
    request.answer_file.CopyFrom(target.spec)
    with target:
        yield target


def read_answer_file(target: AnswerFile, reply: SubmitAnswer) -> SubmitAnswer:
    """`reply` with its data from `target` where the leader wrote it there. A file removed
    under us fails the attempt: asked again, the leader answers inline."""
    try:
        return target.answer(reply)
    except OSError as exc:
        raise AttemptFailed(f"answer file {target.path.name}: {exc}", accepted=True, reached=True) from None


def answer_from(reply: SubmitAnswer, started_s: float, retries: int, traced_from_ns: int | None = None
                ) -> Answer:
    """The client's answer; with `traced_from_ns` (when the client began), its timeline too."""
    head = reply.head
    elapsed_ms = (time.perf_counter() - started_s) * 1000
    trace = None
    if traced_from_ns is not None:
        notes: dict[str, Any] = {"retries": retries, "leader": head.leader}
        try:
            spans = spans_from_json(head.trace_json) if head.trace_json else []
        except ValueError as exc:  # the answer stands; only its timeline is lost
            spans, notes["trace_error"] = [], str(exc)
        spans.append(Span("submit: round trip", "client", "submit", traced_from_ns, time.time_ns(), notes))
        trace = trace_document(spans)
    try:
        array = reply.array
    except ValueError as exc:  # only a node of another build, or a damaged reply, sends one
        who = head.leader or "the node"
        raise JobError(f"job {head.job_id}: a malformed answer from {who}: {exc}") from None
    return Answer(
        job_id=head.job_id, op=head.op, array=array,
        shards=head.shards, nodes=list(head.nodes), elapsed_ms=elapsed_ms,
        leader=head.leader, term=head.term, retries=retries, trace=trace,
    )


def cluster_status(reply: pb.StatusReply, leaderless: bool = False) -> ClusterStatus:
    """A node's Status reply as the client shows it; `leaderless`: no leader confirmed it."""
    nodes = [
        NodeInfo(
            id=n.id or None, address=n.address,
            role="unknown" if leaderless and n.role == "leader" else n.role,
            term=n.term, alive=n.alive,
            last_heartbeat_ms=None if n.last_heartbeat_ms < 0 else round(n.last_heartbeat_ms, 1),
            storage_error=n.storage_error or None, problem=n.problem or None, failures=n.failures,
        )
        for n in reply.nodes
    ]
    nodes.sort(key=lambda n: (n.id or "", n.address))
    leader = None if leaderless else (reply.leader_id or None)
    return ClusterStatus(leader=leader, term=reply.term, nodes=nodes, answered_by=reply.node_id or None)
