"""Transport security and authentication for every channel and server.

Two independent locks, both optional, both recommended off loopback:

- **TLS** (`--tls-cert/--tls-key`, plus `--tls-ca` for mutual TLS): the
  server presents its certificate; with a CA given, it also demands a client
  certificate signed by that CA. Nodes dial each other with their own
  certificate, so with mTLS a machine without a cluster certificate cannot
  even finish the handshake.
- **A cluster token** (`--token-file` or `DISTNODE_TOKEN`): every RPC carries
  `authorization: Bearer <token>`; a server interceptor compares it in
  constant time and answers `UNAUTHENTICATED` otherwise. The standard health
  service stays open so load balancers and probes keep working.

The token travels in clear text without TLS: use both on a shared network.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from node.errors import SecurityError

TOKEN_ENV = "DISTNODE_TOKEN"
AUTH_HEADER = "authorization"
#: RPCs anyone may call: liveness probes must work without the secret.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


def load_token(token_file: str | Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The token from `token_file`, else from $DISTNODE_TOKEN, else None (no auth)."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise SecurityError(f"token-file: cannot read {token_file}: {exc.strerror}") from None
        if not token:
            raise SecurityError(f"token-file: {token_file} is empty")
        return token
    token = (environ if environ is not None else os.environ).get(TOKEN_ENV, "").strip()
    return token or None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files. `cert`+`key`: this side's identity; `ca`: whom to trust."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    @property
    def enabled(self) -> bool:
        return self.cert is not None or self.ca is not None

    def validate_server(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise SecurityError("tls-cert and tls-key: give both or neither")
        if self.ca is not None and self.cert is None:
            raise SecurityError("tls-ca: mutual TLS on a server also needs --tls-cert and --tls-key")
        for name, path in (("tls-cert", self.cert), ("tls-key", self.key), ("tls-ca", self.ca)):
            if path is not None and not path.is_file():
                raise SecurityError(f"{name}: no such file {path}")

    def server_credentials(self) -> grpc.ServerCredentials:
        assert self.cert is not None and self.key is not None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=_read(self.ca),
            require_client_auth=self.ca is not None,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca), private_key=_read(self.key), certificate_chain=_read(self.cert)
        )


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Requests = AsyncIterable[Req] | Iterable[Req]


class _Bearer:
    """Adds `authorization: Bearer <token>` to a call. gRPC files an interceptor
    under one call shape only, hence one small class per shape below."""

    def __init__(self, token: str) -> None:
        self.header = (AUTH_HEADER, f"Bearer {token}")

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self.header)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


class TokenUnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, Req], Awaitable[grpc.aio.UnaryUnaryCall[Req, Resp]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Req,
    ) -> grpc.aio.UnaryUnaryCall[Req, Resp]:
        return await continuation(self._details(client_call_details), request)


class TokenStreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, Requests[Req]], Awaitable[grpc.aio.StreamUnaryCall[Req, Resp]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Requests[Req],
    ) -> grpc.aio.StreamUnaryCall[Req, Resp]:
        return await continuation(self._details(client_call_details), request_iterator)


class TokenStreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[
            [grpc.aio.ClientCallDetails, Requests[Req]], Awaitable[grpc.aio.StreamStreamCall[Req, Resp]]
        ],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Requests[Req],
    ) -> grpc.aio.StreamStreamCall[Req, Resp]:
        return await continuation(self._details(client_call_details), request_iterator)


def token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    """Client interceptors that add the token to every call of an asyncio channel."""
    return [TokenUnaryUnary(token), TokenStreamUnary(token), TokenStreamStream(token)]


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The token as call metadata, for blocking calls (cheaper than an interceptor)."""
    return ((AUTH_HEADER, f"Bearer {token}"),) if token else None


class TokenServerInterceptor(grpc.aio.ServerInterceptor):
    """Rejects every RPC without the cluster token, except the health service."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key == AUTH_HEADER:
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Req, Resp] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        details = handler_call_details
        if details.method.startswith(OPEN_METHOD_PREFIXES) or self._authorized(
            details.invocation_metadata
        ):
            return await continuation(details)
        handler = await continuation(details)
        return None if handler is None else _refusing_handler(handler)


async def _refuse(request: object, context: grpc.aio.ServicerContext[object, object]) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: missing or wrong cluster token")


def _refusing_handler(handler: grpc.RpcMethodHandler[Req, Resp]) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""
    refuse: Any = _refuse  # gRPC runs async handlers, whose shape its stubs do not describe
    if handler.request_streaming and not handler.response_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse)
    if handler.request_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse)
    return grpc.unary_unary_rpc_method_handler(refuse)
