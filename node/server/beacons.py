"""UDP beacons: the leader's heartbeats as sealed datagrams beside gRPC.

Why
---
An idle cluster does nothing but heartbeats, and on gRPC's asyncio stack a
message on an open stream wakes several threads in each process (gRPC's event
engine, its completion-queue poller, then the event loop). At the default 50 ms
beat that alone is 1.3-1.9 % of a core on an idle leader; a datagram wakes the
event loop once, and costs about a third of that (`scripts/heartbeat_floor.py`
measures both transports side by side, without distnode around them).

Theory of operation
-------------------
gRPC stays the authority; UDP only makes the common case cheap.

- A new leader draws a random key for its term (`new_key`). Its heartbeats
  to a follower go on the gRPC `Heartbeat` stream, which is authenticated like
  every RPC (mutual TLS, token) and carries the key, until the follower has
  answered a datagram.
- Every beat also goes out as a datagram to the follower's listen address
  (same host, same port number, UDP), sealed with a MAC under the key.
  The follower checks the seal against the key it was given over gRPC, treats
  the beat exactly as one that came over gRPC, and answers with a sealed
  datagram back to the sender.
- While the previous datagram to a follower was answered, a beat goes as a
  datagram only. When it was not (UDP filtered, a datagram lost, a follower
  that restarted and has no key), the beat also goes on gRPC, so the failure
  detector never depends on UDP: at worst every beat costs what it did before,
  plus one datagram.
- Each datagram carries `seq`, which grows through the leader's term. A
  follower takes a beat only with a seq above the last it took under that key,
  and a leader takes a reply only once, and only to one of its last
  `REPLY_WINDOW` beats, so a recorded datagram cannot be replayed to keep a
  dead leader or peer "alive". (Replies may come out of order: a follower
  writing its journal answers a bare beat at once while its answer to the
  entries before it waits for the write.)

Log entries: where the links are plaintext (no TLS), an AppendEntries that
fits in one datagram goes as a datagram instead of on the stream, while the
follower answers datagrams; the follower stores it and answers as it answers
the stream (fsync first). A detached submit's acknowledgement waits for one
such round trip, and a datagram is its cheapest form. A lost one is sent
again once two beats passed without an answer for it (replication.py's
`RESEND_BEATS`); the beat after an unanswered datagram also takes the
stream. With TLS, entries take the stream only: a datagram is authenticated,
not encrypted, and the records hold the jobs' sources and answers.

Wire format: MAGIC (4 bytes) | kind (1 byte) | protobuf message | tag (16
bytes: keyed BLAKE2s of everything before it, BLAKE2's own MAC mode, three
times cheaper than HMAC-SHA256 on messages this small). A beat holds a
`HeartbeatRequest` with `seq` set and `beacon_key` empty; a reply holds a
`HeartbeatReply` with the beat's `seq`.

Known limit: a follower listening on a wildcard address of a multi-homed host
may answer from another source address than the one the leader sent to; the
leader's connected socket then drops the answers and that pair stays on gRPC.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import msgspec

from node._proto import distnode_pb2 as pb
from node.addresses import split_host_port
from node.errors import DistnodeError

log = logging.getLogger("distnode.beacons")

MAGIC = b"DNB1"
BEAT = 1
REPLY = 2
KEY_BYTES = 32
TAG_BYTES = 16
_HEAD = len(MAGIC) + 1
#: Larger datagrams are not ours: a beat is under 100 bytes, a small job's record a few
#: hundred, and 1400 fits one Ethernet frame (1500 less the IP and UDP headers) unfragmented.
MAX_DATAGRAM_BYTES = 1400
#: The most a sealed message's protobuf may take.
MAX_PAYLOAD_BYTES = MAX_DATAGRAM_BYTES - _HEAD - TAG_BYTES


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _tag(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2s(body, key=key, digest_size=TAG_BYTES).digest()


def seal(key: bytes, kind: int, payload: bytes) -> bytes:
    body = MAGIC + bytes((kind,)) + payload
    return body + _tag(key, body)


def unseal(key: bytes, kind: int, datagram: bytes) -> bytes | None:
    """The payload of a datagram of `kind` sealed under `key`, else None."""
    if not _HEAD + TAG_BYTES <= len(datagram) <= MAX_DATAGRAM_BYTES:
        return None
    if datagram[: len(MAGIC)] != MAGIC or datagram[len(MAGIC)] != kind:
        return None
    body, tag = datagram[:-TAG_BYTES], datagram[-TAG_BYTES:]
    if not hmac.compare_digest(_tag(key, body), tag):
        return None
    return body[_HEAD:]


class _Endpoint(asyncio.DatagramProtocol):
    """A datagram socket's transport, held from `connection_made` until `close`."""

    def __init__(self) -> None:
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an earlier datagram: unanswered, so gRPC carries the beats

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


E = TypeVar("E", bound=_Endpoint)


async def _open(endpoint: E, level: int, why_not: str, **where: Any) -> E | None:
    """`endpoint` on a new datagram socket (`local_addr=` or `remote_addr=`); None, logged, if refused."""
    try:
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: endpoint, **where)
    except OSError as exc:
        log.log(level, "%s (%s); gRPC carries them", why_not, exc)
        return None
    return endpoint


# -- follower side --------------------------------------------------------


class _Grant(msgspec.Struct):
    """The key a leader gave us over gRPC, and the last seq taken under it."""

    leader_id: str
    term: int
    key: bytes
    last_seq: int = 0


#: Steps a beat that passed every check; calls its second argument with the reply to send
#: back, at once or once the beat's entries are durable.
OnBeat = Callable[[pb.HeartbeatRequest, Callable[[pb.HeartbeatReply], None]], None]


class BeaconListener(_Endpoint):
    """A node's UDP socket: takes sealed beats from the leader it knows, answers them."""

    def __init__(self, on_beat: OnBeat) -> None:
        super().__init__()
        self.on_beat = on_beat
        self._grant: _Grant | None = None
        #: Counters, for tests and logs.
        self.taken = 0
        self.dropped = 0

    def grant(self, leader_id: str, term: int, key: bytes) -> None:
        """Accept `key` for beats from `leader_id` in `term` (it came over authenticated gRPC)."""
        current = self._grant
        if current is not None and (current.leader_id, current.term, current.key) == (leader_id, term, key):
            return  # the same grant again: keep the replay window
        self._grant = _Grant(leader_id, term, bytes(key))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        grant = self._grant
        payload = None if grant is None else unseal(grant.key, BEAT, data)
        if grant is None or payload is None:
            self.dropped += 1
            return
        try:
            beat = pb.HeartbeatRequest.FromString(payload)
        except Exception:  # sealed by the key holder, so never expected; still not fatal
            self.dropped += 1
            return
        if beat.leader_id != grant.leader_id or beat.term != grant.term or beat.seq <= grant.last_seq:
            self.dropped += 1  # another term's, or a replay
            return
        grant.last_seq = beat.seq
        self.taken += 1
        beat.ClearField("beacon_key")  # keys are granted over gRPC only
        try:
            self.on_beat(beat, functools.partial(self._answer, grant.key, beat.seq, addr))
        except DistnodeError:  # refused as the gRPC stream would refuse it (not a member...)
            self.dropped += 1

    def _answer(self, key: bytes, seq: int, addr: Any, reply: pb.HeartbeatReply) -> None:
        reply.seq = seq
        if self._transport is not None:
            self._transport.sendto(seal(key, REPLY, reply.SerializeToString()), addr)


async def listen(listen_address: str, port: int, on_beat: OnBeat) -> BeaconListener | None:
    """Bind the UDP twin of the gRPC port; None (logged) if it cannot be had."""
    host, _ = split_host_port(listen_address)
    return await _open(BeaconListener(on_beat), logging.WARNING,
                       f"UDP heartbeats off: cannot bind udp {host}:{port}",
                       local_addr=(host or "0.0.0.0", port))


# -- leader side ----------------------------------------------------------

#: Called with each reply that passed every check.
OnReply = Callable[[pb.HeartbeatReply], None]
#: Seqs back whose replies a leader still takes, each once (seqs count the beats to all
#: followers, so a follower's share of the window is this over their number).
REPLY_WINDOW = 1024


class BeaconSender(_Endpoint):
    """The leader's socket to one follower, connected so only its answers arrive."""

    def __init__(self, key: bytes, on_reply: OnReply) -> None:
        super().__init__()
        self.key = key
        self.on_reply = on_reply
        self.sent_seq = 0
        self.answered_seq = 0
        #: The seqs of the replies taken within the window (REPLY_WINDOW), and the same seqs
        #: in the order they were taken, which forgets them as they leave the window: a
        #: reply costs the same however many are held (the set is never rebuilt). One taken
        #: out of order may stay a while past the window, behind later ones: at most two
        #: windows' worth are held.
        self._taken: set[int] = set()
        self._taken_order: collections.deque[int] = collections.deque()
        #: When the last datagram left, and the round trip of the last one answered (seconds).
        self._sent_at_s = 0.0
        self.last_rtt_s: float | None = None
        #: Datagrams refused (forged, replayed, unasked-for), for tests and logs.
        self.rejected = 0

    @property
    def answering(self) -> bool:
        """True when the last datagram sent has been answered."""
        return self.sent_seq > 0 and self.answered_seq == self.sent_seq

    def send(self, seq: int, beat: pb.HeartbeatRequest) -> None:
        if self._transport is None:
            return
        beat.seq = seq
        self.sent_seq = seq
        self._sent_at_s = time.perf_counter()
        self._transport.sendto(seal(self.key, BEAT, beat.SerializeToString()))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        payload = unseal(self.key, REPLY, data)
        try:
            reply = None if payload is None else pb.HeartbeatReply.FromString(payload)
        except Exception:
            reply = None
        oldest = self.sent_seq - REPLY_WINDOW
        if reply is None or not oldest < reply.seq <= self.sent_seq or reply.seq in self._taken:
            self.rejected += 1  # forged, a replay, or an answer to a beat we never sent
            return
        while self._taken_order and self._taken_order[0] <= oldest:
            self._taken.discard(self._taken_order.popleft())
        self._taken.add(reply.seq)
        self._taken_order.append(reply.seq)
        self.answered_seq = max(self.answered_seq, reply.seq)
        # Only an answer to the newest beat times it: an older one left before `_sent_at_s`.
        self.last_rtt_s = time.perf_counter() - self._sent_at_s if reply.seq == self.sent_seq else None
        self.on_reply(reply)


async def connect(
    address: str, key: bytes, on_reply: OnReply, level: int = logging.INFO
) -> BeaconSender | None:
    """A socket to the UDP twin of `address`; None (logged at `level`) if it cannot be had."""
    return await _open(BeaconSender(key, on_reply), level, f"no UDP heartbeats to {address}",
                       remote_addr=split_host_port(address))

