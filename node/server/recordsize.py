"""What a job's record may hold, so that its entry still fits one message to a follower.

A record reaches every follower in an AppendEntries (core/replication.py), and gRPC
refuses a message past `--max-message-bytes` at both ends: an entry over it could never
be sent, and the log would stop there, every later record with it. A detached job with
a 10 MB answer under `--max-message-bytes 8388608` did that: from then on the cluster
answered no detached job and committed nothing. So a result is kept only while its
record still fits (`kept`), a record that cannot fit, measured as encoded (`command_of`),
is refused or skipped, attached records go in batches that fit (ledger.py), and every
record is fitted once more where all proposals pass (`fitting`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from msgspec.structs import replace

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
    return command if fits(command, max_message_bytes) else None


def fits(command: bytes, max_message_bytes: int) -> bool:
    return len(command) + ENVELOPE_BYTES <= max_message_bytes


def fitting(record: JobRecord, max_message_bytes: int) -> Command:
    """The record as proposed, and its command: as it is while an entry holding it fits one
    message, else without the larger of its result and its list of nodes, then without
    the other, then with its error cut short, each said in its `error`. Its source fitted
    when it was queued, or it was not recorded; so a record that still does not fit is one
    whose error, at most ERROR_CHARS, JSON wrote six bytes a character, which the entry's
    envelope (ENVELOPE_BYTES, of which an AppendEntries takes a few hundred) holds."""
    command = command_of(record, max_message_bytes)
    if command is not None:
        return record, command
    sizes = {"nodes": len(_JSON.encode(record.nodes)) if record.nodes else 0,
             "result": len(record.result.data) * 4 // 3 + 1 if record.result is not None else 0}
    for part in (*sorted(sizes, key=sizes.__getitem__, reverse=True), "error"):
        if command is None and (sizes.get(part, 1)):
            record = _without(record, part, max_message_bytes)
            command = command_of(record, max_message_bytes)
    return record, encode_command(record) if command is None else command


def _without(record: JobRecord, part: str, max_message_bytes: int) -> JobRecord:
    if part == "nodes":
        return replace(record, nodes=(), error=_also(record.error, _unlisted(len(record.nodes))))
    if part == "result":
        note = f"the result was not kept: its record would be over {max_message_bytes} bytes"
        return replace(record, result=None, error=_also(record.error, note))
    return replace(record, error=record.error[:ERROR_CHARS // 10])


def _unlisted(count: int) -> str:
    return f"the {count} nodes that ran it were not kept: too many for a record"


def _also(error: str, note: str) -> str:
    """`note` after `error`, the whole at most ERROR_CHARS: the error is cut, not the note."""
    return f"{error[:ERROR_CHARS - len(note) - 2]}; {note}" if error else note


def kept(
    outcome: Outcome, detached: bool, max_message_bytes: int, job_id: str, source: str,
    keep_result_bytes: int,
) -> tuple[Result | None, str, tuple[str, ...]]:
    """What a record of its kind keeps of the outcome: its result, or None and why not, and
    the nodes that ran it, or none if they do not fit, said so. The result within the
    kind's cap (ATTACHED_RESULT_MAX_BYTES, DETACHED_RESULT_MAX_BYTES), and only while the
    record still fits one message: its job id, source and nodes as JSON writes them, 2 KiB
    for its other fields (numbers, and names from fixed lists), and the result in base64
    (4 bytes for 3); the answer comes before the list of nodes. Sized so, the small job's
    record is encoded once, not twice. Nor past what the table keeps of its finished jobs
    (`keep_result_bytes`, the source counted): such a record would be forgotten, state and
    all, as it is applied."""
    cap = DETACHED_RESULT_MAX_BYTES if detached else ATTACHED_RESULT_MAX_BYTES
    cap = min(cap, max(0, keep_result_bytes - len(source)))
    room = max_message_bytes - ENVELOPE_BYTES - 2048 - len(_JSON.encode((job_id, source)))
    listed = len(_JSON.encode(outcome.nodes))
    nodes = outcome.nodes
    result, note = result_of(outcome, max(0, min(cap, (room - listed) * 3 // 4)))
    if result is None and nodes:
        alone, _ = result_of(outcome, max(0, min(cap, room * 3 // 4)))
        if alone is not None:  # it fits without the list of nodes
            result, note, nodes = alone, "", ()
    if nodes and listed > room:
        nodes = ()
    if len(nodes) < len(outcome.nodes):
        note = _also(note, _unlisted(len(outcome.nodes)))
    return result, note, nodes


def first_batch(commands: list[Command], max_message_bytes: int) -> tuple[list[Command], list[Command]]:
    """Attached jobs' records, in order: as many of the first as fit one message with room
    for another entry beside them (replication.py sends up to `max_append_bytes` of entries
    at once), one at least; and the rest, as given. Each was sized when its job was answered:
    one that does not fit `max_message_bytes` (a smaller bound heard of since) is sized again,
    and left out if it still cannot fit (its source alone is over it), as it would have been."""
    limit, size = (max_message_bytes - ENVELOPE_BYTES) // 2, 0
    batch: list[Command] = []
    for taken, command in enumerate(commands):
        if not fits(command[1], max_message_bytes):
            command = fitting(command[0], max_message_bytes)
            if not fits(command[1], max_message_bytes):
                continue
        size += len(command[1]) + 1  # and its newline
        if size > limit and batch:
            return batch, commands[taken:]
        batch.append(command)
    return batch, []
