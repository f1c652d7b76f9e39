"""The daemon: one node's process. It owns the server, the signals and the shutdown.

It owns the gRPC server, the UDP heartbeat socket (beacons.py), the local
socket (localsocket.py), the long-lived tasks and the order things stop in; it
feeds the pure election core its ticks (clock.py) and executes its outputs in
order through elections.py: persist (fsync) before send, so a vote is durable
before anyone hears it. It implements the servicer's calls (`api.NodeApi`):
elections, jobs (as leader: jobs.py; as follower: relayed, relay.py), the
worker's Compute (worker.py) and status. Shutdown is ordered: stop ticking,
stop the servers with a grace period, close the peer channels, drop the pool.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2
from msgspec.structs import replace

from node import formats
from node._proto import distnode_pb2 as pb
from node.channels import ChannelFactory, StubCache
from node.core.election import Election
from node.core.job import Job
from node.core.jobtable import JobTable
from node.core.messages import Heartbeat, InstallSnapshot, Role, VoteRequest
from node.errors import CannotStart, InvalidField, NotLeader
from node.server import beacons, leaderprobe, localsocket
from node.server.admission import ClientSlots
from node.server.api import (
    Answered,
    BeatReply,
    IncomingPartial,
    JobProgress,
    JobView,
    Outcome,
    ReduceCount,
    ShardRange,
    StatusView,
    Submitted,
    VoteAnswer,
)
from node.server.beacons import BeaconListener
from node.server.clock import Clock
from node.server.computelink import Computed
from node.server.computestack import ComputeStack
from node.server.config import NodeConfig
from node.server.datadir import open_data_dir
from node.server.discovery import IdDiscovery, shared_settings
from node.server.dispatch import Dispatch, incoming
from node.server.elections import ElectionDriver
from node.server.grpcserver import add_services, make_server
from node.server.heartbeats import HeartbeatLinks
from node.server.jobdesk import JobDesk
from node.server.ledger import JobLedger
from node.server.linkserve import LinkHost
from node.server.metrics import NodeMetrics
from node.server.outcomes import outcome_of as answer_of
from node.server.peers import PeerTable
from node.server.relay import Relay
from node.server.service import beat_reply
from node.server.startchecks import bind_port
from node.server.statestore import MAX_TERM
from node.server.stepgate import answered
from node.wire.answers import SERVICE
from node.wire.log import beat_from_proto

if TYPE_CHECKING:
    from aiohttp.web import AppRunner

    from node.core.sources import Opener
    from node.server.jobs import JobManager
    from node.server.worker import Worker

log = logging.getLogger("distnode")

#: The source kinds every node reads (node/core/sources.py; the file formats come on top).
BASE_KINDS = ("range", "random", "npy", "values")
#: How long shutdown waits for in-flight RPCs.
SHUTDOWN_GRACE_S = 1.0
#: Longest the clock sleeps, so the parent-process watch stays prompt.
MAX_SLEEP_S = 0.25


class Daemon:
    def __init__(self, config: NodeConfig) -> None:
        config.validate()
        self.config = config
        # Now, not at the first vote: CannotStart, JournalDamaged, StateFileError (exit 2).
        self._claim, self.store, self.journal, raft_log, saved = open_data_dir(
            config.data_dir, config.reset_state)
        lo, hi = config.election_ticks
        election = Election(
            config.election_config(), rng=random.Random(), term=saved.term, voted_for=saved.voted_for,
            log=raft_log, snapshot=self.journal.snapshot.data)
        table = JobTable(config.keep_jobs, config.keep_result_bytes)
        table.restore(self.journal.snapshot.data)
        self.ledger = JobLedger(
            table, lambda data: self.elections.propose(data), lambda: self.is_leader,
            lambda: self.election.term, self._run_detached, lambda job_id: self.jobs.cancel(job_id),
            lambda: shutil.disk_usage(config.data_dir).free, config.limits.max_jobs // 2, self.who,
            lambda: self.peers.message_bytes_bound(config.limits.max_message_bytes),
        )
        self.ledger.applied = election.commit_index
        self.peers = PeerTable(config.peers, config.node_id)
        election.replication.peer_message_bytes = self.peers.message_bytes  # as peers state them
        self.stubs = StubCache(ChannelFactory(config.tls, config.token, config.limits.max_message_bytes))
        self.clock = Clock(
            config.tick_ms, max_replay_ticks=hi + 1, stall_s=2 * config.heartbeat_ms / 1000,
            max_sleep_s=MAX_SLEEP_S, warn_late_s=lo * config.tick_ms / 1000,
        )
        self.heartbeats = HeartbeatLinks(
            self.stubs, self._on_heartbeat_reply, stale_s=config.election_ms_max / 1000,
            udp=config.udp_heartbeats, on_failure=self.peers.failed,
        )
        self.discovery = IdDiscovery(self.peers, self.stubs, shared_settings(config))
        self.heartbeats.on_refused = lambda address: self._spawn(self.discovery.ask_again(address))
        self.metrics = NodeMetrics()
        self._http: AppRunner | None = None
        self._local: localsocket.LocalSocket | None = None
        self.elections = ElectionDriver(
            election, self.store, self.journal, self.clock, self.peers, self.stubs, self.heartbeats,
            config, self._spawn, self._on_role_changed, self.ledger.apply,
            lambda: self.ledger.table.lines(), self.ledger.restore,
        )
        self.relay = Relay(self.stubs, lambda: self.elections.leader_address, self.who,
                           config.limits.job_timeout_s)
        self.dispatch = Dispatch(config, self.stubs, self.peers, lambda: self.election.term,
                                 lambda message: self._take(incoming(message)))
        self.metrics.observe(self)  # hooks in the journal, the log and the relay; state read at scrapes
        self.clients = ClientSlots(config.limits.max_jobs_per_client)
        self.desk = JobDesk(self)
        #: This node's UDP socket for the leader's beats; None until serving, or if off.
        self.beacons: BeaconListener | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        # The compute side (numpy and all) is built on first use, or in the
        # background once a leader is known (see node/core/job.py for why).
        self._jobs: JobManager | None = None
        self._worker: Worker | None = None
        self.compute_stack = ComputeStack(self.executor)
        self.links = LinkHost(config.node_id, self.peers, lambda: self.worker, self.compute_ready)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        self.port, self.tick_ms, self.max_bytes = 0, config.tick_ms, config.limits.max_message_bytes

    @property
    def node_id(self) -> str:
        return self.config.node_id

    @property
    def election(self) -> Election:
        return self.elections.election

    @property
    def is_leader(self) -> bool:
        return self.election.role is Role.LEADER

    def who(self) -> str:
        return f"{self.node_id} (term {self.election.term})"

    # -- the compute side, loaded after the election ----------------------

    @property
    def jobs(self) -> JobManager:
        if self._jobs is None:
            from node.server.jobs import JobManager

            c, d = self.config, self.dispatch
            self._jobs = JobManager(c.node_id, self.peers, d, self.executor, c.shard_elems, c.data_root,
                                    c.limits, self.openers, self.discovery.ask_sources, self.metrics, d.skip)
        return self._jobs

    @property
    def worker(self) -> Worker:
        if self._worker is None:
            from node.server.worker import Worker

            self._worker = Worker(self.node_id, self.stubs, self.executor, self.config.data_root,
                                  self.peers.address_of, self.openers, self.metrics)
        return self._worker

    @functools.cached_property
    def openers(self) -> dict[str, Opener]:
        """The file formats this node reads: --formats, of those whose library is installed."""
        return formats.openers(self.config.formats)

    async def compute_ready(self) -> None:
        await self.compute_stack.ready()

    # -- the servicer's calls (api.NodeApi) -------------------------------

    def _check_term(self, term: int) -> None:
        if term > MAX_TERM:
            raise InvalidField("term", f"{term} is beyond {MAX_TERM}")

    async def request_vote(
        self, candidate_id: str, term: int, pre_vote: bool, last_index: int, last_term: int
    ) -> VoteAnswer:
        await self.discovery.admit("candidate_id", candidate_id)
        self._check_term(term)
        request = VoteRequest(candidate_id, self.node_id, term, pre_vote, last_index, last_term)
        return await answered(functools.partial(self.elections.vote, request))

    async def heartbeat(self, beat: Heartbeat | InstallSnapshot, beacon_key: bytes, reply: BeatReply) -> None:
        await self.discovery.admit("leader_id", beat.src)
        self.peers.check_member("leader_id", beat.src, self.node_id)
        self._check_term(beat.term)
        self.elections.heartbeat(beat, reply)
        if beacon_key and self.beacons is not None and self.elections.follows(beat.src, beat.term):
            self.beacons.grant(beat.src, beat.term, beacon_key)

    def leader_stream_closed(self, leader_id: str, term: int) -> None:
        if not self._stopping.is_set():  # our own shutdown ends the stream too
            self._spawn(leaderprobe.after_stream_closed(self.elections, leader_id, term))

    def beat_reply(self, request: pb.HeartbeatRequest, reply: Callable[[pb.HeartbeatReply], None]) -> None:
        """A beat by UDP, under a key granted over gRPC; its entries stored before `reply`, as there."""
        beat = beat_from_proto(request, self.node_id, self.config.tick_ms)
        self.peers.check_member("leader_id", beat.src, self.node_id)  # an id found twice since the grant
        self.elections.heartbeat(beat, lambda answer: reply(beat_reply(self.node_id, answer, self.max_bytes)))

    async def submit(
        self, job_id: str, job: Job, client: str, forwarded: bool, timeout_s: float | None,
        trace: bool = False, answer_file: pb.AnswerFile | None = None,
    ) -> Submitted:
        if forwarded:
            return await self._submit(job_id, job, forwarded, timeout_s, trace, answer_file)
        with self.clients.take(client):
            return await self._submit(job_id, job, forwarded, timeout_s, trace, answer_file)

    async def _submit(
        self, job_id: str, job: Job, forwarded: bool, timeout_s: float | None, trace: bool,
        answer_file: pb.AnswerFile | None,
    ) -> Submitted:
        if not self.is_leader:  # the leader writes the client's answer file, if it shares its host
            return await self.relay.submit(job_id, job, forwarded, timeout_s, trace, answer_file)
        submitted_at = time.time()
        await self._leading()
        if not self.ledger.caught_up:
            # Its table may lack what was committed before its term: a reused id would pass.
            raise NotLeader(f"{self.who()} leads but has not caught up yet; retry")
        record = self.ledger.known(job_id, job)  # JobConflict for a reused id
        outcome = answer_of(record) if record is not None else None
        if outcome is None:
            outcome = await self.jobs.submit(job_id, job, trace)
            self.ledger.record_attached(job_id, job, outcome, submitted_at)
        return Answered(outcome, self.node_id, self.election.term, self.config.address)

    async def _run_detached(self, job_id: str, job: Job) -> Outcome:
        await self._leading()
        return await self.jobs.submit(job_id, job)

    async def _leading(self) -> None:
        """Load the compute stack; NotLeader if this node stepped down meanwhile."""
        await self.compute_ready()
        if not self.is_leader:
            raise NotLeader(f"{self.node_id} stepped down in term {self.election.term}")

    # -- detached jobs and the job table (jobdesk.py) ---------------------

    async def _status_document(self) -> dict[str, Any]:
        from node.server.httpd import recent_jobs, running_jobs, status_document

        own = self._jobs.running() if self._jobs is not None and self.is_leader else []
        running = await running_jobs(own, self.ledger.table, self.progress)
        return status_document(await self.status(), running, recent_jobs(self.ledger.table))

    def jobs_running(self) -> int:
        return self._jobs.running_count if self._jobs is not None else 0

    def shard_progress(self, job_id: str) -> tuple[int, int]:
        """(shards merged so far, shards in all) of a job this leader runs; (0, 0) if it runs none."""
        return self._jobs.progress(job_id)[1:] if self._jobs is not None else (0, 0)

    async def enqueue(self, job_id: str, job: Job, client: str, forwarded: bool) -> JobView:
        return await self.desk.enqueue(job_id, job, client, forwarded)

    async def result(self, job_id: str, wait_s: float, forwarded: bool) -> JobView:
        return await self.desk.result(job_id, wait_s, forwarded)

    async def list_jobs(self, state: str | None, limit: int, forwarded: bool) -> list[JobView]:
        return await self.desk.list_jobs(state, limit, forwarded)

    async def cancel(self, job_id: str, forwarded: bool) -> JobView:
        return await self.desk.cancel(job_id, forwarded)

    async def compute(
        self, job_id: str, job: Job, shards: list[ShardRange], leader_id: str, timeout_s: float | None,
        run: int = 0,
    ) -> Computed:
        self.peers.check_member("leader_id", leader_id, self.node_id)
        await self.compute_ready()
        return await self.worker.compute(job_id, job, shards, leader_id, timeout_s, run)

    async def skip(self, job_id: str, shards: list[int], leader_id: str) -> list[int]:
        self.peers.check_member("leader_id", leader_id, self.node_id)
        return self._worker.skip(leader_id, job_id, shards) if self._worker is not None else []

    async def reduce(self, partials: AsyncIterator[IncomingPartial]) -> ReduceCount:
        await self.compute_ready()
        accepted = dropped = 0
        async for partial in partials:
            if self._take(partial):
                accepted += 1
            else:
                dropped += 1
        return ReduceCount(accepted, dropped)

    def _take(self, partial: IncomingPartial) -> bool:
        """A worker's partial, from its Reduce stream or its compute link, to its job."""
        member = partial.node_id != self.node_id and self.peers.is_member(partial.node_id)
        return member and self.jobs.accept_partial(
            partial.job_id, partial.shard, partial.node_id, partial.state, partial.times, partial.rows,
            partial.run)

    async def progress(self, job_id: str) -> JobProgress:
        if not self.is_leader:
            return await self.relay.progress(job_id)
        await self.compute_ready()
        return JobProgress(*self.jobs.progress(job_id), self.jobs.shards_by_node(job_id))

    async def status(self) -> StatusView:
        return replace(
            self.elections.status(), sources=(*BASE_KINDS, *self.openers),
            log_index=self.election.log.last_index, commit_index=self.election.commit_index,
            settings=self.discovery.settings,
        )

    # -- what the election does to the rest -------------------------------

    def _on_heartbeat_reply(self, address: str, reply: pb.HeartbeatReply) -> None:
        self.elections.on_heartbeat_reply(address, reply)

    def _on_role_changed(self, role: Role, term: int, leader: str | None) -> None:
        self.metrics.role_changed(role, leader)
        if leader is not None:
            self.compute_stack.preload_soon(leading=role is Role.LEADER)
        if role is not Role.LEADER:
            self.ledger.step_down()
        if role is not Role.LEADER and self._jobs is not None:
            self._jobs.abort_all(f"{self.node_id} became {role.value} in term {term}")

    # -- lifecycle --------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_wake(self, stalled: bool) -> int:
        """One wake of the clock: tick the core, judge peers, watch the parent."""
        self.election.quiet = self.jobs_running() == 0  # beats thin while idle (Replication.beat_ticks)
        self.elections.catch_up()
        if self.is_leader:
            for peer in self.elections.judge_peers(deaths=not stalled):
                log.warning("peer %s (%s) missed heartbeats: dead", peer.node_id, peer.address,
                            extra={"peer": peer.address})
        if self.config.parent_pid and os.getppid() != self.config.parent_pid:
            log.warning("parent process %d is gone; shutting down", self.config.parent_pid)
            self._stopping.set()
        return self.elections.ticks_until_due()

    def stop(self) -> None:  # what SIGINT and SIGTERM do
        self._stopping.set()

    async def serve(self, handle_signals: bool = True) -> None:
        """Run until SIGINT/SIGTERM, `stop()`, or the parent's death; then shut down in order."""
        self.clock.restart()  # tick 0: before any RPC arrives
        server = make_server(self.config.limits.max_message_bytes, self.config.token)
        try:
            self.port = bind_port(server, self.config.listen, self.config.tls)
        except CannotStart:
            self.journal.close()
            self._claim.release()
            raise
        try:
            await self._start(server, handle_signals)
            await self._stopping.wait()
        finally:
            await self._shutdown(server)

    async def _start(self, server: grpc.aio.Server, handle_signals: bool) -> None:
        health_servicer, servicer = add_services(self, server)
        port = self.port
        await server.start()
        if self.config.local_socket:
            self._local = await localsocket.listen(servicer, self.config.limits.max_message_bytes)
        if self.config.http:
            from node.server.httpd import serve_http  # aiohttp: imported only by a node that serves it

            self._http = await serve_http(self.config.http, self.metrics, self._status_document)
        if self.config.udp_heartbeats:
            self.beacons = await beacons.listen(self.config.listen, port, self.beat_reply)
        for name in ("", SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, self._stopping.set)
        print(f"DISTNODE_LISTENING id={self.node_id} port={port}", flush=True)
        log.info(
            "serving on %s; peers %s; event loop %s", self.config.listen,
            ",".join(self.config.peers) or "none", type(asyncio.get_running_loop()).__module__,
        )
        self.clock.start(self._on_wake)
        self._spawn(self.discovery.discover_ids(self._stopping))

    async def _shutdown(self, server: grpc.aio.Server) -> None:
        """In order: no more ticks, no more RPCs, no more tasks, then close what they used."""
        self._stopping.set()  # also when `serve` was cancelled: its streams' ends are ours
        self.clock.stop()
        log.info("shutting down")
        if self._local is not None:  # as gRPC: no new callers, the grace for those it has
            self._local.stop_accepting()
        await server.stop(SHUTDOWN_GRACE_S)
        if self._local is not None:
            await self._local.close()
        if self._worker is not None:
            await self._worker.close()
        if self._http is not None:
            await self._http.cleanup()
        await self.ledger.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.discovery.close()
        self.heartbeats.close()
        if self.beacons is not None:
            self.beacons.close()
        self.dispatch.close()
        await self.stubs.close()
        self.elections.writer.close()
        self.journal.close()
        self._claim.release()
        self.executor.shutdown(wait=False, cancel_futures=True)
