"""Why a client cannot reach a node: a few cheap socket probes that name the likely cause.

gRPC reports a refused connection, a TLS handshake that failed and an HTTP
server answering in place of a node alike: UNAVAILABLE, "Socket closed" or
"failed to connect". The retry loop cannot tell a node that is restarting
from a client that will never get in, so once no node of the cluster has
answered for a few seconds, the client asks here what is at each address:

- nothing listening (connection refused), or nothing answering (timeout);
- a TLS server, and the client speaks plaintext;
- a plaintext server, and the client speaks TLS;
- a TLS server that wants a client certificate the client does not have;
- a TLS server whose certificate the client's CA does not vouch for;
- something that answers, but not HTTP/2 (so not gRPC, not a distnode).

The probes are plain TCP and TLS handshakes against the address, with a
short timeout each; they send nothing a node would act on. They run in
daemon threads, one per address, and the caller waits for them only until
its own deadline (at least GRACE_S): a probe still waiting then is reported
as such, with gRPC's last error for that address, so `--timeout` bounds the
whole call, diagnosis included.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time

from node.addresses import split_host_port
from node.errors import ClusterUnavailable
from node.security import TlsFiles

PROBE_TIMEOUT_S = 1.0
#: A diagnosis asked for at or after the caller's deadline still gets this long: a refused
#: connection, the commonest cause, is told in microseconds.
GRACE_S = 0.1


def unreachable(
    addresses: list[str], tls: TlsFiles | None, errors: dict[str, str] | None = None,
    deadline_s: float | None = None,
) -> ClusterUnavailable:
    """The error for a cluster none of whose nodes ever answered, each address diagnosed
    (`errors`: the last error gRPC gave for each, a hint when the probes find nothing).
    `deadline_s` (time.monotonic()): the caller's, which the probes do not hold it past
    by more than GRACE_S; None: wait for every probe."""
    errors = errors or {}
    causes: dict[str, str] = {}

    def probe(address: str) -> None:
        causes[address] = diagnose(address, tls, errors.get(address, ""))

    # Side by side, a thread per address: a few seconds in all, not a few per address.
    # Daemon threads: a probe the caller stopped waiting for must not hold its process's exit.
    probes = [threading.Thread(target=probe, args=(address,), name=f"distnode-probe {address}", daemon=True)
              for address in addresses]
    for thread in probes:
        thread.start()
    until_s = None if deadline_s is None else max(deadline_s, time.monotonic() + GRACE_S)
    for thread in probes:
        # A client's timeout may be huge (or inf): a wait longer than the lock's limit is no wait limit.
        left_s = None if until_s is None else max(0.0, until_s - time.monotonic())
        thread.join(None if left_s is None or left_s > threading.TIMEOUT_MAX else left_s)
    said = [causes.get(address) or _not_probed(address, errors.get(address, "")) for address in addresses]
    return ClusterUnavailable(f"no node answered: {'; '.join(said)}")


def _not_probed(address: str, error: str) -> str:
    return f"{address}: no answer before the client's timeout ({error or 'gRPC said nothing more'})"
#: The client preface of HTTP/2 (RFC 9113 §3.4), then an empty SETTINGS frame.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_SETTINGS_FRAME_TYPE = 0x04


def diagnose(address: str, tls: TlsFiles | None, error: str = "", timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """One line: what is at `address`, as a client with `tls` sees it, and what to do."""
    try:
        host, port = split_host_port(address)
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except ConnectionRefusedError:
        return f"{address}: nothing is listening there (connection refused): is the node up, the port right?"
    except TimeoutError:
        return f"{address}: no answer within {timeout_s:g} s (a wrong host, or a firewall dropping packets)"
    except (OSError, ValueError) as exc:
        return f"{address}: cannot connect ({getattr(exc, 'strerror', None) or exc})"
    server_tls, _ = _handshake(host, port, None, timeout_s)
    speaks = True if server_tls else _speaks_http2(host, port, timeout_s)
    if speaks is None:  # the kernel accepts the connection, and nothing answers on it
        return (f"{address}: accepts connections but sends nothing within {timeout_s:g} s: a paused,"
                " overloaded or hung node?")
    client_tls = tls is not None and tls.enabled
    if server_tls and not client_tls:
        return (f"{address}: the node speaks TLS and this client does not; give --tls-ca "
                "(and --tls-cert/--tls-key if it wants mutual TLS)")
    if not server_tls and client_tls:
        return f"{address}: the node does not speak TLS; drop --tls-ca, --tls-cert and --tls-key"
    if server_tls and tls is not None:
        return f"{address}: {_tls_problem(host, port, tls, timeout_s)}"
    if not speaks:
        return f"{address}: something answers there, but not HTTP/2: not a gRPC server, so not a distnode"
    if "UNIMPLEMENTED" in error:
        return f"{address}: a gRPC server, but not a distnode (it has no distnode.v1.Node service)"
    return f"{address}: a gRPC server that refuses the calls ({error or 'no detail'}); see its log"


def _handshake(host: str, port: int, context: ssl.SSLContext | None, timeout_s: float) -> tuple[bool, str]:
    """(does the server speak TLS, the TLS error's reason or "" if the handshake and a read succeed).

    A TLS server that refuses us still speaks TLS: it answers with an alert.
    """
    if context is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host) as conn:
            # TLS 1.3 servers refuse a missing client certificate after the
            # handshake: an alert, or a close, arrives on the first read.
            conn.settimeout(min(0.2, timeout_s))
            with contextlib.suppress(TimeoutError):
                if conn.recv(1) == b"":
                    return True, "CLOSED_AFTER_HANDSHAKE"
    except ssl.SSLCertVerificationError as exc:
        return True, f"CERTIFICATE_VERIFY_FAILED {exc.verify_message}"
    except ssl.SSLError as exc:
        reason = str(exc.reason or exc)
        return "ALERT" in reason.upper(), reason
    except OSError as exc:
        return False, str(exc)
    return True, ""


def _tls_problem(host: str, port: int, tls: TlsFiles, timeout_s: float) -> str:
    try:
        context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    except (ssl.SSLError, OSError) as exc:
        return f"--tls-ca {tls.ca} is not a PEM certificate this client can load ({exc})"
    if tls.cert is not None and tls.key is not None:
        try:
            context.load_cert_chain(str(tls.cert), str(tls.key), password=b"")  # no prompt: TlsFiles
        except (ssl.SSLError, OSError) as exc:
            return (f"--tls-cert {tls.cert} and --tls-key {tls.key} cannot be loaded as a certificate"
                    f" and its key ({exc})")
    _, problem = _handshake(host, port, context, timeout_s)
    reason = problem.upper()
    if not problem:
        return "TLS handshakes succeed, the calls after them fail (a wrong token?); see the node's log"
    refused = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE", "CLOSED_AFTER_HANDSHAKE")
    if tls.cert is None and any(word in reason for word in refused):
        return "the node wants a client certificate (mutual TLS); give --tls-cert and --tls-key"
    if "VERIFY" in reason:
        return (f"the node's certificate is not trusted by --tls-ca, or not made for {host!r} "
                "(distnode certs --hosts)")
    if any(word in reason for word in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CLOSED_AFTER_HANDSHAKE")):
        return "the node does not trust this client's certificate (signed by another CA?)"
    return f"the TLS handshake fails: {problem}"


def _speaks_http2(host: str, port: int, timeout_s: float) -> bool | None:
    """True if the server answers the HTTP/2 preface with a SETTINGS frame, as gRPC servers do;
    None if it answers nothing within `timeout_s`."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            conn.sendall(_H2_PREFACE)
            head = conn.recv(9)
    except TimeoutError:
        return None
    except OSError:
        return False
    return len(head) >= 4 and head[3] == _SETTINGS_FRAME_TYPE
