"""TLS, mutual TLS and the cluster token: who gets in, and what they are told.

The matrix test is the figure asked for in the security issue: every client
kind against every server mode, with the outcome each must get.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from inproc import StartCluster, poll

from node import AccessDenied, AsyncClient, Client, ClusterUnavailable
from node._proto import distnode_pb2 as pb
from node.channels import ChannelFactory
from node.errors import ConfigError, SecurityError
from node.security import TlsFiles, load_token
from node.server.config import NodeConfig
from node.testing.certs import make_certs
from node.wire.stubs import NodeStub

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    make_certs(out, nodes=1)
    other = out / "other"
    make_certs(other, nodes=1)  # a second CA: its certificates are strangers
    return out


SERVER_MODES = {
    "plain": lambda c: TlsFiles(),
    "tls": lambda c: TlsFiles(c / "n1.pem", c / "n1.key"),
    "mtls": lambda c: TlsFiles(c / "n1.pem", c / "n1.key", c / "ca.pem"),
}
CLIENT_KINDS = {
    "plain": lambda c: None,
    "tls": lambda c: TlsFiles(ca=c / "ca.pem"),
    "mtls": lambda c: TlsFiles(c / "client.pem", c / "client.key", c / "ca.pem"),
    "mtls-foreign-cert": lambda c: TlsFiles(c / "other" / "client.pem", c / "other" / "client.key", c / "ca.pem"),
}


def expected(server: str, client: str, server_token: bool, client_token: str | None) -> str:
    transport_ok = {
        "plain": client == "plain",
        "tls": client != "plain",
        "mtls": client == "mtls",
    }[server]
    if not transport_ok:
        return "UNAVAILABLE"
    if server_token and client_token != TOKEN:
        return "UNAUTHENTICATED"
    return "OK"


async def outcome(address: str, tls: TlsFiles | None, token: str | None) -> str:
    factory = ChannelFactory(tls, token)
    channel = factory.aio(address)
    try:
        await NodeStub(channel, factory.metadata).Status(pb.StatusRequest(), timeout=3)
        return "OK"
    except grpc.aio.AioRpcError as exc:
        return str(exc.code().name)
    finally:
        await channel.close()


@pytest.mark.parametrize(("server", "server_token"), list(itertools.product(SERVER_MODES, [False, True])))
async def test_tls_token_matrix(
    start_cluster: StartCluster, certs: Path, server: str, server_token: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = await start_cluster(1, tls=SERVER_MODES[server](certs), token=TOKEN if server_token else None)
    rows = []
    for client, token in itertools.product(CLIENT_KINDS, [None, TOKEN, "wrong"]):
        got = await outcome(cluster.addresses[0], CLIENT_KINDS[client](certs), token)
        want = expected(server, client, server_token, token)
        rows.append(f"| {server}{'+token' if server_token else ''} | {client} | {token or '-'} | {got} |")
        assert got == want, (server, server_token, client, token)
    with capsys.disabled():
        print("\n" + "\n".join(rows))


async def test_health_check_stays_open_without_the_token(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1, token=TOKEN)
    channel = grpc.aio.insecure_channel(cluster.addresses[0])
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await channel.close()


async def test_under_tls_log_entries_never_go_by_datagram(start_cluster: StartCluster, certs: Path) -> None:
    """Datagrams are sealed, not encrypted: with TLS the job records (sources, answers)
    keep to the stream, while idle beats still go by UDP."""
    cluster = await start_cluster(3, tls=SERVER_MODES["mtls"](certs), token=TOKEN)
    leader = await cluster.wait_for_leader()

    def links() -> list[Any]:
        return [leader.heartbeats.link(address) for address in leader.config.peers]

    await poll(lambda: all(link is not None and link.on_udp for link in links()), 5.0, "beats on UDP")
    async with AsyncClient(cluster.addresses, token=TOKEN, tls=CLIENT_KINDS["mtls"](certs)) as client:
        jobs = [await client.submit(op="sum", source="values:1,2,3", detach=True) for _ in range(5)]
        assert [(await client.result(job, wait=10)).result for job in jobs] == [6] * 5
    assert all(link.sent_udp > 0 and link.entries_udp == 0 for link in links())


async def test_cluster_under_mtls_and_token_elects_and_computes(start_cluster: StartCluster, certs: Path) -> None:
    cluster = await start_cluster(
        3, tls=SERVER_MODES["mtls"](certs), token=TOKEN, shard_elems=1 << 12
    )
    client_tls = CLIENT_KINDS["mtls"](certs)
    async with AsyncClient(cluster.addresses, token=TOKEN, tls=client_tls) as client:
        answer = await client.submit(op="sum", source="range:n=100000")
        assert answer.result == sum(range(100000))
        assert len(answer.nodes) >= 2  # peers talked to each other through mTLS with the token
    # The blocking Client's synchronous path carries the token and certificate too.
    with Client(cluster.addresses, token=TOKEN, tls=client_tls) as blocking:
        answer = await asyncio.to_thread(blocking.submit, op="max", source="range:n=1000")
        assert answer.result == 999
    with (
        Client(cluster.addresses, token="wrong", tls=client_tls, timeout=1) as blocking,
        pytest.raises(AccessDenied, match="UNAUTHENTICATED"),
    ):
        await asyncio.to_thread(blocking.submit, op="max", source="range:n=1000")
    async with AsyncClient(cluster.addresses, token="wrong", tls=client_tls, timeout=1) as client:
        with pytest.raises(AccessDenied, match="UNAUTHENTICATED"):
            await client.submit(op="sum", source="range:n=10")
        with pytest.raises(AccessDenied, match="UNAUTHENTICATED"):
            await client.status()


def test_token_loading(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  abc \n")
    assert load_token(path) == "abc"
    assert load_token(None, {"DISTNODE_TOKEN": "env"}) == "env"
    assert load_token(None, {}) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(SecurityError, match=r"token-file: .* is empty"):
        load_token(tmp_path / "empty")
    with pytest.raises(SecurityError, match="token-file: cannot read"):
        load_token(tmp_path / "missing")


def test_tls_files_given_as_strings_are_paths(certs: Path) -> None:
    """The README writes `TlsFiles(cert, key, ca)`: with strings, a client failed at its first
    call with "'str' object has no attribute 'read_bytes'"."""
    files = TlsFiles(str(certs / "client.pem"), str(certs / "client.key"), str(certs / "ca.pem"))  # type: ignore[arg-type]
    assert (files.cert, files.key, files.ca) == (certs / "client.pem", certs / "client.key", certs / "ca.pem")
    files.validate_client()
    assert files.channel_credentials() is not None  # reads the three files
    assert TlsFiles(ca=certs / "ca.pem") == TlsFiles(ca=str(certs / "ca.pem"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("listen", "tls", "token", "insecure", "ok"),
    [
        ("127.0.0.1:1", False, False, False, True),
        ("localhost:1", False, False, False, True),
        ("0.0.0.0:1", False, False, False, False),
        ("0.0.0.0:1", True, False, False, False),
        ("0.0.0.0:1", False, True, False, False),
        ("0.0.0.0:1", True, True, False, True),
        ("0.0.0.0:1", False, False, True, True),
    ],
)
def test_exposed_listen_needs_tls_and_token_or_insecure(
    certs: Path, listen: str, tls: bool, token: bool, insecure: bool, ok: bool
) -> None:
    config = NodeConfig(
        node_id="n1", listen=listen, peers=(), data_dir=Path("unused"),
        tls=SERVER_MODES["tls"](certs) if tls else TlsFiles(),
        token=TOKEN if token else None, insecure=insecure, advertise="10.0.0.1:1",
    )
    if ok:
        config.validate()
    else:
        lacking = " and no ".join(name for name, has in (("TLS", tls), ("token", token)) if not has)
        with pytest.raises(ConfigError, match=f"reachable from the network but has no {lacking};"):
            config.validate()  # it said "has no a token"


@pytest.mark.process
def test_local_cluster_with_mtls_and_token_end_to_end() -> None:
    """The harness runs real daemons under mutual TLS + token; outsiders get nothing."""
    from node import LocalCluster
    from node.testing.cluster import FAST_TIMING

    with LocalCluster(nodes=3, tls=True, token=TOKEN, shard_elems=1 << 12, **FAST_TIMING) as cluster:  # type: ignore[arg-type]
        answer = cluster.client.submit(op="sum", source="range:n=100000")
        assert answer.result == sum(range(100000)) and len(answer.nodes) >= 2
        with Client(cluster.addresses, token=TOKEN, timeout=1) as no_cert, pytest.raises(ClusterUnavailable):
            no_cert.submit(op="sum", source="range:n=10")
        with Client(cluster.addresses, token="wrong", tls=cluster.client_tls, timeout=1) as bad_token, \
                pytest.raises(AccessDenied, match="UNAUTHENTICATED"):
            bad_token.submit(op="sum", source="range:n=10")


async def test_a_call_without_the_token_is_refused_before_its_request_is_read(
    start_cluster: StartCluster,
) -> None:
    """gRPC reads a unary request whole, up to --max-message-bytes, before its handler runs: the
    refusal of a caller without the token is request-streaming, so it reads nothing, and the
    caller still hears UNAUTHENTICATED (here with a 4 MB request, and an empty one)."""
    import grpc.aio

    from node.security import _refusing_handler

    async def anything(request: Any, context: Any) -> None:
        return None

    for shape in (grpc.unary_unary_rpc_method_handler(anything), grpc.unary_stream_rpc_method_handler(anything)):
        assert _refusing_handler(shape).request_streaming
    cluster = await start_cluster(1, token=TOKEN)
    channel = grpc.aio.insecure_channel(cluster.addresses[0], options=[("grpc.max_send_message_length", 8 << 20)])
    try:
        stub = NodeStub(channel, None)
        for values in ("1," * (2 << 20), "1"):
            request = pb.SubmitRequest(job=pb.JobSpec(job_id="j", op="sum", source=f"values:{values}"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Submit(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Cancel(pb.CancelRequest(job_id="j"), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await channel.close()
