"""What a job's record may hold, so that its entry still fits one message to a follower.

A record reaches every follower in an AppendEntries (core/replication.py), and gRPC
refuses a message past `--max-message-bytes` at both ends: an entry over it could never
be sent, and the log would stop there, every later record with it. A detached job with
a 10 MB answer under `--max-message-bytes 8388608` did that: from then on the cluster
answered no detached job and committed nothing. So a result is kept only while its
record still fits (`kept`), a record that cannot fit, measured as encoded (`command_of`),
is refused or skipped, and attached records go in batches that fit (ledger.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from node.core.jobtable import JobRecord, Result, encode_command
from node.server.outcomes import result_of

if TYPE_CHECKING:
    from node.server.api import Outcome

#: Results up to this size go into an attached job's record (vector answers
#: are megabytes; replicating each would cost more than the job).
ATTACHED_RESULT_MAX_BYTES = 64 << 10
#: Results up to this size go into a detached job's record, where the message limit
#: allows; a bigger one is recorded as done without its bytes, and the error says so.
DETACHED_RESULT_MAX_BYTES = 16 << 20
#: Room in a message for all of an entry but its record's source and result: the
#: request's own fields, the record's others (ids, times, an error's line), their JSON.
ENVELOPE_BYTES = 8 << 10

#: An error's text kept in a record, at most (an exception's message may be long).
ERROR_CHARS = 1000

Command = tuple[JobRecord, bytes]
_JSON = msgspec.json.Encoder()


def command_of(record: JobRecord, max_message_bytes: int) -> bytes | None:
    """The record's command if an entry holding it alone fits one message, else None:
    measured encoded (JSON writes a control character in six bytes)."""
    command = encode_command(record)
    return command if len(command) + ENVELOPE_BYTES <= max_message_bytes else None


def kept(outcome: Outcome, detached: bool, max_message_bytes: int, *text: str) -> tuple[Result | None, str]:
    """The outcome's result as a record of its kind keeps it, or None and why not: within
    the kind's cap (ATTACHED_RESULT_MAX_BYTES, DETACHED_RESULT_MAX_BYTES), and only while
    the record still fits one message: its `text` (job id, source, nodes) as JSON writes
    it, 2 KiB for its other fields (numbers, and names from fixed lists), and the result
    in base64 (4 bytes for 3). Sized so, the small job's record is encoded once, not twice."""
    cap = DETACHED_RESULT_MAX_BYTES if detached else ATTACHED_RESULT_MAX_BYTES
    room = (max_message_bytes - ENVELOPE_BYTES - len(_JSON.encode(text)) - 2048) * 3 // 4
    return result_of(outcome, max(0, min(cap, room)))


def first_batch(commands: list[Command], max_message_bytes: int) -> tuple[list[Command], list[Command]]:
    """Attached jobs' records, in order: as many of the first as fit one message with room
    for another entry beside them (replication.py sends up to `max_append_bytes` of entries
    at once), one at least; and the rest."""
    limit, size = (max_message_bytes - ENVELOPE_BYTES) // 2, 0
    for count, (_, command) in enumerate(commands):
        size += len(command) + 1  # and its newline
        if size > limit and count > 0:
            return commands[:count], commands[count:]
    return commands, []
