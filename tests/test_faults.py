"""Link faults: the TCP proxy of `node/testing/faults.py`, and LocalCluster's link API on real daemons.

The proxy tests talk to a local echo server through one link: cut, blackhole,
refuse, heal and delay are observed on plain sockets. The process tests run a
3-node cluster with `link_faults=True` and observe the faults through gRPC,
dialling a link's address exactly as the node on its near end does.
Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import inproc
import pytest

from node import AsyncClient, Client, ClusterUnavailable, LocalCluster
from node._proto import distnode_pb2 as pb
from node._proto import distnode_pb2_grpc as pb_grpc
from node.testing.cluster import CLIENT, FAST_TIMING
from node.testing.faults import FaultProxy

# ---- helpers ------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str,
               logs: Callable[[], str] = lambda: "") -> None:
    inproc.wait_until(predicate, timeout_s, what, logs, interval_s=0.01)  # each check may be an RPC


class EchoServer:
    """A threaded TCP echo server on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone does not
        self.sock.close()
        for conn in self._conns:
            conn.close()


def connect(address: str, timeout_s: float = 2.0) -> socket.socket:
    host, _, port = address.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout_s)


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    """Send `payload` and read until it all came back, or b'' on close / timeout."""
    sock.sendall(payload)
    got = b""
    try:
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                return b""
            got += chunk
    except (TimeoutError, ConnectionError):
        return b""
    return got


def closed_by_peer(sock: socket.socket, timeout_s: float = 2.0) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


class UdpEcho:
    """A threaded UDP echo server on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(2048)
                self.sock.sendto(data, addr)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def udp_round_trip_s(address: str, timeout_s: float) -> float | None:
    """Seconds for one datagram to come back through `address`, None if it does not."""
    host, _, port = address.rpartition(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        started = time.monotonic()
        sock.sendto(b"beat", (host, int(port)))
        try:
            data, _ = sock.recvfrom(2048)
        except TimeoutError:
            return None
    assert data == b"beat"
    return time.monotonic() - started


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    running = FaultProxy()
    yield running
    running.close()


# ---- the proxy alone ----------------------------------------------------------------------


def test_link_forwards_both_ways(echo: EchoServer, proxy: FaultProxy) -> None:
    address = proxy.add("a->b", echo.address)
    with connect(address) as sock:
        assert round_trip(sock, b"hello") == b"hello"
        big = bytes(range(256)) * 4096  # 1 MiB: several chunks, backpressure
        assert round_trip(sock, big) == big


def test_cut_closes_established_connections_and_blackholes_new_ones(
    echo: EchoServer, proxy: FaultProxy
) -> None:
    address = proxy.add("a->b", echo.address)
    established = connect(address)
    assert round_trip(established) == b"ping"
    proxy.cut("a->b")
    assert closed_by_peer(established), "a cut must break established connections"
    established.close()
    with connect(address, timeout_s=0.3) as new:  # accepted: a blackhole, not a refusal
        assert round_trip(new) == b"", "a cut link must forward nothing"
        assert proxy.link("a->b").blackholed == 1
        proxy.heal("a->b")
        assert closed_by_peer(new), "healing closes blackholed connections, so peers reconnect"
    with connect(address) as healed:
        assert round_trip(healed) == b"ping"


def test_refuse_mode_closes_new_connections_at_once(echo: EchoServer, proxy: FaultProxy) -> None:
    address = proxy.add("a->b", echo.address, mode="refuse")
    proxy.cut("a->b")
    with connect(address) as sock:
        assert closed_by_peer(sock, timeout_s=2.0)
    assert proxy.link("a->b").refused == 1
    proxy.heal("a->b")
    with connect(address) as sock:
        assert round_trip(sock) == b"ping"


def test_delay_holds_each_direction(echo: EchoServer, proxy: FaultProxy) -> None:
    address = proxy.add("a->b", echo.address)
    with connect(address) as sock:
        started = time.monotonic()
        assert round_trip(sock) == b"ping"
        fast_s = time.monotonic() - started
        proxy.delay("a->b", 150)
        started = time.monotonic()
        assert round_trip(sock) == b"ping"
        slow_s = time.monotonic() - started
        proxy.heal("a->b")  # also removes the delay
        started = time.monotonic()
        assert round_trip(sock) == b"ping"
        healed_s = time.monotonic() - started
    assert slow_s >= 0.3 > fast_s, (fast_s, slow_s)  # 150 ms out, 150 ms back
    assert healed_s < 0.3


def test_link_relays_datagrams_cut_drops_them_delay_holds_them(proxy: FaultProxy) -> None:
    echo = UdpEcho()
    try:
        address = proxy.add("a->b", echo.address)
        fast_s = udp_round_trip_s(address, 2.0)
        assert fast_s is not None
        proxy.cut("a->b")
        assert udp_round_trip_s(address, 0.3) is None
        assert proxy.link("a->b").datagrams_dropped == 1
        proxy.heal("a->b")
        assert udp_round_trip_s(address, 2.0) is not None
        proxy.delay("a->b", 150)
        slow_s = udp_round_trip_s(address, 2.0)
        assert slow_s is not None and slow_s >= 0.3 > fast_s, (fast_s, slow_s)  # held both ways
        assert proxy.link("a->b").datagrams == 6
    finally:
        echo.close()


def test_dead_target_closes_the_connection(proxy: FaultProxy) -> None:
    server = EchoServer()
    address = proxy.add("a->b", server.address)
    server.close()  # nothing listens there any more
    with connect(address) as sock:
        assert closed_by_peer(sock)


def test_bad_arguments_are_refused(echo: EchoServer, proxy: FaultProxy) -> None:
    proxy.add("a->b", echo.address)
    with pytest.raises(ValueError, match="exists"):
        proxy.add("a->b", echo.address)
    with pytest.raises(ValueError, match="mode"):
        proxy.add("x", echo.address, mode="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ms"):
        proxy.delay("a->b", -1)
    with pytest.raises(KeyError, match="no link"):
        proxy.cut("nope")


def test_harness_link_api_needs_link_faults() -> None:
    cluster = LocalCluster(nodes=2)
    try:
        with pytest.raises(RuntimeError, match="link_faults=True"):
            cluster.cut("n1", "n2")
    finally:
        cluster.close()


# ---- a real cluster -------------------------------------------------------------------------


def status_via(address: str, timeout_s: float = 0.5) -> pb.StatusReply | None:
    """One Status RPC to `address` on a fresh channel; None if it fails or times out."""
    with grpc.insecure_channel(address) as channel:
        try:
            return pb_grpc.NodeStub(channel).Status(pb.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return None


def role_of(cluster: LocalCluster, node_id: str) -> tuple[str, int, str] | None:
    reply = status_via(cluster.address(node_id))
    return None if reply is None else (reply.role, reply.term, reply.leader_id)


def agreed_leader(cluster: LocalCluster) -> str | None:
    views = [role_of(cluster, n) for n in cluster.ids]
    if any(v is None for v in views) or len({(v[1], v[2]) for v in views if v}) != 1:
        return None
    assert views[0] is not None
    leader = views[0][2]
    return leader if leader and views[cluster.ids.index(leader)][0] == "leader" else None  # type: ignore[index]


def alive_in_view(cluster: LocalCluster, viewer: str, node_id: str) -> bool:
    reply = status_via(cluster.address(viewer))
    return reply is not None and any(n.id == node_id and n.alive for n in reply.nodes)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(nodes=3, link_faults=True, **FAST_TIMING) as running:  # type: ignore[arg-type]
        yield running


@pytest.mark.process
def test_nodes_dial_each_other_only_through_links(cluster: LocalCluster) -> None:
    for node_id in cluster.ids:
        peers = cluster.peer_addresses(node_id)
        assert sorted(peers) == sorted(cluster.link_address(node_id, o) for o in cluster.ids if o != node_id)
        assert not set(peers) & set(cluster.addresses)
        assert all(cluster.id_of(cluster.link_address(node_id, o)) == o for o in cluster.ids if o != node_id)
    leader = cluster.leader()
    wait_until(lambda: agreed_leader(cluster) == leader, 10, "every node to follow the leader", cluster.logs)
    # Heartbeats go as datagrams, and those too cross the links.
    for follower in (n for n in cluster.ids if n != leader):
        wait_until(lambda f=follower: cluster.link_datagrams(leader, f) >= 20, 10,  # type: ignore[misc]
                   f"heartbeat datagrams {leader} -> {follower}", cluster.logs)


@pytest.mark.process
def test_cut_fails_rpcs_across_the_link_and_heal_restores_them(cluster: LocalCluster) -> None:
    a, b = cluster.ids[0], cluster.ids[1]
    assert status_via(cluster.link_address(a, b)) is not None
    cluster.cut(a, b)
    assert cluster.link_cut(a, b) and cluster.link_cut(b, a)
    assert status_via(cluster.link_address(a, b)) is None
    assert status_via(cluster.link_address(b, a)) is None
    assert status_via(cluster.address(b)) is not None, "client traffic is not affected"
    cluster.heal(a, b)
    wait_until(lambda: status_via(cluster.link_address(a, b)) is not None, 5, "the healed link", cluster.logs)
    c = cluster.ids[2]
    cluster.cut(a, b)
    cluster.cut(b, c)
    cluster.heal(a)  # every link of a, and only those
    assert not cluster.link_cut(a, b) and not cluster.link_cut(b, a)
    assert cluster.link_cut(b, c) and cluster.link_cut(c, b)
    cluster.heal()
    assert not any(cluster.link_cut(x, y) for x in cluster.ids for y in cluster.ids if x != y)


@pytest.mark.process
def test_one_way_cut_leaves_the_other_direction(cluster: LocalCluster) -> None:
    cluster.wait_all_alive(timeout_s=10)  # else "not alive in the leader's view" would hold from the start
    leader = cluster.leader()
    term = cluster.status().term
    follower = next(n for n in cluster.ids if n != leader)
    before_cut = len(cluster.log(follower))  # every node is a pre-candidate once at boot
    cluster.cut(leader, follower, both=False)  # the leader's RPCs to it fail; its RPCs to the leader work
    assert status_via(cluster.link_address(leader, follower)) is None
    assert status_via(cluster.link_address(follower, leader)) is not None
    wait_until(lambda: not alive_in_view(cluster, leader, follower), 10,
               f"{leader} to miss {follower}'s heartbeat replies", cluster.logs)
    # The follower hears no heartbeats and asks for pre-votes, which the leader
    # and the other follower (both in the leader's lease) refuse: no new term.
    wait_until(lambda: "became pre-candidate" in cluster.log(follower)[before_cut:], 10,
               f"{follower} to time out", cluster.logs)
    view = cluster.status()
    assert (view.leader, view.term) == (leader, term), cluster.logs()
    cluster.heal()
    wait_until(lambda: alive_in_view(cluster, leader, follower), 10, f"{follower} to be back", cluster.logs)
    wait_until(lambda: agreed_leader(cluster) == leader, 10, "everybody to follow the same leader",
               cluster.logs)


@pytest.mark.process
def test_isolated_leader_steps_down_and_the_majority_elects_another(cluster: LocalCluster) -> None:
    old = cluster.leader()
    old_term = cluster.status().term
    cluster.isolate(old)
    new = cluster.wait_for_leader(timeout_s=10, exclude=[old])
    new_view = role_of(cluster, new)
    assert new_view is not None and new_view[1] > old_term
    # CheckQuorum (thesis §6.2): the old leader hears no quorum and steps down on its own.
    wait_until(lambda: (role_of(cluster, old) or ("leader",))[0] != "leader", 10,
               f"{old} to step down", cluster.logs)
    old_view = role_of(cluster, old)
    assert old_view is not None and old_view[1] == old_term, "Pre-Vote: the loner keeps its term"
    with Client([cluster.address(n) for n in cluster.ids if n != old]) as client:
        assert client.submit(op="sum", source="range:n=1e6", timeout=20).result == 499999500000
    cluster.heal()
    wait_until(lambda: agreed_leader(cluster) == new, 10, f"{old} to follow {new}", cluster.logs)


@pytest.mark.process
def test_delay_adds_latency_to_the_link(cluster: LocalCluster) -> None:
    a, b = cluster.ids[0], cluster.ids[2]

    def rpc_s() -> float:
        started = time.monotonic()
        assert status_via(cluster.link_address(a, b), timeout_s=5) is not None
        return time.monotonic() - started

    rpc_s()  # warm up
    base_s = min(rpc_s() for _ in range(3))
    cluster.delay(a, b, 100, both=False)
    delayed_s = min(rpc_s() for _ in range(3))
    assert delayed_s >= 0.2 > base_s, (base_s, delayed_s)  # 100 ms each way
    cluster.delay(a, b, 0)
    assert min(rpc_s() for _ in range(3)) < 0.2


@pytest.mark.process
def test_client_links_are_cut_only_when_asked(cluster: LocalCluster) -> None:
    first = cluster.leader()
    cluster.isolate(first)  # peers only: clients still reach it through their links
    assert status_via(cluster.link_address(CLIENT, first)) is not None
    cluster.isolate(first, clients=True)
    assert status_via(cluster.link_address(CLIENT, first)) is None
    cluster.heal()
    wait_until(lambda: agreed_leader(cluster) is not None, 10, "a leader after healing", cluster.logs)
    leader = agreed_leader(cluster)
    assert leader is not None
    cluster.cut(CLIENT, leader)
    assert status_via(cluster.link_address(CLIENT, leader)) is None
    assert status_via(cluster.address(leader)) is not None, "the real address is not a link"
    # A client that only knows the proxied addresses reaches the leader through a follower.
    with Client(cluster.client_addresses) as client:
        answer = client.submit(op="sum", source="range:n=1000", timeout=20)
    assert answer.result == 499500


@pytest.mark.process
def test_a_client_cut_off_from_every_node_gets_no_answer(
    cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Nodes advertise their client link, so a client on the links that learnt the leader
    from a reply stays on them instead of moving to its real address: cutting every
    CLIENT link leaves it nothing, as a real partition would. Closing a cluster with client
    links cut logs no error."""
    with Client(cluster.client_addresses, timeout=2) as client:
        first = client.submit(op="sum", source="range:n=10")
        assert first.result == 45
        for node_id in cluster.ids:
            cluster.cut(CLIENT, node_id)
        with pytest.raises(ClusterUnavailable):
            client.submit(op="sum", source="range:n=10", timeout=2)
        cluster.heal()
        assert client.submit(op="sum", source="range:n=10", timeout=10).result == 45
        for node_id in cluster.ids:
            cluster.cut(CLIENT, node_id)
        with pytest.raises(ClusterUnavailable):  # its new connections are held by the cut links
            client.submit(op="sum", source="range:n=10", timeout=1)
        with caplog.at_level("ERROR", logger="asyncio"):
            cluster.close()
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


def test_an_async_client_cut_off_on_its_open_stream_gets_no_answer(cluster: LocalCluster) -> None:
    """The AsyncClient's twin of the test above, where a stream carried the first job: its
    break after the cut does not count as the cluster having accepted the next job (the
    answer would be "job did not finish in time" instead of "cluster unavailable")."""
    async def run() -> None:
        async with AsyncClient(cluster.client_addresses, timeout=2) as client:
            assert (await client.submit(op="sum", source="range:n=10")).result == 45
            assert client._streams._open  # the first job went on a stream
            for node_id in cluster.ids:
                cluster.cut(CLIENT, node_id)
            with pytest.raises(ClusterUnavailable):
                await client.submit(op="sum", source="range:n=10", timeout=2)
            cluster.heal()
            assert (await client.submit(op="sum", source="range:n=10", timeout=10)).result == 45

    asyncio.run(run())


@pytest.mark.process
def test_restart_waits_for_the_new_incarnation() -> None:
    """The stdout log is appended to across restarts: an earlier incarnation's ready
    line must not make `restart` return while the new process is already dead."""
    with LocalCluster(nodes=2, **FAST_TIMING) as cluster:  # type: ignore[arg-type]
        cluster.extra_args = ["--heartbeat-ms", "not-a-number"]  # the next start fails at once
        with pytest.raises(RuntimeError, match="exited with 2 before listening"):
            cluster.restart(cluster.ids[1])


@pytest.mark.process
def test_worker_paused_mid_job_its_shards_move_promptly() -> None:
    """A worker stopped mid-batch is declared dead by the failure detector while
    its Compute RPC hangs: the leader must cancel that RPC and requeue the batch
    at once, not wait for the RPC, which would hold the job for its whole timeout."""
    with LocalCluster(nodes=3, shard_elems=1 << 18, link_faults=True, **FAST_TIMING) as cluster:  # type: ignore[arg-type]
        # Only a peer the leader has heard can be declared dead: one paused before
        # its first answer never is, and the wait below would time out.
        leader = cluster.wait_all_alive(timeout_s=10)
        worker = next(n for n in cluster.ids if n != leader)

        def pause_until_declared_dead() -> None:
            logged = len(cluster.log(leader))
            cluster.pause(worker)
            declared = f"peer {worker} ("  # then its address, then "missed heartbeats: dead"
            wait_until(lambda: any(declared in line and "missed heartbeats: dead" in line
                                   for line in cluster.log(leader)[logged:].splitlines()), 10,
                       f"{leader} to declare {worker} dead", cluster.logs)
            cluster.resume(worker)

        with Client([cluster.address(leader)]) as client:
            run = cluster.run_with_fault(pause_until_declared_dead, after_shards=3, client=client,
                                         timeout_s=30, op="sum", source="range:n=3e8", job_id="paused-worker")
        assert run.landed_mid_job, f"the pause did not land mid-job: {run.progress_at_fault}"
        assert run.fault_after_s is not None
        took_s = run.elapsed_s - run.fault_after_s
        assert run.answer.result == 300_000_000 * 299_999_999 // 2, cluster.logs()
        assert took_s < 15, f"the job took {took_s:.1f} s after the pause\n{cluster.logs()}"
