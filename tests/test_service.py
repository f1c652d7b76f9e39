"""The servicer alone, against a fake node: protobuf in, the right call out, and back.

A real grpc.aio server on 127.0.0.1 runs `NodeServicer` over `FakeNode`, which
records every call and answers (or raises) what the test asks. Nothing else
of a daemon runs: no election, no jobs, no numpy work. This is the contract
of node/server/service.py: each RPC becomes one call with the request's
fields, each result becomes the reply, and each error class of
node/errors.py becomes its status with the message unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node._proto import distnode_pb2 as pb
from node.channels import ChannelFactory, StubCache
from node.core.job import Job
from node.core.messages import Heartbeat, InstallSnapshot
from node.core.raftlog import Entry
from node.errors import (
    InvalidField,
    JobConflict,
    JobFailed,
    JobTimedOut,
    LimitExceeded,
    NoLeader,
    NotAMember,
    NotLeader,
    ReduceFailed,
    RelayFailed,
    SourceForbidden,
    SourceNotFound,
)
from node.server.api import (
    Answered,
    BeatAnswer,
    BeatReply,
    IncomingPartial,
    JobProgress,
    NodeView,
    Outcome,
    ReduceCount,
    Relayed,
    ShardRange,
    StatusView,
    Submitted,
    VoteAnswer,
)
from node.server.computelink import Computed
from node.server.grpcserver import add_services, add_to_server
from node.server.service import NodeServicer
from node.wire.answers import parse_submit_reply, serialize_submit_reply, submit_answer
from node.wire.status import signed_by
from node.wire.stubs import NodeStub
from node.wire.tensors import tensor_to_proto


class FakeNode:
    """Implements api.NodeApi: records calls, answers `results[name]`, raises `raises[name]`."""

    node_id = "n1"
    tick_ms = 10
    max_bytes = 1 << 20

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.raises: dict[str, Exception] = {}
        self.results: dict[str, Any] = {}
        self.partials: list[IncomingPartial] = []

    def _call(self, name: str, *args: Any) -> Any:
        self.calls.append((name, args))
        if name in self.raises:
            raise self.raises[name]
        return self.results[name]

    async def request_vote(
        self, candidate_id: str, term: int, pre_vote: bool, last_index: int, last_term: int
    ) -> VoteAnswer:
        return self._call(  # type: ignore[no-any-return]
            "request_vote", candidate_id, term, pre_vote, last_index, last_term
        )

    async def heartbeat(self, beat: Heartbeat | InstallSnapshot, beacon_key: bytes, reply: BeatReply) -> None:
        reply(self._call("heartbeat", beat, beacon_key))

    def leader_stream_closed(self, leader_id: str, term: int) -> None:
        self.calls.append(("leader_stream_closed", (leader_id, term)))

    async def submit(
        self, job_id: str, job: Job, client: str, forwarded: bool, timeout_s: float | None,
        trace: bool = False, answer_file: pb.AnswerFile | None = None,
    ) -> Submitted:
        return self._call("submit", job_id, job, forwarded)  # type: ignore[no-any-return]

    async def compute(
        self, job_id: str, job: Job, shards: list[ShardRange], leader_id: str, timeout_s: float | None,
        run: int = 0,
    ) -> Computed:
        return self._call("compute", job_id, job, shards, leader_id, run)  # type: ignore[no-any-return]

    async def skip(self, job_id: str, shards: list[int], leader_id: str) -> list[int]:
        return self._call("skip", job_id, shards, leader_id)  # type: ignore[no-any-return]

    async def reduce(self, partials: AsyncIterator[IncomingPartial]) -> ReduceCount:
        async for partial in partials:
            self.partials.append(partial)
        return self._call("reduce")  # type: ignore[no-any-return]

    async def progress(self, job_id: str) -> JobProgress:
        return self._call("progress", job_id)  # type: ignore[no-any-return]

    async def status(self) -> StatusView:
        return self._call("status")  # type: ignore[no-any-return]


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeNode, NodeStub]]:
    node = FakeNode()
    server = grpc.aio.server()
    add_to_server(NodeServicer(node), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stubs = StubCache(ChannelFactory())
    yield node, stubs.stub(f"127.0.0.1:{port}")
    await stubs.close()
    await server.stop(None)


SUM_SPEC = pb.JobSpec(job_id="j1", op="sum", source="range:n=10", map="square", axis=0)


async def test_request_vote_is_one_call_with_the_fields(served: tuple[FakeNode, NodeStub]) -> None:
    node, stub = served
    node.results["request_vote"] = VoteAnswer(term=7, granted=True)
    reply = await stub.RequestVote(pb.VoteRequest(term=7, candidate_id="n2", pre_vote=True, last_index=4,
                                                  last_term=6))
    assert node.calls == [("request_vote", ("n2", 7, True, 4, 6))]
    assert (reply.term, reply.granted, reply.voter_id) == (7, True, "n1")


async def test_heartbeat_stream_answers_each_beat(served: tuple[FakeNode, NodeStub]) -> None:
    node, stub = served
    node.results["heartbeat"] = BeatAnswer(term=3, role="follower", refused=True, match_index=5)
    entry = pb.LogEntry(index=5, term=3, kind="command", data=b"x")
    beats = [pb.HeartbeatRequest(term=3, leader_id="n2", beacon_key=b"k" * 32, prev_index=4, prev_term=2,
                                 entries=[entry], commit=4, idle_slack_ms=59)] * 3
    replies = [reply async for reply in stub.Heartbeat(iter(beats))]
    assert [(r.term, r.role, r.node_id, r.refused, r.match_index) for r in replies] == [
        (3, "follower", "n1", True, 5)
    ] * 3
    beat = Heartbeat("n2", "n1", 3, 4, 2, (Entry(5, 3, "command", b"x"),), 4, slack=5)  # whole 10 ms ticks
    # The leader ended its stream: the node hears of it, with the last beat's leader and term.
    await closed_told(node)
    assert node.calls == [("heartbeat", (beat, b"k" * 32))] * 3 + [("leader_stream_closed", ("n2", 3))]


async def closed_told(node: FakeNode, deadline_s: float = 5.0) -> None:
    """Wait (polling, with a deadline) until the servicer told the node its stream closed:
    gRPC runs the RPC's done callbacks once the call is over, maybe after the client saw it."""
    stop_s = asyncio.get_running_loop().time() + deadline_s
    while not any(name == "leader_stream_closed" for name, _ in node.calls):
        assert asyncio.get_running_loop().time() < stop_s, node.calls
        await asyncio.sleep(0.005)


async def test_a_stream_the_leader_cancels_tells_the_node(served: tuple[FakeNode, NodeStub]) -> None:
    """A leader ends its stream by cancelling it (and a killed one's connection just drops):
    the node hears of it however the RPC ended, not only after a clean end of the requests."""
    node, stub = served
    node.results["heartbeat"] = BeatAnswer(term=4, role="follower")
    beats: asyncio.Queue[pb.HeartbeatRequest] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.HeartbeatRequest]:
        while True:
            yield await beats.get()

    call = stub.Heartbeat(requests())
    await beats.put(pb.HeartbeatRequest(term=4, leader_id="n3", prev_index=0, prev_term=0))
    await call.read()
    call.cancel()
    await closed_told(node)
    assert node.calls[-1] == ("leader_stream_closed", ("n3", 4))


async def test_a_stream_the_node_refused_a_beat_on_tells_it_nothing(
    served: tuple[FakeNode, NodeStub], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream ends because this node refused a beat (here: not a member), not because
    the leader went away: no `leader_stream_closed`, even after a beat it had answered."""
    node, stub = served
    answers: list[BeatAnswer | Exception] = [BeatAnswer(term=3, role="follower"), NotAMember("leader_id", "n2 is not behind any --peers address")]

    def answer_in_turn(name: str, *args: Any) -> Any:
        node.calls.append((name, args))
        answered = answers.pop(0)
        if isinstance(answered, Exception):
            raise answered
        return answered

    monkeypatch.setattr(node, "_call", answer_in_turn)
    beats = [pb.HeartbeatRequest(term=3, leader_id="n2", prev_index=4, prev_term=2)] * 2
    replies = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for reply in stub.Heartbeat(iter(beats)):
            replies.append(reply)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED and len(replies) == 1
    # A second stream, which the node answers and the client ends: once the node is told of
    # that one, the refused stream's done callback has run too, and told it nothing.
    answers.append(BeatAnswer(term=5, role="follower"))
    [reply async for reply in stub.Heartbeat(iter([pb.HeartbeatRequest(term=5, leader_id="n3")]))]
    await closed_told(node)
    assert [call for call in node.calls if call[0] == "leader_stream_closed"] == [("leader_stream_closed", ("n3", 5))]
    assert [name for name, _ in node.calls].count("heartbeat") == 3


@pytest.mark.parametrize(("fields", "problem"), [
    ({"prev_term": 4}, "prev_term: 4 is past the beat's term 3"),
    ({"entries": [pb.LogEntry(index=9, term=3, kind="noop")]}, "entries[0]: index 9 does not follow 4"),
    ({"entries": [pb.LogEntry(index=5, term=1, kind="noop")]}, "entries[0]: term 1 is not within [2, 3]"),
    ({"entries": [pb.LogEntry(index=5, term=3, kind="exec")]}, "entries[0]: kind 'exec' is not one of"),
    ({"is_snapshot": True, "snapshot_term": 8}, "snapshot_term: 8 is past the beat's term 3"),
    ({"idle_slack_ms": 60_001}, "idle_slack_ms: 60001 is over 60000"),
])
async def test_a_beat_that_no_log_could_send_is_refused_naming_the_field(
    served: tuple[FakeNode, NodeStub], fields: dict[str, Any], problem: str
) -> None:
    """The consensus core never sees a beat whose entries do not follow its prev entry."""
    node, stub = served
    request = pb.HeartbeatRequest(**{"term": 3, "leader_id": "n2", "prev_index": 4, "prev_term": 2, **fields})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        [reply async for reply in stub.Heartbeat(iter([request]))]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (caught.value.details() or "")
    assert node.calls == []


async def test_submit_passes_the_job_and_serialises_the_answer(served: tuple[FakeNode, NodeStub]) -> None:
    node, stub = served
    outcome = Outcome("j1", "sum", np.array([1.5, 2.5]), shards=4, nodes=("n1", "n2"), elapsed_ms=3.0)
    node.results["submit"] = Answered(outcome, leader="n1", term=5, leader_address="127.0.0.1:1")
    reply = await stub.Submit(pb.SubmitRequest(job=SUM_SPEC))
    assert node.calls == [("submit", ("j1", Job("sum", "range:n=10", "square", axis=0), False))]
    assert reply.array.tolist() == [1.5, 2.5]
    head = reply.head
    assert (head.job_id, head.shards, list(head.nodes), head.leader, head.term) == ("j1", 4, ["n1", "n2"], "n1", 5)


async def test_a_relayed_reply_goes_out_byte_for_byte(served: tuple[FakeNode, NodeStub]) -> None:
    node, stub = served
    leaders_bytes = serialize_submit_reply(submit_answer(np.arange(3), job_id="j1", leader="n3", term=9))
    node.results["submit"] = Relayed(leaders_bytes)
    raw = await stub.SubmitRelay(pb.SubmitRequest(job=SUM_SPEC, forwarded=True))
    assert raw == leaders_bytes
    assert parse_submit_reply(raw).array.tolist() == [0, 1, 2]
    assert node.calls[0][1][2] is True  # forwarded


async def test_an_empty_job_id_is_refused_before_the_node_is_asked(served: tuple[FakeNode, NodeStub]) -> None:
    node, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Submit(pb.SubmitRequest(job=pb.JobSpec(op="sum", source="range:n=1")))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "job_id: must not be empty"
    assert node.calls == []


async def test_compute_passes_shards_and_leader(served: tuple[FakeNode, NodeStub]) -> None:
    node, stub = served
    node.results["compute"] = Computed(2, skipped=(3,))
    request = pb.ComputeRequest(
        job=SUM_SPEC, shards=[pb.Shard(index=0, start=0, stop=5), pb.Shard(index=1, start=5, stop=10)],
        leader_id="n2", run=77,
    )
    reply = await stub.Compute(request)
    assert (reply.shards_sent, list(reply.skipped)) == (2, [3])
    assert node.calls == [("compute", ("j1", Job("sum", "range:n=10", "square", axis=0), [(0, 0, 5), (1, 5, 10)],
                                       "n2", 77))]


async def test_skip_passes_the_job_its_shards_and_the_leader_and_answers_what_was_let_go(served: tuple[FakeNode, NodeStub]) -> None:
    node, stub = served
    node.results["skip"] = [7]
    reply = await stub.Skip(pb.SkipShards(job_id="j1", shards=[3, 7], leader_id="n2"))
    assert node.calls == [("skip", ("j1", [3, 7], "n2"))] and list(reply.skipped) == [7]


async def test_reduce_turns_each_partial_into_arrays(served: tuple[FakeNode, NodeStub]) -> None:
    node, stub = served
    node.results["reduce"] = ReduceCount(accepted=1, dropped=1)
    partials = [pb.Partial(job_id="j1", shard=s, node_id="n2") for s in (0, 1)]
    partials[0].state["sum"].CopyFrom(tensor_to_proto(np.array(4.0)))
    reply = await stub.Reduce(iter(partials))
    assert (reply.accepted, reply.dropped) == (1, 1)
    assert [(p.job_id, p.shard, p.node_id) for p in node.partials] == [("j1", 0, "n2"), ("j1", 1, "n2")]
    assert node.partials[0].state["sum"].item() == 4.0 and node.partials[1].state == {}


async def test_a_malformed_partial_is_invalid_argument(served: tuple[FakeNode, NodeStub]) -> None:
    node, stub = served
    node.results["reduce"] = ReduceCount(0, 0)
    bad = pb.Partial(job_id="j1", shard=0, node_id="n2")
    bad.state["sum"].CopyFrom(pb.Tensor(dtype="O", shape=[1], data=b"x"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Reduce(iter([bad]))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("state: tensor dtype 'O' is not numeric")


async def test_progress_and_status_replies(served: tuple[FakeNode, NodeStub]) -> None:
    node, stub = served
    node.results["progress"] = JobProgress(known=True, shards_done=3, shards_total=8)
    node.results["status"] = StatusView("n1", "leader", 4, "n1", "127.0.0.1:1", [
        NodeView("n1", "127.0.0.1:1", "leader", 4, True, 0.0),
        NodeView("", "127.0.0.1:2", "unknown", 0, False, None),
    ])
    progress = await stub.Progress(pb.ProgressRequest(job_id="j1"))
    assert (progress.known, progress.shards_done, progress.shards_total) == (True, 3, 8)
    status = await stub.Status(pb.StatusRequest())
    assert (status.node_id, status.role, status.term, status.leader_id) == ("n1", "leader", 4, "n1")
    assert [(n.id, n.alive, n.last_heartbeat_ms) for n in status.nodes] == [("n1", True, 0.0), ("", False, -1.0)]


STATUSES = [
    (LimitExceeded("max-jobs: 256 jobs already running"), "RESOURCE_EXHAUSTED", "max-jobs: 256 jobs already running"),
    (JobTimedOut("job-timeout-s: job ran past 5 s"), "DEADLINE_EXCEEDED", "job-timeout-s: job ran past 5 s"),
    (SourceForbidden("source", "escapes the data root"), "PERMISSION_DENIED", "source: escapes the data root"),
    (NotAMember("leader_id", "'x' is not a member"), "PERMISSION_DENIED", "leader_id: 'x' is not a member"),
    (SourceNotFound("source", "no such file"), "NOT_FOUND", "source: no such file"),
    (JobConflict("job_id: 'j1' was already used"), "ALREADY_EXISTS", "job_id: 'j1' was already used"),
    (InvalidField("op", "unknown op 'sums'"), "INVALID_ARGUMENT", "op: unknown op 'sums'"),
    (NotLeader("n1 became follower"), "UNAVAILABLE", "not the leader any more: n1 became follower"),
    (NoLeader("no leader known to n1"), "UNAVAILABLE", "no leader known to n1"),
    (ReduceFailed("reduce_to: gone"), "UNAVAILABLE", "reduce_to: gone"),
    (JobFailed("computation failed: boom"), "INTERNAL", "computation failed: boom"),
    (RelayFailed("DEADLINE_EXCEEDED", "Deadline Exceeded"), "DEADLINE_EXCEEDED", "Deadline Exceeded"),
    (RuntimeError("a bug"), "INTERNAL", "internal error: RuntimeError: a bug"),
]


@pytest.mark.parametrize(("error", "code", "details"), STATUSES, ids=[type(s[0]).__name__ for s in STATUSES])
async def test_each_error_is_its_status(
    served: tuple[FakeNode, NodeStub], error: Exception, code: str, details: str
) -> None:
    node, stub = served
    node.raises["submit"] = error
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Submit(pb.SubmitRequest(job=SUM_SPEC))
    assert (caught.value.code().name, caught.value.details()) == (code, details)
    assert signed_by(caught.value.trailing_metadata()) == "n1"  # a node's answer, not a transport's


@pytest.mark.parametrize("rpc", ["RequestVote", "Heartbeat", "Compute", "Skip", "Progress", "Status"])
async def test_every_rpc_maps_errors_the_same_way(served: tuple[FakeNode, NodeStub], rpc: str) -> None:
    node, stub = served
    error = NotAMember("candidate_id", "'x' is not a member of this cluster")
    for name in ("request_vote", "heartbeat", "compute", "skip", "progress", "status"):
        node.raises[name] = error
    calls: dict[str, Any] = {
        "RequestVote": lambda: stub.RequestVote(pb.VoteRequest(term=1, candidate_id="x")),
        "Heartbeat": lambda: _drain(stub.Heartbeat(iter([pb.HeartbeatRequest(term=1, leader_id="x")]))),
        "Compute": lambda: stub.Compute(pb.ComputeRequest(job=SUM_SPEC, leader_id="x")),
        "Skip": lambda: stub.Skip(pb.SkipShards(job_id="j1", shards=[0], leader_id="x")),
        "Progress": lambda: stub.Progress(pb.ProgressRequest(job_id="j1")),
        "Status": lambda: stub.Status(pb.StatusRequest()),
    }
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await calls[rpc]()
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert caught.value.details() == "candidate_id: 'x' is not a member of this cluster"
    assert signed_by(caught.value.trailing_metadata()) == "n1"


async def test_a_bug_is_logged_with_its_traceback(
    served: tuple[FakeNode, NodeStub], caplog: pytest.LogCaptureFixture
) -> None:
    node, stub = served
    node.raises["progress"] = KeyError("oops")
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Progress(pb.ProgressRequest(job_id="j1"))
    errors = [r for r in caplog.records if r.name == "distnode.service" and r.levelname == "ERROR"]
    assert errors and errors[0].exc_info is not None and errors[0].exc_info[0] is KeyError


async def _drain(call: Any) -> list[Any]:
    return [reply async for reply in call]


def _registered_call_waiters() -> int:
    """grpc's asyncio server keeps one task waiting per registered method."""
    return sum("_request_registered_call" in repr(task) for task in asyncio.all_tasks())


async def test_every_method_is_found_by_name_not_registered_one_by_one() -> None:
    """grpc's asyncio server waits again on every registered method's task after each call
    (`asyncio.wait` over all of them): with our 15 methods registered that cost the leader
    2-8 % of its small-job throughput. Found by name, ours, health's and reflection's
    cost one waiting task in all, and each still answers."""
    node = FakeNode()
    node.results["status"] = StatusView("n1", "leader", 1, "n1", "127.0.0.1:1", [])
    server = grpc.aio.server()
    health_servicer, _ = add_services(node, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert (await NodeStub(channel).Status(pb.StatusRequest())).node_id == "n1"
            check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        assert _registered_call_waiters() == 0
    finally:
        await server.stop(None)
