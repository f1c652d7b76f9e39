"""A worker's compute link, handed from its event loop to its own threads (linkserve.py,
localsocket.py): after the handshake the link is served without the loop, so its calls are
answered while the loop is busy; a call that came in the handshake's last read is not lost;
the node's close ends the link's threads and closes its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor, ThreadPoolExecutor

import pytest
from inproc import poll

from node._proto import distnode_pb2 as pb
from node.server.computelink import Computed
from node.server.linkserve import CallHalt, LinkServer, SendBlocking
from node.server.localsocket import LocalSocket
from node.server.stealing import CallSkips
from node.wire.localframes import ABSTRACT_PREFIX, answer_welcome, frame, hello, read_blocking

MAX_BYTES = 1 << 20
#: How long the test holds the node's event loop at most, for a call's answer.
HELD_S = 1.5


def each_shard(
    request: pb.ComputeRequest, halted: CallHalt, send: SendBlocking, skips: CallSkips, queued_ns: int
) -> Computed:
    for shard in request.shards:
        send(pb.Partial(job_id=request.job.job_id, shard=shard.index, node_id="w"))
    return Computed(len(request.shards))


def call(number: int) -> pb.ComputeCall:
    request = pb.ComputeRequest(job=pb.JobSpec(job_id=f"j{number}", op="sum", source="range:n=4"),
                                shards=[pb.Shard(index=0, start=0, stop=2), pb.Shard(index=1, start=2, stop=4)])
    return pb.ComputeCall(call=number, request=request, timeout_s=30)


@contextlib.asynccontextmanager
async def local_socket() -> AsyncIterator[LocalSocket]:
    pool = ThreadPoolExecutor(1, thread_name_prefix="compute")

    async def link_pool() -> Executor:
        return pool

    async def unused(*args: object) -> pb.SubmitStreamReply:
        raise AssertionError("no job goes on a compute link")

    local = LocalSocket("w", unused, unused, MAX_BYTES, each_shard, link_pool)  # type: ignore[arg-type]
    await local.start()
    try:
        yield local
    finally:
        await local.close()
        pool.shutdown(wait=True)


def linked(local: LocalSocket, first_call: bytes = b"") -> socket.socket:
    """A leader's end of a compute link, through the handshake; `first_call` goes in the same
    write as the proof, so the node's event loop reads it with the proof."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(ABSTRACT_PREFIX + local.endpoint.name)
    nonce, first = hello(pb.LOCAL_COMPUTE)
    sock.sendall(first)
    welcome = read_blocking(sock, pb.LocalWelcome, MAX_BYTES)
    sock.sendall(answer_welcome(local.endpoint.key, nonce, welcome) + first_call)
    return sock


def answered(sock: socket.socket, number: int) -> list[str]:
    """The events of call `number`, up to its end."""
    kinds = []
    while not kinds or kinds[-1] != "done":
        event = read_blocking(sock, pb.ComputeEvent, MAX_BYTES)
        assert event.call == number, event
        kinds.append(event.WhichOneof("event"))
    return kinds


async def test_a_links_calls_are_answered_while_the_event_loop_is_held() -> None:
    async with local_socket() as local:
        sock = await asyncio.to_thread(linked, local)
        with sock:
            assert await asyncio.to_thread(lambda: (sock.sendall(frame(call(1))), answered(sock, 1))[1]) == [
                "partial", "partial", "done"]
            replies: list[tuple[list[str], float]] = []

            def leader() -> None:
                started = time.monotonic()
                sock.sendall(frame(call(2)))
                replies.append((answered(sock, 2), time.monotonic() - started))

            asking = threading.Thread(target=leader)
            asking.start()
            asking.join(HELD_S)  # holds the event loop: nothing else runs on it meanwhile
            answered_while_held = not asking.is_alive()
            asking.join(10)
        assert replies and replies[0][0] == ["partial", "partial", "done"]
        assert answered_while_held, f"answered after {replies[0][1]:.2f} s: it waited for the event loop"


async def test_a_call_read_with_the_handshakes_proof_is_served() -> None:
    async with local_socket() as local:
        sock = await asyncio.to_thread(linked, local, frame(call(7)))
        with sock:
            assert await asyncio.to_thread(answered, sock, 7) == ["partial", "partial", "done"]


async def test_closing_the_node_ends_its_links_threads_and_closes_their_sockets() -> None:
    async with local_socket() as local:
        sock = await asyncio.to_thread(linked, local, frame(call(1)))
        assert await asyncio.to_thread(answered, sock, 1) == ["partial", "partial", "done"]
        assert len(local.links) == 1
        (link,) = local.links
        threads = {thread.name for thread in threading.enumerate()}
        assert "compute-link" in threads
    assert link.join(0.0), "the link's reader still runs"
    assert local.links == set()
    with sock:
        sock.settimeout(5)
        assert sock.recv(1) == b"", "the worker's end is still open"


@pytest.mark.parametrize("frames", [b"\xff\xff\xff\x7f", b"\x02\x00\x00\x00\x0a\x05"])
async def test_a_frame_that_is_not_a_call_ends_the_link_not_the_node(frames: bytes) -> None:
    async with local_socket() as local:
        bad = await asyncio.to_thread(linked, local, frames)
        with bad:
            # A frame over the limit, or one that does not decode (its field's 5 bytes missing).
            assert await asyncio.to_thread(bad.recv, 1) == b""
        sock = await asyncio.to_thread(linked, local, frame(call(3)))
        with sock:
            assert await asyncio.to_thread(answered, sock, 3) == ["partial", "partial", "done"]


async def test_a_link_that_ends_as_soon_as_it_starts_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A link's thread may end (its leader gone) before the event loop's next line: the node's
    set of links must not keep it after."""
    start = LinkServer.start
    ended: list[LinkServer] = []

    def start_and_end(link: LinkServer) -> None:  # the link ends before `start` returns
        start(link)
        assert link.join(10), "the link did not end"
        ended.append(link)

    monkeypatch.setattr(LinkServer, "start", start_and_end)
    async with local_socket() as local:
        await asyncio.to_thread(lambda: linked(local).close())  # the leader goes at once
        await poll(lambda: bool(ended), 10.0, "the link's end")
        assert local.links == set()
