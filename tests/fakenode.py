"""A stand-in for a node, for client tests that need a node to misbehave in one exact way.

A blocking gRPC server on 127.0.0.1 with the Node service: each test sets how
`Submit`, `SubmitBatches` and `Status` behave, and reads which calls came
and when (`calls`). Jobs it answers sum to ANSWER.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from node._proto import distnode_pb2 as pb
from node._proto import distnode_pb2_grpc as pb_grpc
from node.wire.status import node_trailer

ANSWER = 45.0
#: "silent": takes jobs and never answers, and holds the stream open once the client is done
#: with it (a paused node, as its clients see it).
Behaviour = Literal["answer", "hang", "silent"]


def _answer(job: pb.JobSpec, dtype: str = "float64") -> pb.SubmitReply:
    scalar = pb.Tensor(dtype=dtype, shape=[], data=struct.pack("<d", ANSWER))
    return pb.SubmitReply(job_id=job.job_id, op=job.op, result=scalar)


@dataclass
class FakeNode(pb_grpc.NodeServicer):
    submit: Behaviour = "hang"
    stream: Behaviour = "hang"
    #: What a Progress probe says: True, the node knows the job (it runs there).
    known: bool = True
    #: Status answers UNAVAILABLE, signed as a node's, if set.
    status_unavailable: bool = False
    #: The dtype its answers name ("" is none: a malformed answer).
    dtype: str = "float64"
    #: (seconds since the node started, method) for each call, in order.
    calls: list[tuple[float, str]] = field(default_factory=list)
    _started_s: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _note(self, method: str) -> None:
        with self._lock:
            self.calls.append((time.monotonic() - self._started_s, method))

    def methods(self) -> list[str]:
        with self._lock:
            return [method for _, method in self.calls]

    @staticmethod
    def _until_gone(context: grpc.ServicerContext) -> None:
        while context.is_active():
            time.sleep(0.01)

    def Submit(self, request: pb.SubmitRequest, context: grpc.ServicerContext) -> pb.SubmitReply:
        self._note("Submit")
        if self.submit == "hang":
            self._until_gone(context)
        return _answer(request.job, self.dtype)

    def SubmitBatches(
        self, request_iterator: Iterator[pb.SubmitBatch], context: grpc.ServicerContext
    ) -> Iterator[pb.SubmitBatchReply]:
        for batch in request_iterator:
            for job in batch.jobs:
                self._note("SubmitBatches job")
                if self.stream == "answer":
                    yield pb.SubmitBatchReply(replies=[pb.SubmitStreamReply(
                        job_id=job.job.job_id, seq=job.seq, node_id="fake", reply=_answer(job.job, self.dtype))])
        if self.stream == "silent":
            self._until_gone(context)

    def Progress(self, request: pb.ProgressRequest, context: grpc.ServicerContext) -> pb.ProgressReply:
        self._note("Progress")
        return pb.ProgressReply(known=self.known, shards_done=0, shards_total=1)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> Any:
        self._note("Status")
        if self.status_unavailable:
            context.set_trailing_metadata(node_trailer("fake"))
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return pb.StatusReply(node_id="fake", role="follower")


@contextlib.contextmanager
def fake_node(**behaviour: Any) -> Iterator[tuple[FakeNode, str]]:
    """A FakeNode serving on 127.0.0.1 and its address; stopped on the way out."""
    node = FakeNode(**behaviour)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_NodeServicer_to_server(node, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield node, f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()
