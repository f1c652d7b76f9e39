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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

TOKEN_ENV = "DISTNODE_TOKEN"
AUTH_HEADER = "authorization"
#: RPCs anyone may call: liveness probes must work without the secret.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


class SecurityError(ValueError):
    """A token or certificate file is missing, empty or unreadable."""


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

    def _read(self, path: Path | None) -> bytes | None:
        return path.read_bytes() if path is not None else None

    def server_credentials(self) -> Any:
        assert self.cert is not None and self.key is not None
        return grpc.ssl_server_credentials(
            [(self._read(self.key), self._read(self.cert))],
            root_certificates=self._read(self.ca),
            require_client_auth=self.ca is not None,
        )

    def channel_credentials(self) -> Any:
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca),
            private_key=self._read(self.key),
            certificate_chain=self._read(self.cert),
        )


def _with_token(details: Any, header: tuple[str, str]) -> Any:
    metadata = list(details.metadata or [])
    metadata.append(header)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


class _Bearer:
    """Adds `authorization: Bearer <token>` to a call. gRPC files an interceptor
    under one call shape only, hence one small class per shape below."""

    def __init__(self, token: str) -> None:
        self.header = (AUTH_HEADER, f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return _with_token(details, self.header)


class TokenUnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class TokenStreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_unary(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)


class TokenStreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(details), request_iterator)


def open_channel(
    address: str, options: list[tuple[str, Any]], tls: TlsFiles | None, token: str | None
) -> Any:
    """A grpc.aio channel to `address`, secured and authenticated as configured."""
    interceptors = (
        [TokenUnaryUnary(token), TokenStreamUnary(token), TokenStreamStream(token)] if token else None
    )
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(
            address, tls.channel_credentials(), options=options, interceptors=interceptors
        )
    return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)


class TokenServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects every RPC without the cluster token, except the health service."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def _authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == AUTH_HEADER:
                given = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(given, self._expected)
        return False

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: Any
    ) -> Any:
        if details.method.startswith(OPEN_METHOD_PREFIXES) or self._authorized(
            details.invocation_metadata
        ):
            return await continuation(details)
        handler = await continuation(details)
        return _refusing_handler(handler)


async def _refuse(request: Any, context: Any) -> Any:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: missing or wrong cluster token")


def _refusing_handler(handler: Any) -> Any:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""
    if handler is None:
        return None
    if handler.request_streaming and not handler.response_streaming:
        return grpc.stream_unary_rpc_method_handler(_refuse)
    if handler.request_streaming:
        return grpc.stream_stream_rpc_method_handler(_refuse)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_refuse)
    return grpc.unary_unary_rpc_method_handler(_refuse)
