"""The clients and the CLI against DESIGN.md's contract where a node's answers are unusual.

A stand-in node (a gRPC server in a thread) answers each method as a test
scripts it: a status, signed as a node signs it, or a reply, after a delay if
asked. So each case checks the client's side alone: what a detached submit's
refusal means, what `--json` says of a job already there, how `result` and
`status` wait, bounds the wire cannot carry, and calls after `close()`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import grpc
import pytest
from standin import Refuse, refuse, stand_in

from cli.main import main
from node import AsyncClient, Client
from node._proto import distnode_pb2 as pb
from node.client import retry
from node.client.retry import Nodes, RetryPlan, new_request
from node.errors import AttemptFailed, ClusterUnavailable, InvalidField, JobError, JobFailed, JobPending

ROWS = [
    (grpc.StatusCode.INVALID_ARGUMENT, "op: unknown op 'sums'", 2, "invalid job"),
    (grpc.StatusCode.NOT_FOUND, "source: no such file 'x.npy'", 2, "invalid job"),
    (grpc.StatusCode.PERMISSION_DENIED, "source: 'x.npy' is outside the data root", 2, "invalid job"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "detached jobs: 10000 queued", 1, "job failed"),
    (grpc.StatusCode.FAILED_PRECONDITION, "source: zarr needs the formats extra", 1, "job failed"),
]


@pytest.mark.parametrize(("code", "details", "exit_code", "words"), ROWS, ids=[row[0].name for row in ROWS])
def test_a_detached_submit_is_refused_as_an_attached_one_is(
    code: grpc.StatusCode, details: str, exit_code: int, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing file is a wrong request (exit 2, InvalidJob) with --detach too; it was
    read as a job-table answer (UnknownJob, exit 1, "job failed")."""
    with stand_in({"Enqueue": refuse(code, details)}) as address:
        got = main(["submit", "--cluster", address, "--op", "sum", "--source", "range:n=3", "--detach",
                    "--timeout", "2"])
    err = capsys.readouterr().err
    assert got == exit_code, err
    assert f"distnode submit: {words}: {code.name}: {details}" in err and err.count("\n") == 1


def test_detach_json_says_the_state_of_the_job_the_id_names(capsys: pytest.CaptureFixture[str]) -> None:
    """An id already taken by the same job answers with its record: done, not "queued"."""
    def already_done(request: pb.SubmitRequest, context: Any) -> pb.JobInfo:
        return pb.JobInfo(job_id=request.job.job_id, op="sum", source="range:n=3", state="done")

    with stand_in({"Enqueue": already_done}) as address:
        got = main(["submit", "--cluster", address, "--op", "sum", "--source", "range:n=3", "--detach",
                    "--json", "--job-id", "nightly-42"])
    assert got == 0
    assert json.loads(capsys.readouterr().out) == {"job_id": "nightly-42", "state": "done"}


def test_a_detached_submit_out_of_time_names_its_job_id() -> None:
    """Its reply may have been lost after the cluster took it: the id is the only handle."""
    lost = refuse(grpc.StatusCode.UNAVAILABLE, "no leader known to n1; retry")
    said = r"job j-7 may have been taken meanwhile: `result j-7`"
    with stand_in({"Enqueue": lost}) as address, Client(address, timeout=0.5) as client, \
            pytest.raises(ClusterUnavailable, match=said):
        client.submit(op="sum", source="range:n=3", job_id="j-7", detach=True)


def test_a_huge_timeout_is_a_long_one_not_an_instant_failure() -> None:
    """gRPC fails a call at once when given a deadline of about 10^10 s or more."""
    def taken(request: pb.SubmitRequest, context: Any) -> pb.JobInfo:
        return pb.JobInfo(job_id=request.job.job_id, state="queued")

    with stand_in({"Enqueue": taken}) as address, Client(address, timeout=1e12) as client:
        assert client.submit(op="sum", source="range:n=3", job_id="j", detach=True) == "j"


async def test_result_waits_what_is_left_of_its_wait_after_a_retry() -> None:
    """The first node waits half a second and goes away; the next is asked only for what is
    left of the one-second wait (it was asked the whole second again), and the answer that
    the job is still running comes about one second after the call, not 1.5."""
    asked: list[float] = []

    def result(request: pb.ResultRequest, context: Any) -> pb.JobInfo:
        asked.append(request.wait_s)
        if len(asked) == 1:
            time.sleep(0.5)
            raise Refuse(grpc.StatusCode.UNAVAILABLE, "n1 stopped being the leader; retry")
        time.sleep(request.wait_s)
        return pb.JobInfo(job_id=request.job_id, state="running", shards_done=1, shards=4)

    with stand_in({"Result": result}) as address:
        async with AsyncClient(address, timeout=5) as client:
            started = time.monotonic()
            with pytest.raises(JobPending, match="running, 1/4 shards"):
                await client.result("j", wait=1.0)
            took = time.monotonic() - started
    assert asked[0] > 0.9 and 0 < asked[1] < asked[0] - 0.4, asked
    assert took < 1.5, took


async def test_a_wait_longer_than_a_node_allows_asks_again_within_its_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node waits at most MAX_WAIT_S a call (an hour; 0.2 s here): a longer wait asks
    again for what is left, and a node that answers "running" at once is asked after a
    pause, not in a loop (200,000 calls a second without one)."""
    import node.client.async_client as async_client

    monkeypatch.setattr(async_client, "MAX_WAIT_S", 0.2)
    asked_patiently: list[float] = []

    def waits(request: pb.ResultRequest, context: Any) -> pb.JobInfo:
        asked_patiently.append(request.wait_s)
        time.sleep(request.wait_s)
        return pb.JobInfo(job_id=request.job_id, state="running")

    asked_at_once: list[float] = []

    def at_once(request: pb.ResultRequest, context: Any) -> pb.JobInfo:
        asked_at_once.append(request.wait_s)
        return pb.JobInfo(job_id=request.job_id, state="running")

    for script in (waits, at_once):
        with stand_in({"Result": script}) as address:
            async with AsyncClient(address, timeout=5) as client, asyncio.timeout(10):
                with pytest.raises(JobPending):
                    await client.result("j", wait=1.0)
    assert 4 <= len(asked_patiently) <= 7 and max(asked_patiently) <= 0.2, asked_patiently
    assert 2 <= len(asked_at_once) <= 20, len(asked_at_once)


async def test_a_wait_past_an_hour_is_asked_an_hour_at_a_time() -> None:
    asked: list[float] = []

    def result(request: pb.ResultRequest, context: Any) -> pb.JobInfo:
        asked.append(request.wait_s)
        return pb.JobInfo(job_id=request.job_id, state="failed", error="boom")

    with stand_in({"Result": result}) as address:
        async with AsyncClient(address, timeout=5) as client:
            async with asyncio.timeout(10):  # a regression here waits for ever
                with pytest.raises(JobFailed, match="boom"):
                    await client.result("j", wait=7200)
                with pytest.raises(InvalidField, match="wait: expected 0 to"):
                    await client.result("j", wait=float("inf"))
    assert asked == [3600.0]


async def test_status_asks_again_until_a_node_answers_within_its_timeout() -> None:
    """A restarting cluster answers a later round: one round only gave up at once."""
    opened = time.monotonic() + 0.6
    rounds: list[float] = []

    def status(request: pb.StatusRequest, context: Any) -> pb.StatusReply:
        rounds.append(time.monotonic())
        if time.monotonic() < opened:
            raise Refuse(grpc.StatusCode.UNAVAILABLE, "starting")
        return pb.StatusReply(node_id="n1", role="leader", term=3, leader_id="n1")

    with stand_in({"Status": status}) as address:
        async with AsyncClient(address) as client:
            view = await client.status(timeout=5)
    assert view.leader == "n1" and view.term == 3 and len(rounds) >= 2


async def test_status_that_times_out_says_what_the_nodes_said() -> None:
    """Each node's latest error, across rounds (a last round started at the deadline heard
    nothing, and the message had said "no reply")."""
    with stand_in({"Status": refuse(grpc.StatusCode.UNAVAILABLE, "n1 is starting: data dir locked")}) as address:
        async with AsyncClient(address) as client:
            with pytest.raises(ClusterUnavailable, match="n1 is starting: data dir locked"):
                await client.status(timeout=0.6)


def test_numpy_integers_stand_for_integers() -> None:
    import numpy as np

    request = new_request("histogram", "range:n=3", None, None, np.int64(10), (np.float64(0), 1), None)
    assert request.job.bins == 10
    assert new_request("sum", "range:n=3", None, np.int32(0), None, None, None).job.axis == 0


@pytest.mark.parametrize(("fields", "named"), [
    ({"bins": 1 << 33}, "bins"), ({"bins": -1}, "bins"), ({"axis": 1 << 40}, "axis"),
    ({"range": (0, "x")}, "range"), ({"range": (1,)}, "range"), ({"job_id": ""}, "job_id"),
])
def test_what_the_wire_cannot_carry_is_refused_naming_its_field(fields: dict[str, Any], named: str) -> None:
    values: dict[str, Any] = {"map": None, "axis": None, "bins": None, "range": None, "job_id": None}
    values.update(fields)
    with pytest.raises(InvalidField) as refused:
        new_request("histogram", "range:n=3", **values)
    assert refused.value.field == named


@pytest.mark.parametrize(("argv", "needle"), [
    (["submit", "--op", "histogram", "--source", "range:n=3", "--bins", "8589934592", "--range", "0:1"],
     "invalid job: bins: expected an integer from 0 below 2^32"),
    (["jobs", "--limit", "5000000000"], "invalid request: limit: expected a positive integer"),
    (["submit", "--op", "sum", "--source", "range:n=3", "--job-id", ""], "invalid job: job_id: must not be empty"),
])
def test_cli_values_past_the_wire_exit_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([argv[0], "--cluster", "127.0.0.1:9", *argv[1:]])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


@pytest.mark.parametrize(("argv", "needle"), [
    (["local", "--heartbeat-ms", "200"], "election-ms minimum (250) must be at least 3 x heartbeat-ms (200)"),
    (["local", "--election-ms", "300-200"], "election-ms maximum (200) must be at least its minimum (300)"),
    (["local", "--nodes", "3", "--base-port", "65531"], "base-port: 3 nodes need ports 65531 to 65536"),
    (["submit", "--cluster", "h:1", "--op", "sum", "--source", "range:n=3", "--timeout", "inf"], "at most 1e6"),
])
def test_local_and_timeouts_refuse_what_no_node_would_take_before_starting_any(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err, err


def test_a_closed_client_says_so_for_every_call() -> None:
    client = Client("127.0.0.1:9")
    client.close()
    for call in (client.status, lambda: client.result("j"), client.jobs, lambda: client.cancel("j"),
                 lambda: client.submit(op="sum", source="range:n=3")):
        with pytest.raises(ClusterUnavailable, match="this client is closed"):
            call()


def test_a_call_in_flight_when_another_thread_closes_the_client_ends_with_it() -> None:
    """It waited for ever on the client's stopped event loop."""
    import threading

    asked = threading.Event()

    def slow(request: pb.JobsRequest, context: Any) -> pb.JobsReply:
        asked.set()
        time.sleep(1.5)
        return pb.JobsReply()

    outcome: list[BaseException | None] = []

    with stand_in({"Jobs": slow}) as address:
        client = Client(address, timeout=10)

        def listing() -> None:
            try:
                client.jobs()
                outcome.append(None)
            except BaseException as exc:  # what the caller gets, whatever it is
                outcome.append(exc)

        caller = threading.Thread(target=listing, daemon=True)
        caller.start()
        assert asked.wait(5), "the call never reached the node"  # it waits for its reply now
        client.close()
        caller.join(timeout=5)
    assert not caller.is_alive(), "the call still waits on a stopped loop"
    assert len(outcome) == 1 and isinstance(outcome[0], ClusterUnavailable), outcome
    assert "closed during the call" in str(outcome[0])


def test_out_of_time_says_what_the_last_attempt_found() -> None:
    """A job accepted by a leader that then failed, with no leader after it until the
    deadline, is "no leader within --timeout" (ClusterUnavailable, exit 3), not a job that
    did not finish (JobError, exit 1); a job running on a leader at the deadline is that."""
    plan = RetryPlan(Nodes(["n1:1", "n2:1"]), "j-9", time.monotonic())
    plan.failed_at("n1:1", AttemptFailed("UNAVAILABLE: leader lost", accepted=True))
    plan.failed_at("n2:1", AttemptFailed("UNAVAILABLE: no leader known to n2; retry"))
    lost = plan.out_of_time()
    assert isinstance(lost, ClusterUnavailable) and not isinstance(lost, JobError)
    assert "no leader answered in time" in str(lost) and "no leader known to n2" in str(lost)
    plan.failed_at("n1:1", AttemptFailed("no answer before the client's timeout", accepted=True))
    late = plan.out_of_time()
    assert isinstance(late, JobError) and "job j-9 did not finish in time" in str(late)


def test_a_learned_leader_address_that_failed_is_not_tried_first_again_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through a tunnel, the client reaches the given address, whose replies name the leader
    by an address the client cannot reach: each success made that address first again, so
    every call began with a failed attempt there (`retries` 1 on every answer)."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    nodes = Nodes(["tunnel:7001"])
    nodes.prefer("10.0.0.2:7001")
    assert nodes.order() == ["10.0.0.2:7001", "tunnel:7001"]
    nodes.forget("10.0.0.2:7001")  # its attempt failed; the call went on through the tunnel
    nodes.prefer("10.0.0.2:7001")  # and the tunnel's reply names it again
    assert nodes.order() == ["tunnel:7001", "10.0.0.2:7001"]
    now[0] += retry.LEARNED_RETRY_S
    nodes.prefer("10.0.0.2:7001")  # tried first again once in a while: the route may be back
    assert nodes.order() == ["10.0.0.2:7001", "tunnel:7001"]
    nodes.forget("tunnel:7001")  # a given address that failed is first again once a reply names it
    nodes.prefer("tunnel:7001")
    assert nodes.order()[0] == "tunnel:7001"
