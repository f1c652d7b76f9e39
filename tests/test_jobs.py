"""JobManager on its own: one node, no workers, no RPC."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from node.core.compute import reduce_all
from node.core.job import Job
from node.core.sources import open_source
from node.server.answercache import ANSWER_CACHE_BYTES
from node.server.jobs import INLINE_ELEMS, JobManager
from node.server.peers import PeerTable


async def test_answer_cache_is_bounded_by_bytes(tmp_path: Any) -> None:
    """Remembered answers are evicted oldest first once they pass the byte budget."""
    vector_elems = 1 << 20  # 8 MiB of float64 per answer
    matrix = tmp_path / "m.npy"
    np.save(matrix, np.ones((2, vector_elems)))
    jobs = JobManager(
        "n1", PeerTable(()), remote=_no_remote, executor=ThreadPoolExecutor(1),
        shard_elems=1 << 22, data_root=tmp_path,
    )
    job = Job(op="sum", source="npy:m.npy", axis=0)
    answers = ANSWER_CACHE_BYTES // (8 * vector_elems) + 4
    for i in range(answers):
        outcome = await jobs.submit(f"job-{i}", job)
        assert outcome.result.shape == (vector_elems,)
    kept = [i for i in range(answers) if jobs.progress(f"job-{i}")[0]]
    assert kept == list(range(answers - len(kept), answers))  # the newest ones
    assert 0 < len(kept) * 8 * vector_elems <= ANSWER_CACHE_BYTES


async def _no_remote(*args: Any) -> list[int]:
    await asyncio.sleep(0)
    raise AssertionError("a one-node job must not call workers")


async def test_an_answer_bigger_than_the_budget_is_returned_not_kept(
    tmp_path: Any, monkeypatch: Any
) -> None:
    import node.server.answercache

    monkeypatch.setattr(node.server.answercache, "ANSWER_CACHE_BYTES", 1000)
    np.save(tmp_path / "m.npy", np.ones((2, 1000)))
    jobs = JobManager(
        "n1", PeerTable(()), remote=_no_remote, executor=ThreadPoolExecutor(1),
        shard_elems=1 << 22, data_root=tmp_path,
    )
    outcome = await jobs.submit("big", Job(op="sum", source="npy:m.npy", axis=0))
    assert outcome.result.tolist() == [2.0] * 1000
    assert jobs.progress("big") == (False, 0, 0)  # 8,000 bytes: over the budget, not kept
    small = await jobs.submit("small", Job(op="sum", source="values:1,2"))
    assert small.result == 3 and jobs.progress("small")[0]


async def test_a_job_aborted_after_its_submitter_left_logs_nothing() -> None:
    """Leadership lost while the only submitter was cancelled (its client gone):
    the run's NotLeader must not surface as 'Future exception was never retrieved'."""
    import gc
    import threading

    from inproc import poll

    from node.server.jobs import INLINE_ELEMS

    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    gate = threading.Event()
    executor = ThreadPoolExecutor(1)
    executor.submit(gate.wait)  # the job's computation queues behind this
    jobs = JobManager("n1", PeerTable(()), remote=_no_remote, executor=executor,
                      shard_elems=1 << 22)
    submitter = asyncio.create_task(jobs.submit("j", Job(op="sum", source=f"range:n={4 * INLINE_ELEMS}")))
    await poll(lambda: jobs.progress("j")[0], what="the run to start")
    jobs.abort_all("n1 became follower in term 2")
    submitter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submitter
    gate.set()
    executor.shutdown(wait=True)
    del submitter
    gc.collect()
    await asyncio.sleep(0)
    assert not [c for c in reported if "never retrieved" in c.get("message", "")], reported


async def test_a_joiner_keeps_the_run_when_the_first_caller_goes_away() -> None:
    """The first submit of a job id starts its run, and a second joins it; the first one's
    client goes (its call cancelled). The joiner, a client's retry say, still gets the
    run's answer: the run ended with its first caller before, and the joiner had to start
    over. The run ends once its last caller goes."""
    from inproc import poll

    jobs = JobManager("n1", PeerTable(()), remote=_no_remote, executor=ThreadPoolExecutor(1), shard_elems=1 << 16)
    job = Job(op="sum", source="random:n=2e6,seed=1")  # ~30 shards, one at a time on one thread
    first = asyncio.ensure_future(jobs.submit("j", job))
    await poll(lambda: jobs.progress("j")[1] > 0, what="the run to start")
    joiner = asyncio.ensure_future(jobs.submit("j", job))
    await asyncio.sleep(0)  # one turn of the loop: the joiner's submit runs up to its wait on the run
    assert not joiner.done()
    first.cancel()
    answer = await asyncio.wait_for(joiner, 30)
    assert first.cancelled()
    assert answer.result == reduce_all(job, open_source(job.source, None), 1 << 16)  # the same bits
    assert jobs.running_count == 0


async def test_the_run_ends_when_its_last_caller_goes_away() -> None:
    from inproc import poll

    from node.server.metrics import NodeMetrics

    metrics = NodeMetrics()
    jobs = JobManager("n1", PeerTable(()), remote=_no_remote, executor=ThreadPoolExecutor(1), shard_elems=1 << 16,
                      metrics=metrics)
    job = Job(op="sum", source="random:n=1e8,seed=1")  # ~1,500 shards: minutes on one thread
    callers = [asyncio.ensure_future(jobs.submit("j", job)) for _ in range(2)]
    await poll(lambda: jobs.progress("j")[1] > 0, what="the run to start")
    callers[0].cancel()
    await asyncio.wait([callers[0]])  # its wait has ended: a cancel of the run would be scheduled now
    for _ in range(3):
        await asyncio.sleep(0)  # turns of the loop, in which a cancelled run would end
    assert jobs.progress("j")[0] and jobs.running_count == 1, "the run ended with a caller still waiting"
    callers[1].cancel()
    await poll(lambda: jobs.running_count == 0, 5, "the run's end")
    assert all(caller.cancelled() for caller in callers)
    assert jobs.progress("j") == (False, 0, 0)
    # Counted once, as nobody's any more: not as a failure of the job.
    await poll(lambda: metrics.registry.get_sample_value("distnode_jobs_total", {"outcome": "abandoned"}) == 1,
               5, "the run counted")
    assert metrics.registry.get_sample_value("distnode_jobs_total", {"outcome": "failed"}) == 0


async def test_a_cancel_while_a_file_format_is_planned_reaches_every_caller_at_once() -> None:
    """A file format's plan is made in a thread, and may take long (a slow disk); a cancel
    (or a lost leadership) meanwhile is every caller's answer at once, not after the plan."""
    from node.errors import InvalidField, JobCancelled

    entered, release = threading.Event(), threading.Event()

    def slow_opener(text: str, data_root: Any) -> Any:
        entered.set()
        release.wait(30)
        raise InvalidField("source", "the test's opener reads nothing")

    jobs = JobManager("n1", PeerTable(()), remote=_no_remote, executor=ThreadPoolExecutor(1),
                      shard_elems=1 << 16, openers={"zarr": slow_opener})
    job = Job(op="sum", source="zarr:slow.zarr")
    try:
        callers = [asyncio.ensure_future(jobs.submit("j", job)) for _ in range(2)]
        await asyncio.to_thread(entered.wait, 10)
        assert entered.is_set() and not any(caller.done() for caller in callers)
        jobs.cancel("j")
        done, _ = await asyncio.wait(callers, timeout=5)
        assert len(done) == 2, "a caller waited for the plan"
        for caller in callers:
            with pytest.raises(JobCancelled):
                caller.result()
        assert jobs.running_count == 0
    finally:
        release.set()


@pytest.mark.parametrize("rows", [1000, 200_000], ids=["inline", "one-shard-in-the-pool"])
async def test_a_damaged_file_is_the_callers_error_not_ours(tmp_path: Any, rows: int) -> None:
    """A chunk that cannot be decoded is InvalidField naming the file and rows, on every path a
    job of one shard takes (multi-shard jobs: tests/test_formats_cluster.py)."""
    from formats_data import write

    from node.errors import InvalidField
    from node.formats import openers

    spec = write("zarr3-zstd", tmp_path, "bad", np.arange(float(rows)), rows // 4)
    chunk = tmp_path / "bad.zarr" / "c" / "2"
    chunk.write_bytes(chunk.read_bytes()[:20])
    jobs = JobManager("n1", PeerTable(()), remote=_no_remote, executor=ThreadPoolExecutor(1),
                      shard_elems=1 << 22, data_root=tmp_path, openers=openers())
    with pytest.raises(InvalidField, match=rf"bad.zarr: cannot read rows \[0, {rows}\)"):
        await jobs.submit("bad", Job(op="sum", source=spec))


class NextQueuedPool(ThreadPoolExecutor):
    """One thread; each shard waits (up to 5 s) for the next shard to be queued before it
    computes, and records whether it was: the leader must queue ahead, not one at a time.
    It also records how many shards were in the pool, the one computing included."""

    def __init__(self, total_rows: int) -> None:
        super().__init__(1)
        self.total_rows = total_rows
        self.lock = threading.Lock()
        self.queued: dict[int, threading.Event] = {}
        self.next_was_queued: list[bool] = []
        self.in_pool = self.most_in_pool = 0

    def _queued(self, start: int) -> threading.Event:
        with self.lock:
            return self.queued.setdefault(start, threading.Event())

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        start, stop = args[-2], args[-1]  # compute([shard,] job, source, start, stop)
        with self.lock:
            self.in_pool += 1
            self.most_in_pool = max(self.most_in_pool, self.in_pool)
        self._queued(start).set()

        def run() -> Any:
            try:
                if stop < self.total_rows:
                    self.next_was_queued.append(self._queued(stop).wait(5))
                return fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.in_pool -= 1

        return super().submit(run)


@pytest.mark.parametrize("shards", [4, 40])
async def test_the_leader_queues_its_next_shard_before_the_last_one_ends(shards: int) -> None:
    """The pool's thread never waits for a turn of the event loop between two of the
    leader's shards (lanes.py `_compute_local`), and never holds more than the one computing
    and one queued: a whole batch (20 of 40 here) queued at once would keep the thread
    holding the GIL through tiny shards, and the event loop waiting."""
    rows = shards << 16
    pool = NextQueuedPool(total_rows=rows)
    jobs = JobManager("n1", PeerTable(()), remote=_no_remote, executor=pool, shard_elems=1 << 16)
    outcome = await jobs.submit("j", Job(op="count", source=f"random:n={rows},seed=1"))
    pool.shutdown(wait=True)
    assert outcome.result == rows and outcome.shards == shards
    assert pool.next_was_queued == [True] * (shards - 1)
    assert pool.most_in_pool == 2


# --- from a review of the job's run (2026-12-07) -------------------------------------------


class OneWorker(PeerTable):
    """A peer table with one live worker, "w1", that reads every source kind."""

    def __init__(self) -> None:
        super().__init__(("w1:1",))
        self._dead = asyncio.Event()

    def alive_addresses(self, reading: str | None = None) -> list[str]:
        return ["w1"]

    def id_of(self, address: str) -> str:
        return address

    def dead_event(self, address: str) -> asyncio.Event:
        return self._dead

    def sources_unknown(self) -> list[str]:
        return []


def planned_in_a_thread(monkeypatch: Any) -> None:
    """`range:` planned as a file format is: in a thread, the run's caller awaiting it."""
    import node.server.jobs

    monkeypatch.setattr(node.server.jobs, "FORMAT_KINDS", frozenset({"range"}))


async def test_a_second_caller_while_a_format_job_is_planned_joins_its_run(monkeypatch: Any) -> None:
    """Two submits of one id while the first was planned made two runs under one id, whose
    partials went to whichever was registered last: with another shard size (the same job by
    the id rule), shard `i` of one plan was merged into the other's answer."""
    from node.core.compute import compute_partial, validate_job

    planned_in_a_thread(monkeypatch)
    manager: JobManager | None = None
    calls: list[tuple[int, ...]] = []

    async def worker(address: str, job_id: str, job: Job, ranges: list[Any], run: int = 0) -> list[int]:
        source = validate_job(job, None, None)
        calls.append(tuple(index for index, _, _ in ranges))
        for index, start, stop in ranges:
            await asyncio.sleep(0.001)
            assert manager is not None
            manager.accept_partial(job_id, index, "w1", compute_partial(job, source, start, stop))
        return []

    manager = JobManager("n1", OneWorker(), remote=worker, executor=ThreadPoolExecutor(1), shard_elems=100)
    first = Job(op="sum", source="range:n=20000", kernel="square")
    second = Job(op="sum", source="range:n=20000", kernel="square", shard_elems=150)
    answers = await asyncio.gather(manager.submit("x", first), manager.submit("x", second))
    exact = sum(i * i for i in range(20000))
    assert [answer.result for answer in answers] == [exact, exact]
    assert answers[0] is answers[1] and answers[0].shards == 200  # one run: the first caller's plan
    assert "w1" in answers[0].nodes and manager.running_count == 0


class CountingPool(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1)
        self.handed = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.handed += 1
        return super().submit(fn, *args, **kwargs)


async def test_a_cancel_while_a_format_job_is_planned_stops_it(monkeypatch: Any) -> None:
    """A cancel or a lost leadership while the plan is made ends the run before any shard is
    handed out, and the id is free at once (not joinable, failed, until the plan is made)."""
    from inproc import poll

    from node.errors import JobCancelled, NotLeader

    planned_in_a_thread(monkeypatch)
    pool = CountingPool()
    manager = JobManager("n1", PeerTable(()), remote=_no_remote, executor=pool, shard_elems=100)
    planning, plan_made = threading.Event(), threading.Event()
    real_plan = manager._plan

    def slow_plan(job: Job) -> Any:
        planning.set()
        plan_made.wait(10)
        return real_plan(job)

    monkeypatch.setattr(manager, "_plan", slow_plan)
    for stop, expected in ((lambda: manager.cancel("x"), JobCancelled),
                           (lambda: manager.abort_all("stepped down"), NotLeader)):
        planning.clear()
        plan_made.clear()
        started = asyncio.ensure_future(manager.submit("x", Job(op="sum", source="range:n=20000")))
        await poll(planning.is_set, what="the plan to be under way")
        assert manager.progress("x")[0]
        stop()
        assert manager.running_count == 0  # at once: the plan is still being made
        plan_made.set()
        with pytest.raises(expected):
            await started
        assert manager.running_count == 0 and pool.handed == 0


async def test_a_late_partial_of_another_plan_of_the_job_id_is_not_merged(monkeypatch: Any) -> None:
    """A run abandoned by its caller, then started again under the same id with another shard
    size (a detached drive that had joined an attached submit): a partial of the first run,
    late on the worker's stream, was merged as the second run's shard of the same number."""
    planned_in_a_thread(monkeypatch)
    handed: list[tuple[int, int, int]] = []
    gate = asyncio.Event()

    async def worker(address: str, job_id: str, job: Job, ranges: list[Any], run: int = 0) -> list[int]:
        handed.extend(ranges)
        await gate.wait()
        return []

    manager = JobManager("n1", OneWorker(), remote=worker, executor=ThreadPoolExecutor(1), shard_elems=100)
    run = asyncio.ensure_future(manager.submit("x", Job(op="sum", source="range:n=20000", shard_elems=150)))
    from inproc import poll

    await poll(lambda: bool(handed), what="a Compute call")
    index, start, stop = handed[0]
    assert (start, stop) == (150 * index, 150 * index + 150)
    other_plan = (100 * index, 100 * index + 100)  # the first run's shard of the same number
    assert not manager.accept_partial("x", index, "w1", {"sum": np.array(-1)}, None, other_plan)
    assert manager.accept_partial("x", index, "w1", {"sum": np.array(sum(range(start, stop)))}, None,
                                  (start, stop))
    gate.set()
    assert (await run).result == sum(range(20000))


async def test_a_shard_put_back_whose_partial_came_since_is_not_taken_again() -> None:
    """A batch given back (its worker late past the grace) whose partials then came was
    computed again, and a copy computed by the leader stayed in its holdings, so its lane
    never took another node's shard for the rest of the run."""
    import time

    from node.server.jobrun import JobRun

    loop = asyncio.get_running_loop()
    run = JobRun("j", Job("sum", "range:n=40"), [(i * 10, i * 10 + 10) for i in range(4)],
                 loop.create_future(), time.perf_counter())
    run.pending.extend(range(4))
    batch = run.take(2)
    run.holdings.hand("w1", batch, None, 0)
    run.requeue(batch)  # late past the grace: back in the queue
    assert run.accept(0, "w1", {"sum": np.array(45)}) and run.accept(1, "w1", {"sum": np.array(145)})
    assert run.take(4) == [2, 3]
    run.holdings.hand("n1", [1], None, 0)  # a copy handed before the partial came
    assert not run.accept(1, "n1", {"sum": np.array(145)})
    assert run.holdings.held_by("n1") == 0


async def test_an_answer_that_comes_as_its_last_caller_leaves_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's answer came in the turn of the loop in which its last caller left (a client
    that gave up just then): the run was cancelled before it remembered the answer, so the
    client's retry ran the job again."""
    from inproc import poll

    from node.server.jobrun import JobRun

    jobs = JobManager("n1", PeerTable(()), remote=_no_remote, executor=ThreadPoolExecutor(1), shard_elems=1 << 16)
    job = Job(op="sum", source="random:n=2e5,seed=1")  # 4 shards
    callers: list[asyncio.Future[Any]] = []
    finish = JobRun._finish

    def finish_and_leave(run: JobRun) -> None:
        finish(run)  # the answer is in
        callers[0].cancel()  # and its caller leaves, in the same turn

    monkeypatch.setattr(JobRun, "_finish", finish_and_leave)
    callers.append(asyncio.ensure_future(jobs.submit("j", job)))
    with pytest.raises(asyncio.CancelledError):
        await callers[0]
    await poll(lambda: jobs.running_count == 0, 5, "the run's end")
    assert jobs.progress("j")[0], "the answer was not kept"
    monkeypatch.undo()
    computed = "distnode_shards_computed_total"
    ran = jobs.metrics.registry.get_sample_value(computed)
    answer = await jobs.submit("j", job)
    assert answer.result == reduce_all(job, open_source(job.source, None), 1 << 16)
    assert ran == 4 and jobs.metrics.registry.get_sample_value(computed) == ran, "the job ran again"


async def test_the_caller_has_the_answer_one_turn_after_the_last_partial(monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer's way to its caller went through the driver: a callback to wake it, its
    bookkeeping and the lanes' ends, a callback to wake the caller; three turns of the loop
    at least, each running whatever else was ready, before the reply could be written."""
    from node.server.jobrun import JobRun

    jobs = JobManager("n1", PeerTable(()), remote=_no_remote, executor=ThreadPoolExecutor(1), shard_elems=1 << 16)
    job = Job(op="sum", source="random:n=2e5,seed=1")  # 4 shards
    caller: list[asyncio.Future[Any]] = []
    answered_next_turn: list[bool] = []
    finish = JobRun._finish

    def finish_and_look(run: JobRun) -> None:
        finish(run)
        asyncio.get_running_loop().call_soon(lambda: answered_next_turn.append(caller[0].done()))

    monkeypatch.setattr(JobRun, "_finish", finish_and_look)
    caller.append(asyncio.ensure_future(jobs.submit("j", job)))
    answer = await caller[0]
    assert answer.result == reduce_all(job, open_source(job.source, None), 1 << 16)
    assert answered_next_turn == [True]
    assert jobs.progress("j")[0], "the answer is remembered as it is given"
    counted = jobs.metrics.registry.get_sample_value
    assert counted("distnode_jobs_total", {"outcome": "done"}) == 1
    await poll_until(lambda: jobs.running_count == 0)  # and the run ends, its driver after
    assert counted("distnode_jobs_total", {"outcome": "done"}) == 1, "counted again by the driver"
    assert counted("distnode_job_duration_seconds_count", {"op": "sum"}) == 1


async def test_a_driver_stopped_after_its_callers_had_the_answer_counts_the_job_once() -> None:
    """The callers have the answer a turn before the run's driver wakes; a driver cancelled in
    between (the node stopping) also counted the job as abandoned."""
    jobs = JobManager("n1", PeerTable(()), remote=_no_remote, executor=ThreadPoolExecutor(1), shard_elems=1 << 16)
    job = Job(op="sum", source="random:n=2e5,seed=1")  # 4 shards
    caller = asyncio.ensure_future(jobs.submit("j", job))
    await poll_until(lambda: "j" in jobs._running)
    run = jobs._running["j"]
    await caller
    assert run.driver is not None and not run.driver.done()
    run.driver.cancel()
    await poll_until(run.driver.done)
    counted = jobs.metrics.registry.get_sample_value
    assert counted("distnode_jobs_total", {"outcome": "done"}) == 1
    assert counted("distnode_jobs_total", {"outcome": "abandoned"}) == 0


async def test_a_late_partial_of_an_abandoned_run_is_not_merged_into_another_job_under_its_id() -> None:
    """A run of job X abandoned (its client gone), then another job submitted under X with as
    many rows: a partial of the first run, still on its way, covered the same rows and was
    merged into the second job's answer, which was then kept under X."""
    gate = threading.Event()
    pool = ThreadPoolExecutor(1)
    pool.submit(gate.wait)  # the leader's pool is busy: nothing of either run computes yet
    try:
        await _abandon_then_reuse(gate, pool)
    finally:
        gate.set()
        pool.shutdown()


async def _abandon_then_reuse(gate: threading.Event, pool: ThreadPoolExecutor) -> None:
    from node.core.compute import compute_partial, plan_shards

    jobs = JobManager("n1", PeerTable(()), remote=_no_remote, executor=pool, shard_elems=1 << 16)
    old, new = Job("sum", "random:n=1e6,seed=1"), Job("sum", "random:n=1e6,seed=2")
    first = asyncio.ensure_future(jobs.submit("X", old))
    await poll_until(lambda: "X" in jobs._running)
    old_run = jobs._running["X"].number
    first.cancel()  # its client went away: the run is abandoned, and no answer kept
    with pytest.raises(asyncio.CancelledError):
        await first
    second = asyncio.ensure_future(jobs.submit("X", new))
    await poll_until(lambda: "X" in jobs._running and jobs._running["X"].shards)  # planned
    assert jobs._running["X"].number != old_run
    source = open_source(old.source, None)
    rows = plan_shards(source, 1 << 16)[3]
    late = compute_partial(old, source, *rows)
    assert not jobs.accept_partial("X", 3, "n2", late, None, rows, old_run), "the first run's partial"
    gate.set()
    answer = await second
    assert answer.result == reduce_all(new, open_source(new.source, None), 1 << 16)


async def poll_until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the condition never held"
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("transport", ["link", "grpc"])
async def test_every_partial_says_the_run_whose_call_it_answers(start_cluster: Any, transport: str) -> None:
    """On a compute link and on gRPC alike, each worker's partial carries the number of the
    leader's run that asked for it, the number `accept_partial` checks."""
    overrides = {} if transport == "link" else {"local_socket": False}
    cluster = await start_cluster(3, shard_elems=1 << 12, **overrides)
    leader = cluster.leader()
    assert leader is not None
    took: list[tuple[int, int]] = []
    accept = leader.jobs.accept_partial

    def noted(job_id: str, shard: int, node_id: str, *rest: Any) -> bool:
        run = leader.jobs._running.get(job_id)
        took.append((rest[-1], run.number if run is not None else -1))
        return accept(job_id, shard, node_id, *rest)

    leader.jobs.accept_partial = noted  # type: ignore[method-assign]
    from node import AsyncClient

    async with AsyncClient(leader.config.address, timeout=20) as client:
        for _ in range(3):
            assert (await client.submit(op="sum", source="range:n=100000")).result == 4999950000
    assert took and all(said == number > 0 for said, number in took), took


async def test_a_failed_shard_is_logged_with_its_job_id(caplog: pytest.LogCaptureFixture) -> None:
    """`--log-format json` puts a record's `job_id` in its line: the job's own failures said none."""
    from node.errors import JobFailed

    jobs = JobManager("n1", PeerTable(()), remote=_no_remote, executor=ThreadPoolExecutor(1), shard_elems=1 << 17)

    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    jobs.compute = jobs.lanes.compute = broken  # the leader's own shards: nobody else to take them
    # One shard (past what is computed on the loop itself), then many: the pool, then the lanes.
    for job_id, rows in (("one-shard-job", INLINE_ELEMS + 1), ("sharded-job", 1 << 19)):
        caplog.clear()
        with pytest.raises(JobFailed, match="computation failed: boom"):
            await jobs.submit(job_id, Job(op="sum", source=f"range:n={rows}"))
        failed = [r for r in caplog.records if "computation failed" in r.getMessage()]
        assert failed and all(getattr(r, "job_id", None) == job_id for r in failed), failed
