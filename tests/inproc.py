"""Helpers shared by the tests: waiting with a deadline, and in-process daemons on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from msgspec.structs import replace
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from node._proto import distnode_pb2 as pb
from node._proto import distnode_pb2_grpc as pb_grpc
from node.channels import ChannelFactory
from node.security import TlsFiles
from node.server.daemon import Daemon

#: In-process timing: a first leader at once (the first election is wound forward), a new
#: one within about 0.5 s. Every in-process node shares one event loop, and a loaded host
#: stalls it by 100-160 ms (CI runs logged both): elections of 40-80 ms moved leaderships
#: under tests that needed them to stay, so no election times out within 200 ms.
FAST = {"tick_ms": 5, "heartbeat_ms": 20, "election_ms_min": 200, "election_ms_max": 400}
#: For tests that need one leader throughout a long check.
CALM = {"heartbeat_ms": 30, "election_ms_min": 300, "election_ms_max": 600}


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str,
               logs: Callable[[], str] = lambda: "", interval_s: float = 0.005) -> None:
    """Block until `predicate()` holds, checking every `interval_s`; fail at the deadline with `logs()`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{logs()}")
        time.sleep(interval_s)


def own_status(address: str, timeout_s: float = 0.5, tls: TlsFiles | None = None) -> Any:
    """One node's own Status reply (its view, no client logic in between); None if it does not answer."""
    with ChannelFactory(tls).blocking(address) as channel:
        try:
            return pb_grpc.NodeStub(channel).Status(pb.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return None


def scraped(http_address: str) -> list[Sample]:
    """Every sample on a node's /metrics at `http_address` (blocking), read by Prometheus' parser."""
    with urllib.request.urlopen(f"http://{http_address}/metrics", timeout=5) as page:
        text = page.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


async def poll(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Wait until `predicate()` holds, checking every 5 ms, failing at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


class InProcessCluster:
    """N daemons sharing this test's event loop; real gRPC over loopback."""

    def __init__(self, daemons: list[Daemon], tasks: list[asyncio.Task[None]]) -> None:
        self._channels: list[Any] = []
        self.daemons = daemons
        self.tasks = tasks
        self.addresses = [d.config.address for d in daemons]

    def leader(self) -> Daemon | None:
        leaders = [d for d in self.daemons if d.is_leader]
        return leaders[0] if len(leaders) == 1 else None

    async def wait_for_leader(self) -> Daemon:
        """One leader, known to all, that takes jobs: its no-op is applied (until then it
        answers NotLeader, which a client retries and a raw stream sees as is)."""
        await poll(lambda: self.leader() is not None and self.leader().ledger.caught_up  # type: ignore[union-attr]
                   and all(d.election.leader == self.leader().node_id for d in self.daemons),  # type: ignore[union-attr]
                   what="one leader known to all and caught up")
        leader = self.leader()
        assert leader is not None
        return leader

    async def restart(self, node_id: str, **overrides: Any) -> Daemon:
        """Stop `node_id`, wait until the leader has seen it die, and start it again
        on the same address and state with `overrides` (another build of the node)."""
        await self.stop_node(node_id)
        return await self.start_node(node_id, **overrides)

    async def stop_node(self, node_id: str) -> None:
        """Stop `node_id` and wait until the leader has seen it die. "The leader" is
        whoever leads at the time: a stall of the shared event loop may move it."""
        index = self._index(node_id)
        old = self.daemons[index]
        old.stop()
        await asyncio.wait_for(self.tasks[index], timeout=5)
        others = [d for d in self.daemons if d is not old]
        await poll(lambda: self._leader_sees(others, old.config.address, alive=False),
                   what=f"a leader to see {node_id} die")

    async def start_node(self, node_id: str, **overrides: Any) -> Daemon:
        """Start the stopped `node_id` again on its address and state with `overrides`,
        and wait until the leader hears it."""
        index = self._index(node_id)
        new = Daemon(replace(self.daemons[index].config, **overrides))
        self.daemons[index] = new
        self.tasks[index] = asyncio.create_task(new.serve(handle_signals=False))
        await poll(lambda: self._leader_sees(self.daemons, new.config.address, alive=True),
                   what=f"a leader to hear {node_id} again")
        return new

    def _index(self, node_id: str) -> int:
        return next(i for i, d in enumerate(self.daemons) if d.node_id == node_id)

    @staticmethod
    def _leader_sees(daemons: list[Daemon], address: str, alive: bool) -> bool:
        """One of `daemons` leads and holds the peer at `address` for `alive` (a node that
        leads itself is alive)."""
        leaders = [d for d in daemons if d.is_leader]
        if len(leaders) != 1:
            return False
        if leaders[0].config.address == address:
            return alive
        peer = leaders[0].peers.get(address)
        return peer is not None and peer.alive is alive

    def stub(self, address: str) -> Any:
        channel = grpc.aio.insecure_channel(address)
        self._channels.append(channel)
        return pb_grpc.NodeStub(channel)


StartCluster = Callable[..., Awaitable[InProcessCluster]]
