"""The node's Prometheus metrics, one registry per daemon (prometheus-client's).

Two kinds. What the node *is* (leader or not, its term, which peers answer,
its log and journal) is read from the daemon's state when Prometheus
scrapes (`StateCollector`), so it costs nothing between scrapes. What
*happens* (leader changes, jobs ending, shards computed, journal writes) is
counted where it happens: one counter increment or histogram observation
each, a microsecond or two, in tally.py's plain counters; a scrape reads
them (`TallyCollector`). prometheus-client is imported by the first reader
of `NodeMetrics.registry`, which is httpd.py in a node that serves
`--http`, and by nothing else in a daemon (tally.py says why).

Names follow etcd's style and Prometheus' rules: `distnode_` prefix, base
units, `_total` counters. No label carries a job id, a path or a client
address; `peer` is the --peers address of a cluster member, `op` one of the
eleven ops, `outcome` one of OUTCOMES.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import msgspec

from node.core.messages import Role
from node.errors import ClusterUnavailable, InvalidJob, JobCancelled, LimitExceeded
from node.server.tally import Child, Counted, Timed, TimedChild

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

    from node.core.election import Election
    from node.server.dispatch import Dispatch
    from node.server.elections import ElectionDriver
    from node.server.heartbeats import HeartbeatLinks
    from node.server.journal import Journal
    from node.server.ledger import JobLedger
    from node.server.peers import PeerTable
    from node.server.relay import Relay


class Observed(Protocol):
    """What a scrape reads of the daemon."""

    ledger: JobLedger
    peers: PeerTable
    journal: Journal
    elections: ElectionDriver
    heartbeats: HeartbeatLinks
    relay: Relay
    dispatch: Dispatch

    @property
    def election(self) -> Election: ...

    @property
    def is_leader(self) -> bool: ...

    def jobs_running(self) -> int: ...

#: Seconds, from a tenth of a millisecond (an fsync, a small shard) to a minute (a big job).
BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
             1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: How a job run on the leader ended.
OUTCOMES = ("done", "failed", "refused", "cancelled", "abandoned")

R = TypeVar("R")


def outcome_of(exc: BaseException) -> str:
    """The `outcome` label of a run that raised `exc`."""
    if isinstance(exc, JobCancelled):
        return "cancelled"
    if isinstance(exc, InvalidJob | LimitExceeded):
        return "refused"  # the job or a limit said no before anything ran
    if isinstance(exc, ClusterUnavailable | asyncio.CancelledError):
        return "abandoned"  # leadership lost, or every caller of the run went away
    return "failed"  # a JobError (a worker, a timeout), or anything unforeseen


class NodeState(msgspec.Struct):
    """What the daemon is, as the scrape reads it (daemon.py fills it in on each scrape)."""

    is_leader: bool = False
    has_leader: bool = False
    term: int = 0
    log_index: int = 0
    commit_index: int = 0
    journal_bytes: int = 0
    storage_error: bool = False
    jobs_running: int = 0
    table_jobs: int = 0
    #: --peers address -> (answered lately, failed contacts so far, heartbeat replies so far).
    peers: dict[str, tuple[bool, int, int]] = msgspec.field(default_factory=dict)
    #: (peer, transport) -> heartbeats sent, as leader, over every leadership.
    beats: dict[tuple[str, str], int] = msgspec.field(default_factory=dict)
    #: Peers whose heartbeats go by UDP now (the leader's links).
    on_udp: set[str] = msgspec.field(default_factory=set)
    #: (peer, transport) -> Compute calls made, as leader, on a compute link or on gRPC.
    compute_calls: dict[tuple[str, str], int] = msgspec.field(default_factory=dict)


class StateCollector:
    def __init__(self, state: Callable[[], NodeState | None]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = self.state()
        if now is None:  # no daemon hooked in (NodeMetrics.observe)
            return
        gauges = (
            ("distnode_is_leader", "1 if this node is the leader", now.is_leader),
            ("distnode_has_leader", "1 if this node knows a leader", now.has_leader),
            ("distnode_term", "the current Raft term", now.term),
            ("distnode_log_index", "the last index of this node's log", now.log_index),
            ("distnode_commit_index", "the last index this node knows committed", now.commit_index),
            ("distnode_journal_bytes", "bytes of the journal on disk (segments and snapshot)",
             now.journal_bytes),
            ("distnode_storage_error", "1 while this node cannot write its term, vote or journal",
             now.storage_error),
            ("distnode_jobs_in_flight", "jobs this node runs as leader now", now.jobs_running),
            ("distnode_job_table_jobs", "jobs in this node's job table", now.table_jobs),
        )
        for name, help_text, value in gauges:
            yield GaugeMetricFamily(name, help_text, value=float(value))
        up = GaugeMetricFamily("distnode_peer_up", "1 if this node heard the peer within the failure timeout"
                               " (a follower hears only its leader)", labels=["peer"])
        failures = CounterMetricFamily("distnode_peer_contact_failures", "failed contacts with the peer",
                                       labels=["peer"])
        replies = CounterMetricFamily("distnode_heartbeat_replies", "heartbeat replies from the peer",
                                      labels=["peer"])
        udp = GaugeMetricFamily("distnode_heartbeat_udp", "1 while this leader's beats to the peer go by UDP",
                                labels=["peer"])
        for address, (alive, failed, answered) in sorted(now.peers.items()):
            up.add_metric([address], float(alive))
            failures.add_metric([address], float(failed))
            replies.add_metric([address], float(answered))
            udp.add_metric([address], float(address in now.on_udp))
        beats = CounterMetricFamily("distnode_heartbeats_sent", "heartbeats sent as leader",
                                    labels=["peer", "transport"])
        for (address, transport), count in sorted(now.beats.items()):
            beats.add_metric([address, transport], float(count))
        calls = CounterMetricFamily("distnode_compute_calls", "Compute calls made as leader",
                                    labels=["peer", "transport"])
        for (address, transport), count in sorted(now.compute_calls.items()):
            calls.add_metric([address, transport], float(count))
        yield from (up, failures, replies, udp, beats, calls)


class TallyCollector:
    """What was counted (tally.py), as prometheus-client's own Counter and Histogram give it."""

    def __init__(self, counted: list[Counted], timed: list[Timed]) -> None:
        self.counted, self.timed = counted, timed

    def collect(self) -> Iterator[Metric]:
        from prometheus_client import utils
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        go_float = cast(Callable[[float], str], utils.floatToGoString)  # `le` as Histogram writes it
        for counter in self.counted:
            family = CounterMetricFamily(counter.name, counter.help_text, labels=counter.label_names)
            for labels, value in counter.samples():
                family.add_metric(list(labels), value)
            yield family
        for timing in self.timed:
            histogram = HistogramMetricFamily(timing.name, timing.help_text, labels=timing.label_names)
            bounds = [go_float(bound) for bound in timing.bounds] + ["+Inf"]
            for labels, cumulative, total in timing.samples():
                histogram.add_metric(list(labels), list(zip(bounds, cumulative, strict=True)), total)
            yield histogram


class NodeMetrics:
    def __init__(self) -> None:
        self._counted: list[Counted] = []
        self._timed: list[Timed] = []
        #: What a scrape reads of the daemon, once `observe` hooked it in.
        self._state: Callable[[], NodeState] | None = None

        def count(name: str, help_text: str, labels: tuple[str, ...] | list[str] = ()) -> Counted:
            self._counted.append(Counted(name, help_text, labels))
            return self._counted[-1]

        def timing(name: str, help_text: str, labels: tuple[str, ...] | list[str] = ()) -> Timed:
            self._timed.append(Timed(name, help_text, BUCKETS_S, labels))
            return self._timed[-1]

        self.leader_changes = count("distnode_leader_changes_seen", "leaders seen to change")
        self.elections = count("distnode_elections_started", "elections this node started")
        self.pre_votes = count("distnode_pre_votes_started", "pre-vote rounds this node started")
        self.jobs = count("distnode_jobs", "jobs run as leader, by how they ended", ["outcome"])
        self.job_seconds = timing("distnode_job_duration_seconds", "jobs run as leader, start to answer",
                                  ["op"])
        self.shards = count("distnode_shards_computed", "shards this node computed")
        self.shards_moved = count("distnode_shards_moved",
                                  "shards taken from a busy node for an idle one, as leader")
        self.shard_seconds = timing("distnode_shard_duration_seconds", "one shard's computation")
        self.bytes_read = count("distnode_source_bytes_read", "bytes of source data this node computed on",
                                ["kind"])
        self.journal_writes = count("distnode_journal_writes", "records appended to the journal")
        self.journal_entries = count("distnode_journal_entries", "log entries appended")
        self.journal_seconds = timing("distnode_journal_write_seconds", "one append: write and fsync")
        self.commit_seconds = timing("distnode_commit_seconds", "a leader's entry, proposed to committed")
        self.heartbeat_rtt = timing("distnode_heartbeat_rtt_seconds", "a leader's beat, sent to answered")
        self.relayed = count("distnode_relayed", "calls this node passed on to its leader")
        # Children looked up once: `labels()` takes a lock and builds a key on every call.
        self._ended = {outcome: self.jobs.labels(outcome) for outcome in OUTCOMES}  # all exported, at 0
        self._took: dict[str, TimedChild] = {}
        self._read: dict[str, Child] = {}
        #: The last leader seen (a change of it is counted).
        self._leader: str | None = None

    @functools.cached_property
    def registry(self) -> CollectorRegistry:
        """What a scrape reads: built, and prometheus-client imported, by its first reader."""
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        registry.register(TallyCollector(self._counted, self._timed))
        registry.register(StateCollector(lambda: self._state() if self._state is not None else None))
        return registry

    def observe(self, daemon: Observed) -> None:
        """Hook the counters into the daemon's parts, and read its state at each scrape."""
        daemon.elections.writer.on_append = self.journal_appended
        daemon.elections.on_committed = self.commit_seconds.observe
        daemon.relay.on_relay = self.relayed.inc
        daemon.heartbeats.on_rtt = self.heartbeat_rtt.observe
        self._state = functools.partial(node_state, daemon)

    def job_ended(self, op: str, outcome: str, seconds: float) -> None:
        self._ended[outcome].inc()
        if outcome == "done":
            took = self._took.get(op)
            if took is None:
                took = self._took[op] = self.job_seconds.labels(op)
            took.observe(seconds)

    def timed_shard(self, compute: Callable[[Any, Any, int, int], R]) -> Callable[[Any, Any, int, int], R]:
        """`compute(job, source, start, stop)` (one shard, in the compute thread): counted,
        timed, and its bytes read counted by source kind."""
        def run(job: Any, source: Any, start: int, stop: int) -> R:
            started = time.perf_counter()
            result = compute(job, source, start, stop)
            self.shard_seconds.observe(time.perf_counter() - started)
            self.shards.inc()
            kind = job.source.split(":", 1)[0]
            read = self._read.get(kind)
            if read is None:
                read = self._read[kind] = self.bytes_read.labels(kind)
            read.inc((stop - start) * (source.cols or 1) * source.dtype.itemsize)
            return result
        return run

    def journal_appended(self, entries: int, seconds: float) -> None:
        self.journal_writes.inc()
        self.journal_entries.inc(entries)
        self.journal_seconds.observe(seconds)

    def role_changed(self, role: Role, leader: str | None) -> None:
        if role is Role.PRE_CANDIDATE:
            self.pre_votes.inc()
        if role is Role.CANDIDATE:
            self.elections.inc()
        if leader is not None and leader != self._leader:
            self.leader_changes.inc()
        if leader is not None:
            self._leader = leader


def node_state(daemon: Observed) -> NodeState:
    """The daemon as a scrape reads it."""
    election = daemon.election
    table = daemon.ledger.table
    running = daemon.jobs_running()
    # Alive as `distnode status` says (peerview.py): a follower hears only its leader, and a
    # former leader's last word on the others is no longer news.
    alive = {node.address: node.alive for node in daemon.elections.status().nodes}
    peers = {p.address: (alive.get(p.address, False), p.failures, p.replies) for p in daemon.peers}
    links = daemon.heartbeats
    on_udp = {p.address for p in daemon.peers if (link := links.link(p.address)) is not None and link.on_udp}
    return NodeState(
        is_leader=daemon.is_leader, has_leader=election.leader is not None, term=election.term,
        log_index=election.log.last_index, commit_index=election.commit_index,
        journal_bytes=daemon.journal.disk_bytes(), storage_error=bool(daemon.elections.disk_error),
        jobs_running=running, table_jobs=len(table), peers=peers, beats=dict(links.totals), on_udp=on_udp,
        compute_calls=dict(daemon.dispatch.calls),
    )
