"""An idle node takes a shard a busy one has not begun (node/server/stealing.py).

`Holdings` picks the shard: the last one handed to the node that holds the
most, at least two more than the thief, never the thief's own, and only
from a holder that can give it up. `Skips` decides, in one step, whether a
pool's thread begins a shard or the leader's word skips it: never both,
never neither, also with the thread running. A worker's call sends no
partial for a skipped shard. Then the leader's lanes, with a fake worker:
a worker stuck on its first shard has the rest of its shards taken by the
leader, and a leader whose pool is stuck has its queued shards taken by the
worker; each shard is computed once and the answer keeps its bits. Last,
in-process daemons: a slow worker's queued shards move to idle nodes, on a
compute link and on gRPC.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inproc import StartCluster, poll

import node.server.lanes
import node.server.worker
from node import AsyncClient
from node.core.compute import compute_partial, reduce_all, validate_job
from node.core.halt import Halt
from node.core.job import Job
from node.errors import NotAMember
from node.server.computelink import Computed
from node.server.config import NodeConfig
from node.server.daemon import Daemon
from node.server.jobs import JobManager
from node.server.peers import PeerTable
from node.server.stealing import CallSkips, Holdings, Skips
from node.server.tracing import clocked
from node.server.worker import Worker

DEADLINE_S = 10.0


def always(asked: list[int]) -> Any:
    async def give_up(shard: int) -> bool:
        asked.append(shard)
        return True
    return give_up


async def began_it(shard: int) -> bool:
    return False


def steal(holdings: Holdings, thief: str, now_ns: int = 0) -> tuple[int, str, bool] | None:
    """What a thief's lane does: pick a shard, ask its holder, settle: (shard, holder, given)."""
    picked = holdings.pick(thief, now_ns)
    if picked is None:
        return None
    shard, holder, give_up = picked
    given = asyncio.run(give_up(shard))
    holdings.settle(thief, shard, given)
    return shard, holder, given


# ---- Holdings: which shard moves -------------------------------------------------


def test_the_last_shard_of_the_node_holding_the_most_moves_while_it_holds_two_more() -> None:
    holdings, asked = Holdings(), []
    holdings.hand("a", [0, 1, 2, 3], always(asked), 0)
    holdings.hand("b", [4, 5, 6], always(asked), 0)
    assert steal(holdings, "c") == (3, "a", True)
    assert steal(holdings, "c") in {(2, "a", True), (6, "b", True)}  # both hold 3 now
    holdings.hand("c", [9], always(asked), 0)  # the thief holds one: a victim needs three
    while (taken := steal(holdings, "c")) is not None:
        assert taken[1] != "c"
    assert holdings.held_by("a") + holdings.held_by("b") == 7 - len(asked)
    assert max(holdings.held_by("a"), holdings.held_by("b")) == 2  # below 1 + 2: nothing more moves
    assert steal(holdings, "a") is None and steal(holdings, "b") is None  # none holds two more than they


def test_a_node_never_steals_from_itself_and_a_holder_that_cannot_give_up_is_passed_over() -> None:
    holdings, asked = Holdings(), []
    holdings.hand("a", [0, 1, 2, 3, 4], None, 0)  # a leader that cannot ask its workers
    holdings.hand("b", [5, 6, 7], began_it, 0)
    holdings.hand("c", [8, 9], always(asked), 0)
    assert steal(holdings, "c") is None  # c holds only two
    assert steal(holdings, "d") == (7, "b", False)  # a holds the most, but cannot be asked
    assert steal(holdings, "d") == (9, "c", True)  # 7 was asked for once: b is passed over
    assert steal(holdings, "d") is None  # c holds one now
    assert asked == [9] and holdings.held_by("a") == 5 and holdings.held_by("b") == 3
    alone, asked = Holdings(), []
    alone.hand("a", [0, 1, 2], always(asked), 0)
    assert steal(alone, "a") is None and asked == []  # never from the thief itself


def test_a_thief_with_work_queued_waits_and_a_shard_moves_only_once() -> None:
    holdings, asked = Holdings(), []
    holdings.hand("a", [0, 1, 2, 3], always(asked), 0)
    holdings.hand("b", [20, 21], always(asked), 0)
    assert steal(holdings, "b") is None  # b holds two: it is not about to run dry
    holdings.drop([21])
    assert steal(holdings, "b") == (3, "a", True)  # b holds only the one it may be computing
    holdings.hand("b", [3], always(asked), 0)  # b's lane hands it the shard it took: b holds [20, 3]
    holdings.drop([0, 1])  # a holds [2]
    assert steal(holdings, "e") is None  # b's last is 3, taken once already; a holds one
    assert asked == [3]


def test_shards_back_or_handed_again_are_no_longer_held_where_they_were() -> None:
    holdings, asked = Holdings(), []
    holdings.hand("a", [0, 1, 2], always(asked), 0)
    holdings.drop([2])  # its partial arrived
    holdings.hand("b", [1], always(asked), 0)  # given back, then handed to b
    assert holdings.held_by("a") == 1 and holdings.held_by("b") == 1
    assert steal(holdings, "c") is None and asked == []


def test_a_shard_moves_only_if_its_thief_would_begin_it_a_quarter_shard_sooner() -> None:
    """Times from the partials: the holder takes 10 ms a shard and began its current one at
    0 ms, so its queued last one begins at 10 ms; the thief takes 2 ms a shard. A holder
    late with its current shard is taken to be as late again."""
    ms = 1_000_000
    holdings, asked = Holdings(), []
    holdings.hand("slow", [0, 5, 6], always(asked), 0)
    holdings.hand("thief", [1], always(asked), 0)
    holdings.arrived(0, now_ns=0, took_ns=10 * ms)  # slow goes on to 5 at 0 ms; 6 waits till 10 ms
    holdings.arrived(1, now_ns=0, took_ns=2 * ms)
    assert steal(holdings, "thief", 9 * ms + ms // 2) is None  # 0.5 ms sooner: less than a quarter of 2 ms
    assert asked == []
    assert steal(holdings, "thief", 9 * ms) == (6, "slow", True)  # 1 ms sooner
    holdings.hand("thief", [6], always(asked), 9 * ms)
    holdings.hand("slow", [7, 8], always(asked), 9 * ms)  # slow holds [5, 7, 8]: 8 begins at 20 ms
    assert steal(holdings, "other", 9 * ms) == (8, "slow", True)  # nothing measured of "other"
    holdings.drop([6, 8])
    holdings.hand("slow", [9], always(asked), 9 * ms)  # slow holds [5, 7, 9], has delivered nothing since 0
    holdings.drop([7])  # given back to the queue: slow holds [5, 9]
    assert steal(holdings, "thief", 10 * ms) is None  # 5 ends any moment: 9 begins about now
    assert steal(holdings, "thief", 30 * ms) == (9, "slow", True)  # 20 ms late: as late again
    assert asked == [6, 8, 9]


# ---- Skips: begun or skipped, decided once ---------------------------------------


def test_a_skip_before_the_thread_comes_to_the_shard_wins_and_after_it_loses() -> None:
    skips, computed = Skips(), []

    def compute(shard: int) -> tuple[str, int, int]:
        computed.append(shard)
        return f"partial {shard}", 1, 2

    run = skips.guarded(compute)
    assert not skips.skip(0)  # not handed here yet: nothing to let go
    skips.hand([0, 1, 2])
    assert skips.skip(0)
    assert run(skips.entry(0), 0) == (None, 0, 0)
    assert run(skips.entry(1), 1) == ("partial 1", 1, 2)
    assert not skips.skip(1)  # begun: the leader must not count on it being skipped
    assert run(skips.entry(1), 1) == (None, 0, 0)  # a second entry of the same handing: begun already
    assert computed == [1]


def test_a_shard_let_go_then_handed_back_is_computed_once_by_its_new_entry() -> None:
    """Its thief failed and it came back here while the old pool entry still waited: the old
    entry stays let go, the new one computes it, once."""
    skips, computed = Skips(), []
    run = skips.guarded(lambda shard: (computed.append(shard) or f"partial {shard}", 0, 0))
    skips.hand([7])
    old = skips.entry(7)
    assert skips.skip(7)
    skips.hand([7])
    new = skips.entry(7)
    assert run(new, 7)[0] is not None and run(old, 7)[0] is None and run(new, 7)[0] is None
    assert computed == [7]


def test_a_thread_and_the_event_loop_racing_never_both_win_a_shard() -> None:
    switch_s = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # the GIL changes hands all the time: a real race
    try:
        _race()
    finally:
        sys.setswitchinterval(switch_s)


def _race() -> None:
    skips, computed = Skips(), []
    run = skips.guarded(lambda shard: (computed.append(shard), 0, 0))
    shards = range(20_000)
    skips.hand(shards)
    skipped: list[int] = []
    go = threading.Event()

    def thread() -> None:
        go.wait()
        for shard in shards:
            run(skips.entry(shard), shard)

    worker = threading.Thread(target=thread)
    worker.start()
    order = list(shards)
    random.Random(5).shuffle(order)
    go.set()
    skipped = [shard for shard in order if skips.skip(shard)]
    worker.join(DEADLINE_S)
    assert not worker.is_alive()
    assert not set(computed) & set(skipped), "a shard both computed and skipped"
    assert sorted(computed + skipped) == list(shards), "a shard neither computed nor skipped"
    assert computed and skipped, "no race took place: nothing was tested"


# ---- a worker's call ---------------------------------------------------------------


#: A call's four shards of 10 rows.
RANGES = [(i, 10 * i, 10 * (i + 1)) for i in range(4)]


class HeldWorker:
    """A worker whose pool's one thread is held until `release`, and the shards it sent."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(1)
        self.gate = threading.Event()
        self.pool.submit(self.gate.wait, DEADLINE_S)  # the calls' shards queue behind this
        self.worker = Worker("n2", None, self.pool, None, lambda leader_id: "n1:1")  # type: ignore[arg-type]
        self.worker.streams = self  # type: ignore[assignment]
        self.sent: list[int] = []

    async def send(self, reduce_to: str, partial: Any, deadline: float | None) -> None:
        """The worker's Reduce stream to its leader (reducestream.py): the partials it took."""
        self.sent.append(partial.shard)

    def call(self, source: str = "range:n=40") -> asyncio.Future[Computed]:
        """A gRPC call of job "j" from leader n1: four shards of 10 rows."""
        return asyncio.ensure_future(
            self.worker.compute("j", Job(op="sum", source=source), RANGES, "n1", DEADLINE_S))

    def link_call(self, skips: Skips) -> asyncio.Future[Computed]:
        """The same call on a compute link: the whole call queued in the pool, as the link's
        reader hands it over (linkserve.py), its shards under the link's `skips`."""
        def send(partial: Any) -> None:
            self.sent.append(partial.shard)

        job = Job(op="sum", source="range:n=40")
        return asyncio.wrap_future(self.pool.submit(
            self.worker.compute_in_pool, "j", job, RANGES, Halt(), send, CallSkips(skips, range(4)), 0))

    async def released(self, call: asyncio.Future[Computed]) -> Computed:
        """Let the pool's thread go; what the call did."""
        self.gate.set()
        done = await asyncio.wait_for(call, DEADLINE_S)
        self.pool.shutdown(wait=True)
        return done


async def test_a_workers_call_sends_no_partial_for_a_shard_skipped_before_it_began() -> None:
    held = HeldWorker()
    skips = Skips()  # the compute link's, for this job: its calls' shards handed as read (linkserve.py)
    skips.hand(range(4))
    call = held.link_call(skips)
    assert skips.skip(1) and skips.skip(3)  # the pool's thread is held: none of them has begun
    assert await held.released(call) == Computed(sent=2, skipped=(1, 3))  # the reply names them
    assert held.sent == [0, 2]


async def test_a_workers_grpc_calls_let_go_only_their_leaders_shards_not_begun() -> None:
    """Without a compute link, the worker keeps what becomes of a job's shards by leader and
    job, from the moment the call arrives (before its source is opened), while it runs."""
    held = HeldWorker()
    call = held.call()
    await asyncio.sleep(0)  # one turn: the call is entered, its shards registered
    assert held.worker.skip("n9", "j", [2]) == []  # another leader's word does not reach n1's call
    assert held.worker.skip("n1", "other", [2]) == []  # nor one about another job
    assert held.worker.skip("n1", "j", [2, 9]) == [2]  # 9 was never handed here
    assert await held.released(call) == Computed(sent=3, skipped=(2,))
    assert held.sent == [0, 1, 3] and len(held.worker._skips) == 0  # dropped with the job's last call


async def test_a_grpc_call_lets_shards_go_while_its_format_file_is_still_opening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file format's metadata is read off the event loop before the call's first shard; a
    Skip that comes meanwhile must find the call's shards (the leader takes a no as
    the shard staying there)."""
    opening, opened = threading.Event(), threading.Event()
    validate = node.server.worker.validate_job

    def slowly(job: Job, root: Any, openers: Any) -> Any:
        opening.set()
        opened.wait(DEADLINE_S)
        return validate(Job(op="sum", source="range:n=40"), root, openers)

    monkeypatch.setattr(node.server.worker, "validate_job", slowly)
    held = HeldWorker()
    call = held.call(source="zarr:d.zarr")
    await poll(opening.is_set, DEADLINE_S, "the call to open its file")
    assert held.worker.skip("n1", "j", [2]) == [2]
    opened.set()
    assert await held.released(call) == Computed(sent=3, skipped=(2,))
    assert held.sent == [0, 1, 3]


# ---- the leader's lanes ----------------------------------------------------------


class SlowWorker:
    """A fake worker (`remote` and `skip_remote` of JobManager) that computes nothing until
    `release` is set, then computes the shards of its calls it was not told to skip. As a
    real worker's, a skip applies to the shard's handing at the time: handed here again
    later, it is computed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.release = asyncio.Event()
        self.thread = asyncio.Lock()
        #: Every shard let go, in order; and those whose handing here has not come to them yet.
        self.skipped: list[int] = []
        self.to_skip: set[int] = set()
        #: What each call ended with: the shards it let go.
        self.ended: list[list[int]] = []
        self.begun: set[int] = set()
        self.computed: list[int] = []
        self.jobs: JobManager | None = None

    async def skip(self, address: str, job_id: str, shards: list[int]) -> list[int]:
        given = [index for index in shards if index not in self.begun]
        self.let_go(*given)
        return given

    def let_go(self, *shards: int) -> None:
        self.skipped.extend(shards)
        self.to_skip.update(shards)

    async def __call__(
        self, address: str, job_id: str, job: Job, ranges: list[tuple[int, int, int]], run: int = 0
    ) -> list[int]:
        """A Compute call: the shards of `ranges` it let go, as a real worker's reply names them."""
        source = validate_job(job, self.root)
        let_go = []
        for index, start, stop in ranges:
            async with self.thread:  # one pool thread: its calls' shards begin one at a time
                if index in self.to_skip:  # checked as the thread would begin it
                    self.to_skip.discard(index)
                    let_go.append(index)
                    continue
                self.begun.add(index)
                await self.release.wait()
                self.computed.append(index)
            assert self.jobs is not None
            self.jobs.accept_partial(job_id, index, "n2", compute_partial(job, source, start, stop))
        self.ended.append(let_go)
        return let_go


def leader_with(worker: SlowWorker, executor: ThreadPoolExecutor) -> tuple[JobManager, list[int]]:
    """A leader `n1` with the one worker; the list records the shards its own pool computed."""
    peers = PeerTable(("w:1",), "n1")
    peers.learn("w:1", "n2")
    peers.sync({"w:1"})
    jobs = JobManager("n1", peers, remote=worker, executor=executor, shard_elems=1000,
                      data_root=worker.root, skip_remote=worker.skip)
    worker.jobs = jobs
    local: list[int] = []
    compute = jobs.lanes.compute

    def counted(job: Job, source: Any, start: int, stop: int) -> Any:
        local.append(start // 1000)
        return compute(job, source, start, stop)

    jobs.lanes.compute = counted
    return jobs, local


@pytest.fixture
def data(tmp_path: Path) -> np.ndarray:
    values = np.random.default_rng(11).standard_normal(20_000)
    np.save(tmp_path / "d.npy", values)
    return values


async def alone(tmp_path: Path) -> Any:
    """The same job on one node: the bits every run must give."""
    jobs = JobManager("n1", PeerTable(()), remote=SlowWorker(tmp_path), executor=ThreadPoolExecutor(1),
                      shard_elems=1000, data_root=tmp_path)
    return (await jobs.submit("j", Job("sum", "npy:d.npy"))).result


async def test_the_leader_takes_the_shards_a_stuck_worker_has_not_begun(tmp_path: Path, data: np.ndarray) -> None:
    worker = SlowWorker(tmp_path)
    jobs, local = leader_with(worker, ThreadPoolExecutor(1))
    running = asyncio.ensure_future(jobs.submit("j", Job("sum", "npy:d.npy")))
    # Two lanes of four shards on the worker: all but its first one move to the leader.
    await poll(lambda: len(worker.skipped) == 7, DEADLINE_S, "the leader to take seven shards")
    assert not running.done()
    worker.release.set()
    outcome = await asyncio.wait_for(running, DEADLINE_S)
    assert len(worker.computed) == 1 and worker.computed[0] not in worker.skipped
    assert sorted(local + worker.computed) == list(range(20)), "a shard computed twice, or never"
    assert jobs.metrics.registry.get_sample_value("distnode_shards_moved_total") == 7
    assert outcome.result == await alone(tmp_path) and np.isclose(outcome.result, data.sum())
    assert outcome.nodes == ("n1", "n2")


async def test_a_worker_takes_the_shards_queued_on_a_stuck_leader(tmp_path: Path, data: np.ndarray) -> None:
    worker = SlowWorker(tmp_path)
    worker.release.set()  # this worker is quick
    pool = ThreadPoolExecutor(1)
    gate = threading.Event()
    pool.submit(gate.wait, DEADLINE_S)  # the leader's own shards queue behind this
    jobs, local = leader_with(worker, pool)
    running = asyncio.ensure_future(jobs.submit("j", Job("sum", "npy:d.npy")))
    # The leader's lane claimed four shards (two in its pool): the worker takes three.
    await poll(lambda: len(worker.computed) == 19, DEADLINE_S, "the worker to take the leader's shards")
    gate.set()
    outcome = await asyncio.wait_for(running, DEADLINE_S)
    pool.shutdown(wait=True)
    assert len(local) == 1 and worker.skipped == []
    assert sorted(local + worker.computed) == list(range(20)), "a shard computed twice, or never"
    assert outcome.result == await alone(tmp_path) and np.isclose(outcome.result, data.sum())


class AskedWorker(SlowWorker):
    """A fake worker whose answer to an ask waits for `answer`; with `fail`, its calls fail
    once `fail_now` is set (the worker died); without, each call ends once its unskipped
    shards are sent, and an ask lets the shard go only after that end."""

    def __init__(self, root: Path, fail: bool) -> None:
        super().__init__(root)
        self.fail = fail
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()
        self.fail_now = asyncio.Event()

    async def skip(self, address: str, job_id: str, shards: list[int]) -> list[int]:
        self.asked.set()
        await self.answer.wait()
        return [] if self.fail else await super().skip(address, job_id, shards)

    async def __call__(
        self, address: str, job_id: str, job: Job, ranges: list[tuple[int, int, int]], run: int = 0
    ) -> list[int]:
        if self.fail:
            await self.fail_now.wait()
            raise RuntimeError("the worker died")
        return await super().__call__(address, job_id, job, ranges)


async def test_shards_given_back_while_a_lane_asks_are_not_left_in_the_queue(
    tmp_path: Path, data: np.ndarray
) -> None:
    """The leader's lane asks a stuck worker for a shard; meanwhile the worker dies and its
    lanes give their shards back to the queue. The asking lane, answered no, must take
    them, not go to sleep with its wake-up spent (the job would wait for its timeout)."""
    worker = AskedWorker(tmp_path, fail=True)
    jobs, local = leader_with(worker, ThreadPoolExecutor(1))
    running = asyncio.ensure_future(jobs.submit("j", Job("sum", "npy:d.npy")))
    await poll(worker.asked.is_set, DEADLINE_S, "the leader's lane to ask the worker")
    worker.fail_now.set()
    await poll(lambda: jobs._running["j"].pending.__len__() == 8, DEADLINE_S, "the batches given back")
    worker.answer.set()
    outcome = await asyncio.wait_for(running, DEADLINE_S)
    assert sorted(local) == list(range(20)) and outcome.nodes == ("n1",)
    assert outcome.result == await alone(tmp_path)


async def test_an_ask_a_worker_never_answers_ends_when_the_worker_is_declared_dead(
    tmp_path: Path, data: np.ndarray
) -> None:
    """A paused worker does not answer the leader's ask; once the failure detector declares it
    dead the ask is a no, its lanes give their shards back, and the leader computes them,
    not after the ask's own timeout."""
    worker = AskedWorker(tmp_path, fail=True)  # its calls hang; its answer never comes
    jobs, local = leader_with(worker, ThreadPoolExecutor(1))
    running = asyncio.ensure_future(jobs.submit("j", Job("sum", "npy:d.npy")))
    await poll(worker.asked.is_set, DEADLINE_S, "the leader's lane to ask the worker")
    jobs.peers.sync(set())  # missed heartbeats: declared dead
    outcome = await asyncio.wait_for(running, DEADLINE_S)
    assert sorted(local) == list(range(20)) and outcome.nodes == ("n1",)
    assert outcome.result == await alone(tmp_path)


class GatedWorker(AskedWorker):
    """An AskedWorker whose calls wait at `gate` before their first shard (none begun, none
    let go), and which records each call's shards as it arrives."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, fail=False)
        self.gate = asyncio.Event()
        self.gate.set()
        self.calls: list[list[int]] = []

    async def __call__(
        self, address: str, job_id: str, job: Job, ranges: list[tuple[int, int, int]], run: int = 0
    ) -> list[int]:
        self.calls.append([index for index, _, _ in ranges])
        await self.gate.wait()
        return await super().__call__(address, job_id, job, ranges)


async def test_a_yes_that_comes_after_the_shard_went_back_and_out_again_is_a_no(
    tmp_path: Path, data: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker lets the asked-for shard go, and its call ends, naming it, before the
    leader reads the yes: the lane puts the shard back, and the same worker gets it again in
    a new call. The yes that comes then was about the old call: the thief must not take
    the shard, which the new call's own lane now answers for (else it is computed twice)."""
    monkeypatch.setattr(node.server.lanes, "PARTIALS_GRACE_S", 60.0)
    worker = GatedWorker(tmp_path)
    pool = ThreadPoolExecutor(1)
    jobs, local = leader_with(worker, pool)
    running = asyncio.ensure_future(jobs.submit("j", Job("sum", "npy:d.npy")))
    await poll(worker.asked.is_set, DEADLINE_S, "the leader's lane to ask the worker")
    asked = jobs._running["j"].holdings
    shard = next(iter(asked._moved))
    worker.gate.clear()  # calls from now on wait before their first shard
    worker.let_go(shard)  # let go, as the worker's thread came to it...
    worker.release.set()  # ...so its calls end, naming it, and it goes back to the queue...
    await poll(lambda: [shard] in worker.calls, DEADLINE_S, "the worker to be handed it again")
    held = threading.Event()
    pool.submit(held.wait, DEADLINE_S)  # a thief's computation of it would wait here
    worker.answer.set()  # ...then the leader reads the yes to its old ask
    await poll(lambda: not asked._asking.get("n1"), DEADLINE_S, "the ask to be answered")
    worker.gate.set()
    await poll(lambda: worker.ended.count([shard]) == 2, DEADLINE_S, "the new call to end, naming it")
    held.set()
    outcome = await asyncio.wait_for(running, DEADLINE_S)
    pool.shutdown(wait=True)
    assert sorted(local + worker.computed) == list(range(20)), "a shard computed twice, or never"
    assert jobs.metrics.registry.get_sample_value("distnode_shards_moved_total") == 0
    assert outcome.nodes == ("n1", "n2") and outcome.result == await alone(tmp_path)


class LostYesWorker(SlowWorker):
    """A fake worker that lets an asked-for shard go, but whose yes reaches the leader too
    late (past the ask's timeout): the leader reads a no."""

    async def skip(self, address: str, job_id: str, shards: list[int]) -> list[int]:
        await super().skip(address, job_id, shards)
        return []


async def test_a_shard_let_go_whose_yes_was_lost_goes_back_to_the_queue_and_the_worker_stays(
    tmp_path: Path, data: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody took the shard the worker let go: its call's reply names it, and its lane puts
    it back in the queue, not waiting out the partials' grace for a partial that never
    comes (then dropping a healthy worker)."""
    monkeypatch.setattr(node.server.lanes, "PARTIALS_GRACE_S", 60.0)
    worker = LostYesWorker(tmp_path)
    jobs, local = leader_with(worker, ThreadPoolExecutor(1))
    running = asyncio.ensure_future(jobs.submit("j", Job("sum", "npy:d.npy")))
    await poll(lambda: bool(worker.skipped), DEADLINE_S, "the leader's lane to ask the worker")
    worker.release.set()
    outcome = await asyncio.wait_for(running, DEADLINE_S)
    assert len(worker.skipped) == 1 and worker.skipped in worker.ended
    assert sorted(local + worker.computed) == list(range(20)), "a shard computed twice, or never"
    assert jobs.metrics.registry.get_sample_value("distnode_shards_moved_total") == 0
    assert outcome.nodes == ("n1", "n2") and outcome.result == await alone(tmp_path)


# ---- daemons -----------------------------------------------------------------------


async def test_a_skip_before_any_call_lets_nothing_go_and_builds_no_worker(tmp_path: Path) -> None:
    """A Skip that reaches a node before any Compute call has nothing to let go; it must not
    build the worker (importing numpy on the event loop) to say so."""
    daemon = Daemon(NodeConfig(node_id="n1", listen="127.0.0.1:1", peers=("127.0.0.1:2",), data_dir=tmp_path))
    try:
        daemon.peers.learn("127.0.0.1:2", "n2")
        assert await daemon.skip("j", [0, 1], "n2") == []
        assert daemon._worker is None
        with pytest.raises(NotAMember):  # and only a member may ask
            await daemon.skip("j", [0], "n7")
    finally:
        daemon.journal.close()
        daemon._claim.release()


SHARD_ELEMS = 1 << 18
ROWS = 1 << 22  # 16 shards
#: Elections slower than FAST's: a stall of the shared event loop must not move the leader.
STEADY = {"election_ms_min": 600, "election_ms_max": 1200}
SLOW_SHARD_S = 0.05


@pytest.mark.parametrize("transport", ["link", "grpc"])
async def test_a_slow_workers_queued_shards_move_and_the_answer_keeps_its_bits(
    start_cluster: StartCluster, tmp_path: Path, transport: str
) -> None:
    """In-process daemons: one worker takes 50 ms a shard. The shards it has not begun move
    to idle nodes, told to it on its compute link or, without local sockets, in a Skip call:
    the trace shows shards taken from it and computed elsewhere, it never begins one of
    them, and every sum has the bits of one node's."""
    answers = {}
    for name, seed in (("x", 7), ("y", 8)):  # jobs alternate: a shard still running is the other file's
        np.save(tmp_path / f"{name}.npy", np.random.default_rng(seed).random(ROWS))
        job = Job(op="sum", source=f"npy:{name}.npy")
        answers[job.source] = float(reduce_all(job, validate_job(job, tmp_path), SHARD_ELEMS).item())
    overrides = {} if transport == "link" else {"local_socket": False}
    cluster = await start_cluster(3, shard_elems=SHARD_ELEMS, **STEADY, **overrides)
    leader = cluster.leader()
    assert leader is not None
    slow = next(d for d in cluster.daemons if d is not leader)
    begun: list[tuple[str, int]] = []

    def slowly(job: Job, source: Any, start: int, stop: int) -> Any:
        begun.append((job.source, start // SHARD_ELEMS))
        time.sleep(SLOW_SHARD_S)  # in the slow worker's pool thread, timed as its shard
        return compute_partial(job, source, start, stop)

    slow.worker._compute_shard = clocked(slowly)
    on_link = leader.dispatch.links.linked
    async with AsyncClient(leader.config.address, timeout=30) as client:
        for number in range(60):
            source = "npy:x.npy" if number % 2 else "npy:y.npy"
            begun.clear()
            traced = await client.submit(op="sum", source=source, trace=True)
            assert float(traced.result) == answers[source]
            if moved_from(traced.trace, slow.node_id) and on_link(slow.config.address) == (transport == "link"):
                break
        else:
            raise AssertionError("60 sums and no shard moved from the slow worker")
    moved = moved_from(traced.trace, slow.node_id)
    assert not {(source, shard) for shard in moved} & set(begun), "the slow worker began a shard given away"
    computed_on = {e["args"]["shard"]: e["pid"] for e in traced.trace["traceEvents"]
                   if e["ph"] == "X" and e["name"].startswith("shard ") and "queued" not in e["name"]}
    names = {e["pid"]: e["args"]["name"] for e in traced.trace["traceEvents"] if e["name"] == "process_name"}
    assert all(names[computed_on[shard]] != slow.node_id for shard in moved)
    assert leader.metrics.registry.get_sample_value("distnode_shards_moved_total") >= len(moved)


def moved_from(trace: Any, node_id: str) -> list[int]:
    """The shards a traced run took from `node_id` (the leader's "took shard N from ID" spans)."""
    return [int(e["name"].split()[2]) for e in trace["traceEvents"]
            if e["ph"] == "X" and e["name"].startswith("took shard ") and e["name"].endswith(f" from {node_id}")]
