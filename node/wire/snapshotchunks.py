"""A Raft §7 snapshot on the heartbeat stream in chunks: cut at the leader, put back together
at the follower.

A snapshot is as large as the job table, 42 MB with four large answers kept. Sent whole
in one `HeartbeatRequest`, its bytes were copied into the message and serialized on the
leader's event loop (about 85 ms here, three times that on a loaded host), then parsed
and copied out on the follower's (about 55 ms): the leader's loop sent no beats that
long, so its other followers' election timers ran out (docs/journal.md, "A snapshot in
chunks"). It also could not be sent at all past `--max-message-bytes`. In chunks of
CHUNK_BYTES, each copy is small and the loops serve between them.

The chunks of one snapshot are consecutive messages on one stream (heartbeats.py writes
them as one write), each the same request with its own `snapshot_offset` and slice of
the data, and `snapshot_size` the whole. The follower steps the last as one
InstallSnapshot, as it would a whole one, and each before it as the bare beat it reads
as, answered that it is taking them (`answer_chunks`, beatstream.py). A leader sends
chunks only to a follower whose last reply said `takes_snapshot_chunks`; a snapshot no
larger than a chunk, and any to a follower that has not said so (a node of an earlier
version), goes whole. Should chunks reach a node of an earlier version all the same (one
back from a restart as such: the leader keeps its follower's word across streams), none
of them reads as a snapshot there: a chunk is not
`is_snapshot`, and its `prev_index` and `prev_term` are the snapshot's last entry, so
such a node reads a bare AppendEntries and answers truly whether its log holds that
entry (Raft's log matching: then it holds all before it).

A chunk that does not continue the snapshot under way on its stream (another snapshot's,
a gap, more bytes than the size said) is INVALID_ARGUMENT: it ends that stream, and the
leader's next stream starts again from the first chunk. The follower keeps the chunks
as they arrive, not an allocation of the size the first one claims.
"""

from __future__ import annotations

from collections.abc import Iterator

from node._proto import distnode_pb2 as pb
from node.errors import InvalidField

#: A chunk's bytes. 1 MiB: copying and serializing it costs either loop about a
#: millisecond; 42 MB in such chunks costs both ends 12-21 ms in all, against 140 ms whole
#: (larger messages cost more per byte here: fresh pages to fault in).
CHUNK_BYTES = 1 << 20


def chunks(
    head: pb.HeartbeatRequest, data: bytes, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[pb.HeartbeatRequest]:
    """`head` (a snapshot's request without its data) once per chunk of `data`, made as
    they are taken, so the caller's loop may serve between them."""
    view = memoryview(data)
    for offset in range(0, len(data), chunk_bytes):
        request = pb.HeartbeatRequest()
        request.CopyFrom(head)
        request.is_snapshot = False  # see above: to an earlier version, a bare beat
        request.prev_index, request.prev_term = head.snapshot_index, head.snapshot_term
        request.snapshot_size, request.snapshot_offset = len(data), offset
        request.answer_chunks = True
        request.snapshot_data = bytes(view[offset:offset + chunk_bytes])
        yield request


def in_chunks(request: pb.HeartbeatRequest) -> bool:
    return request.snapshot_size > 0


def bare_beat(chunk: pb.HeartbeatRequest) -> pb.HeartbeatRequest:
    """The bare beat a chunk reads as (its previous entry the snapshot's last), without the
    chunk's bytes: what a follower steps for each chunk before the last."""
    return pb.HeartbeatRequest(
        term=chunk.term, leader_id=chunk.leader_id, leader_address=chunk.leader_address,
        beacon_key=chunk.beacon_key, prev_index=chunk.prev_index, prev_term=chunk.prev_term,
        commit=chunk.commit, serial=chunk.serial,
    )


def as_snapshot(request: pb.HeartbeatRequest) -> pb.HeartbeatRequest:
    """A snapshot's last chunk made its InstallSnapshot's request (the data goes beside it)."""
    request.is_snapshot = True
    request.prev_index = request.prev_term = 0
    request.snapshot_data = b""
    return request


class Reassembly:
    """The chunks of the snapshot under way on one stream."""

    def __init__(self) -> None:
        self._snapshot: tuple[int, str, int, int, int, int] | None = None
        self._parts: list[bytes] = []
        self._received = 0

    @property
    def received_bytes(self) -> int:
        return self._received

    def add(self, request: pb.HeartbeatRequest) -> list[bytes] | None:
        """Take one chunk (`in_chunks(request)`); the snapshot's parts, in order, once it is
        whole, else None. InvalidField if the chunk does not continue it."""
        snapshot = (request.term, request.leader_id, request.snapshot_index, request.snapshot_term,
                    request.serial, request.snapshot_size)
        data = request.snapshot_data
        if request.is_snapshot:  # read so, a chunk's slice would stand for the whole table
            self._forget()
            raise InvalidField("is_snapshot", "a chunk (snapshot_size set) is not a whole snapshot")
        if request.snapshot_offset == 0:
            self._snapshot, self._parts, self._received = snapshot, [], 0
        elif snapshot != self._snapshot or request.snapshot_offset != self._received:
            same = self._snapshot == snapshot
            under_way = f"{self._received} bytes of it in" if same else "no such snapshot under way"
            self._forget()
            raise InvalidField("snapshot_offset", f"{request.snapshot_offset} does not continue a snapshot "
                                                  f"on this stream ({under_way})")
        if not data or self._received + len(data) > request.snapshot_size:
            self._forget()
            raise InvalidField("snapshot_data", f"{len(data)} bytes at offset {request.snapshot_offset} "
                                                f"do not fit snapshot_size {request.snapshot_size}")
        self._parts.append(data)
        self._received += len(data)
        if self._received < request.snapshot_size:
            return None
        parts = self._parts
        self._forget()
        return parts

    def _forget(self) -> None:
        self._snapshot, self._parts, self._received = None, [], 0
