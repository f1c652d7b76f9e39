"""numpy arrays and partial states <-> protobuf `Tensor` and `Partial`.

The core computes on arrays and never sees protobuf; the worker sends its
partials through here, the servicer reads them back, and the client turns an
answer into Python numbers. Arrays cross the wire as little-endian raw bytes
of a fixed-size numeric dtype, never pickled objects.
"""

from __future__ import annotations

import math

import numpy as np

from node._proto import distnode_pb2 as pb
from node.core.compute import Partial

#: dtypes allowed to cross the wire: fixed-size numerics only, never objects.
_WIRE_KINDS = frozenset("biuf")


def wire_array(array: np.ndarray) -> np.ndarray:
    """`array` as C-contiguous little-endian (a view when it already is)."""
    # Not np.ascontiguousarray: it turns a 0-d scalar answer into shape (1,).
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return array.astype(dtype, copy=False)


def tensor_to_proto(array: np.ndarray) -> pb.Tensor:
    array = wire_array(array)
    return pb.Tensor(dtype=array.dtype.str, shape=list(array.shape), data=array.tobytes())


def tensor_from_proto(tensor: pb.Tensor, data: bytes | memoryview | None = None) -> np.ndarray:
    """Rebuild an array (over `data` if given, else `tensor.data`, without copying).

    Rejects non-numeric dtypes and size mismatches with ValueError.
    """
    if data is None:
        data = tensor.data
    try:
        dtype = np.dtype(tensor.dtype)
    except (TypeError, ValueError):
        raise ValueError(f"tensor dtype {tensor.dtype!r} is not a numpy dtype") from None
    if dtype.kind not in _WIRE_KINDS:
        raise ValueError(f"tensor dtype {tensor.dtype!r} is not numeric")
    if dtype.kind == "f" and dtype.itemsize > 8:  # x87's 80 bits here, IEEE's 128 elsewhere
        raise ValueError(f"tensor dtype {tensor.dtype!r}: a float wider than 64 bits is not the same number"
                         " on every machine")
    shape = tuple(int(n) for n in tensor.shape)
    # No partial or answer is more; and an empty one of shape (2**40, 0), no byte long, would
    # be 2^40 empty lists to `tolist()`.
    if len(shape) > 2 or (math.prod(shape) == 0 and any(shape)):
        raise ValueError(f"tensor of shape {shape}: at most 2-D, and an empty one empty in every dimension")
    expected = math.prod(shape) * dtype.itemsize
    if expected != len(data) or any(n < 0 for n in shape):
        raise ValueError(f"tensor of shape {shape} and dtype {dtype} cannot hold {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def partial_to_proto(job_id: str, shard: int, node_id: str, partial: Partial) -> pb.Partial:
    message = pb.Partial(job_id=job_id, shard=shard, node_id=node_id)
    for name, array in partial.items():
        message.state[name].CopyFrom(tensor_to_proto(np.asarray(array)))
    return message


def partial_from_proto(message: pb.Partial) -> Partial:
    return {name: tensor_from_proto(tensor) for name, tensor in message.state.items()}


def result_to_python(array: np.ndarray) -> int | float | list[int] | list[float]:
    """A 0-d array becomes a Python number, a 1-d one a list (JSON-ready)."""
    value = array.tolist()
    return value  # type: ignore[no-any-return]
