"""Static election settings, in ticks of the daemon's clock, and the checks between them."""

from __future__ import annotations

import msgspec


class ElectionConfig(msgspec.Struct, frozen=True):
    """Static election settings. All durations are in ticks of the daemon's clock."""

    node_id: str  # this node's key
    peers: tuple[str, ...]  # the other nodes' keys, self excluded
    # The leader sends a Heartbeat to every peer every `heartbeat_ticks` ticks, or
    # every `idle_heartbeat_ticks` while idle (Replication.beat_ticks); 0: never thinned.
    heartbeat_ticks: int = 1
    idle_heartbeat_ticks: int = 0
    # Each reset draws the election timeout uniformly from [min, max] inclusive;
    # randomness keeps candidates from splitting the vote forever (Raft §5.2).
    # `election_ticks_min` is also the CheckQuorum window and the leader lease.
    election_ticks_min: int = 10
    election_ticks_max: int = 20
    pre_vote: bool = True
    check_quorum: bool = True
    # Boot with the election timer wound forward by `election_ticks_min - 1`,
    # so the first campaign comes 1..(max - min + 1) ticks after start instead
    # of min..max (etcd's "initial election tick advance"). Safe only with
    # Pre-Vote: a node booting into a cluster with a live leader then asks
    # peers that are inside their lease, is refused, and disturbs no one.
    fast_first_election: bool = False
    # Log replication (replication.py): a new leader appends a no-op entry and
    # `propose` appends commands. Off, the log stays empty and the core is the
    # election alone, as the daemon runs it until it carries entries.
    replicate: bool = False
    # At most this many entries in one AppendEntries, and (past the first) this many
    # bytes of their data: each message is one fsync on the follower, so it carries
    # a whole batch of small records, but never a run of big results at once.
    max_append_entries: int = 1024
    max_append_bytes: int = 4 << 20

    @property
    def quorum(self) -> int:
        """Votes (self included) needed to win: a strict majority of the cluster."""
        return (len(self.peers) + 1) // 2 + 1

    def validate(self) -> None:
        """Raise ValueError naming both values when a relation between fields breaks."""
        if not self.node_id:
            raise ValueError("node_id must be non-empty")
        if self.node_id in self.peers:
            raise ValueError(f"node_id ({self.node_id!r}) must not be in peers {self.peers!r}")
        if len(set(self.peers)) != len(self.peers):
            raise ValueError(f"peers {self.peers!r} contain duplicates")
        if self.heartbeat_ticks < 1:
            raise ValueError(f"heartbeat_ticks ({self.heartbeat_ticks}) must be at least 1")
        # A follower must be able to miss a heartbeat and still hear the next
        # one before it starts an election, or load alone causes elections.
        if self.election_ticks_min <= 2 * self.heartbeat_ticks:
            raise ValueError(
                f"election_ticks_min ({self.election_ticks_min}) must be greater than"
                f" 2 * heartbeat_ticks ({self.heartbeat_ticks})"
            )
        idle = self.idle_heartbeat_ticks
        if idle and not self.heartbeat_ticks <= idle < self.election_ticks_min / 2:
            raise ValueError(
                f"idle_heartbeat_ticks ({idle}) must be at least heartbeat_ticks ({self.heartbeat_ticks})"
                f" and under half election_ticks_min ({self.election_ticks_min})"
            )
        if self.election_ticks_max < self.election_ticks_min:
            raise ValueError(
                f"election_ticks_max ({self.election_ticks_max}) must be at least"
                f" election_ticks_min ({self.election_ticks_min})"
            )
        if self.max_append_entries < 1:
            raise ValueError(f"max_append_entries ({self.max_append_entries}) must be at least 1")
        if self.fast_first_election and not self.pre_vote:
            raise ValueError("fast_first_election needs pre_vote: an early vote would disrupt a live leader")
