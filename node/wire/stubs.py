"""The stubs distnode calls nodes with: the generated ones, Submit's answer without copies,
and the cluster token on every call."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import grpc

from node._proto import distnode_pb2 as pb
from node._proto import distnode_pb2_grpc as pb_grpc
from node.wire.answers import SERVICE, SUBMIT_METHOD, SubmitAnswer, parse_submit_reply

Metadata = tuple[tuple[str, str], ...]
M = TypeVar("M", bound=Callable[..., Any])


def _with(metadata: Metadata | None, call: M) -> M:
    """`call` with `metadata` (the cluster token) on every invocation.

    Per-call metadata rather than a client interceptor: an interceptor costs
    Python work on every call, and on a stream it runs a request-forwarding
    task that gRPC leaves pending when the stream ends early.
    """
    if not metadata:
        return call
    return cast(M, functools.partial(call, metadata=metadata))


HEARTBEAT_METHOD = f"/{SERVICE}/Heartbeat"


def _beat_bytes(request: pb.HeartbeatRequest | bytes) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()


class NodeStub:
    """The generated asyncio stub, except that `Submit` returns a SubmitAnswer
    (no copy of the result's bytes), `SubmitRelay` the reply's raw bytes, for a
    follower to pass on, and every call carries `metadata`."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Metadata | None = None) -> None:
        generated = pb_grpc.NodeStub(channel)
        self.RequestVote = _with(metadata, generated.RequestVote)
        # A leader's beats with large entries come framed already (log.LargeBeat), so the
        # stream takes bytes as well as requests.
        heartbeat: grpc.aio.StreamStreamMultiCallable[pb.HeartbeatRequest | bytes, pb.HeartbeatReply] = (
            channel.stream_stream(  # type: ignore[call-arg]
                HEARTBEAT_METHOD, request_serializer=_beat_bytes,
                response_deserializer=pb.HeartbeatReply.FromString, _registered_method=True,
            )
        )
        self.Heartbeat = _with(metadata, heartbeat)
        self.Compute = _with(metadata, generated.Compute)
        self.Reduce = _with(metadata, generated.Reduce)
        self.Skip = _with(metadata, generated.Skip)
        self.Progress = _with(metadata, generated.Progress)
        self.SubmitBatches = _with(metadata, generated.SubmitBatches)
        self.Status = _with(metadata, generated.Status)
        self.Enqueue = _with(metadata, generated.Enqueue)
        self.Result = _with(metadata, generated.Result)
        self.Jobs = _with(metadata, generated.Jobs)
        self.Cancel = _with(metadata, generated.Cancel)
        # `_registered_method`, as the generated stubs pass it, registers the
        # method with the channel once instead of on every call; typeshed's
        # stubs do not list this private argument.
        submit: grpc.aio.UnaryUnaryMultiCallable[pb.SubmitRequest, SubmitAnswer] = (
            channel.unary_unary(  # type: ignore[call-arg]
                SUBMIT_METHOD, request_serializer=pb.SubmitRequest.SerializeToString,
                response_deserializer=parse_submit_reply, _registered_method=True,
            )
        )
        relay: grpc.aio.UnaryUnaryMultiCallable[pb.SubmitRequest, bytes] = (
            channel.unary_unary(  # type: ignore[call-arg]
                SUBMIT_METHOD, request_serializer=pb.SubmitRequest.SerializeToString,
                response_deserializer=None, _registered_method=True,
            )
        )
        self.Submit = _with(metadata, submit)
        self.SubmitRelay = _with(metadata, relay)


class BlockingNodeStub:
    """The blocking twin of `NodeStub`, for the calls blocking callers make."""

    def __init__(self, channel: grpc.Channel, metadata: Metadata | None = None) -> None:
        generated = pb_grpc.NodeStub(channel)
        self.Progress = _with(metadata, generated.Progress)
        self.Status = _with(metadata, generated.Status)
        self.Enqueue = _with(metadata, generated.Enqueue)
        self.SubmitBatches = _with(metadata, generated.SubmitBatches)
        submit: grpc.UnaryUnaryMultiCallable[pb.SubmitRequest, SubmitAnswer] = (
            channel.unary_unary(  # type: ignore[call-arg]  # see NodeStub
                SUBMIT_METHOD, request_serializer=pb.SubmitRequest.SerializeToString,
                response_deserializer=parse_submit_reply, _registered_method=True,
            )
        )
        self.Submit = _with(metadata, submit)
