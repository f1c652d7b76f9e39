"""The clients under a node that misbehaves in one exact way (tests/fakenode.py): a job that
outlasts the client's timeout, a status that never comes. Each test names what the client
did before it was fixed."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from fakenode import fake_node
from inproc import StartCluster, wait_until

from cli.main import main
from node import AsyncClient, Client
from node._proto import distnode_pb2 as pb
from node.client import local_stream, retry
from node.client.local_stream import LocalStream
from node.core.limits import Limits
from node.errors import AttemptFailed, ClusterUnavailable, InvalidField, JobError
from node.wire import localframes


def test_a_job_past_the_timeout_on_a_stream_is_not_sent_again_as_a_unary_call() -> None:
    """A thread's first job went on a stream; when the client's own timeout ended it, the
    job went again to the same node as a unary Submit with a whole new timeout: submit(timeout=T)
    raised after 2T."""
    with fake_node(stream="hang", submit="hang", known=True) as (node, address):
        with Client([address], timeout=1.0, local_socket=False) as client:
            started = time.monotonic()
            with pytest.raises(JobError, match="did not finish in time"):
                client.submit(op="sum", source="range:n=10")
            elapsed_s = time.monotonic() - started
        assert "Submit" not in node.methods(), node.calls
    assert elapsed_s < 1.9, f"took {elapsed_s:.2f} s for a timeout of 1 s"


async def test_a_unary_job_past_the_timeout_on_a_live_node_is_not_called_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A vector job (a unary Submit) that ran past the client's timeout on a node that answered
    every progress probe was reported as "no node answered" (ClusterUnavailable, exit 3)
    once UNREACHABLE_AFTER_S had passed: the client's own deadline counted as a node not
    reached. It is JobError (exit 1): the job did not finish in time."""
    monkeypatch.setattr(retry, "UNREACHABLE_AFTER_S", 0.5)
    with fake_node(submit="hang", known=True) as (node, address):
        async with AsyncClient([address], timeout=1.5, local_socket=False) as client:
            with pytest.raises(JobError, match="did not finish in time"):
                await client.submit(op="sum", source="range:n=10", axis=0)
        assert "Progress" in node.methods()


@pytest.mark.parametrize("path", ["stream", "unary"])
def test_a_job_taken_but_not_done_within_a_short_timeout_is_exit_1(path: str) -> None:
    """With a timeout under a second, a job a live leader had taken and not finished was
    told as "no leader answered" (ClusterUnavailable, exit 3): whether a leader took it is
    known from the progress probes, and the first came half a second into the call. It
    comes halfway to a nearer deadline now."""
    with fake_node(stream="hang", submit="hang", known=True) as (node, address):
        with Client([address], timeout=0.3, local_socket=False) as client, \
                pytest.raises(JobError, match="did not finish in time"):
            client.submit(op="sum", source="range:n=10", axis=0 if path == "unary" else None)
        assert "Progress" in node.methods()


@pytest.mark.parametrize("path", ["stream", "unary"])
async def test_a_job_taken_but_not_done_within_a_short_timeout_is_exit_1_async(path: str) -> None:
    with fake_node(stream="hang", submit="hang", known=True) as (node, address):
        async with AsyncClient([address], timeout=0.3, local_socket=False) as client:
            with pytest.raises(JobError, match="did not finish in time"):
                await client.submit(op="sum", source="range:n=10", axis=0 if path == "unary" else None)
        assert "Progress" in node.methods()


def test_the_cli_says_exit_1_for_a_job_taken_within_a_short_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with fake_node(stream="hang", submit="hang", known=True) as (_, address):
        code = main(["submit", "--cluster", address, "--op", "sum", "--source", "range:n=10", "--timeout", "0.3"])
    assert code == 1, capsys.readouterr().err


def test_a_job_no_leader_took_within_a_short_timeout_is_still_exit_3() -> None:
    """The other side: the node answers, but never knew the job (no leader took it)."""
    with fake_node(stream="hang", submit="hang", known=False) as (node, address):
        with Client([address], timeout=0.3, local_socket=False) as client, pytest.raises(ClusterUnavailable):
            client.submit(op="sum", source="range:n=10")
        assert "Progress" in node.methods()


def test_status_takes_its_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    """`distnode status --timeout S` waited its 5-s default whatever S was."""
    with fake_node(status_unavailable=True) as (_, address):
        started = time.monotonic()
        assert main(["status", "--cluster", address, "--timeout", "1"]) == 3
        elapsed_s = time.monotonic() - started
    assert elapsed_s < 3.5, f"status --timeout 1 took {elapsed_s:.1f} s"
    assert "UNAVAILABLE" in capsys.readouterr().err


class Interrupted(BaseException):
    """A Ctrl-C in the middle of a read (a BaseException, as KeyboardInterrupt is)."""


def job(job_id: str) -> pb.SubmitRequest:
    return pb.SubmitRequest(job=pb.JobSpec(job_id=job_id, op="histogram", source="range:n=10"))


def test_a_local_socket_interrupted_within_a_frame_is_not_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C while a large reply was half read left the connection open: the thread's next
    job read the rest of that frame as its own (a frame "of 69861376 bytes", a decode error,
    or a wait for ever). Now an interrupted connection ends, and the next job goes elsewhere."""
    name, key = f"distnode-test-{secrets.token_hex(8)}", secrets.token_bytes(32)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(localframes.ABSTRACT_PREFIX + name)
    listener.listen(1)
    done = threading.Event()

    def node() -> None:  # the handshake, then the first part of a 32-KiB reply
        conn, _ = listener.accept()
        with conn:
            hello = localframes.read_blocking(conn, pb.LocalHello, localframes.HANDSHAKE_MAX_BYTES)
            answer = localframes.welcome(key, "fake", hello)
            assert answer is not None
            conn.sendall(answer[1])
            localframes.read_blocking(conn, pb.LocalProof, localframes.HANDSHAKE_MAX_BYTES)
            request = localframes.read_blocking(conn, pb.SubmitBatch, 1 << 20).jobs[0]
            tensor = pb.Tensor(dtype="int64", shape=[4096], data=bytes(8 * 4096))
            reply = pb.SubmitStreamReply(job_id=request.job.job_id, seq=request.seq, node_id="fake",
                                         reply=pb.SubmitReply(job_id=request.job.job_id, result=tensor))
            conn.sendall(localframes.frame(pb.SubmitBatchReply(replies=[reply]))[:1000])
            done.wait(10)

    thread = threading.Thread(target=node, daemon=True)
    thread.start()
    stream = LocalStream(pb.LocalEndpoint(name=name, key=key), None, 1 << 20)  # type: ignore[arg-type]
    try:
        def interrupted_within(sock: socket.socket, kind: type, max_bytes: int) -> None:
            sock.recv(500)  # some of the frame read, as a Ctrl-C in the middle of a read leaves it
            raise Interrupted

        monkeypatch.setattr(local_stream, "read_blocking", interrupted_within)
        with pytest.raises(Interrupted):
            stream.run(job("first"))
        monkeypatch.undo()
        assert stream.ended is not None, "still open, in the middle of a frame"
        with pytest.raises(AttemptFailed):
            stream.run(job("second"))
    finally:
        done.set()
        stream.close()
        listener.close()
        thread.join(5)


def calls_on(client: Client) -> list[str]:
    """The coroutines still running on the blocking client's own loop."""
    async def others() -> list[str]:
        return [task.get_coro().__qualname__ for task in asyncio.all_tasks()  # type: ignore[union-attr]
                if task is not asyncio.current_task()]
    return asyncio.run_coroutine_threadsafe(others(), client._loop).result(5)


def test_a_call_interrupted_stops_asking_the_nodes() -> None:
    """A Ctrl-C in `wait_for_leader` (or result, jobs, cancel, status) left the call running on
    the client's loop: it kept asking the nodes until its own timeout, and close() then
    destroyed it pending. Now the call ends with the interrupt."""
    # Python's own Ctrl-C, whatever an earlier test in this process left installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with fake_node() as (node, address), Client([address], timeout=30, local_socket=False) as client:
            def interrupt_when_asked() -> None:
                deadline = time.monotonic() + 10
                while node.methods().count("Status") < 2 and time.monotonic() < deadline:
                    time.sleep(0.01)
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

            threading.Thread(target=interrupt_when_asked, daemon=True).start()
            with pytest.raises(KeyboardInterrupt):
                client.wait_for_leader(timeout=20)  # no leader: it asks again and again
            wait_until(lambda: not calls_on(client), 10.0, "the interrupted call to end on the client's loop")
    finally:
        signal.signal(signal.SIGINT, previous)


async def test_a_submit_under_way_when_its_client_closes_says_so() -> None:
    """AsyncClient.close() while another task's submit waited ended that submit with a bare
    CancelledError (its task marked cancelled though nobody cancelled it), where the blocking
    client says ClusterUnavailable; and a submit still retrying opened channels again."""
    with fake_node(stream="hang", submit="hang") as (_, address):
        client = AsyncClient([address], timeout=6.0, local_socket=False)
        submitting = asyncio.create_task(client.submit(op="sum", source="range:n=10"))
        await asyncio.sleep(0.3)
        await client.close()
        with pytest.raises(ClusterUnavailable, match="closed"):
            await submitting
        assert not submitting.cancelled()


@pytest.mark.parametrize("timeout", [0, -1.0, float("nan"), "10", True])
def test_a_timeout_that_would_never_end_or_never_begin_is_refused(timeout: object) -> None:
    """The Python API took any timeout: NaN never ran out, so a client that had reached a node
    retried for ever, and none or less gave "no node tried". (A huge one is a long one:
    test_client_contract.py.)"""
    with pytest.raises(InvalidField, match="timeout"):
        Client(["127.0.0.1:1"], timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(InvalidField, match="timeout"):
        AsyncClient(["127.0.0.1:1"], timeout=timeout)  # type: ignore[arg-type]
    with Client(["127.0.0.1:1"], timeout=1.0, local_socket=False) as client, \
            pytest.raises(InvalidField, match="timeout"):
        client.submit(op="sum", source="range:n=10", timeout=timeout)  # type: ignore[arg-type]


def test_a_malformed_answer_is_a_job_error_not_a_traceback() -> None:
    """A reply whose tensor names no dtype (a damaged reply, or a foreign build) escaped
    submit as a bare ValueError, which the CLI printed as a traceback."""
    with fake_node(stream="answer", dtype="") as (_, address), \
            Client([address], timeout=5.0, local_socket=False) as client, \
            pytest.raises(JobError, match="a malformed answer"):
        client.submit(op="sum", source="range:n=10")


async def test_a_stream_job_past_its_clients_timeout_frees_the_clients_slot(start_cluster: StartCluster) -> None:
    """A job on a stream that its client gave up on (its timeout) ran on at the node, holding the
    client's --max-jobs-per-client slot until it ended (up to --job-timeout-s): after two, this
    client's every submit was refused. A stream's job now ends at its timeout_s, as a unary
    call's does at its deadline."""
    cluster = await start_cluster(1, limits=Limits(max_jobs_per_client=2))
    async with AsyncClient(cluster.addresses, timeout=1.2) as client:  # past a first progress probe
        for _ in range(3):
            with pytest.raises(JobError, match="did not finish in time"):
                await client.submit(op="sum", source="range:n=100000000000")
        assert (await client.submit(op="sum", source="values:1,2", timeout=10)).result == 3


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """An address that accepts connections and never says a word: a paused node, as a client sees it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_status_with_no_node_answering_keeps_its_timeout_diagnosis_included(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The diagnosis of an unreachable cluster (a TLS and an HTTP/2 probe, a second each)
    ran past `status --timeout` to its end: 2.6 s for a timeout of 0.5."""
    with silent_listener() as address:
        started = time.monotonic()
        assert main(["status", "--cluster", address, "--timeout", "0.5"]) == 3
        elapsed_s = time.monotonic() - started
    assert elapsed_s < 1.5, f"status --timeout 0.5 took {elapsed_s:.1f} s"
    assert "cluster unavailable" in capsys.readouterr().err


async def test_closing_a_client_does_not_wait_for_a_silent_node_no_caller_waits_on() -> None:
    """After a job timed out on a node that never answers, closing the client waited a
    second more (CLOSE_WAIT_S) for that node to end the stream, so `distnode submit` said
    its answer or error and exited a second late."""
    with fake_node(stream="silent", known=True) as (_, address):
        client = AsyncClient([address], timeout=1.0, local_socket=False)
        with pytest.raises(JobError, match="did not finish in time"):
            await client.submit(op="sum", source="range:n=10")
        started = time.monotonic()
        await client.close()
        close_s = time.monotonic() - started
    assert close_s < 0.5, f"close took {close_s:.2f} s"
