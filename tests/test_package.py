"""What importing distnode costs a daemon, and what the public names are."""

from __future__ import annotations

import os
import subprocess
import sys

import node


def run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**clean, **env}, timeout=60, check=True)
    return done.stdout.strip()


def test_every_public_name_resolves() -> None:
    for name in node.__all__:
        assert getattr(node, name).__name__ == name
    assert set(node.__all__) == set(node._HOMES)


def test_a_daemon_starts_without_the_client_side_numpy_or_prometheus_client() -> None:
    """numpy and the compute stack load after the election (node/core/job.py says why);
    prometheus-client only with --http, for /metrics (node/server/tally.py says why)."""
    loaded = run_python("import sys, cli.main, cli.commands, node.server.daemon; print(' '.join(sorted(sys.modules)))")
    modules = loaded.split()
    assert "node.server.daemon" in modules
    heavy = ("numpy", "node.server.jobs", "node.server.worker", "node.core.compute", "node.core.sources",
             "node.wire.tensors", "node.client.async_client", "node.client.blocking", "node.testing.cluster",
             "prometheus_client")
    assert not set(heavy) & set(modules), set(heavy) & set(modules)


def test_cli_keeps_openblas_to_one_thread_unless_told() -> None:
    assert run_python("import cli, os; print(os.environ['OPENBLAS_NUM_THREADS'])") == "1"
    assert run_python("import cli, os; print(os.environ['OPENBLAS_NUM_THREADS'])",
                      OPENBLAS_NUM_THREADS="3") == "3"
