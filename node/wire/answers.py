"""Submit's answer on the wire, without protobuf's copies.

Building a `SubmitReply` around an 8 MB vector answer copies the bytes four
times on the leader (`tobytes`, into the Tensor, into the reply, serialising)
and twice more on the client (parsing, then reading `result.data`), each copy
into fresh memory. Protobuf's Python API cannot be handed a buffer or hand
one back, so for this one message we do the last step by hand:

- the leader serialises the reply *without* the result's bytes and appends
  the `result.data` field itself, straight from the numpy array (one copy);
- the client finds `result.data` in the received bytes and gives numpy a
  view of them (no copy); every other field is parsed by protobuf.

The bytes are ordinary protobuf: a parser merges a second occurrence of the
`result` field into the first, so generated clients in any language read
our replies unchanged, and our parser reads any reply protobuf writes (it
refuses the deprecated group wire types, which proto3 never emits). A
follower relaying a Submit passes the leader's bytes through untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import msgspec

from node._proto import distnode_pb2 as pb
from node.wire.protowire import LENGTH_DELIMITED, delimited_key, varint

if TYPE_CHECKING:
    import numpy as np

SERVICE = pb.DESCRIPTOR.services_by_name["Node"].full_name
SUBMIT_METHOD = f"/{SERVICE}/Submit"
#: Replies up to this size are parsed by protobuf alone (copying the data is
#: cheaper than walking the fields in Python).
SMALL_REPLY_BYTES = 4096


def _read_varint(buf: memoryview, pos: int, stop: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if pos >= stop:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("varint longer than 10 bytes")


def _fields(buf: memoryview, start: int, stop: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, field start, value start, value end) of each field in buf[start:stop]."""
    pos = start
    while pos < stop:
        field_start = pos
        key, pos = _read_varint(buf, pos, stop)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            _, end = _read_varint(buf, pos, stop)
        elif wire_type == 1:
            end = pos + 8
        elif wire_type == LENGTH_DELIMITED:
            length, pos = _read_varint(buf, pos, stop)
            end = pos + length
        elif wire_type == 5:
            end = pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type} for field {number}")
        if end > stop:
            raise ValueError(f"field {number} runs past the end of its message")
        yield number, wire_type, field_start, pos, end
        pos = end


_RESULT = pb.SubmitReply.DESCRIPTOR.fields_by_name["result"].number
_DATA = pb.Tensor.DESCRIPTOR.fields_by_name["data"].number
_RESULT_TAG = delimited_key(_RESULT)
_DATA_TAG = delimited_key(_DATA)


class SubmitAnswer(msgspec.Struct, frozen=True):
    """A SubmitReply split in two: `head` (its result has dtype and shape but
    no data) and the result's bytes, `data`, kept out of protobuf's hands."""

    head: pb.SubmitReply
    data: memoryview

    @property
    def array(self) -> np.ndarray:
        """The result, a read-only view of `data`."""
        from node.wire.tensors import tensor_from_proto  # numpy: not needed to relay or serialise

        return tensor_from_proto(self.head.result, self.data)


def submit_answer(result: np.ndarray, **fields: Any) -> SubmitAnswer:
    """What the leader's Submit handler returns; `fields` are SubmitReply's others."""
    import numpy as np

    from node.wire.tensors import wire_array

    array = wire_array(result)
    head = pb.SubmitReply(**fields)
    head.result.dtype = array.dtype.str
    head.result.shape.extend(array.shape)
    return SubmitAnswer(head, array.reshape(-1).view(np.uint8).data)


def serialize_submit_reply(reply: SubmitAnswer | pb.SubmitReply | bytes) -> bytes:
    """Submit's response serializer: our answer, any SubmitReply, or relayed bytes."""
    if isinstance(reply, bytes):
        return reply
    if not isinstance(reply, SubmitAnswer):
        return bytes(reply.SerializeToString())
    head = reply.head.SerializeToString()
    size = len(reply.data)
    if not size:
        return bytes(head)
    size_prefix = varint(size)
    tensor_size = len(_DATA_TAG) + len(size_prefix) + size
    return b"".join((head, _RESULT_TAG, varint(tensor_size), _DATA_TAG, size_prefix, reply.data))


def parse_submit_reply(raw: bytes) -> SubmitAnswer:
    """Submit's response deserializer: the reply, with `data` a view into `raw`
    (small replies: a copy, by protobuf).

    Raises ValueError (or protobuf's DecodeError) for malformed bytes; gRPC
    then fails the call with INTERNAL.
    """
    if len(raw) > SMALL_REPLY_BYTES:
        return split_submit_reply(raw)
    whole = pb.SubmitReply.FromString(raw)
    data = memoryview(whole.result.data)
    if whole.HasField("result"):
        whole.result.data = b""
    return SubmitAnswer(whole, data)


def split_submit_reply(raw: bytes) -> SubmitAnswer:
    """Walk the top-level fields: `result.data` becomes a view into `raw`,
    everything else is handed to protobuf."""
    view = memoryview(raw)
    head: list[bytes | memoryview] = []
    data = view[0:0]
    for number, wire_type, field_start, start, end in _fields(view, 0, len(view)):
        if number != _RESULT or wire_type != LENGTH_DELIMITED:
            head.append(view[field_start:end])
            continue
        rest: list[bytes | memoryview] = []
        for inner, inner_type, inner_start, value_start, value_end in _fields(view, start, end):
            if inner == _DATA and inner_type == LENGTH_DELIMITED:
                data = view[value_start:value_end]  # proto3: the last occurrence wins
            else:
                rest.append(view[inner_start:value_end])
        tensor = b"".join(rest)
        head += [_RESULT_TAG, varint(len(tensor)), tensor]
    return SubmitAnswer(pb.SubmitReply.FromString(b"".join(head)), data)
