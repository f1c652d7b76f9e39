"""Submit's hand-made encoding must be protobuf's, both ways, for any answer.

`node.wire.answers` writes the result's bytes straight from the array and reads them
back as a view of the received buffer; these tests hold it to what protobuf
itself writes and reads, on random replies and on random bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from node._proto import distnode_pb2 as pb
from node.wire.answers import (
    SMALL_REPLY_BYTES,
    parse_submit_reply,
    serialize_submit_reply,
    split_submit_reply,
    submit_answer,
)
from node.wire.tensors import tensor_to_proto

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)

dtypes = st.sampled_from(["<f8", "<f4", "<i8", "<u8", ">i4", ">f8", "<i2", "|u1"])
arrays = dtypes.flatmap(
    lambda dtype: hnp.arrays(
        np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=1, min_side=0, max_side=300),
    )
)
text = st.text(max_size=20)
fields = st.fixed_dictionaries({
    "job_id": text, "op": text, "shards": st.integers(0, 2**32 - 1),
    "nodes": st.lists(text, max_size=4), "elapsed_ms": st.floats(allow_nan=False),
    "leader": text, "term": st.integers(0, 2**64 - 1), "leader_address": text,
})


def reference(array: np.ndarray, extra: dict[str, Any]) -> pb.SubmitReply:
    """The same reply built the plain protobuf way."""
    return pb.SubmitReply(result=tensor_to_proto(array), **extra)


@SETTINGS
@given(arrays, fields)
def test_our_bytes_are_the_protobuf_reply(array: np.ndarray, extra: dict[str, Any]) -> None:
    raw = serialize_submit_reply(submit_answer(array, **extra))
    assert pb.SubmitReply.FromString(raw) == reference(array, extra)


PARSERS = pytest.mark.parametrize("parse", [parse_submit_reply, split_submit_reply])


@PARSERS
@SETTINGS
@given(array=arrays, extra=fields)
def test_we_read_any_protobuf_reply(parse: Any, array: np.ndarray, extra: dict[str, Any]) -> None:
    expected = reference(array, extra)
    raw = expected.SerializeToString()
    answer = parse(raw)
    assert answer.array.dtype.str == expected.result.dtype
    np.testing.assert_array_equal(answer.array, array)
    head = pb.SubmitReply()
    head.CopyFrom(expected)
    head.result.data = b""
    assert answer.head == head


def test_a_big_answer_is_a_view_of_the_received_bytes() -> None:
    array = np.arange(SMALL_REPLY_BYTES, dtype=np.float64)
    raw = serialize_submit_reply(submit_answer(array, job_id="j"))
    answer = parse_submit_reply(raw)
    assert answer.data.obj is raw  # not a copy
    np.testing.assert_array_equal(answer.array, array)


def test_a_repeated_result_field_merges_like_protobuf() -> None:
    first = pb.SubmitReply(job_id="j", result=pb.Tensor(dtype="<i8", shape=[2], data=bytes(16)))
    second = pb.SubmitReply(result=pb.Tensor(data=np.arange(2, dtype="<i8").tobytes()))
    raw = first.SerializeToString() + second.SerializeToString()
    answer = split_submit_reply(raw)
    merged = pb.SubmitReply.FromString(raw)
    assert answer.head.job_id == "j"
    assert bytes(answer.data) == merged.result.data
    assert answer.array.tolist() == [0, 1]


@PARSERS
@SETTINGS
@given(raw=st.binary(max_size=200))
def test_garbage_fails_cleanly_or_parses_like_protobuf(parse: Any, raw: bytes) -> None:
    try:
        answer = parse(raw)
    except (ValueError, DecodeError):
        return
    expected = pb.SubmitReply.FromString(raw)
    assert bytes(answer.data) == expected.result.data
    if expected.HasField("result"):  # (reading .result alone does not set it)
        expected.result.data = b""
    assert answer.head == expected


def test_truncated_reply_is_refused() -> None:
    raw = serialize_submit_reply(submit_answer(np.arange(1000.0), job_id="j"))
    with pytest.raises(ValueError, match="runs past the end"):
        parse_submit_reply(raw[:-1])


def test_relayed_bytes_pass_through_untouched() -> None:
    raw = serialize_submit_reply(submit_answer(np.arange(5), job_id="j"))
    assert serialize_submit_reply(raw) is raw
    plain = reference(np.arange(3.0), {"job_id": "k"})
    assert serialize_submit_reply(plain) == plain.SerializeToString()


@pytest.mark.parametrize(("dtype", "shape", "data"), [
    ("<f8", [1 << 40, 0], b""),  # holds no byte, and `tolist()` would build 2^40 lists
    ("<f8", [1, 1, 1], bytes(8)),
    ("<f16", [], bytes(16)),  # x87's 80 bits here, IEEE's 128 elsewhere
    ("<f8", [3, 0], b""),
])
def test_a_tensor_no_partial_or_answer_can_be_is_refused(dtype: str, shape: list[int], data: bytes) -> None:
    from node.wire.tensors import tensor_from_proto

    with pytest.raises(ValueError, match="tensor"):
        tensor_from_proto(pb.Tensor(dtype=dtype, shape=shape, data=data))
