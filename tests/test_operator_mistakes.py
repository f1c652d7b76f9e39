"""Real nodes started the way an operator gets it wrong (#15's table, rows 5-8): two nodes
with one id, settings that differ between nodes, --peers entries that are not distnodes.
Each is said in one line per node that sees it, shown in `status`, and the others go on
electing and serving."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from inproc import own_status

from node import Client
from node.testing.ports import free_ports

pytestmark = pytest.mark.process

FAST = ("--heartbeat-ms", "30", "--election-ms", "150-300")


class Nodes:
    """Node processes started one by one, each with its own flags; all ended at exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self, node_id: str, address: str, peers: list[str], *flags: str) -> None:
        port = address.rsplit(":", 1)[1]
        log = self.workdir / f"{node_id}-{port}.log"
        self.logs.append(log)
        with open(log, "wb") as stderr:
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "cli", "start", "--id", node_id, "--listen", address,
                 "--peers", ",".join(peers), "--data-dir", str(self.workdir / f"{node_id}-{port}"),
                 "--parent-pid", str(os.getpid()), *(flags or FAST)],
                stdout=subprocess.DEVNULL, stderr=stderr,
            ))

    def log(self, index: int) -> str:
        return self.logs[index].read_text()

    def all_logs(self) -> str:
        return "\n".join(f"--- {path.name} ---\n{path.read_text()}" for path in self.logs)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait(timeout=30)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    started = Nodes(tmp_path)
    try:
        yield started
    finally:
        started.stop()


def until(check: Callable[[], Any], what: str, nodes: Nodes, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{nodes.all_logs()}")
        time.sleep(0.05)
    return found


def leader_of(addresses: list[str]) -> tuple[str, int] | None:
    """(leader id, term) if every one of `addresses` names the same leader in the same term."""
    replies = [own_status(address, timeout_s=1) for address in addresses]
    views = {(s.leader_id, s.term) if s is not None else None for s in replies}
    if len(views) != 1:
        return None
    (view,) = views
    return view if view is not None and view[0] else None


def stays_elected(addresses: list[str], nodes: Nodes, jobs: int = 40) -> tuple[str, int]:
    """The leader and term once all agree; they must not change while `jobs` jobs run."""
    before = until(lambda: leader_of(addresses), "one leader that every node names", nodes)
    with Client(addresses, timeout=30) as client:
        assert [client.submit(op="sum", source=f"values:1,{i}").result for i in range(jobs)] == [
            1 + i for i in range(jobs)]
    after = until(lambda: leader_of(addresses), "the leader, named again", nodes)
    assert after == before, f"the election churned: {before} -> {after}\n{nodes.all_logs()}"
    return before


def test_two_nodes_with_one_id_are_refused_and_the_others_elect(nodes: Nodes) -> None:
    n1, n2a, n2b, n3 = (f"127.0.0.1:{p}" for p in free_ports(4))
    everyone = [n1, n2a, n2b, n3]
    for node_id, address in zip(["n1", "n2", "n2", "n3"], everyone, strict=True):
        nodes.start(node_id, address, [a for a in everyone if a != address])
    # Before the ids are learnt, an n2 may win; once they are, n1 and n3 refuse its beats and
    # votes, and one of them leads.
    until(lambda: (view := leader_of([n1, n3])) is not None and view[0] in ("n1", "n3"),
          "n1 or n3 to lead", nodes)
    leader, _ = stays_elected([n1, n3], nodes)
    assert leader in ("n1", "n3"), "a duplicated id got the votes it must not get"
    for index, address in enumerate(everyone):
        def unique_lines(index: int = index) -> list[str]:
            return [line for line in nodes.log(index).splitlines() if "ERROR" in line and "ids must be unique" in line]

        # An n2 learns that the other n2 shares its id at its own id probe, which under load may
        # come after n1 and n3 have elected: wait for the line, then check there is one only.
        lines = until(unique_lines, f"node {index}'s line about the duplicated id", nodes)
        if address in (n1, n3):
            assert len(lines) == 1 and f"peer {n2a} and {n2b}: n2 answers at {n2a} and {n2b}" in lines[0], lines
        else:
            other = n2b if address == n2a else n2a
            assert len(lines) == 1 and f"peer {other}: answers as n2, this node's own id" in lines[0], lines
    status = own_status(n1 if leader == "n1" else n3, timeout_s=1)
    problems = {n.address: n.problem for n in status.nodes}
    assert problems[n2a] == problems[n2b] == f"n2 answers at {n2a} and {n2b}"


def test_settings_that_differ_are_named_and_the_election_holds(nodes: Nodes) -> None:
    n1, n2, n3 = (f"127.0.0.1:{p}" for p in free_ports(3))
    nodes.start("n1", n1, [n2, n3], "--heartbeat-ms", "30", "--election-ms", "150-300")
    nodes.start("n2", n2, [n1, n3], "--heartbeat-ms", "40", "--election-ms", "200-400",
                "--shard-elems", "1000", "--max-message-bytes", "1048576")
    nodes.start("n3", n3, [n1, n2], "--heartbeat-ms", "30", "--election-ms", "150-300")
    stays_elected([n1, n2, n3], nodes)
    n1_log = until(lambda: nodes.log(0).count("give every node the same") >= 4 and nodes.log(0),
                   "n1's warnings", nodes)
    warned = [line for line in n1_log.splitlines() if "give every node the same" in line]
    assert any(f"peer n2 ({n2}) runs with --heartbeat-ms 40, this node 30" in line for line in warned), warned
    assert any(f"peer n2 ({n2}) runs with --election-ms 200-400, this node 150-300" in line for line in warned)
    assert any(f"peer n2 ({n2}) runs with --shard-elems 1000, this node 8388608" in line for line in warned)
    assert any(f"peer n2 ({n2}) runs with --max-message-bytes 1048576, this node 67108864 (the cluster's"
               " records are sized for the smaller" in line for line in warned), warned
    assert len(warned) == 4, f"one line per peer and setting, none for n3: {warned}"


def test_peer_lists_that_differ_are_named_and_terms_do_not_climb(nodes: Nodes) -> None:
    """n3 lists only n1: it counts a cluster of two. Raft cannot promise one leader that all
    three follow then (n2 is not in n3's cluster); what holds is that the mismatch is named
    on the nodes that see it, that Pre-Vote keeps the terms from climbing, and that the
    nodes agreeing on a leader serve jobs."""
    n1, n2, n3 = (f"127.0.0.1:{p}" for p in free_ports(3))
    nodes.start("n1", n1, [n2, n3])
    nodes.start("n2", n2, [n1, n3])
    nodes.start("n3", n3, [n1])
    def two_agree() -> list[str] | None:
        pairs = ([n1, n2], [n1, n3])  # who can agree depends on who won: n2 and n3 never both follow
        return next((pair for pair in pairs if leader_of(pair)), None)

    _, term = stays_elected(until(two_agree, "two nodes that name one leader", nodes), nodes)
    for index, name in ((0, "n1"), (1, "n2")):
        lines = [line for line in until(lambda i=index: "cluster of 2" in nodes.log(i) and nodes.log(i),
                                        f"{name}'s warning", nodes).splitlines() if "cluster of 2" in line]
        assert len(lines) == 1 and f"peer n3 ({n3}) runs with a cluster of 2 nodes (its --peers and" \
            " itself), this node 3: the --peers lists differ" in lines[0], lines
    terms = [s.term for s in (own_status(a, timeout_s=1) for a in (n1, n2, n3)) if s is not None]
    assert len(terms) == 3 and max(terms) <= term + 1, f"terms climbed: {terms} from {term}\n{nodes.all_logs()}"


class _Http(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_peers_that_are_not_distnodes_are_said_once_and_shown_in_status(nodes: Nodes) -> None:
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Http)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        n1, n2, n3, closed = (f"127.0.0.1:{p}" for p in free_ports(4))
        http_address = f"127.0.0.1:{web.server_address[1]}"
        nodes.start("n1", n1, [n2, n3, http_address, closed])
        nodes.start("n2", n2, [n1, n3])
        nodes.start("n3", n3, [n1, n2])
        stays_elected([n1, n2, n3], nodes)

        def both_failing_often() -> Any:
            status = own_status(n1, timeout_s=1)
            bad = [n for n in status.nodes if n.address in (http_address, closed)] if status else []
            return len(bad) == 2 and all(n.problem and n.failures >= 10 for n in bad) and bad

        bad = until(both_failing_often, "n1 to have tried both bad peers ten times", nodes)
        assert {n.address for n in bad} == {http_address, closed}
        for address in (http_address, closed):
            lines = [line for line in nodes.log(0).splitlines() if f"peer {address}" in line]
            assert len(lines) == 1 and "contact failed" in lines[0], f"one line per episode: {lines}"
        assert "Traceback" not in nodes.all_logs()
    finally:
        web.shutdown()
        web.server_close()


def _cert_for_another_name(certs: Path, stem: str) -> None:
    """Replace `stem`'s certificate by one from the same CA for a name nobody dials."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
    ca_key: Any = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("elsewhere.invalid")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (certs / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (certs / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def test_a_peer_with_a_wrong_tls_name_is_said_once_and_shown_in_status(nodes: Nodes, tmp_path: Path) -> None:
    """Mutual TLS, and n3's certificate names another host: n1 and n2 cannot dial it
    (it can dial them). They elect, serve, and each says so once, with the reason."""
    from node.security import TlsFiles
    from node.testing.certs import make_certs

    certs = tmp_path / "certs"
    make_certs(certs, 3)
    _cert_for_another_name(certs, "n3")
    n1, n2, n3 = (f"127.0.0.1:{p}" for p in free_ports(3))
    everyone = [n1, n2, n3]
    for node_id, address in zip(["n1", "n2", "n3"], everyone, strict=True):
        nodes.start(node_id, address, [a for a in everyone if a != address], *FAST,
                    "--tls-cert", str(certs / f"{node_id}.pem"), "--tls-key", str(certs / f"{node_id}.key"),
                    "--tls-ca", str(certs / "ca.pem"))
    client_tls = TlsFiles(certs / "client.pem", certs / "client.key", certs / "ca.pem")

    def failing_on(address: str) -> Any:
        """`address`'s own view of n3, once it has failed to reach it a few times."""
        status = own_status(address, timeout_s=1, tls=client_tls)
        if status is None:
            return None
        row = next(n for n in status.nodes if n.address == n3)
        return status.leader_id in ("n1", "n2") and row.problem and row.failures >= 3 and row

    # n1 and n2 both try n3 (a leader every beat, a follower with each id probe), and fail.
    row = until(lambda: failing_on(n1) and failing_on(n2), "n1 and n2 to fail to reach n3", nodes)
    with Client([n1, n2], timeout=30, tls=client_tls) as client:
        assert client.submit(op="sum", source="values:1,2,3").result == 6
    for index in (0, 1):
        lines = [line for line in nodes.log(index).splitlines() if f"{n3}): contact failed" in line
                 or f"peer {n3}: contact failed" in line]
        assert len(lines) == 1, f"one line per episode: {lines}\n{nodes.all_logs()}"
    assert "Traceback" not in nodes.all_logs()
    assert row.problem, "status names the reason"

