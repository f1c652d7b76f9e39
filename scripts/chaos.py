"""Chaos run: real daemons, real faults, invariants checked at the end (Jepsen-style).

    python scripts/chaos.py [--nodes 5] [--duration 60] [--seed N] [--json PATH]

A LocalCluster (link_faults=True, default timing unless --fast) runs for
`--duration` seconds while

- a few client tasks submit a steady stream of jobs with known answers
  (asyncio clients, and one blocking `Client` in a thread of its own)
  (`range:` closed forms; `random:` answers computed here beforehand with
  `reduce_all` and the cluster's shard size), each retried with the same
  `job_id` until answered;
- a probe task submits tiny jobs back to back, to measure from the client's
  side how long the cluster could not take a job;
- a detacher submits detached jobs (`detach=True`), and a dying client runs
  `distnode submit --detach` in its own process and kills it at a random
  moment (a job id it printed first is acknowledged); a watcher asks random
  nodes about random acknowledged jobs all along;
- a seeded nemesis injects one fault at a time at random moments: kill -9 and
  restart, SIGSTOP/SIGCONT longer than the election timeout, a partition
  into a minority and a majority, one-way cuts, delays. The leader is the
  target half of the time.

Then everything is healed and the invariants are checked:

1. every answer the client got is correct (zero wrong);
2. every submitted job is answered (zero lost);
3. at most one leader per term, from every node's `became leader` log lines
   (the logs survive restarts);
4. after healing, one leader within 2 election timeouts, and every node
   agrees on it (each node's Status, polled individually);
5. no process ended except those killed on purpose, and no log entry shows
   a traceback, an ERROR or a CRITICAL. None is excused: a known bug fails
   the run until it is fixed;
6. no job waited longer than STALL_S from its first submit to its answer;
7. no acknowledged detached job is lost: each is done after healing, with
   the right answer, and every node answers it with the same bits;
8. job states only move forward, as leaders report them (a follower's own
   table may lag its leader's, so its answers are not held to this).

The exit status is 0 only if all hold. The seed fixes the fault schedule
(kinds, targets, durations, gaps) and the job stream; the interleaving with
the cluster's own timers is real time, so a rerun with the same seed replays
the same faults, not the same microseconds. "The leader" is whoever leads at
that moment, and a fault aimed at the leader while there is none takes a
random node instead, one more draw: from there on a rerun's schedule differs.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from node import AsyncClient, Client, InvalidJob, LocalCluster
from node._proto import distnode_pb2 as pb
from node._proto import distnode_pb2_grpc as pb_grpc
from node.client.answer import Answer
from node.core.compute import reduce_all, validate_job
from node.core.job import Job
from node.core.jobtable import STATES
from node.errors import ClusterUnavailable, JobError
from node.server.config import DEFAULT_ELECTION_MS, DEFAULT_HEARTBEAT_MS

#: Shards of 2^20 elements: a 4e6-element job fans out to 4 nodes' worth of work.
SHARD_ELEMS = 1 << 20
#: One submit call's deadline; a job is retried (same id) until DRAIN_S after healing.
ATTEMPT_S = 20.0
DRAIN_S = 120.0
#: No job may wait longer than this: one fault at a time holds for at most 4 s
#: (a pause at most 6 election timeouts), and detection plus an election take ~1 s.
STALL_S = 10.0
LEADER_LINE = re.compile(r" (\S+) INFO became leader term=(\d+)")
#: A log entry starts with the daemon's timestamp; tracebacks continue it.
ENTRY_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.MULTILINE)
#: Any of these in a log entry fails the run: a bug that is already known is
#: still an open failure, so there is no list of excused entries.
BAD_ENTRY = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b")


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- jobs with known answers -------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    op: str
    source: str
    expected: Any


def range_spec(op: str, n: int) -> Spec:
    """Exact answers over 0..n-1, from closed forms."""
    expected = {"sum": n * (n - 1) // 2, "count": n, "max": n - 1, "min": 0, "argmax": n - 1}[op]
    return Spec(op, f"range:n={n}", expected)


def random_pool(seed: int, count: int) -> list[Spec]:
    """`random:` jobs with answers computed here, with the cluster's shard size (bit for bit)."""
    rng = random.Random(seed ^ 0x5EED)
    pool = []
    for i in range(count):
        op = ("sum", "mean", "var", "max", "argmin", "std")[i % 6]
        source = f"random:n={rng.choice((300_000, 2_000_000, 3_500_000))},seed={rng.randrange(10**6)}"
        job = Job(op=op, source=source)
        value = reduce_all(job, validate_job(job), SHARD_ELEMS)
        pool.append(Spec(op, source, value.item()))
    return pool


class JobStream:
    """The seeded sequence of jobs the submitters take from, in order."""

    def __init__(self, seed: int, pool: list[Spec]) -> None:
        self.rng = random.Random(seed ^ 0xC0FFEE)
        self.pool = pool
        self.count = 0
        self.seed = seed

    def next(self) -> tuple[str, Spec]:
        self.count += 1
        job_id = f"chaos-{self.seed}-{self.count}"
        roll = self.rng.random()
        if roll < 0.3:
            spec = range_spec("sum", self.rng.randint(1_000, 60_000))  # inline on the leader
        elif roll < 0.7:
            op = self.rng.choice(("sum", "count", "max", "min", "argmax"))
            spec = range_spec(op, self.rng.randint(1_000_000, 8_000_000))  # fans out
        else:
            spec = self.rng.choice(self.pool)
        return job_id, spec


# ---- the record of what happened ---------------------------------------------------


@dataclass
class Record:
    submitted: dict[str, Spec] = field(default_factory=dict)
    answered: dict[str, Any] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    failed_attempts: int = 0
    attempt_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    completions: list[float] = field(default_factory=list)
    #: (seconds from first submit to answer, job id, "op source", answering leader) of the slowest job.
    slowest: tuple[float, str, str, str] = (0.0, "", "", "")
    probe_ok: list[float] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    fault_counts: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Detached jobs whose id a client was given (acknowledged: committed), and their specs.
    acked: dict[str, Spec] = field(default_factory=dict)
    ack_ms: list[float] = field(default_factory=list)
    #: Detached submits whose client was killed before it printed the job id.
    died_before_ack: int = 0
    #: Attached jobs answered to the blocking Client's thread.
    blocking_answered: int = 0
    detached_answers: dict[str, Any] = field(default_factory=dict)
    detached_wrong: list[str] = field(default_factory=list)
    #: A detached job answered with other bits by another node, or at another time.
    disagreeing: list[str] = field(default_factory=list)
    #: (job id, state seen after a later one) as answered by leaders.
    backwards: list[str] = field(default_factory=list)
    #: The furthest state a leader has reported per detached job, and its answer's bits.
    furthest: dict[str, int] = field(default_factory=dict)


def same(expected: Any, got: Any) -> bool:
    """Bit for bit: floats must be equal, not close (README: same answer on 1 node or 16)."""
    return type(expected) is type(got) and bool(expected == got)


#: One attempt at a job: (job id, spec, timeout in s) -> its answer.
Submit = Callable[[str, Spec, float], Awaitable[Answer]]


async def submit_until_answered(
    submit: Submit, job_id: str, spec: Spec, record: Record, deadline: list[float]
) -> bool:
    """Retry the same job id until answered (True) or until the (movable) final deadline."""
    started = time.monotonic()
    while time.monotonic() < deadline[0]:
        timeout = min(ATTEMPT_S, max(0.5, deadline[0] - time.monotonic()))
        try:
            answer = await submit(job_id, spec, timeout)
        except (ClusterUnavailable, JobError) as exc:
            record.failed_attempts += 1
            record.attempt_errors[type(exc).__name__] += 1
            continue
        except InvalidJob as exc:
            record.invalid.append(f"{job_id}: {exc}")
            return False
        note_answer(record, job_id, spec, answer, started)
        return True
    return False


def note_answer(record: Record, job_id: str, spec: Spec, answer: Answer, started: float) -> None:
    """An attached job's answer: counted, timed, and checked bit for bit."""
    record.answered[job_id] = answer.result
    record.completions.append(time.monotonic())
    took_s = time.monotonic() - started
    if took_s > record.slowest[0]:
        by = f"{answer.leader} term {answer.term}"
        record.slowest = (took_s, job_id, f"{spec.op} {spec.source}", by)
    if not same(spec.expected, answer.result):
        record.wrong.append(
            f"{job_id} {spec.op} {spec.source}: expected {spec.expected!r}, got {answer.result!r}"
        )


async def submit_all(
    submit: Submit, stream: JobStream, record: Record, stop: asyncio.Event, deadline: list[float]
) -> int:
    """Jobs from `stream`, one after the other, each until answered; how many were."""
    answered = 0
    while not stop.is_set():
        job_id, spec = stream.next()
        record.submitted[job_id] = spec
        answered += await submit_until_answered(submit, job_id, spec, record, deadline)
    return answered


async def submitter(
    addresses: list[str], stream: JobStream, record: Record, stop: asyncio.Event, deadline: list[float]
) -> None:
    async with AsyncClient(addresses, timeout=ATTEMPT_S) as client:
        async def submit(job_id: str, spec: Spec, timeout: float) -> Answer:
            return await client.submit(op=spec.op, source=spec.source, job_id=job_id, timeout=timeout)

        await submit_all(submit, stream, record, stop, deadline)


def blocking_submitter(
    addresses: list[str], stream: JobStream, record: Record, stop: asyncio.Event, deadline: list[float]
) -> None:
    """The blocking Client in a thread of its own (its jobs go on that thread's SubmitBatches stream),
    through the same retry loop as the asyncio submitters, run on a loop private to this
    thread: each call blocks that loop, which has nothing else to run."""
    with Client(addresses, timeout=ATTEMPT_S) as client:
        async def submit(job_id: str, spec: Spec, timeout: float) -> Answer:
            return client.submit(op=spec.op, source=spec.source, job_id=job_id, timeout=timeout)

        record.blocking_answered = asyncio.run(submit_all(submit, stream, record, stop, deadline))


async def prober(addresses: list[str], seed: int, record: Record, stop: asyncio.Event) -> None:
    """Tiny jobs back to back: the gaps between their answers are the unavailability."""
    async with AsyncClient(addresses, timeout=ATTEMPT_S) as client:
        count = 0
        while not stop.is_set():
            count += 1
            with contextlib.suppress(ClusterUnavailable, JobError):
                answer = await client.submit(
                    op="sum", source="values:1,2,3", job_id=f"probe-{seed}-{count}", timeout=ATTEMPT_S
                )
                if answer.result == 6:
                    record.probe_ok.append(time.monotonic())
            await asyncio.sleep(0.05)


async def detacher(addresses: list[str], stream: JobStream, record: Record, stop: asyncio.Event) -> None:
    """Detached submits, each retried with its id until acknowledged."""
    async with AsyncClient(addresses, timeout=ATTEMPT_S) as client:
        while not stop.is_set():
            job_id, spec = stream.next()
            job_id = f"d-{job_id}"
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await client.submit(op=spec.op, source=spec.source, job_id=job_id, detach=True,
                                        timeout=ATTEMPT_S)
                except (ClusterUnavailable, JobError):
                    record.failed_attempts += 1
                    continue
                except InvalidJob as exc:
                    record.invalid.append(f"{job_id}: {exc}")
                    break
                record.ack_ms.append((time.monotonic() - started) * 1000)
                record.acked[job_id] = spec
                break
            await asyncio.sleep(0.1)


async def dying_client(addresses: list[str], stream: JobStream, record: Record, stop: asyncio.Event,
                       seed: int) -> None:
    """`distnode submit --detach` in its own process, killed at a random moment: a job id
    it printed before dying is acknowledged, and must be done in the end like any other."""
    rng = random.Random(seed ^ 0xD1E)
    while not stop.is_set():
        job_id, spec = stream.next()
        job_id = f"dying-{job_id}"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli", "submit", "--cluster", ",".join(addresses), "--op", spec.op,
            "--source", spec.source, "--job-id", job_id, "--detach", "--timeout", str(ATTEMPT_S),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), rng.uniform(0.3, 2.0))
        except TimeoutError:
            line = b""
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        if line.decode().strip() == job_id:
            record.acked[job_id] = spec
        else:
            record.died_before_ack += 1
        await asyncio.sleep(rng.uniform(0.2, 1.0))


def bits_of(info: pb.JobInfo) -> tuple[str, tuple[int, ...], bytes]:
    """A done job's answer as it came: dtype, shape and the bytes."""
    return info.result.dtype, tuple(info.result.shape), info.result.data


def note_state(record: Record, info: pb.JobInfo) -> None:
    """What a leader said of a detached job: states only move forward, answers never change."""
    if info.answered_by != info.leader or info.job_id not in record.acked:
        return  # a follower's own table may lag its leader's: only leaders' answers are checked
    rank = STATES.index(info.state)
    furthest = record.furthest.get(info.job_id, -1)
    if rank < furthest or (furthest >= STATES.index("done") and rank != furthest):
        record.backwards.append(f"{info.job_id}: {STATES[furthest]} then {info.state} "
                                f"(from {info.answered_by})")
    record.furthest[info.job_id] = max(rank, furthest)
    if info.state == "done" and info.result_kept:
        bits = bits_of(info)
        seen = record.detached_answers.setdefault(info.job_id, bits)
        if seen != bits:
            record.disagreeing.append(f"{info.job_id}: {seen!r} then {bits!r} from {info.answered_by}")


async def state_watcher(addresses: list[str], record: Record, stop: asyncio.Event, seed: int) -> None:
    """Ask random nodes about random acknowledged detached jobs, all run long."""
    rng = random.Random(seed ^ 0x57A7E)
    channels = {a: grpc.aio.insecure_channel(a) for a in addresses}
    try:
        while not stop.is_set():
            await asyncio.sleep(0.1)
            if not record.acked:
                continue
            job_id = rng.choice(list(record.acked))
            stub = pb_grpc.NodeStub(channels[rng.choice(addresses)])
            with contextlib.suppress(grpc.aio.AioRpcError):
                note_state(record, await stub.Result(pb.ResultRequest(job_id=job_id), timeout=1.0))
    finally:
        for channel in channels.values():
            await channel.close()


async def own_answer(stub: Any, job_id: str, within_s: float = 10.0) -> pb.JobInfo | None:
    """A node's own table's record of a job, once it says done (it may be a beat behind)."""
    deadline = time.monotonic() + within_s
    info: pb.JobInfo | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(grpc.aio.AioRpcError):
            info = await stub.Result(pb.ResultRequest(job_id=job_id, forwarded=True), timeout=2)
            if info.state == "done":
                return info
        await asyncio.sleep(0.05)
    return info


async def collect_detached(cluster: LocalCluster, record: Record, deadline_s: float) -> list[str]:
    """After healing: every acknowledged job done, with the right answer, the same bits on
    every node. Returns the jobs not done by the deadline (lost)."""
    lost = []
    async with AsyncClient(cluster.addresses, timeout=ATTEMPT_S) as client:
        for job_id, spec in record.acked.items():
            try:
                answer = await client.result(job_id, wait=max(0.0, deadline_s - time.monotonic()))
            except (ClusterUnavailable, JobError, InvalidJob) as exc:
                lost.append(f"{job_id}: {type(exc).__name__}: {exc}")
                continue
            if not same(spec.expected, answer.result):
                record.detached_wrong.append(f"{job_id} {spec.op} {spec.source}: expected "
                                             f"{spec.expected!r}, got {answer.result!r}")
            bits = (answer.array.dtype.str, tuple(answer.array.shape), answer.array.tobytes())
            if record.detached_answers.setdefault(job_id, bits) != bits:
                record.disagreeing.append(f"{job_id}: other bits after healing than before")
    for address in cluster.addresses:  # and from each node's own table, once it has caught up
        channel = grpc.aio.insecure_channel(address)
        try:
            stub = pb_grpc.NodeStub(channel)
            for job_id in record.acked:
                if job_id not in record.detached_answers:
                    continue
                info = await own_answer(stub, job_id)
                if info is None or info.state != "done":
                    state = "no answer" if info is None else info.state
                    record.disagreeing.append(f"{job_id}: {state} on {address} after healing")
                    continue
                bits = bits_of(info)
                if bits != record.detached_answers[job_id]:
                    record.disagreeing.append(f"{job_id}: other bits from {info.answered_by}")
        finally:
            await channel.close()
    return lost


# ---- per-node views ------------------------------------------------------------------


def node_view(address: str, timeout_s: float = 0.5) -> tuple[str, int, str] | None:
    """(role, term, leader id) as this one node sees it, or None if it does not answer."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = pb_grpc.NodeStub(channel).Status(pb.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return None
    return reply.role, reply.term, reply.leader_id


def current_leader(cluster: LocalCluster) -> str | None:
    views = {nid: node_view(cluster.address(nid), 0.3) for nid in cluster.ids}
    leaders = [(v[1], nid) for nid, v in views.items() if v is not None and v[0] == "leader"]
    return max(leaders)[1] if leaders else None


def agreed_leader(cluster: LocalCluster) -> str | None:
    """The leader every node names, at the leader's own term; None if they disagree."""
    views = [node_view(cluster.address(nid)) for nid in cluster.ids]
    if any(v is None for v in views):
        return None
    leaders = {(v[2], v[1]) for v in views if v is not None}
    if len(leaders) != 1:
        return None
    leader, term = leaders.pop()
    if not leader:
        return None
    own = views[cluster.ids.index(leader)]
    return leader if own is not None and own[0] == "leader" and own[1] == term else None


# ---- the nemesis ---------------------------------------------------------------------


FAULT_KINDS = ("kill", "pause", "partition", "one-way", "delay")


class Nemesis:
    """One fault at a time, at seeded moments, each repaired before the next.

    Every random draw comes from one `random.Random(seed)`, in a fixed order for
    each fault kind, so the seed fixes the schedule (but see the module docstring
    on a leaderless moment). What a kind draws, and in which order, is part of
    every seed's schedule: tests/test_chaos.py pins one.
    """

    def __init__(self, cluster: LocalCluster, seed: int, election_ms_max: int, record: Record) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.election_s = election_ms_max / 1000
        self.record = record
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self.error: BaseException | None = None
        #: Pids killed on purpose: their -9 exits are not crashes.
        self.killed_pids: set[int] = set()
        self.inject: dict[str, Callable[[], None]] = {
            "kill": self._kill,
            "pause": self._pause,
            "partition": self._partition,
            "one-way": self._one_way,
            "delay": self._delay,
        }

    def _run(self) -> None:
        try:
            while not self.stop.wait(self.rng.uniform(1.0, 3.0)):
                self.inject[self.rng.choice(FAULT_KINDS)]()
        except BaseException as exc:  # reported as a failed run, never swallowed
            self.error = exc

    def _target(self) -> tuple[str, str]:
        """The leader half of the time (if there is one), else a random node.

        Returns the node and a mark for the fault log: " (leader)" or "".
        """
        leader = current_leader(self.cluster) if self.rng.random() < 0.5 else None
        return (leader, " (leader)") if leader else (self.rng.choice(self.cluster.ids), "")

    def _hold(self, lo: float, hi: float) -> float:
        hold_s = self.rng.uniform(lo, hi)
        self.stop.wait(hold_s)  # the end of the run cuts a fault short, never lengthens it
        return hold_s

    def _log(self, kind: str, what: str) -> None:
        at = time.monotonic() - self.started
        self.record.faults.append({"at_s": round(at, 2), "kind": kind, "what": what})
        self.record.fault_counts[kind] += 1
        say(f"fault {kind}: {what}")

    def _kill(self) -> None:
        """A crash without goodbye; the node comes back on the same port and data dir."""
        node, mark = self._target()
        pid = self.cluster.pid(node)
        if pid is not None:
            self.killed_pids.add(pid)
        self.cluster.kill(node)
        self._log("kill", f"kill -9 {node}{mark}")
        self._hold(0.2, 3.0)
        self.cluster.restart(node)

    def _pause(self) -> None:
        """SIGSTOP past the election timeout: peers give up on it while its sockets stay open."""
        node, mark = self._target()
        self.cluster.pause(node)
        hold_s = self.rng.uniform(1.2 * self.election_s, 6 * self.election_s)
        self._log("pause", f"SIGSTOP {node}{mark} for {hold_s:.2f} s")
        self.stop.wait(hold_s)
        self.cluster.resume(node)

    def _partition(self) -> None:
        """A minority cut off from a majority, the target on either side."""
        ids = self.cluster.ids
        target, _ = self._target()
        size = self.rng.randint(1, (len(ids) - 1) // 2)
        others = [n for n in ids if n != target]
        minority = [target, *self.rng.sample(others, size - 1)]
        if self.rng.random() < 0.5:  # the target on the majority side instead
            minority = self.rng.sample(others, size)
        majority = [n for n in ids if n not in minority]
        for a in minority:
            for b in majority:
                self.cluster.cut(a, b)
        self._log("partition", f"{','.join(sorted(minority))} | {','.join(sorted(majority))}")
        self._hold(1.0, 4.0)
        self.cluster.heal()

    def _one_way(self) -> None:
        """The target's messages to one node, or to all, are dropped; it still hears them."""
        ids = self.cluster.ids
        node, mark = self._target()
        if self.rng.random() < 0.5:
            other = self.rng.choice([n for n in ids if n != node])
            self.cluster.cut(node, other, both=False)
            what = f"{node} -/-> {other}"
        else:  # it hears everybody, nobody hears it (its RPCs all fail)
            for other in ids:
                if other != node:
                    self.cluster.cut(node, other, both=False)
            what = f"{node} -/-> all"
        self._log("one-way", what + mark)
        self._hold(1.0, 4.0)
        self.cluster.heal()

    def _delay(self) -> None:
        """Added latency on the target's links to one node or to all."""
        node, mark = self._target()
        ms = self.rng.choice((20, 50, 100, 150))
        others = [n for n in self.cluster.ids if n != node]
        targets = others if self.rng.random() < 0.5 else [self.rng.choice(others)]
        for other in targets:
            self.cluster.delay(node, other, ms)
        self._log("delay", f"{node} <-> {','.join(targets)} +{ms} ms each way{mark}")
        self._hold(1.0, 4.0)
        self.cluster.heal()


# ---- checks ------------------------------------------------------------------------------


def leaders_by_term(cluster: LocalCluster) -> dict[int, set[str]]:
    terms: dict[int, set[str]] = collections.defaultdict(set)
    for nid in cluster.ids:
        for match in LEADER_LINE.finditer(cluster.log(nid)):
            terms[int(match.group(2))].add(match.group(1))
    return terms


def log_entries(text: str) -> list[str]:
    starts = [m.start() for m in ENTRY_START.finditer(text)] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    return [text[a:b] for a, b in itertools.pairwise([*starts, len(text)]) if text[a:b].strip()]


def bad_log_entries(cluster: LocalCluster) -> list[str]:
    """Every log entry with a traceback, an ERROR or a CRITICAL, prefixed with its node."""
    return [
        f"{nid}: {entry.strip()}"
        for nid in cluster.ids
        for entry in log_entries(cluster.log(nid))
        if BAD_ENTRY.search(entry)
    ]


def longest_gap(times: list[float], start: float, end: float) -> float:
    return longest_gap_at(times, start, end)[0]


def longest_gap_at(times: list[float], start: float, end: float) -> tuple[float, float]:
    """(the longest gap between consecutive times, when it began, in seconds after `start`)."""
    points = [start, *sorted(t for t in times if start <= t <= end), end]
    return max((b - a, a - start) for a, b in itertools.pairwise(points))


def wait_converged(cluster: LocalCluster, timeout_s: float) -> tuple[str | None, float]:
    started = time.monotonic()
    while True:
        leader = agreed_leader(cluster)
        elapsed = time.monotonic() - started
        if leader is not None or elapsed > timeout_s:
            return leader, elapsed
        time.sleep(0.01)


# ---- the run -----------------------------------------------------------------------------


@dataclass
class Settings:
    nodes: int
    duration_s: float
    seed: int
    clients: int
    heartbeat_ms: int
    election_ms: tuple[int, int]
    workdir: Path


async def workload(
    cluster: LocalCluster, settings: Settings, record: Record, pool: list[Spec], nemesis: Nemesis
) -> dict[str, Any]:
    stream = JobStream(settings.seed, pool)
    stop = asyncio.Event()
    deadline = [float("inf")]
    addresses = cluster.addresses
    started = time.monotonic()
    tasks = [asyncio.create_task(submitter(addresses, stream, record, stop, deadline))
             for _ in range(settings.clients)]
    # Its own job sequence (another seed, so other ids): a JobStream is not shared across threads.
    tasks.append(asyncio.create_task(asyncio.to_thread(
        blocking_submitter, addresses, JobStream(settings.seed ^ 0xB10C, pool), record, stop, deadline)))
    probe = asyncio.create_task(prober(addresses, settings.seed, record, stop))
    detached_stream = JobStream(settings.seed ^ 0xDE7A, pool)
    background = [
        asyncio.create_task(detacher(addresses, detached_stream, record, stop)),
        asyncio.create_task(dying_client(addresses, detached_stream, record, stop, settings.seed)),
        asyncio.create_task(state_watcher(addresses, record, stop, settings.seed)),
    ]
    nemesis.started = started  # fault times and gap times share one origin
    nemesis.thread.start()
    await asyncio.sleep(settings.duration_s)
    ended = time.monotonic()
    nemesis.stop.set()
    await asyncio.to_thread(nemesis.thread.join)
    stop.set()

    # Heal everything: links, paused and dead processes.
    await asyncio.to_thread(cluster.heal)
    for nid in cluster.ids:
        await asyncio.to_thread(cluster.resume, nid)
        if cluster.pid(nid) is None:
            await asyncio.to_thread(cluster.restart, nid)
    healed = time.monotonic()
    leader, converge_s = await asyncio.to_thread(
        wait_converged, cluster, 4 * settings.election_ms[1] / 1000 + 2
    )
    deadline[0] = time.monotonic() + DRAIN_S
    await asyncio.gather(probe, *tasks, *background)
    lost_detached = await collect_detached(cluster, record, time.monotonic() + DRAIN_S)
    return {
        "lost_detached": lost_detached,
        "run_s": round(ended - started, 1),
        "leader_after_heal": leader,
        "converge_s": round(converge_s, 3),
        "healed_at": healed,
        "longest_probe_gap_s": round(longest_gap(record.probe_ok, started, ended), 3),
        "longest_probe_gap_at_s": round(longest_gap_at(record.probe_ok, started, ended)[1], 1),
        "longest_job_gap_s": round(longest_gap(record.completions, started, ended), 3),
        "longest_job_gap_at_s": round(longest_gap_at(record.completions, started, ended)[1], 1),
        "probes_ok": len(record.probe_ok),
    }


def check(cluster: LocalCluster, settings: Settings, record: Record, outcome: dict[str, Any],
          killed_pids: set[int]) -> dict[str, Any]:
    terms = leaders_by_term(cluster)
    lost = sorted(set(record.submitted) - set(record.answered))
    crashed = [
        f"{nid} pid {pid} exited with {rc}"
        for nid, pid, rc in cluster.exits()
        if not (rc == -9 and pid in killed_pids)
    ]
    bound_s = 2 * settings.election_ms[1] / 1000
    bad_entries = bad_log_entries(cluster)
    invariants = {
        "zero wrong answers": not record.wrong and not record.invalid,
        "zero lost jobs": not lost,
        "at most one leader per term": all(len(nodes) == 1 for nodes in terms.values()),
        f"one agreed leader within {bound_s:g} s of healing": (
            outcome["leader_after_heal"] is not None and outcome["converge_s"] <= bound_s
        ),
        "no crash, traceback or ERROR": not crashed and not bad_entries,
        f"no job waited more than {STALL_S:g} s": record.slowest[0] <= STALL_S,
        "no acknowledged detached job lost": not outcome["lost_detached"],
        "detached answers right, and the same bits from every node": (
            not record.detached_wrong and not record.disagreeing
        ),
        "job states only move forward (as leaders answer)": not record.backwards,
    }
    return {
        "seed": settings.seed,
        "nodes": settings.nodes,
        "duration_s": settings.duration_s,
        "timing": {"heartbeat_ms": settings.heartbeat_ms, "election_ms": list(settings.election_ms)},
        "faults": dict(sorted(record.fault_counts.items())),
        "fault_log": record.faults,
        "jobs": {
            "submitted": len(record.submitted), "answered": len(record.answered),
            "answered_by_blocking_client": record.blocking_answered,
            "wrong": len(record.wrong) + len(record.invalid), "lost": len(lost),
            "failed_attempts": record.failed_attempts,
            "attempt_errors": dict(record.attempt_errors),
        },
        "detached": {
            "acknowledged": len(record.acked),
            "by_dying_clients": sum(1 for j in record.acked if j.startswith("dying-")),
            "clients_killed_before_ack": record.died_before_ack,
            "lost": len(outcome["lost_detached"]), "wrong": len(record.detached_wrong),
            "disagreeing": len(record.disagreeing), "states_backwards": len(record.backwards),
            "ack_ms_p50": round(statistics.median(record.ack_ms), 2) if record.ack_ms else None,
        },
        "probes_ok": outcome["probes_ok"],
        "longest_unavailable_s": outcome["longest_probe_gap_s"],
        "longest_unavailable_at_s": outcome["longest_probe_gap_at_s"],
        "longest_gap_between_jobs_s": outcome["longest_job_gap_s"],
        "longest_gap_between_jobs_at_s": outcome["longest_job_gap_at_s"],
        "slowest_job": {
            "seconds": round(record.slowest[0], 3), "job_id": record.slowest[1],
            "job": record.slowest[2], "answered_by": record.slowest[3],
        },
        "leader_changes": max(0, len(terms) - 1),
        "leaders_by_term": {str(t): sorted(n) for t, n in sorted(terms.items())},
        "converge_s": outcome["converge_s"],
        "leader_after_heal": outcome["leader_after_heal"],
        "invariants": invariants,
        "ok": all(invariants.values()),
        "details": {
            "wrong": record.wrong[:20], "invalid": record.invalid[:20], "lost": lost[:20],
            "detached_lost": outcome["lost_detached"][:20], "detached_wrong": record.detached_wrong[:20],
            "disagreeing": record.disagreeing[:20], "backwards": record.backwards[:20],
            "crashed": crashed, "bad_log_entries": [e[:1500] for e in bad_entries[:10]],
            "split_terms": {str(t): sorted(n) for t, n in terms.items() if len(n) > 1},
        },
    }


def print_summary(summary: dict[str, Any]) -> None:
    jobs = summary["jobs"]
    rows = [
        ("seed", summary["seed"]),
        ("nodes / duration", f"{summary['nodes']} / {summary['duration_s']:g} s"),
        ("timing", f"heartbeat {summary['timing']['heartbeat_ms']} ms, "
                   f"election {'-'.join(map(str, summary['timing']['election_ms']))} ms"),
        *[(f"faults: {kind}", count) for kind, count in summary["faults"].items()],
        ("faults: total", sum(summary["faults"].values())),
        ("jobs submitted", jobs["submitted"]),
        ("jobs answered", jobs["answered"]),
        ("  of them by the blocking Client", jobs["answered_by_blocking_client"]),
        ("jobs wrong", jobs["wrong"]),
        ("jobs lost", jobs["lost"]),
        ("failed attempts (retried)", jobs["failed_attempts"]),
        ("detached acknowledged", f"{summary['detached']['acknowledged']} "
                                  f"({summary['detached']['by_dying_clients']} by clients killed after, "
                                  f"{summary['detached']['clients_killed_before_ack']} killed before)"),
        ("detached lost / wrong", f"{summary['detached']['lost']} / {summary['detached']['wrong']}"),
        ("probe jobs answered", summary["probes_ok"]),
        ("longest unavailability (probes)", f"{summary['longest_unavailable_s']:.2f} s"
                                            f" (from t={summary['longest_unavailable_at_s']:g} s)"),
        ("longest gap between jobs", f"{summary['longest_gap_between_jobs_s']:.2f} s"
                                     f" (from t={summary['longest_gap_between_jobs_at_s']:g} s)"),
        ("slowest job", f"{summary['slowest_job']['seconds']:.2f} s: {summary['slowest_job']['job_id']}"
                        f" {summary['slowest_job']['job']} by {summary['slowest_job']['answered_by']}"),
        ("leader changes", summary["leader_changes"]),
        ("agreed leader after heal", f"{summary['leader_after_heal']} in {summary['converge_s']:.3f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print()
    for name, held in summary["invariants"].items():
        print(f"  [{'ok' if held else 'FAIL'}] {name}")
    for name, items in summary["details"].items():
        if items:
            print(f"  {name}: {json.dumps(items, indent=None)[:3000]}")
    print(f"\n  {'PASS' if summary['ok'] else 'FAIL'}; reproduce with --seed {summary['seed']}"
          f" --nodes {summary['nodes']} --duration {summary['duration_s']:g}")


def run(settings: Settings, json_path: Path | None) -> int:
    say(f"seed {settings.seed}: computing reference answers")
    pool = random_pool(settings.seed, 6)
    record = Record()
    cluster = LocalCluster(
        nodes=settings.nodes, heartbeat_ms=settings.heartbeat_ms, election_ms=settings.election_ms,
        shard_elems=SHARD_ELEMS, workdir=settings.workdir, link_faults=True,
        local_socket=True,  # its clients are on the real addresses: the faults are between nodes
    )
    nemesis = Nemesis(cluster, settings.seed, settings.election_ms[1], record)
    try:
        cluster.start()
        say(f"{settings.nodes} nodes up, leader {cluster.leader()}; logs in {settings.workdir}")
        outcome = asyncio.run(workload(cluster, settings, record, pool, nemesis))
        if nemesis.error is not None:
            raise nemesis.error
        summary = check(cluster, settings, record, outcome, nemesis.killed_pids)
    finally:
        cluster.close()
    killed = nemesis.killed_pids
    shutdown = [f"{nid} pid {pid} exited with {rc}" for nid, pid, rc in cluster.exits()
                if not (rc == 0 or (rc == -9 and pid in killed))]
    if shutdown:
        summary["details"]["unclean_shutdown"] = shutdown
    print_summary(summary)
    if json_path is not None:
        json_path.write_text(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument("--clients", type=int, default=3, help="jobs in flight")
    parser.add_argument("--fast", action="store_true", help="heartbeat 30 ms, election 150-300 ms")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here")
    args = parser.parse_args(argv)
    if args.nodes < 3:
        parser.error("--nodes must be at least 3 (a minority must be able to fail)")
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"distnode-chaos-{seed}-"))
    heartbeat_ms, election_ms = (
        (30, (150, 300)) if args.fast else (DEFAULT_HEARTBEAT_MS, DEFAULT_ELECTION_MS)
    )
    settings = Settings(args.nodes, args.duration, seed, args.clients, heartbeat_ms, election_ms, workdir)
    status = run(settings, args.json)
    if status == 0 and args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"  logs kept in {workdir}")
    return status


if __name__ == "__main__":
    sys.exit(main())
