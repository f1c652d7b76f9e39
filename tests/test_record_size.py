"""What a job's record may hold so that its entry fits one message to a follower
(node/server/recordsize.py), and a cluster with a small --max-message-bytes that keeps
committing after a detached job whose answer would not fit (the log once stopped there)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from inproc import InProcessCluster, StartCluster, poll

from node import AsyncClient
from node.core.jobtable import JobRecord, JobTable, encode_command
from node.core.limits import MAX_MESSAGE_BYTES, MIN_NODE_MESSAGE_BYTES, Limits
from node.errors import InvalidField, InvalidJob, JobError, LimitExceeded
from node.server.api import Outcome
from node.server.config import NodeConfig
from node.server.daemon import Daemon
from node.server.peers import PeerTable
from node.server.recordsize import (
    ATTACHED_RESULT_MAX_BYTES,
    DETACHED_RESULT_MAX_BYTES,
    ENVELOPE_BYTES,
    ERROR_CHARS,
    command_of,
    first_batch,
    fits,
    fitting,
    kept,
)
from node.wire.jobs import MAX_JOB_ID_CHARS, check_job_id


def outcome(nbytes: int) -> Outcome:
    return Outcome("j", "sum", np.ones(nbytes // 8), 1, ("n1",), 1.0)


@pytest.mark.parametrize("detached, nbytes, limit, keeps", [
    (True, 1 << 20, MAX_MESSAGE_BYTES, True),
    (True, DETACHED_RESULT_MAX_BYTES + 8, MAX_MESSAGE_BYTES, False),  # past its kind's cap
    (True, 6_000_000, 8 << 20, True),
    (True, 10 << 20, 8 << 20, False),  # 13.4 MB in base64: its record would not fit
    (False, ATTACHED_RESULT_MAX_BYTES, MAX_MESSAGE_BYTES, True),
    (False, ATTACHED_RESULT_MAX_BYTES + 8, MAX_MESSAGE_BYTES, False),
])
def test_a_result_is_kept_while_within_its_cap_and_its_record_fits_a_message(
    detached: bool, nbytes: int, limit: int, keeps: bool
) -> None:
    source = "values:1" + "\x1f" * 1000  # at its longest in JSON
    result, note, _ = kept(outcome(nbytes), detached, limit, "j", source, KEEP)
    assert (result is not None) == keeps
    assert keeps or f"the result ({nbytes} bytes) was not kept" in note
    record = JobRecord("j", "sum", source, "done", nodes=("n1",), result=result, error=note, detached=detached)
    command = command_of(record, limit)
    assert command is not None and len(command) + ENVELOPE_BYTES <= limit, "fits, with the envelope's room"


def test_a_small_answer_is_kept_beside_a_large_source() -> None:
    """Sized from the text as JSON writes it, not six bytes for every character: a 200 KB
    source under 1 MiB messages leaves room for an 8-byte answer (a first version kept
    none, "over 0")."""
    source = "values:" + ",".join(["1"] * 100_000)
    result, note, _ = kept(outcome(8), True, 1 << 20, "j", source, KEEP)
    assert result is not None and not note
    result, note, _ = kept(outcome(800_000), True, 1 << 20, "j", source, KEEP)
    assert result is None and "was not kept" in note


def test_every_record_is_fitted_where_proposals_pass() -> None:
    """The last check before a proposal (ledger.py: `_propose_record`, `record_attached`):
    a record that fits goes as it is; one over a message loses the larger of its nodes and
    its result, then the other, each said in its error, and then fits. `kept` sizes both
    first; this holds for any record it missed."""
    limit = 64 << 10
    source = "values:1,2"
    small, _, _ = kept(outcome(8), True, limit, "j", source, KEEP)
    fine = JobRecord("j", "sum", source, "done", nodes=("n1", "n2"), result=small, detached=True)
    assert fitting(fine, limit) == (fine, encode_command(fine))
    big, _, _ = kept(outcome(60_000), True, MAX_MESSAGE_BYTES, "j", source, KEEP)  # sized for another limit
    many = tuple(f"node-{number:04d}" for number in range(5000))  # 60 KB of JSON, under big's 80 KB
    for nodes, result, said, left in [
        (("n1",), big, ["the result was not kept: its record would be over 65536 bytes"], ("n1",)),
        (many, small, ["the 5000 nodes that ran it were not kept"], ()),
        (many, big, ["the result was not kept", "the 5000 nodes that ran it were not kept"], ()),
    ]:
        record = JobRecord("j", "sum", source, "done", nodes=nodes, result=result, error="", detached=True)
        assert command_of(record, limit) is None
        fitted, command = fitting(record, limit)
        assert fits(command, limit) and command == encode_command(fitted)
        assert all(text in fitted.error for text in said), fitted.error
        assert fitted.nodes == left
        assert (fitted.result is None) == (result is big)


def test_a_failed_record_whose_error_takes_it_over_a_message_has_its_error_cut() -> None:
    """The queued record fitted with 8 KiB to spare; an error of 1,000 control characters
    (six bytes each in JSON) takes the failed one past that."""
    limit = 64 << 10
    source = "values:" + "1," * 26_000 + "1"
    assert command_of(JobRecord("j", "sum", source, "queued", detached=True), limit) is not None
    failed = JobRecord("j", "sum", source, "failed", error="\x01" * ERROR_CHARS, detached=True)
    assert command_of(failed, limit) is None
    fitted, command = fitting(failed, limit)
    assert fits(command, limit) and fitted.error == "\x01" * (ERROR_CHARS // 10)


def test_a_note_after_a_long_error_is_kept_whole() -> None:
    record = JobRecord("j", "sum", "values:1", "done", nodes=tuple(f"n{i:05d}" for i in range(9000)),
                       error="e" * ERROR_CHARS, detached=True)
    fitted, _ = fitting(record, 64 << 10)
    assert len(fitted.error) <= ERROR_CHARS
    assert fitted.error.endswith("the 9000 nodes that ran it were not kept: too many for a record")


def test_a_record_keeps_its_answer_before_its_list_of_nodes() -> None:
    few = Outcome("j", "sum", np.ones(1), 1, ("n1", "n2"), 1.0)
    assert kept(few, True, 64 << 10, "j", "range:n=3", KEEP)[1:] == ("", ("n1", "n2"))
    many = Outcome("j", "sum", np.ones(1), 1, tuple(f"n{number:05d}" for number in range(7000)), 1.0)
    result, note, nodes = kept(many, True, 64 << 10, "j", "range:n=3", KEEP)
    assert result is not None and nodes == () and note == "the 7000 nodes that ran it were not kept: too many for a record"
    assert kept(many, True, 1 << 20, "j", "range:n=3", KEEP)[2] == many.nodes
    # A 52 KB source leaves 3.2 KB: 100 nodes (900 bytes) and a 2,000-byte answer do not both fit.
    source = "values:" + "1," * 26_000 + "1"
    hundred = tuple(f"n{number:05d}" for number in range(100))
    wide = Outcome("j", "sum", np.ones(250), 1, hundred, 1.0)
    result, note, nodes = kept(wide, True, 64 << 10, "j", source, KEEP)
    assert result is not None and nodes == () and "the 100 nodes" in note
    narrow = Outcome("j", "sum", np.ones(4), 1, hundred, 1.0)
    assert kept(narrow, True, 64 << 10, "j", source, KEEP)[1:] == ("", hundred)
    record = JobRecord("j", "sum", source, "done", nodes=nodes, result=result, error=note, detached=True)
    assert command_of(record, 64 << 10) is not None


def test_a_record_is_measured_as_encoded() -> None:
    """JSON writes a control character in six bytes: a source of 175 KB of them (a
    `values:` item may carry any amount of whitespace) is a record of 1 MB."""
    source = "values:1" + "\x1f" * 175_000 + ",2"
    queued = JobRecord("j", "sum", source, "queued", detached=True)
    assert len(source.encode()) + ENVELOPE_BYTES < 1 << 20
    assert command_of(queued, 1 << 20) is None
    assert command_of(queued, 2 << 20) is not None


@pytest.mark.parametrize("job_id, ok", [
    ("3f2b6c1e-1111-4a4a-8888-0123456789ab", True),
    ("nightly sum, run 7", True),
    ("x" * MAX_JOB_ID_CHARS, True),
    ("x" * (MAX_JOB_ID_CHARS + 1), False),
    ("a\x1fb", False),
    ("line\nbreak", False),
    ("", False),
])
def test_a_job_id_is_a_short_printable_name(job_id: str, ok: bool) -> None:
    if ok:
        check_job_id(job_id)
        return
    with pytest.raises(InvalidField) as caught:
        check_job_id(job_id)
    assert caught.value.field == "job_id"


def record(n: int, size: int) -> tuple[JobRecord, bytes]:
    return JobRecord(f"j{n}", "sum", "values:1", "done"), b"x" * size


@pytest.mark.parametrize("sizes, limit, cut", [
    ([10, 10, 10], 1 << 20, 3),  # all in one entry
    ([300_000, 300_000, 300_000], 1 << 20, 1),  # each past half the room: one an entry
    ([200_000, 200_000, 200_000], 1 << 20, 2),
    ([900_000], 1 << 20, 1),  # one at least, past half the room (one over the limit: below)
])
def test_attached_records_go_in_batches_that_fit(sizes: list[int], limit: int, cut: int) -> None:
    commands = [record(n, size) for n, size in enumerate(sizes)]
    batch, rest = first_batch(commands, limit)
    assert batch == commands[:cut] and rest == commands[cut:]
    assert sum(len(c) for _, c in batch) <= (limit - ENVELOPE_BYTES) // 2 or len(batch) == 1


async def test_a_cluster_with_a_small_message_limit_commits_past_a_large_detached_answer(
    start_cluster: StartCluster, tmp_path: Path,
) -> None:
    """Under --max-message-bytes of 1 MiB a detached job with a 1.6 MB answer made a record
    (2.1 MB in base64) no follower could take: the log stopped there, and every detached
    job after it waited for ever. Now the answer is not kept (the error says so, as for
    one over 16 MiB), the job is done, and the cluster commits on."""
    np.save(tmp_path / "wide.npy", np.ones((2, 200_000)))  # a 1.6 MB vector answer
    limit = 1 << 20
    cluster = await start_cluster(3, limits=Limits(max_message_bytes=limit))
    leader = await cluster.wait_for_leader()
    async with AsyncClient(leader.config.address, timeout=10, max_message_bytes=8 << 20) as client:
        wide = await client.submit(op="sum", source="npy:wide.npy", axis=0, detach=True)
        await poll(lambda: all(d.ledger.table.get(wide) is not None and d.ledger.table.get(wide).state == "done"
                               for d in cluster.daemons), what="the wide job done on every node")
        (status,) = [job for job in await client.jobs() if job.job_id == wide]
        assert status.result is None and "the result (1600000 bytes) was not kept" in status.error
        with pytest.raises(JobError, match=r"1600000 bytes\) was not kept"):
            await client.result(wide, wait=10)
        after = await client.submit(op="sum", source="values:1,2,3", detach=True)
        assert (await client.result(after, wait=10)).result == 6
        await poll(lambda: all(d.ledger.table.get(after) is not None for d in cluster.daemons),
                   what="every node to hold the later job")
        for source in ("values:" + ",".join(["1"] * 522_000), "values:1" + "\x1f" * 175_000 + ",2"):
            with pytest.raises(LimitExceeded, match="--max-message-bytes"):  # by bytes, and as JSON
                await client.submit(op="sum", source=source, detach=True)
        with pytest.raises(InvalidJob, match="job_id: must be at most 256"):
            await client.submit(op="sum", source="values:1", job_id="x" * 300, detach=True)


@pytest.mark.parametrize("limit, most", [(MAX_MESSAGE_BYTES, 4 << 20), (8 << 20, 2 << 20), (1 << 20, 256 << 10)])
def test_a_message_of_entries_carries_at_most_a_quarter_of_the_limit(limit: int, most: int, tmp_path: Path) -> None:
    config = NodeConfig("n1", "127.0.0.1:1", ("127.0.0.1:2",), tmp_path, limits=Limits(max_message_bytes=limit))
    assert config.election_config().max_append_bytes == most


#: A follower's --max-message-bytes, well under its leader's (64 MiB).
SMALL_BYTES = 64 << 10
KEEP = JobTable().keep_result_bytes


def test_a_result_past_what_the_table_keeps_is_not_kept_and_its_record_stays() -> None:
    """A finished record whose answer and source pass --keep-result-bytes was forgotten,
    state and all, the moment it was applied: `result --wait` then said the job was unknown."""
    source = "values:1,2,3"
    result, note, _ = kept(outcome(2_400_000), True, MAX_MESSAGE_BYTES, "j", source, 1 << 20)
    assert result is None and "the result (2400000 bytes) was not kept" in note
    table = JobTable(keep_result_bytes=1 << 20)
    record = JobRecord("j", "sum", source, "done", result=result, error=note, detached=True)
    table.put(record, encode_command(record))
    assert table.get("j") == record
    kept_result, note, _ = kept(outcome((1 << 20) - len(source)), True, MAX_MESSAGE_BYTES, "j", source, 1 << 20)
    assert kept_result is not None and not note, "up to the bound, source counted"


async def small_follower_cluster(start_cluster: StartCluster) -> tuple[InProcessCluster, Daemon]:
    """Three nodes, one follower restarted with SMALL_BYTES, and a leader that learnt it from
    that follower's heartbeat replies (its Status, read at the leader's start, said 64 MiB;
    a leader elected after such a restart learns it the same way)."""
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    follower = next(d for d in cluster.daemons if d is not leader)
    small = (await cluster.restart(follower.node_id, limits=Limits(max_message_bytes=SMALL_BYTES))).config.address
    leader = await cluster.wait_for_leader()
    assert leader.config.address != small
    await poll(lambda: leader.peers.message_bytes_of(small, MAX_MESSAGE_BYTES) == SMALL_BYTES,
               what="the leader to learn the follower's new limit")
    return cluster, leader


async def test_a_follower_with_a_smaller_message_limit_takes_a_record_sized_for_it(
    start_cluster: StartCluster, tmp_path: Path,
) -> None:
    """A leader sized a job's record by its own --max-message-bytes: an attached job's 64 KB
    answer, kept in its record, made an entry a follower under 64 KiB refused, and that
    follower's log stopped there for good (each later job too). The leader sizes records by
    the smallest limit it heard of: the answer is not kept, and every node takes the log."""
    np.save(tmp_path / "wide.npy", np.ones((2, 8_000)))
    cluster, leader = await small_follower_cluster(start_cluster)
    async with AsyncClient(leader.config.address, timeout=10) as client:
        wide = await client.submit(op="sum", source="npy:wide.npy", axis=0)
        later = await client.submit(op="sum", source="values:1,2,3")
        assert wide.array.shape == (8_000,) and later.result == 6
        await poll(lambda: all(d.ledger.table.get(job.job_id) is not None
                               for d in cluster.daemons for job in (wide, later)),
                   timeout_s=10, what="every node to hold both jobs' records")
        (record,) = [job for job in await client.jobs() if job.job_id == wide.job_id]
        assert record.result is None and "was not kept" in record.error, record


async def test_a_follower_with_a_smaller_message_limit_takes_batches_sized_for_it(
    start_cluster: StartCluster,
) -> None:
    """Attached jobs' records go to the followers in batches: a leader put as many in one entry
    as half its own limit allows, and sent up to 4 MiB of entries at once, so a burst of 300
    small jobs (about 120 KB of records) stopped a follower under 64 KiB. Both are sized for
    the smaller limit now, the batch of entries for that follower alone."""
    cluster, leader = await small_follower_cluster(start_cluster)
    async with AsyncClient(leader.config.address, timeout=10) as client:
        answers = await asyncio.gather(*(client.submit(op="sum", source=f"values:{i},1") for i in range(300)))
    assert [a.result for a in answers] == [i + 1 for i in range(300)]
    await poll(lambda: all(d.ledger.table.get(a.job_id) is not None for d in cluster.daemons for a in answers),
               timeout_s=10, what="every node to hold the 300 jobs' records")


def test_the_peer_table_bounds_messages_by_the_limits_it_heard_of() -> None:
    peers = PeerTable(("127.0.0.1:2", "127.0.0.1:3"), "n1")
    assert peers.message_bytes_bound(MAX_MESSAGE_BYTES) == MAX_MESSAGE_BYTES  # nothing heard yet
    peers.learn("127.0.0.1:2", "n2", (), 1 << 20)
    peers.learn("127.0.0.1:3", "n3", ())  # a Status that states none: not a bound
    peers.learn("127.0.0.1:9", "n9", (), 1 << 16)  # not one of ours
    assert peers.message_bytes_bound(MAX_MESSAGE_BYTES) == 1 << 20
    assert peers.message_bytes_bound(1 << 18) == 1 << 18  # ours is the smaller
    assert peers.message_bytes_of("127.0.0.1:2", MAX_MESSAGE_BYTES) == 1 << 20
    assert peers.message_bytes_of("127.0.0.1:3", MAX_MESSAGE_BYTES) == MAX_MESSAGE_BYTES
    peers.learn("127.0.0.1:2", "n2", (), 8 << 20)  # restarted with a larger one
    assert peers.message_bytes_bound(MAX_MESSAGE_BYTES) == 8 << 20


def test_records_sized_before_a_smaller_limit_was_heard_of_are_sized_again_for_it() -> None:
    """Attached records were sized when their jobs were answered and proposed up to 100 ms
    later: a bound that shrank meanwhile (a follower's, heard of just then) let an entry over
    it go out. The batch sizes them again; one that cannot fit (its source alone) is left out."""
    small = 64 << 10
    kept = fitting(JobRecord("kept", "sum", "values:1", "done"), MAX_MESSAGE_BYTES)
    large = fitting(JobRecord("large", "sum", "values:1", "done", nodes=tuple(f"n{i:05}" for i in range(9000))),
                    MAX_MESSAGE_BYTES)
    unfit = fitting(JobRecord("unfit", "sum", "values:" + "1," * 40_000 + "1", "done"), MAX_MESSAGE_BYTES)
    assert not fits(large[1], small) and not fits(unfit[1], small)
    batch, rest = first_batch([kept, large, unfit], small)
    assert [record.job_id for record, _ in batch + rest] == ["kept", "large"]
    assert all(fits(command, small) for _, command in batch + rest)


def test_a_peer_that_states_less_than_a_node_may_run_with_bounds_nothing_below_it() -> None:
    """A peer stating 1 byte (a damaged or foreign reply) made every detached job's record
    too large for the cluster, and no snapshot went to it."""
    peers = PeerTable(("127.0.0.1:2",), "n1")
    peers.heard("127.0.0.1:2", "n2", "follower", 1, message_bytes=1)
    assert peers.message_bytes_bound(MAX_MESSAGE_BYTES) == MIN_NODE_MESSAGE_BYTES


async def test_a_follower_restarted_with_a_smaller_limit_takes_an_entry_written_before(
    start_cluster: StartCluster, tmp_path: Path,
) -> None:
    """An attached job's 64 KB answer, kept whole while the cluster's limits allowed it, in an
    entry committed while one follower was down; that follower comes back under 64 KiB. No
    message to it can carry that entry, and its log stopped there until the leader's next
    snapshot, due only after thousands of entries or megabytes more. The leader snapshots at
    once instead, and sends it in chunks the follower takes."""
    np.save(tmp_path / "wide.npy", np.ones((2, 8_000)))
    cluster = await start_cluster(3)
    leader = await cluster.wait_for_leader()
    follower = next(d for d in cluster.daemons if d is not leader).node_id
    await cluster.stop_node(follower)
    async with AsyncClient(leader.config.address, timeout=10) as client:
        wide = await client.submit(op="sum", source="npy:wide.npy", axis=0)
        await poll(lambda: leader.ledger.table.get(wide.job_id) is not None, what="the record committed")
        (record,) = [job for job in await client.jobs() if job.job_id == wide.job_id]
        assert record.result is not None, "kept whole: sized for the limits the leader knew"
    small = await cluster.start_node(follower, limits=Limits(max_message_bytes=SMALL_BYTES))
    await poll(lambda: small.ledger.table.get(wide.job_id) is not None, timeout_s=10,
               what="the restarted follower to hold the record")
    assert small.ledger.table.get(wide.job_id).result is not None
