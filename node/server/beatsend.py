"""A leader's AppendEntries and InstallSnapshot messages, onto its heartbeat links.

Entries and snapshots need the gRPC stream; a bare beat may go by UDP
(heartbeats.py). A snapshot larger than a chunk goes in chunks to a
follower that takes them (snapshotchunks.py), so neither loop copies it
whole and `--max-message-bytes` bounds only the chunk. To a follower that
has not said it takes chunks (an earlier version) it goes in one message,
and one over `--max-message-bytes` could never arrive: it is not built (the
core asks for it again after its wait, replication.py), an ERROR names the
flags once for each follower and snapshot, and a bare beat goes in its
place, refused, so the follower keeps its leader instead of campaigning. A
snapshot sent is said at INFO: it is rare, and as large as the job table.
"""

from __future__ import annotations

import dataclasses
import logging

from node.core.messages import Heartbeat, InstallSnapshot
from node.server.config import NodeConfig
from node.server.heartbeats import HeartbeatLinks
from node.server.peers import PeerTable
from node.wire.log import beat_to_proto, beat_to_wire
from node.wire.snapshotchunks import CHUNK_BYTES

log = logging.getLogger("distnode")

#: What a HeartbeatRequest adds around a snapshot's data, at most.
SNAPSHOT_ENVELOPE_BYTES = 4096


class BeatSender:
    def __init__(self, heartbeats: HeartbeatLinks, peers: PeerTable, config: NodeConfig) -> None:
        self.heartbeats = heartbeats
        self.peers = peers
        self.config = config
        #: (follower, snapshot index) already said to be over the message limit.
        self._oversized: set[tuple[str, int]] = set()

    def send(self, message: Heartbeat | InstallSnapshot) -> None:
        if isinstance(message, InstallSnapshot) and self._send_chunks(message):
            return
        if isinstance(message, InstallSnapshot) and not self._fits(message):
            message = Heartbeat(message.src, message.dst, message.term, message.index, message.snapshot_term)
        request = beat_to_wire(message, self.config.address, self.config.tick_ms)
        reliable = isinstance(message, InstallSnapshot) or bool(message.entries)
        self.heartbeats.send(message.dst, request, reliable)

    def _send_chunks(self, snapshot: InstallSnapshot) -> bool:
        """Send `snapshot` in chunks if it is larger than one and its follower takes them."""
        chunk_bytes = min(CHUNK_BYTES, self._limit(snapshot.dst) - SNAPSHOT_ENVELOPE_BYTES)
        link = self.heartbeats.link(snapshot.dst)
        if link is None or not link.takes_chunks or not 0 < chunk_bytes < len(snapshot.data):
            return False
        log.info("sending %s the snapshot at %d (%d bytes, in chunks of %d): it lacks entries compacted away",
                 self.peers.name(snapshot.dst), snapshot.index, len(snapshot.data), chunk_bytes,
                 extra={"peer": snapshot.dst})
        bare = dataclasses.replace(snapshot, data=b"")
        head = beat_to_proto(bare, self.config.address, self.config.tick_ms)
        link.send_chunks(head, snapshot.data, chunk_bytes)
        return True

    def _fits(self, snapshot: InstallSnapshot) -> bool:
        """Whether `snapshot` fits a message; said at INFO if so, else once as an ERROR."""
        who = self.peers.name(snapshot.dst)
        limit = self._limit(snapshot.dst)
        if len(snapshot.data) + SNAPSHOT_ENVELOPE_BYTES <= limit:
            log.info("sending %s the snapshot at %d (%d bytes): it lacks entries compacted away",
                     who, snapshot.index, len(snapshot.data), extra={"peer": snapshot.dst})
            return True
        if (snapshot.dst, snapshot.index) not in self._oversized:
            self._oversized.add((snapshot.dst, snapshot.index))
            log.error("%s lacks entries this leader holds only in its snapshot at %d, and the snapshot "
                      "(%d bytes) is over --max-message-bytes (%d): it cannot be caught up; give every node "
                      "a larger --max-message-bytes, or a smaller --keep-result-bytes",
                      who, snapshot.index, len(snapshot.data), limit, extra={"peer": snapshot.dst})
        return False

    def _limit(self, follower: str) -> int:
        """What a message to `follower` may be: its --max-message-bytes, if smaller than ours."""
        return self.peers.message_bytes_of(follower, self.config.limits.max_message_bytes)
