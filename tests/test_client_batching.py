"""The AsyncClient's SubmitBatches stream (node/client/streams.py) against a fake call:
what waits while a message is written goes as the next one, a caller that gives up
takes its unwritten job back, and a failed write fails exactly the jobs it carried."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from node._proto import distnode_pb2 as pb
from node.client.streams import SubmitStream
from node.errors import AttemptFailed


class FakeCall:
    """A SubmitBatches call whose writes wait until the test lets each one through."""

    def __init__(self) -> None:
        self.written: list[list[str]] = []
        self.gates: list[asyncio.Future[Exception | None]] = []
        self.closed = asyncio.Event()

    async def write(self, batch: pb.SubmitBatch) -> None:
        gate: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        failure = await gate
        if failure is not None:
            raise failure
        self.written.append([job.job.job_id for job in batch.jobs])

    def __aiter__(self) -> FakeCall:
        return self

    async def __anext__(self) -> pb.SubmitBatchReply:
        await self.closed.wait()
        raise StopAsyncIteration

    async def done_writing(self) -> None:
        self.closed.set()

    def cancel(self) -> None:
        self.closed.set()

    async def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.OK


class FakeStub:
    def __init__(self) -> None:
        self.call = FakeCall()

    def SubmitBatches(self, *args: Any, **kwargs: Any) -> FakeCall:
        return self.call


def job(job_id: str) -> pb.SubmitRequest:
    return pb.SubmitRequest(job=pb.JobSpec(job_id=job_id, op="sum", source="range:n=10"))


async def turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_jobs_sent_during_a_write_go_together_in_the_next_and_a_caller_that_gives_up_takes_its_job_back(
) -> None:
    stub = FakeStub()
    stream = SubmitStream(stub)  # type: ignore[arg-type]
    first = asyncio.create_task(stream.send(job("a")))
    await turns()
    assert len(stub.call.gates) == 1, "a lone job is written at once"
    later = {name: asyncio.create_task(stream.send(job(name))) for name in ("b", "c", "d")}
    await turns()
    later["c"].cancel()  # its caller gave up before the job was written
    await turns()
    stub.call.gates[0].set_result(None)
    await turns()
    assert (await first).done() is False, "the reply's future, not yet answered"
    assert len(stub.call.gates) == 2
    stub.call.gates[1].set_result(None)
    await turns()
    assert stub.call.written == [["a"], ["b", "d"]]
    assert later["b"].done() and later["d"].done() and later["c"].cancelled()
    await stream.close()


async def test_a_failed_write_fails_the_jobs_it_carried_and_the_next_write_is_tried() -> None:
    stub = FakeStub()
    stream = SubmitStream(stub)  # type: ignore[arg-type]
    first = asyncio.create_task(stream.send(job("a")))
    await turns()
    second = asyncio.create_task(stream.send(job("b")))
    await turns()
    stub.call.gates[0].set_result(grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection reset"))
    await turns()
    stub.call.gates[1].set_result(None)
    with pytest.raises(AttemptFailed, match="could not be sent"):
        await first
    assert not (await second).done() and stub.call.written == [["b"]]
    await stream.close()
