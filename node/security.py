"""Transport security and authentication for every channel and server.

Two independent locks, both optional, both recommended off loopback:

- **TLS** (`--tls-cert/--tls-key`, plus `--tls-ca` for mutual TLS): the
  server presents its certificate; with a CA given, it also demands a client
  certificate signed by that CA. Nodes dial each other with their own
  certificate, so with mTLS a machine without a cluster certificate cannot
  even finish the handshake.
- **A cluster token** (`--token-file` or `DISTNODE_TOKEN`): every RPC carries
  `authorization: Bearer <token>` (the stubs add it to each call); a server
  interceptor compares it in constant time and answers `UNAUTHENTICATED`
  otherwise. The standard health service stays open so load balancers and
  probes keep working, and so does reflection (the schema, which is public).

The token travels in clear text without TLS: use both on a shared network.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc

from node.errors import SecurityError

TOKEN_ENV = "DISTNODE_TOKEN"
AUTH_HEADER = "authorization"
#: RPCs anyone may call: liveness probes must work without the secret, and the
#: schema (reflection: what grpcurl lists) is no secret; every call it names is.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.ServerReflection/",
                        "/grpc.reflection.v1.ServerReflection/")


def load_token(token_file: str | Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The token from `token_file`, else from $DISTNODE_TOKEN, else None (no auth)."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecurityError(f"token-file: cannot read {token_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SecurityError(f"token-file: {token_file} is not text") from None
        if not token:
            raise SecurityError(f"token-file: {token_file} is empty")
        return check_token(token, f"token-file: {token_file}")
    token = (environ if environ is not None else os.environ).get(TOKEN_ENV, "").strip()
    return check_token(token, TOKEN_ENV) if token else None


def check_token(token: str, origin: str = "token") -> str:
    """The token, if an HTTP/2 header can carry it (printable ASCII): gRPC refuses any other
    value on every call, so a token of another character would lock every client out."""
    bad = next((char for char in token if not " " <= char <= "~"), None)
    if bad is not None:
        raise SecurityError(f"{origin}: the token holds {bad!r}, which a gRPC header cannot carry;"
                            " use printable ASCII only (e.g. `openssl rand -hex 16`)")
    return token


@dataclass(frozen=True)
class TlsFiles:
    """PEM files. `cert`+`key`: this side's identity; `ca`: whom to trust."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None

    def __post_init__(self) -> None:
        # Paths given as strings (the README writes `TlsFiles(cert, key, ca)`) failed later
        # with "'str' object has no attribute 'read_bytes'".
        for name in ("cert", "key", "ca"):
            value = getattr(self, name)
            if isinstance(value, str | os.PathLike) and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @property
    def enabled(self) -> bool:
        return self.cert is not None or self.ca is not None

    def validate_client(self) -> None:
        """A client may give a CA alone; a certificate needs its key. SecurityError names the flag."""
        if (self.cert is None) != (self.key is None):
            raise SecurityError("tls-cert and tls-key: give both or neither")
        for name, path in (("tls-cert", self.cert), ("tls-key", self.key), ("tls-ca", self.ca)):
            if path is not None and not path.is_file():
                raise SecurityError(f"{name}: no such file {path}")
        self._check_loadable()

    def _check_loadable(self) -> None:
        """The PEM files as TLS will load them (gRPC would only log its failure and go on,
        so a key given as --tls-ca showed as an unreachable cluster)."""
        if not self.enabled:  # loading the system's CA store alone costs a client ~40 ms
            return
        import ssl

        try:
            context = ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        except (ssl.SSLError, OSError) as exc:
            raise SecurityError(f"tls-ca: {self.ca} is not a PEM certificate ({exc})") from None
        if self.cert is not None and self.key is not None:
            try:
                # An empty password, not a prompt on the terminal for an encrypted key (which
                # gRPC would not take either): such a key is refused as one that does not load.
                context.load_cert_chain(str(self.cert), str(self.key), password=b"")
            except (ssl.SSLError, OSError) as exc:
                raise SecurityError(f"tls-cert and tls-key: {self.cert} and {self.key} are not a "
                                    f"certificate and its key ({exc})") from None

    def validate_server(self) -> None:
        """A server's CA means mutual TLS, which needs its own certificate too."""
        self.validate_client()
        if self.ca is not None and self.cert is None:
            raise SecurityError("tls-ca: mutual TLS on a server also needs --tls-cert and --tls-key")

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


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """The token as call metadata, which the stubs add to every call."""
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
    """A handler that answers UNAUTHENTICATED without reading the request: request-streaming
    whatever `handler` is (the bytes on the wire are the same), as gRPC reads a unary request
    whole, up to --max-message-bytes, before its handler runs; a caller without the token could
    have made a node hold many such requests at once."""
    refuse: Any = _refuse  # gRPC runs async handlers, whose shape its stubs do not describe
    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse)
    return grpc.stream_unary_rpc_method_handler(refuse)
