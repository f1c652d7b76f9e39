"""What a job's record may hold, so that its entry still fits one message to a follower.

A record reaches every follower in an AppendEntries (core/replication.py), and gRPC
refuses a message past `--max-message-bytes` at both ends: an entry over it could never
be sent, and the log would stop there, every later record with it. A detached job with
a 10 MB answer under `--max-message-bytes 8388608` did that: from then on the cluster
answered no detached job and committed nothing. So a detached job's result is kept only
while its record fits, a record that cannot fit is refused or skipped, and attached
records go in batches that fit (ledger.py).
"""

from __future__ import annotations

from node.core.jobtable import JobRecord

#: Results up to this size go into an attached job's record (vector answers
#: are megabytes; replicating each would cost more than the job).
ATTACHED_RESULT_MAX_BYTES = 64 << 10
#: Results up to this size go into a detached job's record, where the message limit
#: allows; a bigger one is recorded as done without its bytes, and the error says so.
DETACHED_RESULT_MAX_BYTES = 16 << 20
#: Room in a message for all of an entry but its record's source and result: the
#: request's own fields, the record's others (ids, times, an error's line), their JSON.
ENVELOPE_BYTES = 8 << 10

Command = tuple[JobRecord, bytes]


def detached_result_cap(max_message_bytes: int, source: str) -> int:
    """The largest result a detached job's record keeps: DETACHED_RESULT_MAX_BYTES, or less
    where the record, its result in base64 (4 bytes for 3), must fit a smaller message."""
    room = max_message_bytes - ENVELOPE_BYTES - len(source.encode())
    return max(0, min(DETACHED_RESULT_MAX_BYTES, room * 3 // 4))


def source_fits(source: str, max_message_bytes: int) -> bool:
    """Whether a record of a job with this source fits one message (its result aside)."""
    return len(source.encode()) + ENVELOPE_BYTES <= max_message_bytes


def first_batch(commands: list[Command], max_message_bytes: int) -> tuple[list[Command], list[Command]]:
    """Attached jobs' records, in order: as many of the first as fit one message with room
    for another entry beside them (replication.py sends up to `max_append_bytes` of entries
    at once), one at least; and the rest."""
    limit, size = (max_message_bytes - ENVELOPE_BYTES) // 2, 0
    for count, (_, command) in enumerate(commands):
        size += len(command)
        if size > limit and count > 0:
            return commands[:count], commands[count:]
    return commands, []
