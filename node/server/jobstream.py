"""The jobs of one SubmitBatches stream: a task each, answered in batches as they end.

A gRPC message costs about 0.1 ms of CPU on each side on this project's
2-core host, and hardly more for holding ten jobs than one
(`scripts/grpc_floor.py`, docs/timeline.md). So a client writes every job
it has waiting as one `SubmitBatch`, and this stream answers with every
reply it has ready as one `SubmitBatchReply`. Nothing waits to fill a
batch: a lone job goes alone at once; batches form only when jobs arrive,
or end, while the previous message is still being written.

A batch's jobs start START_CHUNK_JOBS at a time, with a turn of the event
loop between groups. A small job runs to its end in the turn it starts,
so all of a batch started at once ended before any reply was written: the
client then waited for the whole batch while the node worked, and the node
for the client's next batch while the client did, and of two cores each
side used about half. In groups, the first replies reach the client while
the node runs the next group, and the two overlap: 1.5x the jobs a second
with 32 in flight from one client (docs/timeline.md). The turns also let
the node read its sockets (heartbeats among them) between groups of a
large batch.

Each job runs as a unary Submit would (the servicer's `run`), its failure
is its own reply, and the stream goes on. A stream has at most
MAX_STREAM_JOBS jobs in flight; more are refused one by one. A job nobody
waits for must not hold the client's `--max-jobs-per-client` slot until it
ends (up to `--job-timeout-s`), so a job ends at its `timeout_s`, as gRPC
ends a unary call at its deadline, and when a later batch names its request
(`SubmitBatch.cancel`, by `seq`): its caller stopped waiting (a cancelled
task), and it ends as a cancelled unary call does, with no reply.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable

from node._proto import distnode_pb2 as pb
from node.errors import JobTimedOut, LimitExceeded

#: Jobs one stream may have running at once; more are refused (RESOURCE_EXHAUSTED)
#: without a task each. The node's per-client limit applies to each job as well.
MAX_STREAM_JOBS = 1024
#: A reply batch takes more replies while under this size: a batch of vector
#: answers stays within what a client accepts in one message.
REPLY_BATCH_BYTES = 1 << 20
#: A batch's jobs are started this many at a time, with a turn of the event loop in
#: between: the replies of each group go out while the next runs, so the client works
#: on them meanwhile instead of waiting for the whole batch (see the module's doc).
START_CHUNK_JOBS = 16

Run = Callable[[pb.SubmitRequest], Awaitable[pb.SubmitStreamReply]]
Failed = Callable[[str, Exception], pb.SubmitStreamReply]


class JobStream:
    def __init__(self, run: Run, failed: Failed) -> None:
        self._run = run
        self._failed = failed
        #: Replies in the order their jobs ended; None once the client half-closed and all ended.
        self._replies: asyncio.Queue[pb.SubmitStreamReply | None] = asyncio.Queue()
        self._running: set[asyncio.Task[None]] = set()
        #: The running jobs' tasks by their requests' seq (a cancel names one).
        self._by_seq: dict[int, asyncio.Task[None]] = {}

    async def replies(
        self, batches: AsyncIterator[pb.SubmitBatch]
    ) -> AsyncGenerator[pb.SubmitBatchReply, None]:
        """The stream's answers, as many per message as have ended since the last one."""
        reader = asyncio.create_task(self._read(batches))
        try:
            while (first := await self._replies.get()) is not None:
                batch = [first]
                size = first.ByteSize()
                ended = False
                while size < REPLY_BATCH_BYTES and not self._replies.empty():
                    reply = self._replies.get_nowait()
                    if reply is None:
                        ended = True
                        break
                    batch.append(reply)
                    size += reply.ByteSize()
                yield pb.SubmitBatchReply(replies=batch)
                if ended:
                    break
        finally:  # the client went away, or the server stops: its jobs' callers are gone too
            reader.cancel()
            for task in list(self._running):
                task.cancel()

    async def _read(self, batches: AsyncIterator[pb.SubmitBatch]) -> None:
        try:
            async for batch in batches:
                # Cancels first: they name earlier requests, whose slots the batch's jobs may need.
                self._cancel(batch.cancel)
                for number, request in enumerate(batch.jobs):
                    if number and not number % START_CHUNK_JOBS:
                        await asyncio.sleep(0)  # the jobs started so far run, their replies go
                    self._start(request)
            if self._running:
                await asyncio.wait(set(self._running))
        finally:
            self._replies.put_nowait(None)

    def cancel_all(self) -> None:
        """The client is gone: its running jobs' tasks end now, with no reply (as when gRPC
        cancels a stream). A job the leader runs goes on for its other callers, if any."""
        for task in list(self._running):
            task.cancel()

    def _cancel(self, seqs: Iterable[int]) -> None:
        """The callers of these requests stopped waiting: their jobs end, unanswered. A seq
        already answered, or never seen, is nothing to end."""
        for seq in seqs:
            task = self._by_seq.get(seq)
            if task is not None:
                task.cancel()

    def _start(self, request: pb.SubmitRequest) -> None:
        if len(self._running) >= MAX_STREAM_JOBS:
            refused = self._failed(request.job.job_id, LimitExceeded(
                f"SubmitBatches: {MAX_STREAM_JOBS} jobs already in flight on this stream"))
            refused.seq = request.seq
            self._replies.put_nowait(refused)
            return
        task = asyncio.create_task(self._one(request))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        seq = request.seq
        if seq and seq not in self._by_seq:  # 0: not numbered (an earlier client), not cancellable
            self._by_seq[seq] = task
            task.add_done_callback(lambda _: self._by_seq.pop(seq, None))

    async def _one(self, request: pb.SubmitRequest) -> None:
        wait_s = request.timeout_s if 0 < request.timeout_s < math.inf else None  # NaN: none either
        try:
            async with asyncio.timeout(wait_s):
                reply = await self._run(request)
        except TimeoutError:  # not `job-timeout-s`'s words: the client reads its own deadline
            reply = self._failed(request.job.job_id, JobTimedOut(
                f"timeout_s: the caller's {request.timeout_s:g} s passed before the job's end"))
        reply.seq = request.seq  # whose reply it is, where one job id has several requests
        self._replies.put_nowait(reply)
