"""The job table (node/core/jobtable.py): commands in, the same table on every node out."""

from __future__ import annotations

import random

import pytest
from msgspec.structs import replace

from node.core.job import Job
from node.core.jobtable import (
    JobRecord,
    JobTable,
    Result,
    decode_command,
    encode_command,
    job_spec,
    record_job,
)
from node.core.raftlog import Entry


def record(job_id: str, state: str, result_bytes: int = 0, **fields: object) -> JobRecord:
    result = Result("<u1", (result_bytes,), bytes(range(256))[:result_bytes] * 1) if result_bytes else None
    return JobRecord(job_id, "sum", "range:n=10", state, result=result, **fields)  # type: ignore[arg-type]


#: A record as nodes have written it to their journals since records became msgspec JSON: the
#: fields in their declared order, every one written. Nodes of different versions read each
#: other's entries, so these bytes are a format, not an implementation detail.
WRITTEN = (
    b'{"job_id":"j1","op":"sum","source":"npy:x.npy","state":"done","spec":{"map":"square"},'
    b'"shards":12,"nodes":["n1","n2"],"submitted_at":1.5,"finished_at":null,"elapsed_ms":null,'
    b'"result":{"dtype":"<f8","shape":[],"data":"AAAAAAAAAAA="},"error":"","detached":false}'
)


def test_a_records_bytes_are_the_journals_format_both_ways() -> None:
    written = JobRecord("j1", "sum", "npy:x.npy", "done", spec={"map": "square"}, shards=12,
                        nodes=("n1", "n2"), submitted_at=1.5, result=Result("<f8", (), bytes(8)))
    assert encode_command(written) == WRITTEN
    assert decode_command(WRITTEN) == written


def commands(*records: JobRecord, first: int = 1) -> tuple[Entry, ...]:
    return tuple(Entry(first + i, 1, "command", encode_command(r)) for i, r in enumerate(records))


def test_a_command_round_trips_with_its_result_bytes() -> None:
    done = JobRecord("j1", "mean", "npy:a.npy", "done", {"map": "square", "axis": 0}, 12, ("n1", "n2"),
                     1.5e9, 1.5e9 + 2, 2000.0, Result("<f8", (3,), b"\x00\xff" * 12))
    assert decode_command(encode_command(done)) == done
    assert decode_command(encode_command(record("j2", "failed", error="boom"))).error == "boom"


def test_a_record_gives_back_the_job_it_was_made_from() -> None:
    job = Job("histogram", "npy:a.npy", "square", 0, 16, -1.5, 2.5)
    made = JobRecord("j", job.op, job.source, "queued", job_spec(job))
    assert record_job(decode_command(encode_command(made))) == job
    assert record_job(JobRecord("j", "sum", "range:n=5", "queued")) == Job("sum", "range:n=5")
    with pytest.raises(ValueError, match="is not a job"):
        record_job(JobRecord("j", "sum", "range:n=5", "queued", {"axis": "zero"}))


@pytest.mark.parametrize("data", [
    b"", b"{", b"[]", b'{"job_id": "j"}', b'{"job_id": "j", "op": "sum", "source": "s", "state": "lost"}',
    b'{"job_id": "", "op": "sum", "source": "s", "state": "done"}',
    b'{"job_id": "j", "op": "sum", "source": "s", "state": "done", "result": {"dtype": "<f8", "shape": [1],'
    b' "data": "!!"}}',
    b'{"job_id": "j", "op": "sum", "source": "s", "state": "done", "nodes": [1]}',
    b'{"job_id": "j", "op": "sum", "source": "s", "state": "done", "shards": "twelve"}',
])
def test_what_is_not_a_command_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a job command"):
        decode_command(data)


def test_a_field_this_version_does_not_know_is_ignored_as_protobuf_does() -> None:
    # A newer leader's record still applies on an older node during an upgrade.
    data = b'{"job_id": "j", "op": "sum", "source": "s", "state": "done", "owner": "x", "submitted_at": 5}'
    assert decode_command(data) == JobRecord("j", "sum", "s", "done", submitted_at=5.0)


def test_an_entry_of_several_records_applies_each_as_if_it_came_alone() -> None:
    records = [record("j1", "done", 4), record("j2", "failed", error="boom"), record("j3", "queued")]
    batched = b"\n".join([encode_command(records[0]), b"not a record", *map(encode_command, records[1:])])
    one, alone = JobTable(keep_jobs=1), JobTable(keep_jobs=1)
    assert one.apply((Entry(1, 1, "command", batched),)) == ["j1", "j2", "j3"], "a bad line skips only itself"
    alone.apply(commands(*records))
    assert one.snapshot() == alone.snapshot() and len(one) == 2, "retention runs after every record"


def test_states_only_move_forward_and_repeats_change_nothing() -> None:
    table = JobTable()
    assert table.apply(commands(record("j1", "queued", submitted_at=10.0))) == ["j1"]
    assert table.apply(commands(record("j1", "running"), record("j1", "queued"), record("j1", "running"))) == ["j1"]
    assert table.apply(commands(record("j1", "done", 8), record("j1", "running"), record("j1", "done", 8))) == ["j1"]
    job = table.get("j1")
    assert job is not None and job.state == "done" and job.result is not None
    assert job.submitted_at == 10.0, "the first submission time is kept"
    assert table.apply(commands(record("j1", "cancelled"), record("j1", "failed"))) == [], "done is final"
    table.apply(commands(record("j2", "running"), record("j2", "cancelled"), record("j2", "done", 8)))
    assert table.get("j2").state == "cancelled" and table.get("j2").result is None  # type: ignore[union-attr]
    table.apply(commands(record("j3", "queued"), replace(record("j3", "done", 8), op="max")))
    assert table.get("j3").state == "queued", "another job under the same id"  # type: ignore[union-attr]
    assert table.apply((Entry(9, 1, "noop"), Entry(10, 1, "command", b"garbage"))) == []


@pytest.mark.parametrize("seed", range(5))
def test_every_node_that_applies_the_same_log_has_the_same_table(seed: int) -> None:
    """State machine safety, as the table sees it: the same log (repeated and stale
    commands included) applied in batches of any size, or restored from a snapshot
    taken anywhere and then applied on, gives the same table."""
    rng = random.Random(seed)
    states = ["queued", "running", "done", "failed", "cancelled"]
    log = commands(*[record(f"j{rng.randint(0, 30)}", rng.choice(states), rng.choice((0, 8, 64)))
                     for _ in range(400)])
    once, batched = JobTable(keep_jobs=20, keep_result_bytes=600), JobTable(keep_jobs=20, keep_result_bytes=600)
    once.apply(log)
    position = 0
    while position < len(log):
        step = rng.randint(1, 20)
        batched.apply(log[position:position + step])
        position += step
        if rng.random() < 0.1:  # a snapshot here, and a restart from it
            restarted = JobTable(keep_jobs=20, keep_result_bytes=600)
            restarted.restore(batched.snapshot())
            batched = restarted
    assert once.snapshot() == batched.snapshot() and len(once) <= 20 + 31


def test_retention_bounds_the_finished_jobs_and_their_results_but_never_drops_a_live_one() -> None:
    table = JobTable(keep_jobs=3, keep_result_bytes=100)
    table.apply(commands(record("live", "running")))
    table.apply(commands(*[record(f"d{i}", "done", 40) for i in range(6)], first=2))
    assert [r.job_id for r in table.jobs()] == ["d5", "d4", "live"], "two 40-byte results fit in 100"
    table.apply(commands(*[record(f"f{i}", "failed") for i in range(5)], first=10))
    assert [r.job_id for r in table.jobs()] == ["f4", "f3", "f2", "live"]
    assert table.jobs(state="running")[0].job_id == "live" and len(table.jobs(limit=2)) == 2


def test_a_finished_jobs_source_counts_with_its_answer_and_a_live_ones_is_summed() -> None:
    """A `values:` source may be 1 MiB and is kept with its job's record: finished records
    count it against keep_result_bytes with their answer, and the table sums the live
    jobs' sources for the ledger to bound (MAX_LIVE_SOURCE_BYTES)."""
    table = JobTable(keep_jobs=10, keep_result_bytes=100)
    values = "values:" + "1," * 29 + "1"  # 66 bytes
    table.apply(commands(*[replace(record(f"q{i}", "queued"), source=values) for i in range(3)]))
    assert table.live_source_bytes == 3 * len(values) and len(table) == 3, "live jobs are never evicted"
    table.apply(commands(*[replace(record(f"q{i}", "done", 10), source=values) for i in range(2)], first=4))
    assert table.live_source_bytes == len(values)
    assert [r.job_id for r in table.jobs(state="done")] == ["q1"], "two 76-byte records pass 100"
    copy = JobTable(keep_jobs=10, keep_result_bytes=100)
    copy.restore(table.snapshot())
    assert copy.live_source_bytes == len(values) and copy.snapshot() == table.snapshot()


def test_attached_jobs_never_push_a_detached_answer_out() -> None:
    table = JobTable(keep_jobs=3, keep_result_bytes=100)
    table.apply(commands(replace(record("d", "queued"), detached=True), first=1))
    table.apply(commands(record("d", "done", 40), first=2))  # the detached flag stays with the job
    table.apply(commands(*[record(f"a{i}", "done", 40) for i in range(50)], first=3))
    assert table.get("d") is not None and table.get("d").detached, "evicted by attached jobs"  # type: ignore[union-attr]
    assert [r.job_id for r in table.jobs()] == ["a49", "a48", "d"], "two 40-byte attached results fit"
    table.apply(commands(*[replace(record(f"e{i}", "failed"), detached=True) for i in range(3)], first=60))
    assert table.get("d") is None and len(table.jobs(limit=100)) == 5, "the oldest detached one goes first"


def test_a_snapshot_restores_the_same_table() -> None:
    table = JobTable()
    table.apply(commands(record("a", "queued"), record("b", "done", 16), record("a", "running")))
    copy = JobTable()
    copy.restore(table.snapshot())
    assert copy.snapshot() == table.snapshot() and [r.job_id for r in copy.jobs()] == ["a", "b"]
    copy.restore(b"")
    assert len(copy) == 0
    lines = table.snapshot().split(b"\n")
    copy.restore(b"\n".join([lines[0], b"not json", *lines[1:]]))
    assert copy.snapshot() == table.snapshot(), "a line that does not decode is skipped, as apply skips it"
