"""Node configuration: addresses, timing, and the checks that keep them sane.

Every timing field carries its unit in its name. The election core counts in
ticks; this module turns milliseconds into ticks once, here, so the rest of
the daemon never converts.

Why the defaults (heartbeat 50 ms, election 250-500 ms, tick 10 ms):
- A follower needs about five missed heartbeats before it suspects the
  leader, so a loaded 2-core box that stalls a process for 100-150 ms does not
  start spurious elections.
- The median failover is roughly the smallest of the followers' randomized
  timeouts plus one pre-vote and one vote round trip: about 350 ms.
- The spread (max = 2 x min) is what Raft §5.2 relies on to make split votes
  rare; a 10 ms tick gives the randomization 25 distinct values.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from node.addresses import is_loopback, split_host_port
from node.core.electionconfig import ElectionConfig
from node.core.job import SHARD_ELEMS
from node.core.limits import MIN_NODE_MESSAGE_BYTES, Limits
from node.errors import ConfigError
from node.security import TlsFiles, check_token

DEFAULT_HEARTBEAT_MS = 50
DEFAULT_ELECTION_MS = (250, 500)
DEFAULT_TICK_MS = 10
#: The default idle beat is at most this many beats: a failover while idle then takes up
#: to a beat and a half longer (docs/operations.md, "Timing").
IDLE_BEATS_MAX = 2.5
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
#: A node id names its state directory (default_data_dir) and travels in every beat,
#: vote and record: short, and nothing a path or a log line would read otherwise.
MAX_NODE_ID_CHARS = 64


def parse_range_ms(text: str, field_name: str = "election-ms") -> tuple[int, int]:
    """Parse "MIN-MAX" (or a single number, meaning MIN-2*MIN) in milliseconds."""
    lo_text, sep, hi_text = text.partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if sep else 2 * lo
    except ValueError:
        raise ConfigError(f"{field_name}: expected MIN-MAX in ms, got {text!r}") from None
    return lo, hi


#: Finished jobs the job table keeps by default, and bytes of their results.
DEFAULT_KEEP_JOBS = 10_000
DEFAULT_KEEP_RESULT_BYTES = 64 << 20


def is_node_id(text: str) -> bool:
    return (0 < len(text) <= MAX_NODE_ID_CHARS and text.isprintable()
            and not any(c.isspace() or c in "/\\" for c in text))


def default_data_dir(node_id: str, listen: str) -> Path:
    """Where term and vote live when --data-dir is not given.

    Keyed by id and port so two local nodes never share it, and stable so a
    restarted node finds its vote again (the whole point of persisting it).
    """
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    port = listen.rpartition(":")[2]
    return Path(base) / "distnode" / f"{node_id}-{port}"


class NodeConfig(msgspec.Struct, frozen=True):
    """Everything a daemon needs to run. Build with `NodeConfig(...)`, then `validate()`."""

    node_id: str
    listen: str
    peers: tuple[str, ...]
    data_dir: Path
    #: How often the leader sends heartbeats. Also the follower's failure-detection grain.
    heartbeat_ms: int = DEFAULT_HEARTBEAT_MS
    #: How often while no job runs and every entry is committed: an idle cluster's CPU is
    #: mostly beats. None: the longest whole tick under half the election minimum (the
    #: quorum check hears two beats in every election minimum), at most IDLE_BEATS_MAX
    #: beats and at least one. Each beat says how late the next may be, and followers
    #: wait that much longer (Heartbeat.slack): the stall tolerance stays.
    idle_heartbeat_ms: int | None = None
    #: Randomized election timeout range; also the leader's CheckQuorum window
    #: and the time after which a silent worker is declared dead.
    election_ms_min: int = DEFAULT_ELECTION_MS[0]
    election_ms_max: int = DEFAULT_ELECTION_MS[1]
    #: Resolution of the daemon's clock. Timers are whole numbers of ticks.
    tick_ms: int = DEFAULT_TICK_MS
    #: Shard size in elements. Must be the same on every node for answers to
    #: be bit-identical across leaders (the leader's value is the one used).
    shard_elems: int = SHARD_ELEMS
    #: Where relative npy: paths are resolved. None: the working directory.
    data_root: Path | None = None
    #: The address other nodes and clients use to reach this one.
    advertise: str = ""
    #: Exit when this process's parent changes (used by the harness so that
    #: daemons never outlive it). 0 disables.
    parent_pid: int = 0
    #: TLS files; mutual TLS when `tls.ca` is set (for both peer and client traffic).
    tls: TlsFiles = msgspec.field(default_factory=TlsFiles)
    #: Cluster token every RPC must carry; None disables authentication.
    token: str | None = None
    #: Allow listening beyond loopback without TLS and a token.
    insecure: bool = False
    limits: Limits = msgspec.field(default_factory=Limits)
    #: The file formats (node/formats/) this node reads; None: every one whose
    #: library is installed. Nodes advertise them, and get shards only of those.
    formats: tuple[str, ...] | None = None
    #: Send heartbeats as sealed UDP datagrams beside gRPC (node/server/beacons.py).
    #: Off: every heartbeat goes on the gRPC stream, at about three times the CPU.
    udp_heartbeats: bool = True
    #: Also take SubmitBatches jobs on an abstract Unix socket, for clients in this
    #: node's network namespace (node/server/localsocket.py).
    local_socket: bool = True
    #: The job table's retention (node/core/jobtable.py): finished jobs kept, and
    #: bytes of their results kept; the oldest finished jobs go first.
    keep_jobs: int = DEFAULT_KEEP_JOBS
    keep_result_bytes: int = DEFAULT_KEEP_RESULT_BYTES
    #: Replace election.json with the journal's last term and no vote (statestore.py).
    reset_state: bool = False
    #: "text" (the default) or "json", one object per line (logs.py).
    log_format: str = "text"
    #: HOST:PORT of the read-only HTTP side (/metrics, /status.json; httpd.py); "" for none.
    http: str = ""

    @property
    def address(self) -> str:
        return self.advertise or self.listen

    def validate(self) -> None:
        if not is_node_id(self.node_id):
            raise ConfigError(f"id: 1 to {MAX_NODE_ID_CHARS} printable characters without spaces, '/' or"
                              f" '\\' (it names the node's state directory); got {self.node_id[:80]!r}")
        if self.address in self.peers:
            raise ConfigError(f"peers: lists this node's own address {self.address}")
        if len(set(self.peers)) != len(self.peers):
            raise ConfigError(f"peers: duplicate address in {','.join(self.peers)}")
        if not self.advertise and split_host_port(self.listen)[0] in WILDCARD_HOSTS:
            # Replies tell clients where the leader is: a wildcard would send them to their own host.
            raise ConfigError(
                f"listen: {self.listen} is every interface; give --advertise HOST:PORT, "
                "the address others reach this node at"
            )
        self._validate_timing()
        if self.token is not None:
            check_token(self.token)
        if self.keep_jobs < 0 or self.keep_result_bytes < 0:
            raise ConfigError(f"keep-jobs, keep-result-bytes: must not be negative, got "
                              f"{self.keep_jobs}, {self.keep_result_bytes}")
        if self.shard_elems < 1:
            raise ConfigError(f"shard-elems: must be positive, got {self.shard_elems}")
        if self.limits.max_message_bytes < MIN_NODE_MESSAGE_BYTES:
            raise ConfigError(f"max-message-bytes: a node needs at least {MIN_NODE_MESSAGE_BYTES} (a job's"
                              f" record and a snapshot chunk must fit), got {self.limits.max_message_bytes}")
        if self.data_root is not None:
            self._validate_data_root(self.data_root)
        self._validate_formats()
        self._validate_exposure()

    @staticmethod
    def _validate_data_root(root: Path) -> None:
        """A root that is no directory would refuse every job's path, each about the file."""
        try:
            why = "" if root.is_dir() else "is not a directory" if root.exists() else "does not exist"
        except OSError as exc:  # 3.11's is_dir() raises for a denied search or a name too long
            why = f"cannot be examined: {exc.strerror}"
        if why:
            raise ConfigError(f"data-root: {str(root)[:200]!r} {why}")

    def _validate_formats(self) -> None:
        if self.formats is None:
            return
        from node.formats import LIBRARIES, available

        unknown = [kind for kind in self.formats if kind not in LIBRARIES]
        if unknown:
            expected = ", ".join(LIBRARIES)
            raise ConfigError(f"formats: unknown {', '.join(unknown)} (expected some of {expected})")
        missing = [kind for kind in self.formats if kind not in available()]
        if missing:
            libraries = ", ".join(LIBRARIES[kind] for kind in missing)
            raise ConfigError(
                f"formats: {', '.join(missing)} needs {libraries}, not installed here "
                "(pip install 'distnode[formats]')"
            )

    def _validate_exposure(self) -> None:
        """Refuse to serve a network unlocked: Ray's open job API became CVE-2023-48022."""
        if self.http and not (is_loopback(split_host_port(self.http)[0]) or self.insecure):
            raise ConfigError(f"http: {self.http} is reachable from the network, and the HTTP side has"
                              " no TLS and no token; keep it on loopback, or pass --insecure if this"
                              " network is trusted")
        host, _ = split_host_port(self.listen)
        if is_loopback(host) or self.insecure:
            return
        missing = [name for name, ok in (("TLS", self.tls.enabled), ("token", bool(self.token))) if not ok]
        if missing:
            raise ConfigError(
                f"listen: {self.listen} is reachable from the network but has no "
                f"{' and no '.join(missing)}; add --tls-cert/--tls-key/--tls-ca and --token-file, "
                "or pass --insecure if this network is trusted"
            )

    def _validate_timing(self) -> None:
        if self.tick_ms < 1:
            raise ConfigError(f"tick-ms: must be at least 1, got {self.tick_ms}")
        if self.heartbeat_ms < self.tick_ms:
            raise ConfigError(
                f"heartbeat-ms ({self.heartbeat_ms}) must be at least tick-ms ({self.tick_ms})"
            )
        if self.election_ms_min < 3 * self.heartbeat_ms:
            raise ConfigError(
                f"election-ms minimum ({self.election_ms_min}) must be at least "
                f"3 x heartbeat-ms ({self.heartbeat_ms})"
            )
        idle, idle_ticks = self.idle_heartbeat_ms, self.idle_heartbeat_ticks
        if idle is not None and (idle < self.heartbeat_ms or 2 * idle_ticks >= self.election_ticks[0]):
            raise ConfigError(
                f"idle-heartbeat-ms ({idle}) must be at least heartbeat-ms ({self.heartbeat_ms}) "
                f"and under half the election-ms minimum ({self.election_ms_min})"
            )
        if self.election_ms_max < self.election_ms_min:
            raise ConfigError(
                f"election-ms maximum ({self.election_ms_max}) must be at least "
                f"its minimum ({self.election_ms_min})"
            )

    @property
    def heartbeat_ticks(self) -> int:
        return max(1, self.heartbeat_ms // self.tick_ms)

    @property
    def idle_heartbeat_ticks(self) -> int:
        if self.idle_heartbeat_ms is None:
            under_half = (self.election_ticks[0] - 1) // 2
            return max(self.heartbeat_ticks, min(under_half, int(IDLE_BEATS_MAX * self.heartbeat_ticks)))
        return max(self.heartbeat_ticks, self.idle_heartbeat_ms // self.tick_ms)

    @property
    def election_ticks(self) -> tuple[int, int]:
        return self.election_ms_min // self.tick_ms, self.election_ms_max // self.tick_ms

    def election_config(self) -> ElectionConfig:
        """The consensus core's settings. A message of entries carries up to 4 MiB of them
        past its first, less under a smaller --max-message-bytes (recordsize.py)."""
        lo, hi = self.election_ticks
        return ElectionConfig(
            node_id=self.node_id, peers=self.peers, heartbeat_ticks=self.heartbeat_ticks,
            idle_heartbeat_ticks=self.idle_heartbeat_ticks, election_ticks_min=lo, election_ticks_max=hi,
            fast_first_election=True, replicate=True,
            max_append_bytes=min(4 << 20, self.limits.max_message_bytes // 4),
        )
