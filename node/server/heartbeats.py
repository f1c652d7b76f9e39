"""The leader's heartbeat links: a UDP beacon and a gRPC stream per follower.

Heartbeats are most of what an idle cluster does, so they take the cheapest
path that works. Each beat goes out as a sealed datagram (node/server/beacons.py);
while the follower answers those, that is all. So do small AppendEntries where
the links are plaintext (beacons.py says when and why). A beat whose previous
datagram went unanswered also goes on the link's long-lived bidirectional
`Heartbeat` gRPC stream, which carries the term's beacon key: that is how a
follower learns the key, and how heartbeats keep flowing where UDP does not.

A link never blocks the caller: `send()` skips a bare gRPC beat while the
previous write is still pending (a paused peer whose window is full), and
queues one that carries entries or a snapshot (the leader sent them once:
replication.py), up to MAX_QUEUED; a snapshot in chunks is one such write
(`send_chunks`, snapshotchunks.py); a stream that has gone unanswered for
`stale_s` is torn down and reopened, so a peer that died or restarted is
picked up again within about one election timeout. A write still under way
is judged from the last answer (a snapshot's chunks are answered as they
come, beatstream.py). While datagrams are answered the stream's clock is
not kept (the follower is heard); once they are not, a write still under
way is judged from the first beat that finds it so.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterator

import grpc

from node._proto import distnode_pb2 as pb
from node.channels import StubCache
from node.server import beacons
from node.server.beacons import BeaconSender
from node.wire.log import LargeBeat
from node.wire.snapshotchunks import chunks

log = logging.getLogger("distnode.heartbeats")

#: Called with (peer address, reply) for every reply that arrives.
OnReply = Callable[[str, pb.HeartbeatReply], None]
#: Called with (peer address, why) when a stream fails or goes unanswered.
OnFailure = Callable[[str, str], None]
Stream = grpc.aio.StreamStreamCall[pb.HeartbeatRequest | bytes, pb.HeartbeatReply]
#: What one write puts on a stream: a beat, one with large entries (framed in a thread),
#: or a snapshot's chunks (made as they are written).
Write = pb.HeartbeatRequest | LargeBeat | Iterator[pb.HeartbeatRequest]
#: Beats with entries or a snapshot queued behind a pending write, at most: the leader has
#: at most replication.MAX_MESSAGES_IN_FLIGHT of them unanswered, and one more is lost as
#: a dropped message is (sent again after its wait).
MAX_QUEUED = 8
#: A UDP socket to a follower that could not be had is asked for again after this long;
#: its beats go by gRPC meanwhile.
UDP_RETRY_S = 5.0


class HeartbeatLink:
    def __init__(
        self, address: str, stubs: StubCache, on_reply: OnReply, stale_s: float,
        key: bytes | None = None, on_failure: OnFailure | None = None,
        totals: dict[tuple[str, str], int] | None = None, on_rtt: Callable[[float], None] | None = None,
        entries_by_udp: bool = False, on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.address = address
        self.stubs = stubs
        self.on_reply = on_reply
        self.on_failure = on_failure or (lambda address, why: None)
        self.stale_s = stale_s
        #: The term's beacon key; None keeps this link on gRPC alone.
        self.key = key
        self._beacon: BeaconSender | None = None
        self._connecting: asyncio.Task[None] | None = None
        #: When a UDP socket that could not be had is asked for again; how many were not.
        self._udp_retry_at_s, self._udp_failures = 0.0, 0
        self._call: Stream | None = None
        self._reader: asyncio.Task[None] | None = None
        #: The call whose write is still pending, if any (one write at a time per stream).
        self._pending: Stream | None = None
        #: Beats with entries or a snapshot waiting for that write, oldest first.
        self._queued: collections.deque[Write] = collections.deque()
        #: Whether the follower's last reply said it takes snapshots in chunks (each reply
        #: says, by UDP or on the stream: a follower that restarted may run another version).
        #: Kept across its streams, so a follower back from a restart is caught up in chunks
        #: at once: should it have come back as an earlier version, it reads each chunk as a
        #: bare beat (snapshotchunks.py), and its answer takes the word back.
        self.takes_chunks = False
        self._writers: set[asyncio.Task[None]] = set()
        #: When the oldest gRPC beat still unanswered was written, or the last answer that
        #: came while a write was still under way (a snapshot's chunks): the stale clock.
        self._unanswered_since_s: float | None = None
        #: When the oldest gRPC beat still unanswered was written: a round trip's start.
        self._rtt_from_s: float | None = None
        #: Whether entries that fit may go as a datagram (only where the links are plaintext).
        self.entries_by_udp = entries_by_udp
        #: Beats sent on each path, for tests and reports; `entries_udp` of `sent_udp` carried entries.
        self.sent_udp = 0
        self.sent_grpc = 0
        self.entries_udp = 0
        #: Beats sent to each (peer, transport) over every leadership, for the metrics.
        self.totals = totals if totals is not None else {}
        #: Told each beat's round trip, in seconds, when one can be timed.
        self.on_rtt = on_rtt or (lambda seconds: None)
        #: Told the follower's address when it refused a message as too large.
        self.on_refused = on_refused or (lambda address: None)
        self._logged_udp = False

    @property
    def on_udp(self) -> bool:
        """True while the follower answers every datagram (beats then skip gRPC)."""
        return self._beacon is not None and self._beacon.answering

    def send(self, request: pb.HeartbeatRequest | LargeBeat, seq: int = 0, reliable: bool = False) -> None:
        """Send one heartbeat (`request` without key or seq); returns at once. A
        `reliable` one (it carries log entries or a snapshot) takes the stream, or a
        datagram alone if it carries entries that fit and datagrams are answered."""
        if isinstance(request, LargeBeat):
            self._keyed(request.head)
            self._send_grpc(request, queue=True)
            return
        if reliable:
            if not self._entries_by_datagram(request, seq):
                self._send_grpc(self._keyed(request), queue=True)
            return
        on_udp = self.on_udp
        if on_udp and not self._logged_udp:
            self._logged_udp = True
            log.info("heartbeats to %s go by UDP", self.address, extra={"peer": self.address})
        if self._beacon is not None:
            self._beacon.send(seq, request)
            self.sent_udp += 1
            self.totals[(self.address, "udp")] = self.totals.get((self.address, "udp"), 0) + 1
        elif self.key is not None and (self._connecting is None or (
                self._connecting.done() and time.monotonic() >= self._udp_retry_at_s)):
            self._connecting = asyncio.get_running_loop().create_task(self._connect(self.key))
        if on_udp:
            self._unanswered_since_s = self._rtt_from_s = None  # the stream idles: judged afresh when used
            return
        request.seq = 0
        self._send_grpc(self._keyed(request))

    def send_chunks(self, head: pb.HeartbeatRequest, data: bytes, chunk_bytes: int) -> None:
        """Send a snapshot in chunks of `chunk_bytes` (`head`: its request without the data)
        on the stream, as one write: made one at a time, so the loop serves between them."""
        self._send_grpc(chunks(self._keyed(head), data, chunk_bytes), queue=True)

    def _keyed(self, request: pb.HeartbeatRequest) -> pb.HeartbeatRequest:
        """`request` with the term's beacon key: for the stream, never a datagram."""
        if self.key is not None:
            request.beacon_key = self.key
        return request

    def _entries_by_datagram(self, request: pb.HeartbeatRequest, seq: int) -> bool:
        """Send `request` (entries, not a snapshot) as a datagram if allowed; True if sent."""
        beacon = self._beacon
        if not self.entries_by_udp or beacon is None or not beacon.answering or request.is_snapshot:
            return False
        request.seq = seq
        if request.ByteSize() > beacons.MAX_PAYLOAD_BYTES:
            request.seq = 0
            return False
        beacon.send(seq, request)
        self.sent_udp += 1
        self.entries_udp += 1
        self.totals[(self.address, "udp")] = self.totals.get((self.address, "udp"), 0) + 1
        return True

    async def _connect(self, key: bytes) -> None:
        level = logging.DEBUG if self._udp_failures else logging.INFO  # said once a leadership
        beacon = await beacons.connect(self.address, key, self._on_beacon_reply, level)
        if beacon is None:  # its name does not resolve yet (a container restarting), say
            self._udp_failures += 1
            self._udp_retry_at_s = time.monotonic() + UDP_RETRY_S
        elif self.key is key:
            self._beacon = beacon
        elif beacon is not None:
            beacon.close()  # closed while connecting

    def _on_beacon_reply(self, reply: pb.HeartbeatReply) -> None:
        self.takes_chunks = reply.takes_snapshot_chunks
        if self._beacon is not None and self._beacon.last_rtt_s is not None:
            self.on_rtt(self._beacon.last_rtt_s)
        self.on_reply(self.address, reply)

    def _send_grpc(self, request: Write, queue: bool = False) -> None:
        now = time.monotonic()
        since = self._unanswered_since_s
        if self._call is not None and since is not None and now - since > self.stale_s:
            self.on_failure(self.address, f"heartbeat stream unanswered for {(now - since) * 1000:.0f} ms")
            self.close_stream()  # unanswered for too long (even a write stuck): start over
        if self._call is not None and self._pending is self._call:
            # The previous beat has not left yet: the peer is not reading. A bare beat is skipped;
            # entries wait their turn, as a stream would have carried them. A write its clock was
            # not kept for (datagrams were answered meanwhile) is judged from now.
            if self._unanswered_since_s is None:
                self._unanswered_since_s = now
            if queue and len(self._queued) < MAX_QUEUED:
                self._queued.append(request)
            return
        call = self._call if self._call is not None else self._open()
        if self._unanswered_since_s is None:
            self._unanswered_since_s = now
        if self._rtt_from_s is None:
            self._rtt_from_s = now
        self.sent_grpc += 1
        self.totals[(self.address, "grpc")] = self.totals.get((self.address, "grpc"), 0) + 1
        self._pending = call
        writer = asyncio.get_running_loop().create_task(self._write(call, request))
        self._writers.add(writer)  # hold a reference: a collected pending task is lost
        writer.add_done_callback(self._writers.discard)

    def _open(self) -> Stream:
        call = self._call = self.stubs.stub(self.address).Heartbeat()
        self._unanswered_since_s = self._rtt_from_s = None  # judged from its first write
        self._reader = asyncio.get_running_loop().create_task(self._read(call))
        return call

    async def _write(self, call: Stream, write: Write) -> None:
        try:
            if isinstance(write, LargeBeat):
                await call.write(await asyncio.to_thread(write.frame))  # off the loop: see LargeBeat
            elif isinstance(write, pb.HeartbeatRequest):
                await call.write(write)
            else:
                for chunk in write:
                    await call.write(chunk)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            self._drop(call)
        finally:
            if self._pending is call:
                self._pending = None
                if self._queued and self._call is call:
                    self._send_grpc(self._queued.popleft(), queue=True)

    async def _read(self, call: Stream) -> None:
        try:
            async for reply in call:
                now = time.monotonic()
                if self._rtt_from_s is not None:  # from the oldest beat still unanswered
                    self.on_rtt(now - self._rtt_from_s)
                self._rtt_from_s = None
                # A write still under way (a snapshot's chunks, answered as they come:
                # beatstream.py) is judged from this answer on, so a stuck one is still found.
                self._unanswered_since_s = now if self._pending is call else None
                self.takes_chunks = reply.takes_snapshot_chunks
                self.on_reply(self.address, reply)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is not grpc.StatusCode.CANCELLED:  # cancelled: closed by us
                self.on_failure(self.address, f"heartbeat stream ended: {exc.code().name}: {exc.details()}")
            if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                # Over the follower's --max-message-bytes: it may have restarted with a smaller
                # one before any of its replies said so; its Status says (daemon.py).
                self.on_refused(self.address)
        finally:
            self._drop(call)

    def _drop(self, call: Stream) -> None:
        if self._call is call:
            self._call = None
            self._queued.clear()
            call.cancel()

    def close(self) -> None:
        self.key = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self._beacon is not None:
            self._beacon.close()
            self._beacon = None
        self.close_stream()

    def close_stream(self) -> None:
        call, reader = self._call, self._reader
        self._call = self._reader = None
        self._unanswered_since_s = self._rtt_from_s = None
        self._queued.clear()  # for the stream that ended: the leader sends them again after its wait
        if call is not None:
            call.cancel()
        if reader is not None:
            reader.cancel()
        for writer in list(self._writers):
            writer.cancel()


class HeartbeatLinks:
    """All of the leader's links, opened lazily, closed when leadership ends.

    With `udp` set, each leadership (from the first `send` after `close`) draws
    a fresh beacon key and numbers its beats from 1.
    """

    def __init__(
        self, stubs: StubCache, on_reply: OnReply, stale_s: float, udp: bool = True,
        on_failure: OnFailure | None = None,
    ) -> None:
        self.stubs = stubs
        self.on_reply = on_reply
        self.on_failure = on_failure
        #: Beats sent to each (peer, transport), kept across leaderships.
        self.totals: dict[tuple[str, str], int] = {}
        #: Told each beat's round trip (the metrics' histogram).
        self.on_rtt: Callable[[float], None] = lambda seconds: None
        #: Told a follower's address when it refused a message as larger than it takes.
        self.on_refused: Callable[[str], None] = lambda address: None
        self.stale_s = stale_s
        self.udp = udp
        #: Datagrams are sealed, not encrypted: entries (jobs' sources, answers) take
        #: them only where gRPC is plaintext too.
        self.entries_by_udp = udp and not stubs.factory.secure
        self._links: dict[str, HeartbeatLink] = {}
        self._key: bytes | None = None
        self._seq = 0

    def link(self, address: str) -> HeartbeatLink | None:
        return self._links.get(address)

    def send(self, address: str, request: pb.HeartbeatRequest | LargeBeat, reliable: bool = False) -> None:
        link = self._link(address)  # first: a new leadership's first link numbers beats from 1
        self._seq += 1
        link.send(request, self._seq, reliable)

    def _link(self, address: str) -> HeartbeatLink:
        link = self._links.get(address)
        if link is None:
            if self.udp and self._key is None:
                self._key, self._seq = beacons.new_key(), 0
            link = self._links[address] = HeartbeatLink(
                address, self.stubs, self.on_reply, self.stale_s, self._key, self.on_failure, self.totals,
                self.on_rtt, self.entries_by_udp, self.on_refused,
            )
        return link

    def close(self) -> None:
        self._key = None
        links, self._links = self._links, {}
        for link in links.values():
            try:
                link.close()
            except Exception:  # one link's trouble must not keep the others open
                log.debug("closing the heartbeat link to %s failed", link.address, exc_info=True)

