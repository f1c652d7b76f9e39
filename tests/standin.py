"""A stand-in node for the clients' tests: a gRPC server in a thread that answers each
method as a test scripts it, with a reply or a status signed as a node signs it.

    with stand_in({"Enqueue": refuse(grpc.StatusCode.NOT_FOUND, "source: ...")}) as address:
        ...

Shared by tests/test_exit_codes.py and tests/test_client_contract.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from node._proto import distnode_pb2 as pb
from node.wire.answers import SERVICE
from node.wire.status import node_trailer

#: method -> (request, context) -> reply; raise Refuse to answer with a status.
Script = dict[str, Callable[[Any, Any], Any]]


class Refuse(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code, self.details = code, details


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details, self.trailing_metadata = code, details, node_trailer("n1")


#: The request message of each method a script may answer.
REQUESTS = {"Submit": pb.SubmitRequest, "Enqueue": pb.SubmitRequest, "Result": pb.ResultRequest,
            "Status": pb.StatusRequest, "Jobs": pb.JobsRequest, "Cancel": pb.CancelRequest}


@contextlib.contextmanager
def stand_in(script: Script) -> Iterator[str]:
    def handler(method: str) -> grpc.RpcMethodHandler:
        def answer(request: Any, context: Any) -> Any:
            try:
                return script[method](request, context)
            except Refuse as refused:
                context.abort_with_status(_Status(refused.code, refused.details))
                raise AssertionError("abort returned") from None

        return grpc.unary_unary_rpc_method_handler(
            answer, request_deserializer=REQUESTS[method].FromString,
            response_serializer=lambda reply: reply.SerializeToString(),
        )

    generic = grpc.method_handlers_generic_handler(SERVICE, {name: handler(name) for name in script})
    server = grpc.server(ThreadPoolExecutor(max_workers=4), handlers=[generic])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


def refuse(code: grpc.StatusCode, details: str) -> Callable[[Any, Any], Any]:
    def answer(request: Any, context: Any) -> Any:
        raise Refuse(code, details)
    return answer
