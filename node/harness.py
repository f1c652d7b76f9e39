"""LocalCluster: a real multi-process cluster on 127.0.0.1, for tests and demos.

It starts N daemon processes (`python -m cli start ...`) on free ports,
waits until each prints `DISTNODE_LISTENING`, then until a leader is known,
and can kill (SIGKILL), pause (SIGSTOP), resume (SIGCONT) and restart any
node. Every wait polls with a deadline; nothing sleeps and hopes.

Children never outlive the harness: each daemon gets `--parent-pid` and exits
when its parent changes (the harness process died, however it died), and the
harness stops its nodes on `close()`, on exit of its `with` block, and at
interpreter exit.

Link faults (`link_faults=True`): every node dials its peers only through its
own `--peers` entries, so the harness gives node i one proxy per peer j
(`node.faults`, a TCP proxy in this process) and can then `cut`, `heal`,
`isolate` and `delay` the link i -> j without touching the processes.
Clients keep the real addresses (`addresses`) and are unaffected, unless they
use `client_addresses`, which go through one more proxy per node (link
"client" -> j).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from node._proto import distnode_pb2 as pb
from node._proto import distnode_pb2_grpc as pb_grpc
from node.blocking import Client
from node.client import ClusterStatus
from node.errors import ClusterUnavailable
from node.faults import FaultProxy, Mode
from node.security import AUTH_HEADER, TlsFiles

READY_LINE = "DISTNODE_LISTENING"
#: Fast timing for tests: failover in ~0.2 s, still 3 heartbeats per timeout.
FAST_TIMING = {"heartbeat_ms": 30, "election_ms": (150, 300)}
#: The pseudo node id of clients in the link-fault API: `cut(CLIENT, "n2")`.
CLIENT = "client"


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free right now, for TCP and UDP both.

    Another process may take one before the daemon binds it; the daemon then
    exits and `start()` raises with its log (scripts/bench.py retries).
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            port = sock.getsockname()[1]
            twin = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # heartbeats' UDP port
            sockets.append(twin)
            try:
                twin.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


@dataclass
class _Node:
    node_id: str
    port: int
    data_dir: Path
    stdout_path: Path
    stderr_path: Path
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    #: Where this incarnation's stdout starts: the file is appended to across restarts.
    stdout_offset: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class LocalCluster:
    """N daemons on this machine. Use as a context manager, or call start()/close()."""

    def __init__(
        self,
        nodes: int = 3,
        base_port: int | None = None,
        heartbeat_ms: int | None = None,
        election_ms: tuple[int, int] | None = None,
        shard_elems: int | None = None,
        data_root: str | Path | None = None,
        workdir: str | Path | None = None,
        extra_args: Sequence[str] = (),
        start_timeout_s: float = 30.0,
        link_faults: bool = False,
        link_mode: Mode = "blackhole",
        tls: bool = False,
        token: str | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {nodes}")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="distnode-cluster-"))
        #: With `tls`, a throwaway CA and per-node certificates in workdir/certs, and
        #: mutual TLS everywhere; `token` is required on every RPC. `client_tls`
        #: and `token` are what a client of this cluster needs.
        self.certs_dir = self.workdir / "certs" if tls else None
        if self.certs_dir is not None:
            from node.certs import make_certs  # cryptography: only when asked for

            make_certs(self.certs_dir, nodes)
        self.token = token
        self._token_file = self.workdir / "token" if token else None
        if self._token_file is not None and token is not None:
            self._token_file.write_text(token)
            self._token_file.chmod(0o600)
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.shard_elems = shard_elems
        self.data_root = Path(data_root) if data_root is not None else None
        self.extra_args = list(extra_args)
        self.start_timeout_s = start_timeout_s
        ports = list(range(base_port, base_port + nodes)) if base_port else free_ports(nodes)
        self._nodes = {
            f"n{i + 1}": self._make_node(f"n{i + 1}", port) for i, port in enumerate(ports)
        }
        self._client: Client | None = None
        # Every process ever started; the finalizer must not hold `self`.
        self._started: list[subprocess.Popen[bytes]] = []
        #: The same processes with their node ids, for `exits()`.
        self._history: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._finalizer = weakref.finalize(self, _stop_processes, self._started)
        atexit.register(self._finalizer)
        self.link_faults = link_faults
        self.link_mode: Mode = link_mode
        self._proxy: FaultProxy | None = None
        #: (from, to) -> the address `from` dials to reach `to` through a proxy.
        self._links: dict[tuple[str, str], str] = {}

    def _make_node(self, node_id: str, port: int) -> _Node:
        return _Node(
            node_id, port, self.workdir / node_id,
            self.workdir / f"{node_id}.out", self.workdir / f"{node_id}.log",
        )

    # -- introspection ----------------------------------------------------

    @property
    def ids(self) -> list[str]:
        return list(self._nodes)

    @property
    def addresses(self) -> list[str]:
        return [node.address for node in self._nodes.values()]

    def address(self, node_id: str) -> str:
        return self._node(node_id).address

    def id_of(self, address: str) -> str:
        """The node behind a real address or a link's address."""
        for node in self._nodes.values():
            if node.address == address:
                return node.node_id
        for (_, to), link_address in self._links.items():
            if link_address == address:
                return to
        raise KeyError(address)

    def peer_addresses(self, node_id: str) -> list[str]:
        """What `node_id` gets as `--peers`: its links to the others, or their real addresses."""
        node = self._node(node_id)
        if not self.link_faults:
            return [n.address for n in self._nodes.values() if n is not node]
        self._start_links()
        return [self._links[node_id, other] for other in self._nodes if other != node_id]

    @property
    def client_addresses(self) -> list[str]:
        """Addresses that reach the nodes through the links CLIENT -> node (link_faults only)."""
        self._require_links()
        self._start_links()
        return [self._links[CLIENT, node_id] for node_id in self._nodes]

    def pid(self, node_id: str) -> int | None:
        process = self._node(node_id).process
        return process.pid if process is not None and process.poll() is None else None

    def log(self, node_id: str) -> str:
        """The node's stderr so far (role changes, warnings), for test failure messages."""
        path = self._node(node_id).stderr_path
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {nid} ---\n{self.log(nid)}" for nid in self._nodes)

    def exits(self) -> list[tuple[str, int, int]]:
        """(node id, pid, return code) of every daemon process that has ended so far.

        -9 is a `kill`; anything else before `close()` is a crash worth a look.
        """
        return [
            (node_id, process.pid, process.returncode)
            for node_id, process in self._history
            if process.poll() is not None
        ]

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(
                self.addresses, timeout=self.start_timeout_s, token=self.token, tls=self.client_tls
            )
        return self._client

    def _node(self, node_id: str) -> _Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r}; nodes are {', '.join(self._nodes)}") from None

    # -- lifecycle --------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> LocalCluster:
        for node in self._nodes.values():
            self._spawn(node)
        for node in self._nodes.values():
            self._wait_listening(node, time.monotonic() + self.start_timeout_s)
        self.wait_for_leader()
        if self.link_faults:
            for node in self._nodes.values():
                self._wait_peer_ids(node, time.monotonic() + self.start_timeout_s)
        return self

    def _command(self, node: _Node) -> list[str]:
        peers = ",".join(self.peer_addresses(node.node_id))
        command = [
            sys.executable, "-m", "cli", "start", "--id", node.node_id,
            "--listen", node.address, "--peers", peers, "--data-dir", str(node.data_dir),
            "--parent-pid", str(os.getpid()),
        ]
        if self.heartbeat_ms is not None:
            command += ["--heartbeat-ms", str(self.heartbeat_ms)]
        if self.election_ms is not None:
            command += ["--election-ms", f"{self.election_ms[0]}-{self.election_ms[1]}"]
        if self.shard_elems is not None:
            command += ["--shard-elems", str(self.shard_elems)]
        if self.data_root is not None:
            command += ["--data-root", str(self.data_root)]
        if self.certs_dir is not None:
            certs = self.certs_dir
            command += ["--tls-cert", str(certs / f"{node.node_id}.pem"),
                        "--tls-key", str(certs / f"{node.node_id}.key"), "--tls-ca", str(certs / "ca.pem")]
        if self._token_file is not None:
            command += ["--token-file", str(self._token_file)]
        return command + self.extra_args

    @property
    def client_tls(self) -> TlsFiles | None:
        """The client certificate (mutual TLS) for this cluster, if it uses TLS."""
        if self.certs_dir is None:
            return None
        certs = self.certs_dir
        return TlsFiles(certs / "client.pem", certs / "client.key", certs / "ca.pem")

    def _spawn(self, node: _Node) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        with open(node.stdout_path, "ab") as out, open(node.stderr_path, "ab") as err:
            node.stdout_offset = out.tell()
            node.process = subprocess.Popen(
                self._command(node), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                cwd=os.getcwd(), env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._started.append(node.process)
        self._history.append((node.node_id, node.process))
        node.paused = False

    def _wait_listening(self, node: _Node, deadline: float) -> None:
        process = node.process
        assert process is not None
        while time.monotonic() < deadline:
            # Only this incarnation's lines: an earlier one's ready line must not count.
            with open(node.stdout_path, "rb") as out:
                out.seek(node.stdout_offset)
                text = out.read().decode(errors="replace")
            if any(line.startswith(f"{READY_LINE} id={node.node_id} ") for line in text.splitlines()):
                return
            if process.poll() is not None:
                raise RuntimeError(
                    f"node {node.node_id} exited with {process.returncode} before listening:\n"
                    + self.log(node.node_id)
                )
            time.sleep(0.01)
        raise TimeoutError(f"node {node.node_id} did not listen within the deadline")

    def wait_for_leader(self, timeout_s: float | None = None, exclude: Sequence[str] = ()) -> str:
        """Poll until a leader (not in `exclude`) is known and return its id."""
        return self._poll_status(
            lambda view: view.leader is not None and view.leader not in exclude,
            timeout_s, "no leader within the deadline",
        )

    def wait_all_alive(self, timeout_s: float | None = None) -> str:
        """Poll until the leader has heard every node; return the leader's id.

        Then each node gets a share of the next job (a leader counts a peer as
        alive only once it has answered a heartbeat).
        """
        return self._poll_status(
            lambda view: view.leader is not None and len(view.nodes) == len(self._nodes)
            and all(node.alive for node in view.nodes),
            timeout_s, "not all nodes alive within the deadline",
        )

    def _poll_status(
        self, done: Callable[[ClusterStatus], bool], timeout_s: float | None, failure: str
    ) -> str:
        deadline = time.monotonic() + (self.start_timeout_s if timeout_s is None else timeout_s)
        while True:
            try:
                view = self.client.status(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                if done(view):
                    assert view.leader is not None
                    return view.leader
            except ClusterUnavailable:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{failure}\n" + self.logs())
            time.sleep(0.01)

    def leader(self, timeout_s: float | None = None) -> str:
        """The current leader's id (waits for one)."""
        return self.wait_for_leader(timeout_s)

    def status(self) -> ClusterStatus:
        return self.client.status()

    # -- faults -----------------------------------------------------------

    def kill(self, node_id: str) -> None:
        """SIGKILL: no goodbye, like a crashed machine."""
        node = self._node(node_id)
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def pause(self, node_id: str) -> None:
        """SIGSTOP: the process stays, its sockets stay open, it answers nothing."""
        node = self._node(node_id)
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGSTOP)
            node.paused = True

    def resume(self, node_id: str) -> None:
        node = self._node(node_id)
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(signal.SIGCONT)
            node.paused = False

    def restart(self, node_id: str) -> None:
        """Kill if running, then start again with the same port and data dir."""
        node = self._node(node_id)
        self.kill(node_id)
        self._spawn(node)
        self._wait_listening(node, time.monotonic() + self.start_timeout_s)
        if self.link_faults:
            self._wait_peer_ids(node, time.monotonic() + self.start_timeout_s)

    # -- link faults (link_faults=True) ----------------------------------

    def _wait_peer_ids(self, node: _Node, deadline: float) -> None:
        """Wait until `node` knows the id behind each link it can use right now.

        Until it does, a daemon may fall back to an address a peer advertised
        (its real one) and so bypass the links; faults would then miss that
        traffic. Peers that are down, paused or behind a cut link are not waited for.
        """
        while True:
            expected = {
                other for other, peer in self._nodes.items()
                if other != node.node_id and peer.process is not None and peer.process.poll() is None
                and not peer.paused and not self.link_cut(node.node_id, other)
            }
            if expected <= self._known_peer_ids(node):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{node.node_id} did not learn its peers' ids\n" + self.logs())
            time.sleep(0.02)

    def _known_peer_ids(self, node: _Node) -> set[str]:
        tls = self.client_tls
        if tls is not None:
            channel = grpc.secure_channel(node.address, tls.channel_credentials())
        else:
            channel = grpc.insecure_channel(node.address)
        metadata = ((AUTH_HEADER, f"Bearer {self.token}"),) if self.token else None
        with channel:
            try:
                reply = pb_grpc.NodeStub(channel).Status(pb.StatusRequest(), timeout=1.0, metadata=metadata)
            except grpc.RpcError:
                return set()
        return {n.id for n in reply.nodes if n.id and n.id != node.node_id}

    def _require_links(self) -> None:
        if not self.link_faults:
            raise RuntimeError("link faults need LocalCluster(..., link_faults=True)")

    def _start_links(self) -> None:
        """One proxy per ordered pair of nodes, and one from clients to each node."""
        if self._proxy is not None:
            return
        self._proxy = FaultProxy()
        for to, node in self._nodes.items():
            for src in [*self._nodes, CLIENT]:
                if src != to:
                    self._links[src, to] = self._proxy.add(
                        _link_name(src, to), node.address, self.link_mode
                    )

    def _link_names(self, a: str, b: str, both: bool) -> list[str]:
        for node_id in (a, b):
            if node_id != CLIENT:
                self._node(node_id)
        if a == b:
            raise ValueError(f"a link joins two different nodes, got {a!r} twice")
        pairs = [(a, b), (b, a)] if both else [(a, b)]
        return [_link_name(*pair) for pair in pairs if pair in self._links]

    def _proxy_or_fail(self) -> FaultProxy:
        self._require_links()
        self._start_links()
        assert self._proxy is not None
        return self._proxy

    def cut(self, a: str, b: str, both: bool = True) -> None:
        """Cut the link a -> b (the connections a initiates to b), and b -> a if `both`.

        Established connections are closed; new ones are blackholed (or refused,
        with link_mode="refuse") until `heal`. gRPC replies travel on the
        initiator's connection, so a one-way cut a -> b fails a's RPCs to b
        while b's RPCs to a still work.
        """
        proxy = self._proxy_or_fail()
        for name in self._link_names(a, b, both):
            proxy.cut(name)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Reopen links and remove their delays: a <-> b, every link of a, or all of them."""
        proxy = self._proxy_or_fail()
        if a is not None and b is not None:
            names = self._link_names(a, b, both=True)
        elif a is not None or b is not None:
            node_id = a if a is not None else b
            names = [_link_name(*pair) for pair in self._links if node_id in pair]
        else:
            names = proxy.names
        for name in names:
            proxy.heal(name)

    def isolate(self, a: str, clients: bool = False) -> None:
        """Cut every link to and from `a` (and from clients to it, if `clients`)."""
        proxy = self._proxy_or_fail()
        for src, to in self._links:
            if a in (src, to) and (clients or CLIENT not in (src, to)):
                proxy.cut(_link_name(src, to))

    def delay(self, a: str, b: str, ms: float, both: bool = True) -> None:
        """Hold every chunk on the link a -> b (and b -> a if `both`) for `ms`, each way.

        A request and its reply each wait `ms`, so an RPC a -> b takes 2 x ms more.
        `delay(a, b, 0)` removes the delay and leaves a cut in place.
        """
        proxy = self._proxy_or_fail()
        for name in self._link_names(a, b, both):
            proxy.delay(name, ms)

    def link_address(self, a: str, b: str) -> str:
        """The address `a` dials to reach `b` (CLIENT for `a`: the client's link to `b`)."""
        self._proxy_or_fail()
        self._link_names(a, b, both=False)  # validates the ids
        return self._links[a, b]

    def link_datagrams(self, a: str, b: str) -> int:
        """Datagrams (heartbeats) the link a -> b has delivered, both directions together."""
        (name,) = self._link_names(a, b, both=False)
        return self._proxy_or_fail().link(name).datagrams

    def link_cut(self, a: str, b: str) -> bool:
        """Whether the link a -> b is cut now."""
        return self._proxy_or_fail().link(_link_name(a, b)).cut

    # -- teardown ---------------------------------------------------------

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._finalizer()
        atexit.unregister(self._finalizer)
        if self._proxy is not None:
            self._proxy.close()
            self._proxy = None
            self._links.clear()
        if self._own_workdir and not os.environ.get("DISTNODE_KEEP_LOGS"):
            shutil.rmtree(self.workdir, ignore_errors=True)


def _link_name(src: str, to: str) -> str:
    return f"{src}->{to}"


def _stop_processes(processes: list[subprocess.Popen[bytes]], grace_s: float = 3.0) -> None:
    """SIGCONT + SIGINT every live process, then SIGKILL what is left after the grace."""
    live = [p for p in processes if p.poll() is None]
    for process in live:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for process in live:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
