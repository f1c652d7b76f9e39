"""The daemon: the only place with a wall clock, signals and tasks.

It owns the gRPC server and the UDP heartbeat socket (node/beacons.py), feeds
the pure election core its ticks (sleeping until the core's next deadline,
then catching up on the ticks elapsed), and executes the core's outputs in
order: persist (fsync) before send, so a vote is durable before anyone hears
it. Election RPC replies are fed back into the core as messages. The leader's
heartbeat replies also feed the failure detector (`PeerTable`), which the job
scheduler watches.

Shutdown is ordered: stop ticking, stop the server with a grace period, close
the peer channels, drop the compute pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from node import beacons
from node._proto import distnode_pb2 as pb
from node.beacons import BeaconListener
from node.config import NodeConfig
from node.election import (
    Election,
    ElectionConfig,
    Heartbeat,
    HeartbeatResponse,
    Message,
    Output,
    Persist,
    Role,
    RoleChanged,
    Send,
    VoteRequest,
    VoteResponse,
)
from node.heartbeats import HeartbeatLinks
from node.jobtypes import Job, job_from_proto, job_to_proto
from node.membership import PeerTable
from node.peers import PeerChannels
from node.security import TokenServerInterceptor
from node.service import NodeServicer, add_to_server
from node.statestore import ElectionState, StateStore

if TYPE_CHECKING:
    from node.jobs import JobManager, ShardRange
    from node.worker import Worker

log = logging.getLogger("distnode")

SERVICE_NAME = "distnode.v1.Node"
#: How long shutdown waits for in-flight RPCs.
SHUTDOWN_GRACE_S = 1.0
#: Longest the tick loop sleeps, so the parent-process watch stays prompt.
MAX_SLEEP_S = 0.25
#: uvloop keeps time in whole milliseconds and truncates a timer's delay, so a
#: timer may fire up to 1 ms before the asked-for time. Had the tick loop asked
#: for the exact deadline, it would then spin on 0 ms re-sleeps until the clock
#: caught up: about seven idle loop turns per wake-up, most of an idle node's CPU.
#: So it sleeps to the next whole millisecond past the deadline, plus this.
TIMER_SLACK_S = 0.001
#: Upper bound on one Compute batch; the failure detector normally acts first.
COMPUTE_TIMEOUT_S = 600.0


class Daemon:
    def __init__(self, config: NodeConfig) -> None:
        config.validate()
        self.config = config
        self.node_id = config.node_id
        self.store = StateStore(config.data_dir)
        saved = self.store.load()
        lo, hi = config.election_ticks
        self.election = Election(
            ElectionConfig(
                node_id=config.node_id,
                peers=config.peers,
                heartbeat_ticks=config.heartbeat_ticks,
                election_ticks_min=lo,
                election_ticks_max=hi,
                fast_first_election=True,
            ),
            rng=random.Random(),
            term=saved.term,
            voted_for=saved.voted_for,
        )
        self.peers = PeerTable(config.peers, config.failure_ms)
        self.channels = PeerChannels(config.tls, config.token)
        self.heartbeats = HeartbeatLinks(
            self.channels, self._on_heartbeat_reply, stale_s=config.election_ms_max / 1000,
            udp=config.udp_heartbeats,
        )
        #: This node's UDP socket for the leader's beats; None until serving, or if off.
        self.beacons: BeaconListener | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compute")
        # The compute side (numpy and all) is built on first use, or in the
        # background once a leader is known (see node/jobtypes.py for why).
        self._jobs: JobManager | None = None
        self._worker: Worker | None = None
        self._preload: concurrent.futures.Future[None] | None = None
        self.leader_address = ""
        self._leader_heard_s: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = asyncio.Event()
        #: The clock's next wake (see `_tick`), and the time it was planned for.
        self._tick_timer: asyncio.Handle | None = None
        self._ticking = False
        self._wake_by_s = 0.0
        self._clock_origin_s = 0.0
        self._ticks_done = 0
        self.port = 0

    # -- the compute side, loaded after the election ----------------------

    @property
    def jobs(self) -> JobManager:
        if self._jobs is None:
            from node.jobs import JobManager

            config = self.config
            self._jobs = JobManager(
                config.node_id, self.peers, self._remote_compute, self.executor,
                config.shard_elems, config.data_root, config.limits,
            )
        return self._jobs

    @property
    def worker(self) -> Worker:
        if self._worker is None:
            from node.worker import Worker

            config = self.config
            self._worker = Worker(
                config.node_id, self.channels, self.executor, config.data_root, self.peers.address_of
            )
        return self._worker

    def _preload_compute(self) -> concurrent.futures.Future[None]:
        """Import the compute stack in the compute thread, once (started when a
        leader is known: off the event loop, after the start-up storm of elections)."""
        if self._preload is None:
            self._preload = self.executor.submit(_import_compute_stack)
            self._preload.add_done_callback(_log_preload_failure)
        return self._preload

    async def compute_ready(self) -> None:
        """Wait, without blocking the event loop, until `jobs` and `worker` can be
        built: the servicer awaits this before its first use of either."""
        try:
            preload = self._preload_compute()
        except RuntimeError:  # shutting down: the executor is gone
            return
        if not preload.done():
            with contextlib.suppress(Exception):  # logged; the import is retried on use
                await asyncio.wrap_future(preload)

    # -- queries used by the servicer ------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.election.role is Role.LEADER

    def is_member(self, node_id: str) -> bool:
        """Only nodes behind our --peers addresses may vote, lead, or send partials.

        Our own id arriving over the network is forged by definition.
        """
        return node_id != self.node_id and self.peers.is_member(node_id)

    def job_of(self, request: Any) -> Job:
        return job_from_proto(request.job)

    def status(self) -> Any:
        now = time.monotonic()
        reply = pb.StatusReply(
            node_id=self.node_id,
            role=self.election.role.value,
            term=self.election.term,
            leader_id=self.election.leader or "",
            leader_address=self.leader_address,
        )
        reply.nodes.append(
            pb.NodeStatus(
                id=self.node_id, address=self.config.address, role=self.election.role.value,
                term=self.election.term, alive=True, last_heartbeat_ms=0.0,
            )
        )
        for peer in self.peers:
            heard = peer.last_heard_s
            alive = peer.alive
            if not self.is_leader and peer.address == self.leader_address:
                heard = self._leader_heard_s
                alive = heard is not None and now - heard <= self.peers.failure_s
            reply.nodes.append(
                pb.NodeStatus(
                    id=peer.node_id, address=peer.address, role=peer.role, term=peer.term,
                    alive=alive, last_heartbeat_ms=-1.0 if heard is None else (now - heard) * 1000,
                )
            )
        return reply

    # -- election: inbound -----------------------------------------------

    def handle_vote(self, request: Any) -> Any:
        message = VoteRequest(
            src=request.candidate_id, dst=self.node_id, term=request.term, pre_vote=request.pre_vote
        )
        response = self._step_request(message, VoteResponse)
        granted = bool(response is not None and response.granted)
        term = response.term if response is not None else self.election.term
        return pb.VoteReply(term=term, granted=granted, voter_id=self.node_id)

    def handle_heartbeat(self, request: Any) -> Any:
        message = Heartbeat(src=request.leader_id, dst=self.node_id, term=request.term)
        self._step_request(message, HeartbeatResponse)
        if self.election.leader == request.leader_id and request.term == self.election.term:
            # Our own --peers entry for the leader; "" until discovery maps its id
            # (then Submit answers UNAVAILABLE for a moment and the client retries).
            self.leader_address = self.peers.address_of(request.leader_id) or ""
            self._leader_heard_s = time.monotonic()
            peer = self.peers.get(self.leader_address)
            if peer is not None:
                peer.role, peer.term = "leader", request.term
            if request.beacon_key and self.beacons is not None:
                self.beacons.grant(request.leader_id, request.term, request.beacon_key)
        return pb.HeartbeatReply(
            term=self.election.term, node_id=self.node_id, role=self.election.role.value
        )

    def _step_request(self, message: Message, reply_type: type) -> Any:
        """Step a request; return the core's reply to it, execute everything else first."""
        self._catch_up()
        outputs = self.election.step(message)
        reply = None
        rest: list[Output] = []
        for out in outputs:
            if (isinstance(out, Send) and isinstance(out.message, reply_type)
                    and out.message.dst == message.src and reply is None):
                reply = out.message
            else:
                rest.append(out)
        # Persist outputs come first in `rest`, so the reply leaves after the fsync.
        self._execute(rest)
        return reply

    # -- election: outbound ----------------------------------------------

    def _execute(self, outputs: list[Output]) -> None:
        for out in outputs:
            if isinstance(out, Persist):
                self.store.save(ElectionState(out.term, out.voted_for))
            elif isinstance(out, Send):
                self._send(out.message)
            elif isinstance(out, RoleChanged):
                self._on_role_changed(out)

    def _send(self, message: Message) -> None:
        if isinstance(message, VoteRequest):
            self._spawn(self._send_vote(message))
        elif isinstance(message, Heartbeat):
            self._send_heartbeat(message)
        # Responses are returned by the RPC handlers; the core never emits
        # them outside `step`, so there is nothing else to route.

    async def _send_vote(self, message: VoteRequest) -> None:
        request = pb.VoteRequest(
            term=message.term, candidate_id=self.node_id, pre_vote=message.pre_vote
        )
        try:
            reply = await self.channels.stub(message.dst).RequestVote(
                request, timeout=self.config.election_ms_min / 1000
            )
        except grpc.aio.AioRpcError:
            return
        self.peers.learn(message.dst, reply.voter_id)
        response = VoteResponse(
            src=message.dst, dst=self.node_id, term=reply.term,
            granted=reply.granted, pre_vote=message.pre_vote,
        )
        self._catch_up()
        self._execute(self.election.step(response))

    def _send_heartbeat(self, message: Heartbeat) -> None:
        request = pb.HeartbeatRequest(
            term=message.term, leader_id=self.node_id, leader_address=self.config.address
        )
        self.heartbeats.send(message.dst, request)

    def _on_heartbeat_reply(self, address: str, reply: Any) -> None:
        self.peers.heard(address, reply.node_id, reply.role, reply.term, time.monotonic())
        self._catch_up()
        self._execute(
            self.election.step(HeartbeatResponse(src=address, dst=self.node_id, term=reply.term))
        )

    def _on_role_changed(self, change: RoleChanged) -> None:
        self._wake_now()  # the next deadline may now be earlier
        leader = f" leader={change.leader}" if change.leader else ""
        log.info("became %s term=%d%s", change.role.value, change.term, leader)
        if change.leader is not None:
            self._preload_compute()
        if change.role is Role.LEADER:
            self.leader_address = self.config.address
            self.peers.forget_liveness()
        else:
            self.heartbeats.close()
            if self._jobs is not None:
                self._jobs.abort_all(f"{self.node_id} became {change.role.value} in term {change.term}")
            if change.leader is None or change.leader == self.node_id:
                self.leader_address = ""

    # -- jobs -------------------------------------------------------------

    async def _remote_compute(
        self, address: str, job_id: str, job: Job, ranges: list[ShardRange]
    ) -> None:
        request = pb.ComputeRequest(
            job=job_to_proto(job_id, job),
            shards=[pb.Shard(index=i, start=start, stop=stop) for i, start, stop in ranges],
            reduce_to=self.config.address,
            term=self.election.term,
            leader_id=self.node_id,
        )
        await self.channels.stub(address).Compute(request, timeout=COMPUTE_TIMEOUT_S)

    # -- lifecycle --------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _discover_ids(self) -> None:
        """Ask every peer whose id is unknown for its Status, until all are known.

        Ids let this node map a leader id or a `reduce_to` back onto its own
        --peers entry, so all peer traffic follows the configured addresses.
        """
        while self.peers.unknown_ids() and not self._stopping.is_set():
            for address in self.peers.unknown_ids():
                try:
                    reply = await self.channels.stub(address).Status(pb.StatusRequest(), timeout=0.5)
                except grpc.aio.AioRpcError:
                    continue
                self.peers.learn(address, reply.node_id)
            await asyncio.sleep(0.2)

    def _catch_up(self) -> None:
        """Feed the election every tick that has elapsed on the wall clock.

        Called before anything is stepped, so the core always sees time and
        messages in their real order. After a stall (SIGSTOP, a frozen VM) at
        most one election timeout's worth of ticks is replayed.
        """
        elapsed = int((time.monotonic() - self._clock_origin_s) * 1000 / self.config.tick_ms)
        due = elapsed - self._ticks_done
        self._ticks_done = elapsed
        for _ in range(min(due, self.config.election_ticks[1] + 1)):
            self._execute(self.election.tick())

    def _tick(self) -> None:
        """One wake of the clock: catch up, judge peers, plan the next wake.

        A plain timer callback rather than a task sleeping in a loop: idle, a
        node does little else, and a callback costs the fewest wake-ups.
        """
        self._tick_timer = None
        if self._stopping.is_set():
            return
        sleep_s = MAX_SLEEP_S
        self._ticking = True
        try:
            # Woken far past the planned time: the process was stopped or starved.
            # Replies queued meanwhile are still unread, so judging peers now would
            # declare them all dead at once; skip this one check.
            stalled = time.monotonic() - self._wake_by_s > 2 * self.config.heartbeat_ms / 1000
            self._catch_up()
            if self.is_leader and not stalled:
                for peer in self.peers.check(time.monotonic()):
                    log.warning("peer %s (%s) missed heartbeats: dead", peer.node_id, peer.address)
            if self.config.parent_pid and os.getppid() != self.config.parent_pid:
                log.warning("parent process %d is gone; shutting down", self.config.parent_pid)
                self._stopping.set()
            # Wake at the wall-clock time of the due tick, not `due` ticks from
            # now: ticks are counted from the origin, so this never drifts.
            due_tick = self._ticks_done + self.election.ticks_until_due()
            due_s = self._clock_origin_s + due_tick * self.config.tick_ms / 1000
            sleep_s = min(max(0.0, due_s - time.monotonic()), MAX_SLEEP_S)
            if self.is_leader:  # the failure detector runs on the heartbeat grain
                sleep_s = min(sleep_s, self.config.heartbeat_ms / 1000)
            sleep_s = math.ceil(sleep_s * 1000) / 1000 + TIMER_SLACK_S
        finally:  # whatever went wrong, the clock keeps running
            self._ticking = False
            self._wake_by_s = time.monotonic() + sleep_s
            self._tick_timer = asyncio.get_running_loop().call_later(sleep_s, self._tick)

    def _wake_now(self) -> None:
        """Run `_tick` at once instead of at its planned time (no-op from inside it)."""
        if self._ticking or self._tick_timer is None:
            return
        self._tick_timer.cancel()
        self._tick_timer = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        """Ask `serve()` to shut down (what SIGINT and SIGTERM do)."""
        self._stopping.set()

    def _make_server(self) -> Any:
        size = self.config.limits.max_message_bytes
        options = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_send_message_length", size),
            ("grpc.max_receive_message_length", size),
            ("grpc.http2.max_frame_size", (1 << 24) - 1),
            ("grpc.http2.lookahead_bytes", 16 << 20),
        ]
        interceptors = [TokenServerInterceptor(self.config.token)] if self.config.token else []
        return grpc.aio.server(options=options, interceptors=interceptors)

    async def serve(self, handle_signals: bool = True) -> None:
        """Run until SIGINT/SIGTERM, `stop()`, or the parent's death; then shut down in order."""
        self._clock_origin_s = time.monotonic()  # tick 0: before any RPC arrives
        server = self._make_server()
        add_to_server(NodeServicer(self), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if self.config.tls.enabled:
            port = server.add_secure_port(self.config.listen, self.config.tls.server_credentials())
        else:
            port = server.add_insecure_port(self.config.listen)
        self.port = port
        await server.start()
        if self.config.udp_heartbeats:
            self.beacons = await beacons.listen(self.config.listen, port, self.handle_heartbeat)
        for name in ("", SERVICE_NAME):
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
        self._wake_by_s = time.monotonic()
        self._tick_timer = asyncio.get_running_loop().call_soon(self._tick)
        self._spawn(self._discover_ids())
        await self._stopping.wait()
        if self._tick_timer is not None:
            self._tick_timer.cancel()
        log.info("shutting down")
        await server.stop(SHUTDOWN_GRACE_S)
        self.heartbeats.close()
        if self.beacons is not None:
            self.beacons.close()
        for task in list(self._tasks):
            task.cancel()
        await self.channels.close()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _import_compute_stack() -> None:
    import node.jobs
    import node.worker  # noqa: F401


def _log_preload_failure(preload: concurrent.futures.Future[None]) -> None:
    if not preload.cancelled() and preload.exception() is not None:
        log.error("loading the compute stack failed", exc_info=preload.exception())


class GrpcCoreLogFilter(logging.Filter):
    """Turns two of gRPC's tracebacks about other parties' doings into one line.

    - A request that is not valid protobuf: a client's mistake (or a fuzzer's).
    - `ExecuteBatchError` after a handler returned: its reply could not be
      sent because the caller had already cancelled the call or gone, as a
      leader does with the Compute calls of a job that finished meanwhile.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        kind = type(exc).__name__ if exc is not None else ""
        if kind == "DecodeError":
            record.msg, record.args = "rejected a request that is not valid protobuf: %s", (exc,)
            record.exc_info, record.levelno, record.levelname = None, logging.WARNING, "WARNING"
        elif kind == "ExecuteBatchError":
            record.msg, record.args = "a reply was not sent, its caller had gone: %s", (
                record.getMessage(),
            )
            record.exc_info, record.levelno, record.levelname = None, logging.INFO, "INFO"
        return True


def configure_logging(node_id: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s {node_id} %(levelname)s %(message)s",
    )
    logging.getLogger("grpc._cython.cygrpc").addFilter(GrpcCoreLogFilter())


def run(config: NodeConfig) -> int:
    """Blocking entry point used by `distnode start`."""
    configure_logging(config.node_id)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(Daemon(config).serve())
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when it is installed, else asyncio's own loop (None).

    gRPC's asyncio server spends most of a small job's CPU in event-loop
    machinery; on uvloop the leader answers ~5-7 % more small jobs per second
    (scripts/bench.py, throughput). DISTNODE_LOOP=asyncio keeps the standard
    loop, e.g. to rule uvloop out when chasing a bug.
    """
    if os.environ.get("DISTNODE_LOOP", "") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
