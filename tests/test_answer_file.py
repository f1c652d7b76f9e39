"""A large answer comes through a shared-memory file when the client is on the leader's machine.

node/wire/answerfile.py: the leader writes only into an empty regular file of
its own user, named in the client's form, on the same host; anything else, or
a failed write, and the answer comes inline. These tests hold each of those
refusals, both ends' cleanup, and the clients' path end to end.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from inproc import StartCluster

from node import AsyncClient
from node._proto import distnode_pb2 as pb
from node.client.answer import answer_file, read_answer_file
from node.errors import AttemptFailed
from node.wire import answerfile
from node.wire.answerfile import (
    ANSWER_FILE_MIN_BYTES,
    NAME_PREFIX,
    SHM_DIR,
    AnswerFile,
    check_name,
    deliver,
)
from node.wire.answers import parse_submit_reply, serialize_submit_reply, submit_answer
from node.wire.tensors import tensor_from_proto

BIG = np.arange(ANSWER_FILE_MIN_BYTES // 8, dtype=np.float64)


def make_file(shm: Path) -> AnswerFile:
    target = AnswerFile.create(shm)
    assert target is not None and target.path.stat().st_size == 0
    return target


def mapped(array: np.ndarray) -> bool:
    """Whether `array` is a view of a mapped file (the shortcut), not of received bytes."""
    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(getattr(base, "obj", None), mmap.mmap)


def test_a_big_answer_goes_through_the_file_and_reads_back(tmp_path: Path) -> None:
    target = make_file(tmp_path)
    sent = deliver(submit_answer(BIG, job_id="j"), target.spec, tmp_path)
    assert sent.head.result.in_answer_file and len(sent.data) == 0
    assert target.path.stat().st_size == BIG.nbytes
    received = target.answer(parse_submit_reply(serialize_submit_reply(sent)))  # the wire, then the file
    array = tensor_from_proto(received.head.result, received.data)
    np.testing.assert_array_equal(array, BIG)
    assert mapped(array) and not array.flags.writeable
    target.remove()
    np.testing.assert_array_equal(array, BIG)  # the mapping outlives the name


@pytest.mark.parametrize("case", ["small", "other host", "removed", "not empty", "symlink", "bad name", "no name"])
def test_the_leader_answers_inline_when_the_file_cannot_be_used(tmp_path: Path, case: str) -> None:
    target = make_file(tmp_path)
    spec, answer = target.spec, submit_answer(BIG, job_id="j")
    if case == "small":
        answer = submit_answer(BIG[:-1], job_id="j")
    elif case == "other host":
        spec = pb.AnswerFile(name=spec.name, host=spec.host + "x")
    elif case == "removed":
        target.remove()
    elif case == "not empty":
        target.path.write_bytes(b"theirs")
    elif case == "symlink":
        victim = tmp_path / "victim"
        victim.write_bytes(b"")
        target.path.unlink()
        target.path.symlink_to(victim)
    elif case == "bad name":
        os.rename(target.path, tmp_path / "distnode-answer-x")
        spec = pb.AnswerFile(name="distnode-answer-x", host=spec.host)
    elif case == "no name":
        spec = pb.AnswerFile(host=spec.host)
    sent = deliver(answer, spec, tmp_path)
    assert sent is answer and not sent.head.result.in_answer_file  # inline, untouched
    assert all(path.stat().st_size in (0, 6) for path in tmp_path.iterdir() if not path.is_symlink())
    if case == "not empty":
        assert target.path.read_bytes() == b"theirs"
    if case == "symlink":
        assert (tmp_path / "victim").read_bytes() == b""


def test_a_fifo_in_the_files_place_is_refused_at_once(tmp_path: Path) -> None:
    """Opening a FIFO for writing waits for a reader: the leader must not (its event loop
    would stop), so the open does not wait, and the answer comes inline."""
    target = make_file(tmp_path)
    target.path.unlink()
    os.mkfifo(target.path, 0o600)
    answer = submit_answer(BIG, job_id="j")
    sent: list[Any] = []
    writer = threading.Thread(target=lambda: sent.append(deliver(answer, target.spec, tmp_path)), daemon=True)
    writer.start()
    writer.join(5)
    blocked = writer.is_alive()
    if blocked:  # let the blocked open go before failing, so nothing is left behind
        os.close(os.open(target.path, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(5)
    assert not blocked, "the leader's open waited on a FIFO"
    assert sent == [answer] and not answer.head.result.in_answer_file


def test_a_failed_write_leaves_the_file_empty_and_answers_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = make_file(tmp_path)
    real_write = os.write

    def fill_up(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[:4096]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(answerfile.os, "write", fill_up)
    answer = submit_answer(BIG, job_id="j")
    assert deliver(answer, target.spec, tmp_path) is answer
    assert target.path.stat().st_size == 0


def test_the_client_removes_its_file_and_a_vanished_file_is_a_retry(tmp_path: Path) -> None:
    target = make_file(tmp_path)
    sent = deliver(submit_answer(BIG, job_id="j"), target.spec, tmp_path)
    target.remove()
    with pytest.raises(AttemptFailed, match="answer file") as caught:
        read_answer_file(target, sent)
    assert caught.value.accepted  # asked again, the leader (which knows the job) answers inline
    request = pb.SubmitRequest()
    with answer_file(request, on_stream=False) as made:  # Linux has /dev/shm, and CI is Linux
        assert made is not None and request.answer_file == made.spec and made.path.exists()
    assert not made.path.exists()
    request = pb.SubmitRequest()
    with answer_file(request, on_stream=True) as none:
        assert none is None and not request.HasField("answer_file")


def test_names_are_checked() -> None:
    assert check_name(pb.AnswerFile()) is None
    assert check_name(pb.AnswerFile(name="distnode-answer-" + "0" * 32)) is None
    for bad in ("../etc/passwd", "distnode-answer-" + "0" * 31, "distnode-answer-" + "A" * 32):
        problem = check_name(pb.AnswerFile(name=bad))
        assert problem is not None and "32 lowercase hex digits" in problem


async def test_a_vector_answer_from_the_leader_comes_mapped_and_leaves_no_file(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    matrix = np.random.default_rng(3).random((3, 100_000))
    np.save(tmp_path / "m.npy", matrix)
    cluster = await start_cluster(nodes=1)
    before = set(SHM_DIR.glob(f"{NAME_PREFIX}*"))
    async with AsyncClient(cluster.addresses[0], timeout=30) as client:
        answer = await client.submit(op="sum", source="npy:m.npy", axis=0)
    np.testing.assert_array_equal(answer.array, matrix.sum(axis=0))
    assert mapped(answer.array)
    assert set(SHM_DIR.glob(f"{NAME_PREFIX}*")) == before


async def test_a_follower_relays_the_answer_file_to_the_leader(start_cluster: StartCluster, tmp_path: Path) -> None:
    """A client that reached a follower first (it learns the leader from this answer) still
    gets the answer through its file: the follower passes the file's name on, the leader
    writes it, and the follower relays the leader's reply, which says so."""
    matrix = np.random.default_rng(4).random((3, 100_000))
    np.save(tmp_path / "m.npy", matrix)
    cluster = await start_cluster(nodes=3)
    leader = await cluster.wait_for_leader()
    follower = next(d for d in cluster.daemons if d is not leader)
    before = set(SHM_DIR.glob(f"{NAME_PREFIX}*"))
    async with AsyncClient(follower.config.address, timeout=30) as client:
        answer = await client.submit(op="sum", source="npy:m.npy", axis=0)
    assert answer.leader == leader.node_id
    np.testing.assert_array_equal(answer.array, matrix.sum(axis=0))
    assert mapped(answer.array), "the follower's relay dropped the answer file: the answer came inline"
    assert set(SHM_DIR.glob(f"{NAME_PREFIX}*")) == before


async def test_a_malformed_answer_file_name_is_invalid_argument(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(nodes=1)
    stub = cluster.stub(cluster.addresses[0])
    request = pb.SubmitRequest(
        job=pb.JobSpec(job_id="j1", op="sum", source="range:n=10"),
        answer_file=pb.AnswerFile(name="../../etc/passwd", host="h"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Submit(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "answer_file.name" in (caught.value.details() or "")
    request.answer_file.name = ""  # the node kept serving, and nothing of j1 was kept
    reply = await stub.Submit(request, timeout=10)
    assert reply.job_id == "j1" and tensor_from_proto(reply.result) == 45
