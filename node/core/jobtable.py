"""The job table: the state machine that the journal's committed commands drive. Pure.

Every node applies the same commands in the same order (Raft's state machine
safety), so every node's table is the same, and any node can say what became
of a job. A command is one JSON object per line of a "command" entry; its
fields are set by the leader when it proposes the command (times included),
never read from the applying node's clock, so applying is deterministic.

States only move forward, `queued -> running -> done | failed | cancelled`,
and the three finished states are final: a command for a state the job has
passed, for a job that has finished, or for another job under the same id,
changes nothing. So a command
proposed twice (a leader that retries) changes the table once, and a cancel
that races the job's end loses to whichever was committed first. Each node
applies each entry once (from its snapshot on), in log order, so every table
is the same: applying is a function of the log alone.

Retention: finished jobs beyond `keep_jobs`, or whose answers and sources
together pass `keep_result_bytes`, are forgotten oldest first, so the table, its snapshots
and the journal stay bounded however long the cluster runs. Detached and
attached jobs are bounded apiece: a flood of small attached jobs must not
push out a detached job's answer before its client came back for it. The
order is that of each job's last change, and a snapshot keeps it, so a
table restored from one forgets the same jobs next as the table it was
taken from.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import msgspec
from msgspec.structs import replace

from node.core.job import Job
from node.core.raftlog import Entry

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = frozenset({"done", "failed", "cancelled"})
_RANK = {state: rank for rank, state in enumerate(STATES)}


class Result(msgspec.Struct, frozen=True):
    """An answer as bytes: numpy's dtype string, shape and raw little-endian data."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


class JobRecord(msgspec.Struct, frozen=True):
    job_id: str
    op: str
    source: str
    state: str
    #: The job as the client gave it (map, axis, bins, range), for `jobs` and resubmission checks.
    spec: dict[str, Any] = msgspec.field(default_factory=dict)
    shards: int = 0
    nodes: tuple[str, ...] = ()
    submitted_at: float | None = None  # seconds since the epoch, the leader's clock
    finished_at: float | None = None
    elapsed_ms: float | None = None
    result: Result | None = None
    error: str = ""
    #: Submitted with `--detach` (retention keeps each kind within its own bounds).
    detached: bool = False



def job_spec(job: Job) -> dict[str, Any]:
    """What a record keeps of a job besides its op and source (`record_job` gives it back)."""
    return {"map": job.kernel, "axis": job.axis, "bins": job.bins,
            "range_lo": job.range_lo, "range_hi": job.range_hi, "shard_elems": job.shard_elems}


def same_job(spec: dict[str, Any], other: dict[str, Any]) -> bool:
    """Do two specs name the same job? The shard size is how a leader cut it, not what it is."""
    return {**spec, "shard_elems": None} == {**other, "shard_elems": None}


def record_job(record: JobRecord) -> Job:
    """The job a record describes, as the leader runs it (ValueError for a malformed spec)."""
    spec = record.spec
    try:
        return Job(record.op, record.source, str(spec.get("map", "identity")),
                   None if spec.get("axis") is None else int(spec["axis"]), int(spec.get("bins", 0)),
                   None if spec.get("range_lo") is None else float(spec["range_lo"]),
                   None if spec.get("range_hi") is None else float(spec["range_hi"]),
                   None if spec.get("shard_elems") is None else int(spec["shard_elems"]))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"job {record.job_id}: spec {spec!r} is not a job: {exc}") from None


#: One codec for every node: msgspec writes a record's fields in their declared
#: order (bytes as base64) and checks each field's type when it reads one back,
#: 5-10x faster than the json module with a dict per record; it runs once per
#: job on every node, so it is most of what recording a small job costs.
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(JobRecord)


def encode_command(record: JobRecord) -> bytes:
    """A record as the bytes of a "command" entry (one JSON object, one line)."""
    return _ENCODER.encode(record)


def decode_command(data: bytes) -> JobRecord:
    """The record in a command; ValueError if it is not one (a command is never trusted blindly)."""
    try:
        record = _DECODER.decode(data)
    except msgspec.DecodeError as exc:  # malformed JSON, or a field of the wrong type
        raise ValueError(f"not a job command: {exc}") from exc
    if record.state not in _RANK or not record.job_id:
        raise ValueError(f"not a job command: state {record.state!r}, job id {record.job_id!r}")
    return record


def _kept_bytes(record: JobRecord) -> int:
    """What a finished record counts against `keep_result_bytes`: its answer, and its source
    (a `values:` source may be 1 MiB, kept with every record of its job); the rest is small."""
    if record.state not in FINISHED:
        return 0  # live jobs are never evicted: the ledger bounds them (MAX_LIVE_JOBS, MAX_LIVE_SOURCE_BYTES)
    return (len(record.result.data) if record.result is not None else 0) + len(record.source)


class Proposed(msgspec.Struct, frozen=True):
    """A command entry's data as the leader proposed it, with its records and their lines."""

    data: bytes
    records: tuple[tuple[JobRecord, bytes], ...]

    @classmethod
    def of(cls, records: Sequence[tuple[JobRecord, bytes]]) -> Proposed:
        return cls(b"\n".join(line for _, line in records), tuple(records))


#: A command entry's records, each with its line (the bytes the record was encoded as).
Records = Iterator[tuple[JobRecord, bytes]]


def decoded(data: bytes) -> Records:
    """Each record of a command entry with its line; a line that is not one is skipped."""
    for line in data.split(b"\n"):
        try:
            yield decode_command(line), line
        except ValueError:
            continue


class JobTable:
    def __init__(self, keep_jobs: int = 10_000, keep_result_bytes: int = 64 << 20) -> None:
        self.keep_jobs = keep_jobs
        self.keep_result_bytes = keep_result_bytes
        #: Every job known, in the order of its last change (oldest first).
        self._jobs: OrderedDict[str, JobRecord] = OrderedDict()
        #: Each record's encoding (its command's bytes, mostly): a snapshot only joins them.
        self._encoded: dict[str, bytes] = {}
        #: Finished jobs per kind (detached or not), in the order they finished.
        self._finished: dict[bool, OrderedDict[str, None]] = {True: OrderedDict(), False: OrderedDict()}
        self._result_bytes = {True: 0, False: 0}
        #: The sources of the jobs queued or running, in bytes (the ledger bounds them).
        self.live_source_bytes = 0

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def live(self) -> int:
        """Jobs queued or running."""
        return len(self._jobs) - len(self._finished[True]) - len(self._finished[False])

    def get(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    def jobs(self, state: str | None = None, limit: int = 100) -> list[JobRecord]:
        """Newest first (by their last change), at most `limit`, only those in `state` if given."""
        found = []
        for record in reversed(self._jobs.values()):
            if state is None or record.state == state:
                found.append(record)
                if len(found) == limit:
                    break
        return found

    def apply(self, entries: tuple[Entry, ...], known: Mapping[int, Proposed] | None = None) -> list[str]:
        """Apply committed entries in order; the job ids that changed. A command entry
        holds one record per line (the leader batches attached jobs' records); a line
        that does not decode is skipped (it changes no table, on any node, the same way)."""
        changed = []
        for entry in entries:
            for record, line in self.records(entry, known):
                if self.put(record, line):
                    changed.append(record.job_id)
        return changed

    @staticmethod
    def records(entry: Entry, known: Mapping[int, Proposed] | None = None) -> Records:
        """The records of a committed entry with their lines, decoded as they are taken
        (so an entry can be applied a slice at a time); none for an entry of another kind.

        `known`, on the leader: what it proposed, by index. An entry whose data is the very
        bytes object proposed is taken as those records instead of decoded again: the same
        records (`decode_command` gives back what `encode_command` wrote), for about half
        the cost (2.7 instead of 5.2 µs a record), on the loop that answers clients."""
        if entry.kind != "command":
            return iter(())
        mine = known.get(entry.index) if known else None
        return iter(mine.records) if mine is not None and mine.data is entry.data else decoded(entry.data)

    def put(self, record: JobRecord, line: bytes) -> bool:
        """Apply one record (its command's line); False if it changed nothing. Records must
        come in log order, whole entries or slices of them alike: the table after each
        record is a function of the records before it, however they were batched."""
        changed = self._put(record, line)
        self._retain()
        return changed

    def _put(self, record: JobRecord, encoded: bytes) -> bool:
        old = self._jobs.get(record.job_id)
        if old is not None and (old.state in FINISHED or _RANK[record.state] <= _RANK[old.state]):
            return False  # a repeat, news older than what the table holds, or a finished job
        if old is not None and ((old.op, old.source) != (record.op, record.source)
                                or not same_job(old.spec, record.spec)):
            return False  # the first record of an id says what the job is; another job under it is not news
        if old is not None:
            kept = replace(record, submitted_at=old.submitted_at or record.submitted_at,
                           detached=old.detached)
            if kept != record:
                record, encoded = kept, encode_command(kept)
            self._count(old, -1)
        self._jobs[record.job_id] = record
        self._jobs.move_to_end(record.job_id)
        self._encoded[record.job_id] = encoded
        self._count(record, +1)
        return True

    def _count(self, record: JobRecord, sign: int) -> None:
        if record.state in FINISHED:
            finished = self._finished[record.detached]
            if sign > 0:
                finished[record.job_id] = None
            else:
                del finished[record.job_id]
        self._result_bytes[record.detached] += sign * _kept_bytes(record)
        if record.state not in FINISHED:
            self.live_source_bytes += sign * len(record.source)

    def _retain(self) -> None:
        """Each kind within its own bounds: attached jobs, often thousands a second, must
        not push a detached job's answer out before its client came for it."""
        for kind, finished in self._finished.items():
            while finished and (len(finished) > self.keep_jobs
                                or self._result_bytes[kind] > self.keep_result_bytes):
                victim = next(iter(finished))
                del self._encoded[victim]
                self._count(self._jobs.pop(victim), -1)

    # ---- snapshots (§7) -----------------------------------------------------

    def snapshot(self) -> bytes:
        return b"\n".join(self.lines())

    def lines(self) -> list[bytes]:
        """The snapshot's lines, oldest first: bytes nothing changes later, so another thread
        may join them while this table goes on (compaction.py)."""
        return [self._encoded[job_id] for job_id in self._jobs]

    def restore(self, data: bytes) -> None:
        """Replace the table with a snapshot's. A line that does not decode is skipped, as
        `apply` skips it: the table is the one applying the same entries would have made."""
        self._jobs.clear()
        self._encoded.clear()
        for finished in self._finished.values():
            finished.clear()
        self._result_bytes = {True: 0, False: 0}
        self.live_source_bytes = 0
        for record, line in decoded(data) if data else ():
            self._jobs[record.job_id] = record
            self._encoded[record.job_id] = line
            self._count(record, +1)
