"""A deterministic in-memory network that drives `node.election.Election` objects by ticks.

Every random choice (drops, delays, duplicates, timeouts) comes from one seeded
`random.Random`, so a schedule replays exactly from its seed. Messages take at
least one tick to arrive; `max_delay` adds up to that many more, which also
reorders them. Links can be cut (`cut`, `isolate`) and healed (`heal`); a
link that is cut when a message is sent *or* when it would arrive loses it.
Cuts follow the real transport (gRPC over the harness's TCP proxies): a
request and its response travel on the requester's connection, so the
one-way `cut(a, b, both=False)` loses a's requests to b and b's responses to
a, while b's requests to a (and a's answers) get through.

Pause and resume (SIGSTOP/SIGCONT): a paused node neither ticks nor handles
messages; what arrives meanwhile waits in its socket buffer and is handled,
stale, right after it resumes; its timers resume where they stopped.

Crash and restart: a crashed node neither ticks nor receives; `restart`
rebuilds it from the last `Persist` it emitted. Outputs are executed in list
order, so a Persist is stored before any later Send of the same list is even
queued ("persist before you send"); with `crash_mid_outputs` a node may also
crash after any prefix of a list, which is what makes a Send placed before
its Persist a detectable double vote.

The log (`replicate=True`): clients `submit` jobs (commands naming a job
id) to whoever leads; a node persists `AppendLog` and `RestoreSnapshot` in
list order like `Persist` (a crash mid-list keeps a prefix), applies `Apply`
to its state machine (the jobs done, in order, each id once, like the
daemon's job table) and may `compact` it into a snapshot. A job is
acknowledged when the leader it was submitted to applies it. The log checks
(Raft §5.4's properties, each where it can first be seen): log matching, a
leader never overwrites or deletes its entries, every leader holds every
committed entry, and no two nodes apply different entries at one index.

A full disk (`disk_full`): a Persist on that node fails, so, as the daemon
does, the rest of its list is dropped and the node rolls back to what it
persisted last (`Election.rollback`).

Invariants are checked after every step and tick, and raise `InvariantError`:
at most one leader per term over the whole run, no node's term ever
decreases (restarts included), no node grants two candidates a vote in
one term (restarts included), and no node's memory runs ahead of its disk
(its term and vote are what it persisted, once a list has been executed).
"""

from __future__ import annotations

import collections
import heapq
import random
from dataclasses import dataclass, field

from node.core.election import Election
from node.core.electionconfig import ElectionConfig
from node.core.messages import (
    AppendLog,
    Apply,
    HeartbeatResponse,
    Message,
    Output,
    Persist,
    RestoreSnapshot,
    Role,
    RoleChanged,
    Send,
    VoteResponse,
)
from node.core.raftlog import Entry, RaftLog


class InvariantError(AssertionError):
    pass


@dataclass
class SimNet:
    ids: list[str]
    seed: int
    pre_vote: bool = True
    check_quorum: bool = True
    heartbeat_ticks: int = 2
    #: Beats thin to this while a node is `quiet` (no job runs) and all is committed; 0: never.
    idle_heartbeat_ticks: int = 0
    quiet: bool = False
    replicate: bool = False
    election_ticks_min: int = 10
    election_ticks_max: int = 20
    drop: float = 0.0
    duplicate: float = 0.0
    max_delay: int = 0
    # Probability that a node crashes part-way through executing an output list.
    crash_mid_outputs: float = 0.0
    # If False, a restart forgets the persisted state: only to prove the checks bite.
    restore_on_restart: bool = True
    now: int = 0
    nodes: dict[str, Election] = field(default_factory=dict)
    persisted: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    #: Each node's durable log and snapshot (the state machine's done jobs, in order).
    disk_log: dict[str, RaftLog] = field(default_factory=dict)
    disk_snapshot: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: Each node's state machine: the job ids done, in the order applied, and the last index applied.
    done: dict[str, list[str]] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    #: Every entry ever stored, by (index, term): (kind, data, term before it). Log matching.
    seen: dict[tuple[int, int], tuple[str, bytes, int]] = field(default_factory=dict)
    #: The entry applied at each index, by whoever applied it first. State machine safety.
    applied_at: dict[int, Entry] = field(default_factory=dict)
    #: The term in which each index was first applied: the committing leader's term.
    committed_in: dict[int, int] = field(default_factory=dict)
    #: Jobs submitted, by id: (leader, entry) of the last submission.
    submitted: dict[str, tuple[str, Entry]] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    down: set[str] = field(default_factory=set)
    #: Nodes whose Persists fail (a full disk).
    disk_full: set[str] = field(default_factory=set)
    paused: set[str] = field(default_factory=set)
    #: (requester, target) pairs whose RPCs fail: see `cut`.
    cuts: set[tuple[str, str]] = field(default_factory=set)
    leader_of_term: dict[int, str] = field(default_factory=dict)
    max_term: dict[str, int] = field(default_factory=dict)
    vote_of: dict[tuple[str, int], str] = field(default_factory=dict)
    delivered: int = 0
    #: Faults applied so far, by kind ("cut", "one-way", "pause", "crash"), for coverage checks.
    stats: collections.Counter[str] = field(default_factory=collections.Counter)
    _queue: list[tuple[int, float, int, Message]] = field(default_factory=list)
    _held: list[Message] = field(default_factory=list)
    _seq: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        for node_id in self.ids:
            self.persisted[node_id] = (0, None)
            self.disk_log[node_id] = RaftLog()
            self.disk_snapshot[node_id] = ()
            self.max_term[node_id] = 0
            self._build(node_id)

    # ---- topology -----------------------------------------------------------

    def config(self, node_id: str) -> ElectionConfig:
        return ElectionConfig(
            node_id=node_id,
            peers=tuple(p for p in self.ids if p != node_id),
            heartbeat_ticks=self.heartbeat_ticks,
            idle_heartbeat_ticks=self.idle_heartbeat_ticks,
            election_ticks_min=self.election_ticks_min,
            election_ticks_max=self.election_ticks_max,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            fast_first_election=self.pre_vote,  # as the daemon boots, whenever it may
            replicate=self.replicate,
            max_append_entries=4,  # small, so catching up takes several round trips
        )

    def cut(self, a: str, b: str, both: bool = True) -> None:
        """Fail a's RPCs to b (requests a -> b, responses b -> a); and b's to a if `both`."""
        if a != b:
            self.stats["cut" if both else "one-way"] += 1
            self.cuts.add((a, b))
            if both:
                self.cuts.add((b, a))

    def isolate(self, a: str) -> None:
        for b in self.ids:
            if b != a:
                self.cut(a, b)

    def heal(self) -> None:
        self.cuts.clear()

    def crash(self, node_id: str) -> None:
        self.stats["crash"] += 1
        self.down.add(node_id)
        self.paused.discard(node_id)
        self._held = [m for m in self._held if m.dst != node_id]  # its socket buffers die too

    def restart(self, node_id: str) -> None:
        self.down.discard(node_id)
        self._build(node_id)

    def fill_disk(self, node_id: str) -> None:
        self.stats["disk"] += 1
        self.disk_full.add(node_id)

    def set_quiet(self, quiet: bool) -> None:
        """Every node's caller says whether a job runs (beats thin while none does)."""
        self.quiet = quiet
        for node in self.nodes.values():
            node.quiet = quiet

    def pause(self, node_id: str) -> None:
        if node_id not in self.down and node_id not in self.paused:
            self.stats["pause"] += 1
            self.paused.add(node_id)

    def resume(self, node_id: str) -> None:
        """The node handles what queued up for it while paused, in arrival order, then ticks on."""
        self.paused.discard(node_id)
        backlog = [m for m in self._held if m.dst == node_id]
        self._held = [m for m in self._held if m.dst != node_id]
        for message in backlog:
            self._deliver(message)

    def _build(self, node_id: str) -> None:
        term, voted_for = self.persisted[node_id] if self.restore_on_restart else (0, None)
        rng = random.Random(self.rng.getrandbits(64))
        disk = self.disk_log[node_id]
        log = RaftLog(disk.snapshot_index, disk.snapshot_term, disk.entries(disk.snapshot_index + 1))
        snapshot = self.disk_snapshot[node_id]
        self.done[node_id] = list(snapshot)
        self.applied[node_id] = disk.snapshot_index
        self.nodes[node_id] = Election(self.config(node_id), rng, term, voted_for, log, encode(snapshot))
        self.nodes[node_id].quiet = self.quiet
        self._check_term(node_id)
        self._check_durable(node_id)

    # ---- driving ------------------------------------------------------------

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.step_tick()

    def step_tick(self) -> None:
        """Advance one tick: deliver what is due, then tick every live node in random order."""
        self.now += 1
        while self._queue and self._queue[0][0] <= self.now:
            _, _, _, message = heapq.heappop(self._queue)
            self._deliver(message)
        order = [n for n in self.ids if n not in self.down and n not in self.paused]
        self.rng.shuffle(order)
        for node_id in order:
            self.execute(node_id, self.nodes[node_id].tick())

    def campaign(self, node_id: str) -> None:
        self.execute(node_id, self.nodes[node_id].campaign())

    def execute(self, node_id: str, outputs: list[Output], crash_after: int | None = None) -> None:
        """Carry out outputs in order; crash after `crash_after` of them (or at random)."""
        if crash_after is None and outputs and self.rng.random() < self.crash_mid_outputs:
            crash_after = self.rng.randrange(len(outputs))
        if crash_after is not None:
            self.crash(node_id)  # its memory is gone; only what it persisted counts
            outputs = outputs[:crash_after]
        for output in outputs:
            if isinstance(output, Persist) and node_id in self.disk_full:
                self.execute(node_id, self.nodes[node_id].rollback(*self.persisted[node_id]))
                break
            if isinstance(output, AppendLog | RestoreSnapshot) and node_id in self.disk_full:
                # As the daemon does: back to the journal's log and to what was applied;
                # a leader that cannot hold its own entries steps down.
                node = self.nodes[node_id]
                disk = self.disk_log[node_id]
                node.restore_log(disk.copy(), encode(self.disk_snapshot[node_id]), self.applied[node_id])
                if node.role is Role.LEADER:
                    self.execute(node_id, node.rollback(*self.persisted[node_id]))
                break
            if isinstance(output, Persist):
                self.persisted[node_id] = (output.term, output.voted_for)
            elif isinstance(output, AppendLog):
                self._store(node_id, output)
            elif isinstance(output, RestoreSnapshot):
                self.disk_log[node_id].restore(output.index, output.term)
                self.disk_snapshot[node_id] = decode(output.data)
                self.done[node_id] = list(decode(output.data))
                self.applied[node_id] = output.index
            elif isinstance(output, Apply):
                self._apply(node_id, output.entries)
            elif isinstance(output, Send):
                self._check_vote(output.message)
                self._send(output.message)
            elif isinstance(output, RoleChanged) and output.role is Role.LEADER:
                self._check_leader(node_id, output.term)
                self._check_complete(node_id)
        if crash_after is None:
            self._check_term(node_id)
            self._check_durable(node_id)

    # ---- the log and its state machine -------------------------------------------

    def submit(self, job_id: str) -> bool:
        """A client hands `job_id` to a node that believes it leads; False if none does."""
        for node_id in self.leaders():
            if node_id in self.paused:
                continue
            entries, outputs = self.nodes[node_id].propose(job_id.encode())
            if entries:
                self.submitted[job_id] = (node_id, entries[0])
                self.execute(node_id, outputs)
                return True
        return False

    def compact(self, node_id: str) -> None:
        """The node snapshots its state machine and drops the log it covers (memory and disk)."""
        node = self.nodes[node_id]
        index = self.applied[node_id]
        if node_id in self.down or index <= node.log.snapshot_index:
            return
        self.stats["snapshot"] += 1
        state = tuple(self.done[node_id])
        node.compact(index, encode(state))
        self.disk_log[node_id].compact(index)
        self.disk_snapshot[node_id] = state

    def _store(self, node_id: str, output: AppendLog) -> None:
        disk = self.disk_log[node_id]
        if self.nodes[node_id].role is Role.LEADER and output.after != disk.last_index:
            self._fail(f"leader {node_id} overwrote its log after {output.after} (it ends at {disk.last_index})")
        if output.entries:
            disk.replace_after(output.after, output.entries)
        for entry in output.entries:
            before = disk.term_at(entry.index - 1)
            assert before is not None
            record = (entry.kind, entry.data, before)
            first = self.seen.setdefault((entry.index, entry.term), record)
            if first != record:
                self._fail(f"log matching: ({entry.index}, {entry.term}) is {record} on {node_id}, {first} elsewhere")

    def _apply(self, node_id: str, entries: tuple[Entry, ...]) -> None:
        if entries[0].index != self.applied[node_id] + 1:
            self._fail(f"{node_id} applies {entries[0].index} after {self.applied[node_id]}: a gap or a repeat")
        self.applied[node_id] = entries[-1].index
        done = self.done[node_id]
        for entry in entries:
            self.committed_in.setdefault(entry.index, self.nodes[node_id].term)
            first = self.applied_at.setdefault(entry.index, entry)
            if first != entry:
                self._fail(f"{node_id} applied {entry} where another node applied {first}")
            job_id = entry.data.decode()
            if entry.kind == "command" and job_id not in done:  # a resubmitted job runs once
                done.append(job_id)
            submitted = self.submitted.get(job_id)
            if submitted is not None and submitted == (node_id, entry):
                self.acknowledged.add(job_id)

    def _check_complete(self, node_id: str) -> None:
        """Raft §5.4 Leader Completeness: a leader holds every entry committed in an
        earlier term (a leader of an older term, late to learn it won, need not)."""
        node = self.nodes[node_id]
        log = node.log
        for index, entry in self.applied_at.items():
            if self.committed_in[index] >= node.term:
                continue
            if index > log.snapshot_index and log.term_at(index) != entry.term:
                self._fail(f"leader {node_id} lacks committed entry {entry}")

    def in_flight_from(self, node_id: str) -> int:
        """Messages `node_id` sent that have not arrived yet."""
        return sum(1 for _, _, _, message in self._queue if message.src == node_id)

    def _send(self, message: Message) -> None:
        copies = 1 + (self.rng.random() < self.duplicate)
        for _ in range(copies):
            if self._is_cut(message) or self.rng.random() < self.drop:
                continue
            at = self.now + 1 + self.rng.randint(0, self.max_delay)
            self._seq += 1
            heapq.heappush(self._queue, (at, self.rng.random(), self._seq, message))

    def _deliver(self, message: Message) -> None:
        if message.dst in self.down or self._is_cut(message):
            return
        if message.dst in self.paused:
            self._held.append(message)  # in its socket buffer: handled on resume
            return
        self.delivered += 1
        self.execute(message.dst, self.nodes[message.dst].step(message))

    def _is_cut(self, message: Message) -> bool:
        if not self.cuts:
            return False
        if isinstance(message, VoteResponse | HeartbeatResponse):
            return (message.dst, message.src) in self.cuts  # it rides the requester's connection
        return (message.src, message.dst) in self.cuts

    # ---- observation --------------------------------------------------------

    def leaders(self) -> list[str]:
        """Live nodes that believe they lead (a paused one still does)."""
        return [n for n in self.ids if n not in self.down and self.nodes[n].role is Role.LEADER]

    def stable_leader(self, without: frozenset[str] = frozenset()) -> str | None:
        """The leader every live node (but those `without`) follows at the leader's term, if any."""
        leaders = self.leaders()
        if len(leaders) != 1:
            return None
        leader = self.nodes[leaders[0]]
        for node_id in self.ids:
            node = self.nodes[node_id]
            if node_id in self.down or node_id in self.paused or node_id in without or node is leader:
                continue
            if node.term != leader.term or node.leader != leaders[0]:
                return None
        return leaders[0]

    def settle(self, max_ticks: int) -> str | None:
        """Run until one leader has committed its whole log and every live node applied it."""
        for _ in range(max_ticks + 1):
            leader = self.stable_leader()
            if leader is not None:
                commit = self.nodes[leader].commit_index
                live = [self.nodes[n] for n in self.ids if n not in self.down]
                if commit == self.nodes[leader].log.last_index and all(n.commit_index == commit for n in live):
                    return leader
            self.step_tick()
        return None

    def run_until_stable(self, max_ticks: int, without: frozenset[str] = frozenset()) -> str | None:
        for _ in range(max_ticks):
            leader = self.stable_leader(without)
            if leader is not None:
                return leader
            self.step_tick()
        return self.stable_leader(without)

    # ---- invariants ---------------------------------------------------------

    def _fail(self, what: str) -> None:
        raise InvariantError(f"seed={self.seed} tick={self.now}: {what}")

    def _check_leader(self, node_id: str, term: int) -> None:
        """Raft §5.2 Election Safety: at most one leader can be elected in a given term."""
        first = self.leader_of_term.setdefault(term, node_id)
        if first != node_id:
            self._fail(f"two leaders in term {term}: {first} and {node_id}")

    def _check_term(self, node_id: str) -> None:
        """Raft §5.1: current_term increases monotonically, also across restarts."""
        term = self.nodes[node_id].term
        if term < self.max_term[node_id]:
            self._fail(f"{node_id} term went back from {self.max_term[node_id]} to {term}")
        self.max_term[node_id] = term

    def _check_durable(self, node_id: str) -> None:
        """Memory never runs ahead of the disk: a term only memory holds would
        travel in the next message, and peers would follow it."""
        node = self.nodes[node_id]
        if node_id in self.down:
            return
        if (node.term, node.voted_for) != self.persisted[node_id]:
            self._fail(f"{node_id} holds {(node.term, node.voted_for)} but persisted {self.persisted[node_id]}")
        disk, log = self.disk_log[node_id], node.log
        held = (log.snapshot_index, log.last_index, log.last_term)
        if held != (disk.snapshot_index, disk.last_index, disk.last_term):
            self._fail(f"{node_id} holds log {held} but stored {(disk.snapshot_index, disk.last_index, disk.last_term)}")

    def _check_vote(self, message: Message) -> None:
        """Raft §5.2: each server votes for at most one candidate in a given term."""
        if not isinstance(message, VoteResponse) or message.pre_vote or not message.granted:
            return
        first = self.vote_of.setdefault((message.src, message.term), message.dst)
        if first != message.dst:
            self._fail(f"{message.src} voted for {first} and {message.dst} in term {message.term}")


def encode(state: tuple[str, ...]) -> bytes:
    return "\n".join(state).encode()


def decode(data: bytes) -> tuple[str, ...]:
    return tuple(data.decode().split("\n")) if data else ()
