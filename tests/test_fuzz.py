"""Hostile input: random messages at every RPC, raw non-protobuf bytes, random CLI lines.

A real daemon process (LocalCluster) takes the abuse; every reply must be a
proper status, never UNKNOWN (an unhandled exception) and never a hang (every
call has a deadline; DEADLINE_EXCEEDED counts as a hang), and after its cases
each test checks that the node is still alive, answers a good job and has
logged no traceback. Each test stands alone: any one, in any order. Derandomized, so CI runs
the same cases every time; `FUZZ_EXAMPLES` raises the count for a long run.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli.main import main as cli_main
from node import Client, LocalCluster
from node._proto import distnode_pb2 as pb
from node._proto import distnode_pb2_grpc as pb_grpc
from node.core.job import KERNELS, OPS

pytestmark = pytest.mark.process

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
CALL_TIMEOUT_S = 10.0
#: Codes a correct server may answer with to garbage. UNKNOWN means an
#: exception escaped a handler; DEADLINE_EXCEEDED means it hung.
BAD_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    limits = ["--max-elements", "2000000", "--job-timeout-s", "5", "--max-inline-bytes", "65536"]
    with LocalCluster(nodes=1, extra_args=limits) as running:
        yield running
    print("\nfuzz cases run:", dict(TALLY))


@pytest.fixture(scope="module")
def channel(cluster: LocalCluster) -> Iterator[Any]:
    with grpc.insecure_channel(cluster.addresses[0]) as ch:
        yield ch


def check(call: Any, request: Any, name: str) -> None:
    TALLY[name] += 1
    try:
        call(request, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        assert exc.code() not in BAD_CODES, f"{name}: {exc.code()} {exc.details()} for {request!r}"


def still_serving(cluster: LocalCluster) -> None:
    assert cluster.pid("n1") is not None, "the node died:\n" + cluster.logs()
    with Client(cluster.addresses, timeout=10) as client:
        assert client.submit(op="sum", source="range:n=100").result == 4950
    assert "Traceback" not in cluster.log("n1"), cluster.logs()


# -- strategies ----------------------------------------------------------------

texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "n1", "sum", "range:n=10", "../../etc/passwd"]))
u64 = st.integers(min_value=0, max_value=2**64 - 1)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
sources = st.one_of(
    texts,
    st.builds(lambda n: f"range:n={n}", st.one_of(st.integers(-5, 3_000_000), texts)),
    st.builds(lambda n, s: f"random:n={n},seed={s}", st.integers(-2, 3_000_000), st.integers(-2, 2**130)),
    st.builds(lambda v: "values:" + ",".join(map(str, v)), st.lists(st.floats(allow_nan=True), max_size=30)),
    st.builds(lambda p: f"npy:{p}", st.sampled_from(["/dev/zero", "/etc/passwd", "..", "x.npy", "/proc/self/mem", ""])),
)


@st.composite
def job_specs(draw: Any) -> Any:
    spec = pb.JobSpec(
        job_id=draw(texts), op=draw(st.one_of(st.sampled_from(OPS), texts)),
        source=draw(sources), map=draw(st.one_of(st.sampled_from(KERNELS), texts)),
        bins=draw(u32),
    )
    if draw(st.booleans()):
        spec.axis = draw(st.integers(-(2**31), 2**31 - 1))
    if draw(st.booleans()):
        spec.range_lo = draw(st.floats())
        spec.range_hi = draw(st.floats())
    return spec


@st.composite
def tensors(draw: Any) -> Any:
    return pb.Tensor(
        dtype=draw(st.one_of(st.sampled_from(["<f8", "<i8", "|b1", "O", "<U3", "V8", "<c16"]), texts)),
        shape=draw(st.lists(st.integers(-(2**40), 2**40), max_size=4)),
        data=draw(st.binary(max_size=64)),
    )


@st.composite
def partials(draw: Any) -> Any:
    message = pb.Partial(job_id=draw(texts), shard=draw(u32), node_id=draw(st.sampled_from(["n1", "x", ""])))
    for key in draw(st.lists(st.sampled_from(["sum", "n", "mean", "m2", "value", "index", "counts", "zz"]), max_size=3)):
        message.state[key].CopyFrom(draw(tensors()))
    return message


# -- one test per RPC: each runs its cases, then checks the node is still serving -----


def test_fuzz_submit(cluster: LocalCluster, channel: Any) -> None:
    @FUZZ
    @given(spec=job_specs(), forwarded=st.booleans())
    def case(spec: Any, forwarded: bool) -> None:
        check(pb_grpc.NodeStub(channel).Submit, pb.SubmitRequest(job=spec, forwarded=forwarded), "Submit")

    case()
    still_serving(cluster)


def test_fuzz_compute(cluster: LocalCluster, channel: Any) -> None:
    @FUZZ
    @given(spec=job_specs(), shards=st.lists(st.tuples(u32, u64, u64), max_size=4),
           leader=st.sampled_from(["n1", "x", ""]))
    def case(spec: Any, shards: Any, leader: str) -> None:
        request = pb.ComputeRequest(
            job=spec, shards=[pb.Shard(index=i, start=a, stop=b) for i, a, b in shards],
            reduce_to=cluster.addresses[0], leader_id=leader,
        )
        check(pb_grpc.NodeStub(channel).Compute, request, "Compute")

    case()
    still_serving(cluster)


def test_fuzz_reduce(cluster: LocalCluster, channel: Any) -> None:
    @FUZZ
    @given(messages=st.lists(partials(), max_size=4))
    def case(messages: list[Any]) -> None:
        TALLY["Reduce"] += 1
        try:
            pb_grpc.NodeStub(channel).Reduce(iter(messages), timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            assert exc.code() not in BAD_CODES, exc.details()

    case()
    still_serving(cluster)


def test_fuzz_election_rpcs(cluster: LocalCluster, channel: Any) -> None:
    @FUZZ
    @given(term=u64, candidate=st.sampled_from(["n1", "x", ""]), pre_vote=st.booleans(), leader_address=texts)
    def case(term: int, candidate: str, pre_vote: bool, leader_address: str) -> None:
        stub = pb_grpc.NodeStub(channel)
        check(stub.RequestVote, pb.VoteRequest(term=term, candidate_id=candidate, pre_vote=pre_vote),
              "RequestVote")
        TALLY["Heartbeat"] += 1
        request = pb.HeartbeatRequest(term=term, leader_id=candidate, leader_address=leader_address)
        try:
            list(stub.Heartbeat(iter([request, request]), timeout=CALL_TIMEOUT_S))
        except grpc.RpcError as exc:
            assert exc.code() not in BAD_CODES, f"Heartbeat: {exc.code()} {exc.details()}"

    case()
    still_serving(cluster)


def test_fuzz_progress_and_status(cluster: LocalCluster, channel: Any) -> None:
    @FUZZ
    @given(job_id=texts)
    def case(job_id: str) -> None:
        stub = pb_grpc.NodeStub(channel)
        check(stub.Progress, pb.ProgressRequest(job_id=job_id), "Progress")
        check(stub.Status, pb.StatusRequest(), "Status")

    case()
    still_serving(cluster)


METHODS = ["RequestVote", "Submit", "Compute", "Progress", "Status"]


def test_fuzz_raw_bytes(cluster: LocalCluster, channel: Any) -> None:
    """Bytes that are mostly not valid protobuf, straight onto the wire."""

    @FUZZ
    @given(method=st.sampled_from(METHODS), payload=st.binary(max_size=256))
    def case(method: str, payload: bytes) -> None:
        call = channel.unary_unary(f"/distnode.v1.Node/{method}")  # no serializer: raw bytes
        TALLY["raw-bytes"] += 1
        try:
            call(payload, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            assert exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED, f"{method} hung on {payload!r}"

    case()
    still_serving(cluster)


CLI_WORDS = [
    "submit", "status", "--cluster", "--op", "--source", "--map", "--axis", "--bins", "--range",
    "--job-id", "--timeout", "--json", "--token-file", "--tls-ca", "sum", "histogram", "var",
    "argmax", "square", "log", "0", "1", "-1", "1e3", "2:1", "0:1", "range:n=10", "range:n=0",
    "random:n=100,seed=1", "values:1,2,x", "npy:/etc/passwd", "npy:nope.npy", "--help-me", "",
]


def test_fuzz_cli(cluster: LocalCluster) -> None:
    """Random argument lists: exit 0-3 with a message, never a traceback, never a hang."""

    @FUZZ
    @given(words=st.lists(st.one_of(st.sampled_from(CLI_WORDS), st.text(max_size=12)), max_size=10),
           command=st.sampled_from(["submit", "status"]))
    def case(words: list[str], command: str) -> None:
        TALLY["cli"] += 1
        # Every fuzzed line talks to the fuzz node only, and quickly.
        argv = [command, "--cluster", cluster.addresses[0], "--timeout", "3", *words]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli_main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
        assert code in (0, 1, 2, 3), (argv, code)
        assert "Traceback" not in err.getvalue(), (argv, err.getvalue())

    case()
    still_serving(cluster)
