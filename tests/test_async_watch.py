"""AsyncClient's watchdog against fake nodes: in-process gRPC, a short probe interval.

A fake node answers Submit and Progress as each test scripts it, so the
client's side of the contract is checked alone: short calls are never probed,
a long call on a live node reports progress and is kept, a silent node is
left for the next address, and no task outlives the calls in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import pytest

import node.client.async_client
from node import AsyncClient
from node._proto import distnode_pb2 as pb
from node.wire.answers import SERVICE, serialize_submit_reply, submit_answer

INTERVAL_S = 0.05
DEADLINE_S = 10.0

SubmitHandler = Callable[[Any], Awaitable[Any]]
ProgressHandler = Callable[[Any], Awaitable[Any]]


class FakeNode:
    """A gRPC server with the Node service's Submit and Progress, scripted per test."""

    def __init__(self, submit: SubmitHandler, progress: ProgressHandler) -> None:
        self.submits = 0
        self.probes = 0
        self._submit = submit
        self._progress = progress
        self.server = grpc.aio.server()
        self.address = ""

    async def start(self) -> FakeNode:
        async def on_submit(request: Any, context: Any) -> Any:
            self.submits += 1
            return await self._submit(request)

        async def on_progress(request: Any, context: Any) -> Any:
            self.probes += 1
            return await self._progress(request)

        handlers = {
            "Submit": grpc.unary_unary_rpc_method_handler(
                on_submit, request_deserializer=pb.SubmitRequest.FromString,
                response_serializer=serialize_submit_reply,
            ),
            "Progress": grpc.unary_unary_rpc_method_handler(
                on_progress, request_deserializer=pb.ProgressRequest.FromString,
                response_serializer=pb.ProgressReply.SerializeToString,
            ),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        await self.server.start()
        return self


def answer(request: Any, value: int = 42) -> Any:
    return submit_answer(np.asarray(value), job_id=request.job.job_id, op="sum", shards=1,
                         nodes=["fake"], leader="fake", term=1)


async def quick(request: Any) -> Any:
    return answer(request)


async def silent(request: Any) -> Any:
    await asyncio.Event().wait()  # never answers; the client gives up on it
    raise AssertionError("unreachable")


async def unknown(request: Any) -> Any:
    return pb.ProgressReply(known=False)


@pytest.fixture(autouse=True)
def short_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node.client.async_client, "PROBE_INTERVAL_S", INTERVAL_S)


@pytest.fixture
async def fake_nodes() -> AsyncIterator[list[FakeNode]]:
    nodes: list[FakeNode] = []
    yield nodes
    for fake in nodes:
        await fake.server.stop(grace=None)


async def poll(predicate: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def test_short_calls_are_never_probed_and_leave_no_task(
    fake_nodes: list[FakeNode], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Short against the interval by a wide margin, so a loaded machine keeps them short
    # (50 calls at once to an instant node once took longer than a 50-ms interval), and
    # still in flight when the sweeper first wakes (at half the interval), so a sweeper
    # that probed calls younger than the interval would be caught.
    monkeypatch.setattr(node.client.async_client, "PROBE_INTERVAL_S", 2.0)

    async def takes_1_2_s(request: Any) -> Any:
        await asyncio.sleep(1.2)  # the job's own duration on the fake node
        return answer(request, 42)

    fake = await FakeNode(takes_1_2_s, unknown).start()
    fake_nodes.append(fake)
    async with AsyncClient([fake.address], timeout=DEADLINE_S) as client:
        answers = await asyncio.gather(*(client.submit(op="sum", source="range:n=10") for _ in range(50)))
        assert [a.result for a in answers] == [42] * 50
        # The sweeper ends once nothing is in flight: an idle client runs no task.
        await poll(lambda: client._sweeper is None, "the sweeper to end")
        # The fake has no SubmitBatches (an older node): the client fell back to unary Submit.
        assert client._streams.unsupported == {fake.address}
    assert fake.submits == 50 and fake.probes == 0


async def test_a_long_call_on_a_live_node_reports_progress_and_is_kept(
    fake_nodes: list[FakeNode],
) -> None:
    probed = asyncio.Event()

    async def long_job(request: Any) -> Any:
        await probed.wait()
        return answer(request, 7)

    async def progress(request: Any) -> Any:
        if fake.probes >= 3:
            probed.set()
        return pb.ProgressReply(known=True, shards_done=fake.probes, shards_total=10)

    fake = await FakeNode(long_job, progress).start()
    fake_nodes.append(fake)
    seen: list[tuple[int, int]] = []
    async with AsyncClient([fake.address], timeout=DEADLINE_S) as client:
        got = await client.submit(op="sum", source="range:n=10",
                                   on_progress=lambda done, total: seen.append((done, total)))
    assert got.result == 7 and got.retries == 0 and fake.submits == 1
    assert seen[:3] == [(1, 10), (2, 10), (3, 10)]


async def test_a_silent_node_is_left_for_the_next_address(fake_nodes: list[FakeNode]) -> None:
    mute = await FakeNode(silent, silent).start()
    live = await FakeNode(quick, unknown).start()
    fake_nodes.extend([mute, live])
    async with AsyncClient([mute.address, live.address], timeout=DEADLINE_S) as client:
        got = await client.submit(op="sum", source="range:n=10")
    assert got.result == 42 and got.retries == 1
    assert mute.submits == 1 and mute.probes >= node.client.async_client.PROBE_FAILURES
    assert live.submits == 1


async def test_probes_run_per_call_while_other_calls_come_and_go(fake_nodes: list[FakeNode]) -> None:
    """A long call keeps its watchdog while many short ones start and finish."""
    release = asyncio.Event()

    async def submit(request: Any) -> Any:
        if request.job.source == "range:n=99":
            await release.wait()
        return answer(request)

    async def progress(request: Any) -> Any:
        return pb.ProgressReply(known=request.job_id == "long", shards_done=1, shards_total=2)

    fake = await FakeNode(submit, progress).start()
    fake_nodes.append(fake)
    async with AsyncClient([fake.address], timeout=DEADLINE_S) as client:
        long_call = asyncio.create_task(client.submit(op="sum", source="range:n=99", job_id="long"))
        for _ in range(20):
            await client.submit(op="sum", source="range:n=10")
        await poll(lambda: fake.probes >= 3, "three probes of the long call")
        release.set()
        got = await long_call
    assert got.retries == 0 and fake.submits == 21
