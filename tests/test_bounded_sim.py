"""Randomized schedules in which nodes come back with a smaller bound on a message
(followers restarted with a smaller --max-message-bytes): the entries written before,
which no message to them can carry, reach them in a leader's snapshot (`snapshot_wanted`,
replication.py), and every node ends with every job, once, in the same order.

Faults as in test_election_sim.py (loss, duplicates, delays, partitions, crashes); the
bound of each bounded node applies from a random tick, and its leader learns it then or
later. A minority of the nodes at most: if a majority cannot take an entry, the log stops
there (the documented limit, docs/journal.md).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from simnet import SimNet
from test_election_sim import ELECTION_BOUND_TICKS, ids, settle_every_job

from node.core.messages import Heartbeat, Message
from node.core.replication import BEAT_ENVELOPE_BYTES

BOUND_BYTES = 4000
#: Job payloads: most small, some that fit no message to the bounded node (with the
#: beat's envelope, BEAT_ENVELOPE_BYTES), some that do but only alone.
PAYLOAD_BYTES = (10, 10, 10, 2500, 3500, 5000)


class BoundedNet(SimNet):
    """A SimNet whose `bounded` nodes drop any beat whose entries pass their bound (the daemon
    refuses it, and its stream), and whose leaders snapshot as soon as one is wanted and
    applied, as `Compactor.step` does; `known` is what every leader has heard of the bounds."""

    snapshot_when_wanted: bool = True

    def __post_init__(self) -> None:
        self.bounds: dict[str, int] = {}
        self.known: dict[str, int] = {}
        super().__post_init__()

    def _build(self, node_id: str) -> None:
        super()._build(node_id)
        self.nodes[node_id].replication.peer_message_bytes = self.known

    def _send(self, message: Message) -> None:
        bound = self.bounds.get(message.dst)
        if bound is not None and isinstance(message, Heartbeat) and sum(
                len(entry.data) for entry in message.entries) + BEAT_ENVELOPE_BYTES > bound:
            self.stats["refused"] += 1
            return
        super()._send(message)

    def step_tick(self) -> None:
        if self.snapshot_when_wanted:
            for node_id in self.leaders():
                wanted = self.nodes[node_id].replication.snapshot_wanted()
                if 0 < wanted <= self.applied[node_id]:
                    self.stats["wanted"] += 1
                    self.compact(node_id)
        super().step_tick()


def bounded_schedule(seed: int, **overrides: Any) -> BoundedNet:
    rng = random.Random(seed)
    net = BoundedNet(ids(rng.choice((3, 5))), seed, replicate=True, heartbeat_ticks=2, election_ticks_min=10,
                     election_ticks_max=20, drop=rng.choice((0.0, 0.05)), duplicate=rng.choice((0.0, 0.1)),
                     max_delay=rng.choice((0, 1, 3)))
    for name, value in overrides.items():
        setattr(net, name, value)
    # A minority of the nodes, so that every entry has a majority that can take it.
    bounded = rng.sample(net.ids, rng.randint(1, (len(net.ids) - 1) // 2))
    bound_at = {node: rng.randint(5, 40) for node in bounded}
    known_at = {node: rng.randint(5, 60) for node in bounded}
    for tick in range(rng.randint(40, 120)):
        net.bounds.update((node, BOUND_BYTES) for node in bounded if bound_at[node] == tick)
        net.known.update((node, BOUND_BYTES) for node in bounded if known_at[node] == tick)
        event, node = rng.random(), rng.choice(net.ids)
        if event < 0.03:
            net.isolate(node)
        elif event < 0.08:
            net.heal()
        elif event < 0.10 and node not in net.down:
            net.crash(node)
        elif event < 0.18 and node in net.down:
            net.restart(node)
        elif event < 0.20:
            net.compact(node)
        if rng.random() < 0.3:
            net.submit(f"job-{len(net.submitted)}-" + "x" * rng.choice(PAYLOAD_BYTES))
        net.step_tick()
    net.bounds.update((node, BOUND_BYTES) for node in bounded)
    net.known.update(net.bounds)
    net.heal()
    net.drop = net.duplicate = 0.0
    for node in sorted(net.down):
        net.restart(node)
    settle_every_job(net, seed, 4 * ELECTION_BOUND_TICKS)  # a snapshot may be needed first
    return net


SCHEDULES, BLOCKS = 1000, 2


@pytest.mark.parametrize("block", range(BLOCKS))
def test_every_node_takes_every_entry_with_a_node_whose_bound_shrank(block: int) -> None:
    per_block = SCHEDULES // BLOCKS
    for seed in range(block * per_block, (block + 1) * per_block):
        bounded_schedule(seed)


def test_the_schedules_send_entries_the_bounded_node_refuses_and_snapshots_for_them() -> None:
    """They exercise what they claim: messages refused for their size, snapshots wanted."""
    refused = wanted = 0
    for seed in range(100):
        net = bounded_schedule(seed)
        refused += net.stats["refused"]
        wanted += net.stats["wanted"]
    assert refused > 100 and wanted > 100, (refused, wanted)


def test_control_without_the_snapshot_wanted_the_bounded_node_never_catches_up() -> None:
    """Control: leaders that never snapshot for the bounded node leave it behind (the checks bite)."""
    stuck = 0
    for seed in range(100):
        try:
            bounded_schedule(seed, snapshot_when_wanted=False)
        except AssertionError:
            stuck += 1
    assert stuck >= 30, f"only {stuck} of 100 schedules noticed"
