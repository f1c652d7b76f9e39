"""The worker's side of a job: compute the shards it was handed, stream partials.

`Compute(job, shards, reduce_to)` is answered only after every partial has
been written to the aggregator's `Reduce` stream and the stream was acknowledged,
so "Compute returned OK" means "the leader holds these partials". If the leader
cancels the call (the job ended, or the leader moved on), the remaining shards
are skipped; the shard under way in the thread pool finishes and is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path

import grpc

from node.channels import StubCache
from node.core.compute import compute_partial, validate_job
from node.core.job import Job
from node.core.sources import DataSource
from node.errors import InvalidField, ReduceFailed
from node.server.api import ShardRange
from node.wire.tensors import partial_to_proto


class Worker:
    def __init__(
        self,
        node_id: str,
        stubs: StubCache,
        executor: Executor,
        data_root: Path | None,
        address_of: Callable[[str], str | None],
    ) -> None:
        self.node_id = node_id
        #: Maps the leader's id to the address this node dials it by.
        self.address_of = address_of
        self.stubs = stubs
        self.executor = executor
        self.data_root = data_root

    async def compute(
        self, job_id: str, job: Job, ranges: list[ShardRange], leader_id: str, timeout_s: float | None
    ) -> int:
        """Compute the shards in `ranges`, send each partial to the leader `leader_id`."""
        source = validate_job(job, self.data_root)
        check_ranges(ranges, source)
        loop = asyncio.get_running_loop()
        # Dial the aggregator only through our own --peers entry for it (which
        # may be a proxy or NAT address), never the address it advertises.
        reduce_to = self.address_of(leader_id)
        if reduce_to is None:
            raise ReduceFailed(f"leader_id: {leader_id!r} is not yet known behind any --peers address")
        call = self.stubs.stub(reduce_to).Reduce(timeout=timeout_s)
        try:
            for index, start, stop in ranges:
                partial = await loop.run_in_executor(
                    self.executor, compute_partial, job, source, start, stop
                )
                await call.write(partial_to_proto(job_id, index, self.node_id, partial))
            await call.done_writing()
            await call
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            raise ReduceFailed(f"reduce_to: {exc.details()}") from None
        except Exception as exc:
            # A Reduce stream that the aggregator dropped fails writes with
            # InvalidStateError or gRPC's ExecuteBatchError rather than an
            # AioRpcError; to the leader it is the same thing: unreachable.
            call.cancel()
            raise ReduceFailed(f"reduce_to {reduce_to}: {type(exc).__name__}: {exc}") from None
        return len(ranges)


def check_ranges(ranges: list[ShardRange], source: DataSource) -> None:
    """Shard ranges come from the network: they must lie inside the data."""
    for index, start, stop in ranges:
        if not 0 <= start < stop <= source.rows:
            raise InvalidField(
                "shards", f"shard {index} rows [{start}, {stop}) outside the source's {source.rows} rows"
            )
