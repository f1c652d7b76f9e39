"""Protobuf's wire format, the little of it distnode writes by hand: varints and the key of
a length-delimited field. Where a large payload would otherwise be copied into a message
and serialized on an event loop (answers.py, log.py), the message is written around it."""

from __future__ import annotations

LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def delimited_key(field: int) -> bytes:
    """The key of length-delimited field number `field` (bytes, a string or a message)."""
    return varint(field << 3 | LENGTH_DELIMITED)
