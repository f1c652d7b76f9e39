"""A client that cannot get in says why, within seconds, instead of retrying until its timeout.

Each case stands a server on 127.0.0.1 (a gRPC server in a thread, with or
without TLS, an HTTP/1 server, or nothing at all) and points a client, the
CLI or the probe of node/client/reach.py at it. Nothing here is a distnode
node: these are the servers a misconfigured client meets.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from cli.main import main
from node import Client, ClusterUnavailable, TlsFiles
from node.client.reach import GRACE_S, diagnose, unreachable
from node.testing.certs import make_certs
from node.testing.ports import free_ports

#: Generous: the client gives up after UNREACHABLE_AFTER_S (3 s) plus a round of probes.
GIVES_UP_WITHIN_S = 12.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    make_certs(out, nodes=1)
    return out


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("other-ca")
    make_certs(out, nodes=1)
    return out


@contextlib.contextmanager
def grpc_server(certs: Path | None = None, mutual: bool = False) -> Iterator[str]:
    """A gRPC server with only the health service: reachable, but not a distnode."""
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    if certs is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        files = TlsFiles(certs / "n1.pem", certs / "n1.key", certs / "ca.pem" if mutual else None)
        port = server.add_secure_port("127.0.0.1:0", files.server_credentials())
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


@contextlib.contextmanager
def http1_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def client_tls(certs: Path, with_cert: bool = True) -> TlsFiles:
    if with_cert:
        return TlsFiles(certs / "client.pem", certs / "client.key", certs / "ca.pem")
    return TlsFiles(ca=certs / "ca.pem")


def test_nothing_listening() -> None:
    (port,) = free_ports(1)
    assert "nothing is listening there" in diagnose(f"127.0.0.1:{port}", None)


def test_a_plaintext_client_at_a_tls_server(certs: Path) -> None:
    with grpc_server(certs) as address:
        assert "the node speaks TLS and this client does not; give --tls-ca" in diagnose(address, None)


def test_a_tls_client_at_a_plaintext_server(certs: Path) -> None:
    with grpc_server() as address:
        assert "does not speak TLS" in diagnose(address, client_tls(certs))


def test_no_client_certificate_for_mutual_tls(certs: Path) -> None:
    with grpc_server(certs, mutual=True) as address:
        assert "wants a client certificate" in diagnose(address, client_tls(certs, with_cert=False))


def test_a_server_certificate_from_another_ca(certs: Path, other_ca: Path) -> None:
    with grpc_server(certs) as address:
        assert "not trusted by --tls-ca" in diagnose(address, client_tls(other_ca, with_cert=False))


def test_tls_files_that_are_not_what_they_say_are_named_not_a_traceback(certs: Path) -> None:
    """A key given as --tls-ca, or a certificate with another's key, fails to load in the
    probe: said, naming the flags (it raised ssl.SSLError out of the client before)."""
    with grpc_server(certs) as address:
        said = diagnose(address, TlsFiles(ca=certs / "client.key"))
        assert f"--tls-ca {certs / 'client.key'} is not a PEM certificate this client can load" in said
        said = diagnose(address, TlsFiles(certs / "client.pem", certs / "n1.key", certs / "ca.pem"))
        assert f"--tls-cert {certs / 'client.pem'} and --tls-key {certs / 'n1.key'} cannot be loaded" in said


def test_an_http1_server() -> None:
    with http1_server() as address:
        assert "not HTTP/2" in diagnose(address, None)


@contextlib.contextmanager
def silent_address() -> Iterator[str]:
    """Listening, never accepting: the kernel completes connections, nothing answers on them
    (what a stopped process, or a hung one, looks like)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)  # room for gRPC's reconnects and the probes: a full queue drops the SYN
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_a_node_that_accepts_connections_and_says_nothing_is_called_silent_not_foreign() -> None:
    """A paused node (SIGSTOP: the kernel still accepts its connections) was said to be "not
    a gRPC server, so not a distnode": a silent probe read as a wrong answer."""
    with silent_address() as address:  # what a stopped process is
        said = diagnose(address, None, timeout_s=0.3)
    assert "accepts connections but sends nothing within 0.3 s" in said and "not a distnode" not in said



def test_a_diagnosis_at_the_deadline_waits_no_longer_than_the_grace_and_says_what_grpc_said() -> None:
    (dead,) = free_ports(1)
    with silent_address() as silent:
        started = time.monotonic()
        error = unreachable([silent, f"127.0.0.1:{dead}"], None, {silent: "Deadline Exceeded"},
                            deadline_s=started - 1.0)
        took_s = time.monotonic() - started
    said = str(error)
    assert took_s < GRACE_S + 0.5, took_s  # the probe of the silent one waits 1 s per step
    assert f"{silent}: no answer before the client's timeout (Deadline Exceeded)" in said, said
    assert f"127.0.0.1:{dead}: nothing is listening there" in said, said  # told within the grace



@pytest.mark.parametrize("timeout_s", [1e12, float("inf")])
def test_a_huge_deadline_waits_for_the_probes(timeout_s: float) -> None:
    """A client may be given any timeout; one past the lock's limit raised OverflowError
    where the diagnosis was due."""
    (dead,) = free_ports(1)
    said = str(unreachable([f"127.0.0.1:{dead}"], None, {}, deadline_s=time.monotonic() + timeout_s))
    assert f"127.0.0.1:{dead}: nothing is listening there" in said, said


def test_the_client_gives_up_within_its_timeout_with_the_diagnosis() -> None:
    """The probes of an unreachable cluster ran after the deadline: two of their seconds
    more for a node that accepts and says nothing."""
    timeout_s = 3.5  # past UNREACHABLE_AFTER_S (3 s): the client diagnoses, rather than times out
    with silent_address() as silent, Client([silent], timeout=timeout_s) as client:
        started = time.monotonic()
        with pytest.raises(ClusterUnavailable) as failed:
            client.submit(op="sum", source="range:n=10")
        took_s = time.monotonic() - started
    assert took_s < timeout_s + 0.6, (took_s, str(failed.value))
    assert f"{silent}: no answer before the client's timeout" in str(failed.value), str(failed.value)


def test_a_grpc_server_that_is_not_a_distnode() -> None:
    with grpc_server() as address:
        assert "not a distnode" in diagnose(address, None, "UNIMPLEMENTED: Method not found!")


def submit_takes(addresses: list[str], tls: TlsFiles | None = None) -> tuple[float, str]:
    started = time.monotonic()
    with Client(addresses, timeout=60, tls=tls) as client, pytest.raises(ClusterUnavailable) as failed:
        client.submit(op="sum", source="range:n=10")
    return time.monotonic() - started, str(failed.value)


def test_the_client_gives_up_on_a_tls_cluster_it_cannot_speak_to(certs: Path) -> None:
    (dead,) = free_ports(1)
    with grpc_server(certs) as address:
        took_s, message = submit_takes([address, f"127.0.0.1:{dead}"])
    assert took_s < GIVES_UP_WITHIN_S, took_s
    assert f"{address}: the node speaks TLS" in message and f"127.0.0.1:{dead}: nothing is listening" in message


def test_the_client_names_a_grpc_server_that_is_not_a_distnode() -> None:
    with grpc_server() as address:
        took_s, message = submit_takes([address])
    assert took_s < GIVES_UP_WITHIN_S and "not a distnode" in message, (took_s, message)


def test_cli_submit_and_status_exit_3_with_the_cause(certs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with grpc_server(certs) as address:
        started = time.monotonic()
        code = main(["submit", "--cluster", address, "--op", "sum", "--source", "range:n=3", "--timeout", "60"])
        took_s = time.monotonic() - started
        err = capsys.readouterr().err
        assert code == 3 and took_s < GIVES_UP_WITHIN_S, (code, took_s, err)
        assert "the node speaks TLS" in err and "Traceback" not in err
        assert main(["status", "--cluster", address]) == 3
        assert "the node speaks TLS" in capsys.readouterr().err


def test_cli_tls_files_that_do_not_load_exit_2_naming_the_flag(
    certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before any call (gRPC only logs a root certificate it cannot load, and the
    cluster then looked unreachable: exit 3 after seconds)."""
    code = main(["jobs", "--cluster", "127.0.0.1:9", "--tls-ca", str(certs / "client.key")])
    err = capsys.readouterr().err
    assert code == 2 and f"tls-ca: {certs / 'client.key'} is not a PEM certificate" in err, err
    code = main(["jobs", "--cluster", "127.0.0.1:9", "--tls-ca", str(certs / "ca.pem"),
                 "--tls-cert", str(certs / "client.pem"), "--tls-key", str(certs / "n1.key")])
    err = capsys.readouterr().err
    assert code == 2 and "are not a certificate and its key" in err, err


def test_an_encrypted_key_is_refused_without_a_prompt(certs: Path, tmp_path: Path) -> None:
    """ssl asks for a passphrase on the terminal for an encrypted key, which held `distnode
    start` (gRPC takes no encrypted key either): refused as a key that does not load."""
    from cryptography.hazmat.primitives import serialization

    from node.errors import SecurityError

    key = serialization.load_pem_private_key((certs / "client.key").read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"passphrase")))
    with pytest.raises(SecurityError, match="are not a certificate and its key"):
        TlsFiles(certs / "client.pem", locked, certs / "ca.pem").validate_client()
