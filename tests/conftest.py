"""Shared fixtures: in-process daemons on 127.0.0.1 (the in-process RPC layer)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from inproc import FAST, InProcessCluster, StartCluster, poll

from node.server.config import NodeConfig
from node.server.daemon import Daemon
from node.testing.ports import free_ports

# Property tests draw the same examples on every run, so a CI run never fails on a draw the
# runs before it never made; HYPOTHESIS_PROFILE=explore draws new ones (what finds new cases).
settings.register_profile("repeatable", derandomize=True, deadline=None)  # no timing on a loaded host
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture
async def start_cluster(tmp_path: Path) -> AsyncIterator[StartCluster]:
    clusters: list[InProcessCluster] = []

    async def start(
        nodes: int = 1, node_overrides: dict[str, dict[str, Any]] | None = None, **overrides: Any
    ) -> InProcessCluster:
        """`nodes` daemons n1, n2, ...: FAST timing and `overrides` for all, `node_overrides[id]` for one."""
        ports = free_ports(nodes)
        addresses = [f"127.0.0.1:{p}" for p in ports]
        daemons = []
        for i, address in enumerate(addresses):
            node_id = f"n{i + 1}"
            options = {**FAST, **overrides, **(node_overrides or {}).get(node_id, {})}
            config = NodeConfig(
                node_id=node_id, listen=address,
                peers=tuple(a for a in addresses if a != address),
                data_dir=tmp_path / f"c{len(clusters)}" / node_id, data_root=tmp_path, **options,
            )
            daemons.append(Daemon(config))
        tasks = [asyncio.create_task(d.serve(handle_signals=False)) for d in daemons]
        cluster = InProcessCluster(daemons, tasks)
        clusters.append(cluster)
        await poll(lambda: all(d.port for d in daemons), what="daemons listening")
        await cluster.wait_for_leader()
        return cluster

    yield start
    for cluster in clusters:
        for channel in cluster._channels:
            await channel.close()
        for daemon in cluster.daemons:
            daemon.stop()
        for task in cluster.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=5)
