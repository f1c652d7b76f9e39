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
(`node.testing.faults`, a TCP proxy in this process) and can then `cut`, `heal`,
`isolate` and `delay` the link i -> j without touching the processes.
There is one more link per node for clients (CLIENT -> j): a client built on
`client_addresses` reaches the nodes through them, and stays behind them
because each node advertises its CLIENT link as its address (replies name
the leader by it). Such clients play clients on other machines, which no
link fault could cut from a node's same-host socket, so these nodes offer
no local socket (node/server/localsocket.py) unless `local_socket=True`
says every client is on the real `addresses`. Clients on the real
`addresses`, like the harness's own `client`, are never faulted: the
harness must see the cluster whatever it breaks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from node._proto import distnode_pb2 as pb
from node.channels import ChannelFactory
from node.client.answer import ClusterStatus
from node.client.blocking import Client
from node.errors import ClusterUnavailable
from node.security import TlsFiles
from node.testing.background import FaultedJob, run_with_fault
from node.testing.faults import Mode
from node.testing.links import CLIENT, Links
from node.testing.ports import free_ports
from node.testing.processes import DaemonProcess, stop_processes, stop_strays
from node.wire.stubs import BlockingNodeStub

#: Fast timing for tests: failover in ~0.2 s, still 3 heartbeats per timeout.
FAST_TIMING = {"heartbeat_ms": 30, "election_ms": (150, 300)}

__all__ = ["CLIENT", "FAST_TIMING", "FaultedJob", "LocalCluster", "free_ports"]


class LocalCluster:
    """N daemons on this machine. Use as a context manager, or call start()/close()."""

    #: The pseudo node id of clients in the link-fault API: `cut(cluster.CLIENT, "n2")`.
    CLIENT = CLIENT

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
        keep_logs: bool = False,
        http: bool = False,
        local_socket: bool | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"nodes must be at least 1, got {nodes}")
        needed = (2 if http else 1) * nodes  # with http, each node's page after the gRPC ports
        if base_port and base_port + needed > 65536:
            raise ValueError(f"base_port {base_port}: {nodes} nodes need {needed} ports from it, to 65535")
        #: A work directory made here is removed on close, unless `keep_logs`
        #: (or DISTNODE_KEEP_LOGS=1, to keep a failing test's logs).
        keep = keep_logs or os.environ.get("DISTNODE_KEEP_LOGS", "").lower() in ("1", "true", "yes")
        self._own_workdir = workdir is None and not keep
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="distnode-cluster-"))
        #: With `tls`, a throwaway CA and per-node certificates in workdir/certs, and
        #: mutual TLS everywhere; `token` is required on every RPC. `client_tls`
        #: and `token` are what a client of this cluster needs.
        self.certs_dir = self.workdir / "certs" if tls else None
        if self.certs_dir is not None:
            from node.testing.certs import make_certs  # cryptography: only when asked for

            make_certs(self.certs_dir, nodes)
        self.token = token
        self._token_file = self.workdir / "token" if token else None
        if self._token_file is not None and token is not None:
            self._token_file.write_text(token)
            self._token_file.chmod(0o600)
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.shard_elems = shard_elems
        self.data_root = Path(data_root).resolve() if data_root is not None else None
        self.extra_args = list(extra_args)
        #: The nodes' local sockets (off by default with link faults: see the module's docstring).
        self.local_socket = not link_faults if local_socket is None else local_socket
        self.start_timeout_s = start_timeout_s
        ports = list(range(base_port, base_port + nodes)) if base_port else free_ports(nodes)
        self._nodes = {
            f"n{i + 1}": DaemonProcess(f"n{i + 1}", port, self.workdir) for i, port in enumerate(ports)
        }
        #: With `http`, each node's --http address (/metrics, /status.json).
        self.http_addresses: dict[str, str] = {}
        if http:
            # After the gRPC ports with a base port (one range to open in a firewall), else free ones.
            ports_for_http = [base_port + nodes + i for i in range(nodes)] if base_port else free_ports(
                nodes, avoid=ports)  # the gRPC ports are not bound yet
            self.http_addresses = {n: f"127.0.0.1:{ports_for_http[i]}" for i, n in enumerate(self._nodes)}
        self._client: Client | None = None
        # Every process ever started; the finalizer must not hold `self`.
        self._started: list[subprocess.Popen[bytes]] = []
        #: The same processes with their node ids, for `exits()`.
        self._history: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._finalizer = weakref.finalize(self, stop_processes, self._started)
        self.link_faults = link_faults
        self.link_mode: Mode = link_mode
        self._link_set: Links | None = None

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
        to = self._link_set.target_of(address) if self._link_set is not None else None
        if to is None:
            raise KeyError(address)
        return to

    def peer_addresses(self, node_id: str) -> list[str]:
        """What `node_id` gets as `--peers`: its links to the others, or their real addresses."""
        node = self._node(node_id)
        if not self.link_faults:
            return [n.address for n in self._nodes.values() if n is not node]
        links = self._links()
        return [links.address(node_id, other) for other in self._nodes if other != node_id]

    @property
    def client_addresses(self) -> list[str]:
        """Addresses that reach the nodes through the links CLIENT -> node (link_faults only)."""
        links = self._links()
        return [links.address(CLIENT, node_id) for node_id in self._nodes]

    def pid(self, node_id: str) -> int | None:
        return self._node(node_id).pid

    def log(self, node_id: str) -> str:
        """The node's stderr so far (role changes, warnings), for test failure messages."""
        return self._node(node_id).log()

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

    def _node(self, node_id: str) -> DaemonProcess:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r}; nodes are {', '.join(self._nodes)}") from None

    # -- lifecycle --------------------------------------------------------

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:  # __exit__ will not run: stop what did start
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> LocalCluster:
        for node in self._nodes.values():
            self._spawn(node)
        for node in self._nodes.values():
            node.wait_listening(time.monotonic() + self.start_timeout_s)
        self.wait_for_leader()
        if self.link_faults:
            for node in self._nodes.values():
                self._wait_peer_ids(node, time.monotonic() + self.start_timeout_s)
        return self

    def _command(self, node: DaemonProcess) -> list[str]:
        peers = ",".join(self.peer_addresses(node.node_id))
        command = [
            sys.executable, "-m", "cli", "start", "--id", node.node_id,
            "--listen", node.address, "--peers", peers, "--data-dir", str(node.data_dir),
            "--parent-pid", str(os.getpid()),
        ]
        if self.link_faults:
            # Replies tell clients where the leader is; with link faults that must be the
            # client's link to it, or a client would leave the links after one answer.
            command += ["--advertise", self._links().address(CLIENT, node.node_id)]
        if not self.local_socket:
            command += ["--no-local-socket"]
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
        if node.node_id in self.http_addresses:
            command += ["--http", self.http_addresses[node.node_id]]
        return command + self.extra_args

    @property
    def client_tls(self) -> TlsFiles | None:
        """The client certificate (mutual TLS) for this cluster, if it uses TLS."""
        if self.certs_dir is None:
            return None
        certs = self.certs_dir
        return TlsFiles(certs / "client.pem", certs / "client.key", certs / "ca.pem")

    def _spawn(self, node: DaemonProcess) -> None:
        process = node.spawn(self._command(node))
        self._started.append(process)
        self._history.append((node.node_id, process))

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
        self._node(node_id).kill()

    def pause(self, node_id: str) -> None:
        """SIGSTOP: the process stays, its sockets stay open, it answers nothing."""
        self._node(node_id).pause()

    def resume(self, node_id: str) -> None:
        self._node(node_id).resume()

    def restart(self, node_id: str) -> None:
        """Kill if running, then start again with the same port and data dir."""
        node = self._node(node_id)
        node.kill()
        self._spawn(node)
        node.wait_listening(time.monotonic() + self.start_timeout_s)
        if self.link_faults:
            self._wait_peer_ids(node, time.monotonic() + self.start_timeout_s)

    # -- link faults (link_faults=True) ----------------------------------

    def _wait_peer_ids(self, node: DaemonProcess, deadline: float) -> None:
        """Wait until `node` knows the id behind each link it can use right now.

        Until it does, a daemon may fall back to an address a peer advertised
        (its real one) and so bypass the links; faults would then miss that
        traffic. Peers that are down, paused or behind a cut link are not waited for.
        """
        while True:
            expected = {
                other for other, peer in self._nodes.items()
                if other != node.node_id and peer.running and not peer.paused
                and not self.link_cut(node.node_id, other)
            }
            if expected <= self._known_peer_ids(node):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{node.node_id} did not learn its peers' ids\n" + self.logs())
            time.sleep(0.02)

    def _known_peer_ids(self, node: DaemonProcess) -> set[str]:
        factory = ChannelFactory(self.client_tls, self.token)
        with factory.blocking(node.address) as channel:
            try:
                reply = BlockingNodeStub(channel, factory.metadata).Status(pb.StatusRequest(), timeout=1.0)
            except grpc.RpcError:
                return set()
        return {n.id for n in reply.nodes if n.id and n.id != node.node_id}

    def _links(self) -> Links:
        if not self.link_faults:
            raise RuntimeError("link faults need LocalCluster(..., link_faults=True)")
        if self._link_set is None:
            self._link_set = Links(
                {node_id: node.address for node_id, node in self._nodes.items()}, self.link_mode
            )
        return self._link_set

    def cut(self, a: str, b: str, both: bool = True) -> None:
        """Cut the link a -> b, and b -> a if `both` (see `Links.cut`)."""
        self._links().cut(a, b, both)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Reopen links and remove their delays: a <-> b, every link of a, or all of them."""
        self._links().heal(a, b)

    def isolate(self, a: str, clients: bool = False) -> None:
        """Cut every link to and from `a` (and from clients to it, if `clients`)."""
        self._links().isolate(a, clients)

    def delay(self, a: str, b: str, ms: float, both: bool = True) -> None:
        """Hold every chunk on the link a -> b (and b -> a if `both`) for `ms`, each way."""
        self._links().delay(a, b, ms, both)

    def link_address(self, a: str, b: str) -> str:
        """The address `a` dials to reach `b` (CLIENT for `a`: the client's link to `b`)."""
        return self._links().address(a, b)

    def link_datagrams(self, a: str, b: str) -> int:
        """Datagrams (heartbeats) the link a -> b has delivered, both directions together."""
        return self._links().datagrams(a, b)

    def link_cut(self, a: str, b: str) -> bool:
        """Whether the link a -> b is cut now."""
        return self._links().is_cut(a, b)

    # -- a fault in the middle of a job -------------------------------------

    def run_with_fault(
        self,
        fault: Callable[[], None],
        after_shards: int = 1,
        client: Client | None = None,
        timeout_s: float = 60.0,
        **job: Any,
    ) -> FaultedJob:
        """Submit a job in the background, call `fault()` once `after_shards` shards
        are merged, and return the answer with when the fault landed.

        `job` is `submit`'s keywords (`op`, `source`, `job_id`, ...); `client`
        (default: the cluster's own) submits it, the cluster's own client
        watches its progress. See node/testing/background.py.
        """
        job_id = job.pop("job_id", None) or f"fault-{uuid.uuid4()}"
        return run_with_fault(
            client or self.client, self.client.progress, fault, job_id, after_shards, timeout_s, **job
        )

    # -- teardown ---------------------------------------------------------

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._finalizer()
        stop_strays(self.workdir)
        if self._link_set is not None:
            self._link_set.close()
            self._link_set = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
