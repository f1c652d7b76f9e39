"""What a job's record may hold so that its entry fits one message to a follower
(node/server/recordsize.py), and a cluster with a small --max-message-bytes that keeps
committing after a detached job whose answer would not fit (the log once stopped there)."""

from __future__ import annotations

import numpy as np
import pytest
from inproc import StartCluster, poll

from node import AsyncClient
from node.core.jobtable import JobRecord, encode_command
from node.core.limits import MAX_MESSAGE_BYTES, Limits
from node.errors import JobError, LimitExceeded
from node.server.recordsize import (
    DETACHED_RESULT_MAX_BYTES,
    ENVELOPE_BYTES,
    detached_result_cap,
    first_batch,
    source_fits,
)


def test_a_detached_result_is_kept_up_to_what_its_record_can_carry() -> None:
    assert detached_result_cap(MAX_MESSAGE_BYTES, "npy:x.npy") == DETACHED_RESULT_MAX_BYTES
    limit = 8 << 20
    cap = detached_result_cap(limit, "npy:x.npy")
    assert cap == (limit - ENVELOPE_BYTES - len("npy:x.npy")) * 3 // 4
    # The record at the cap, its result in base64, fits the message with the envelope's room.
    record = JobRecord("j", "sum", "npy:x.npy", "done", detached=True)
    command = encode_command(record)
    assert len(command) + (cap + 2) // 3 * 4 + ENVELOPE_BYTES <= limit + 1024
    assert detached_result_cap(ENVELOPE_BYTES, "npy:x.npy") == 0, "never negative"


def test_a_source_fits_while_its_record_does() -> None:
    assert source_fits("v" * 1000, 1000 + ENVELOPE_BYTES)
    assert not source_fits("v" * 1001, 1000 + ENVELOPE_BYTES)


def record(n: int, size: int) -> tuple[JobRecord, bytes]:
    return JobRecord(f"j{n}", "sum", "values:1", "done"), b"x" * size


@pytest.mark.parametrize("sizes, limit, cut", [
    ([10, 10, 10], 1 << 20, 3),  # all in one entry
    ([300_000, 300_000, 300_000], 1 << 20, 1),  # each past half the room: one an entry
    ([200_000, 200_000, 200_000], 1 << 20, 2),
    ([5_000_000], 1 << 20, 1),  # one at least, whatever its size (its source was checked)
])
def test_attached_records_go_in_batches_that_fit(sizes: list[int], limit: int, cut: int) -> None:
    commands = [record(n, size) for n, size in enumerate(sizes)]
    batch, rest = first_batch(commands, limit)
    assert batch == commands[:cut] and rest == commands[cut:]
    assert sum(len(c) for _, c in batch) <= (limit - ENVELOPE_BYTES) // 2 or len(batch) == 1


async def test_a_cluster_with_a_small_message_limit_commits_past_a_large_detached_answer(
    start_cluster: StartCluster, tmp_path: object,
) -> None:
    """Under --max-message-bytes of 1 MiB a detached job with a 1.6 MB answer made a record
    (2.1 MB in base64) no follower could take: the log stopped there, and every detached
    job after it waited for ever. Now the answer is not kept (the error says so, as for
    one over 16 MiB), the job is done, and the cluster commits on."""
    from pathlib import Path

    root = Path(str(tmp_path))
    np.save(root / "wide.npy", np.ones((2, 200_000)))  # a 1.6 MB vector answer
    limit = 1 << 20
    cluster = await start_cluster(3, limits=Limits(max_message_bytes=limit))
    leader = await cluster.wait_for_leader()
    async with AsyncClient(leader.config.address, timeout=10, max_message_bytes=8 << 20) as client:
        wide = await client.submit(op="sum", source="npy:wide.npy", axis=0, detach=True)
        with pytest.raises(JobError, match=r"1600000 bytes\) was not kept"):
            await client.result(wide, wait=10)
        after = await client.submit(op="sum", source="values:1,2,3", detach=True)
        assert (await client.result(after, wait=10)).result == 6
        await poll(lambda: all(d.ledger.table.get(after) is not None for d in cluster.daemons),
                   what="every node to hold the later job")
        with pytest.raises(LimitExceeded, match="--max-message-bytes"):
            await client.submit(op="sum", source="values:" + ",".join(["1"] * 522_000), detach=True)
