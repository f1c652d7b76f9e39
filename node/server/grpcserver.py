"""The daemon's gRPC server: its options and token check, and what it serves.

It serves our `distnode.v1.Node` service (service.py), gRPC health and
server reflection, so grpcurl and other stock clients need no .proto file.
Every method is found by name rather than registered one by one (`_add_by_name`
says why).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from node._proto import distnode_pb2_grpc as pb_grpc
from node.channels import server_options
from node.security import TokenServerInterceptor
from node.server.api import NodeApi
from node.server.service import NodeServicer
from node.wire.answers import SERVICE, serialize_submit_reply


def make_server(max_message_bytes: int, token: str | None) -> grpc.aio.Server:
    """The daemon's gRPC server: its message size, and the token checked on every call."""
    interceptors = [TokenServerInterceptor(token)] if token else []
    return grpc.aio.server(options=server_options(max_message_bytes), interceptors=interceptors)


class _Handlers:
    """Stands in for a server to catch the generated code's handler table."""

    def __init__(self) -> None:
        self.service = ""
        self.table: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, table: dict[str, Any]) -> None:
        self.service, self.table = service, dict(table)


def _handlers_of(add: Callable[[Any, Any], None], servicer: Any) -> _Handlers:
    """The service name and handler table a generated `add_*_to_server` would register."""
    caught = _Handlers()
    add(servicer, caught)
    return caught


def _add_by_name(server: grpc.aio.Server, caught: _Handlers) -> None:
    """Methods found by name rather than registered one by one: grpc's asyncio server
    keeps a waiting task per registered method and waits on all of them again after
    every call: ~18 % of a busy leader's loop thread in a profile, 2-8 % of its
    small-job throughput in A/B runs (docs/journal.md, "The attached path")."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(caught.service, caught.table),))


def add_to_server(servicer: NodeServicer, server: grpc.aio.Server) -> None:
    """The generated handlers, found by name (`_add_by_name`), except that Submit's answer
    is serialised by `serialize_submit_reply` (one copy of a vector answer, not four)."""
    caught = _handlers_of(pb_grpc.add_NodeServicer_to_server, servicer)
    caught.table["Submit"] = caught.table["Submit"]._replace(  # type: ignore[attr-defined]
        response_serializer=serialize_submit_reply
    )
    _add_by_name(server, caught)


def add_services(node: NodeApi, server: grpc.aio.Server) -> tuple[health.aio.HealthServicer, NodeServicer]:
    """Our service, gRPC health (serving nothing until the caller says so) and reflection,
    so grpcurl and other stock clients need no .proto file."""
    servicer = NodeServicer(node)
    add_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    _add_by_name(server, _handlers_of(health_pb2_grpc.add_HealthServicer_to_server, health_servicer))
    # What reflection.enable_server_reflection does, by name.
    names = (SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
    _add_by_name(server, _handlers_of(reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                                      reflection.aio.ReflectionServicer(names)))
    return health_servicer, servicer
