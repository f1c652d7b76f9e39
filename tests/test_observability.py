"""What an operator's stock tools see of a node (#17): gRPC reflection, so grpcurl needs
no .proto file, on every node of a real cluster; the schema is open, the calls are not."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from node import LocalCluster
from node.testing.cluster import FAST_TIMING

pytestmark = pytest.mark.process

GRPCURL = shutil.which("grpcurl") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "grpcurl")


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=60)


def test_grpcurl_lists_and_calls_every_node_with_reflection_alone(tmp_path: Path) -> None:
    with LocalCluster(nodes=3, workdir=tmp_path, token="s3cret", **FAST_TIMING) as cluster:  # type: ignore[arg-type]
        cluster.wait_for_leader()
        for address in cluster.addresses:
            listed = grpcurl(address, "list")
            assert listed.returncode == 0, listed.stderr
            assert set(listed.stdout.split()) >= {"distnode.v1.Node", "grpc.health.v1.Health"}, listed.stdout
            described = grpcurl(address, "describe", "distnode.v1.Node")
            assert described.returncode == 0 and "rpc Submit ( .distnode.v1.SubmitRequest )" in described.stdout
            methods = grpcurl(address, "list", "distnode.v1.Node")
            assert "distnode.v1.Node.Enqueue" in methods.stdout.split(), methods.stderr
            health = grpcurl(address, "grpc.health.v1.Health/Check")
            assert health.returncode == 0 and json.loads(health.stdout) == {"status": "SERVING"}, health.stderr
            refused = grpcurl(address, "distnode.v1.Node/Status")
            assert refused.returncode != 0 and "Unauthenticated" in refused.stderr, "the schema is open, calls not"
            status = grpcurl("-H", "authorization: Bearer s3cret", address, "distnode.v1.Node/Status")
            assert status.returncode == 0 and json.loads(status.stdout)["node_id"] in cluster.ids, status.stderr


def test_json_logs_are_one_object_per_line_with_node_term_and_peer(tmp_path: Path) -> None:
    import os
    import signal
    import sys
    import time

    from node.testing.ports import free_ports

    port, closed = free_ports(2)
    node = subprocess.Popen(
        [sys.executable, "-m", "cli", "start", "--id", "n1", "--listen", f"127.0.0.1:{port}",
         "--peers", f"127.0.0.1:{closed}", "--data-dir", str(tmp_path / "n1"), "--log-format", "json",
         "--heartbeat-ms", "30", "--election-ms", "150-300", "--parent-pid", str(os.getpid())],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[dict[str, object]] = []
    try:
        assert node.stderr is not None
        deadline = time.monotonic() + 30
        while not any("contact failed" in str(line["message"]) for line in lines):
            assert time.monotonic() < deadline and node.poll() is None, f"no peer line: {lines}"
            lines.append(json.loads(node.stderr.readline()))  # every line is one JSON object
    finally:
        node.send_signal(signal.SIGTERM)
        _, rest = node.communicate(timeout=30)
    lines += [json.loads(line) for line in rest.splitlines()]
    assert all({"time", "level", "node", "term", "message"} <= set(line) for line in lines), lines
    assert all(line["node"] == "n1" and isinstance(line["term"], int) for line in lines)
    assert str(lines[0]["time"]).endswith("Z") and lines[0]["level"] == "INFO"
    peer_lines = [line for line in lines if "contact failed" in str(line["message"])]
    assert len(peer_lines) == 1 and peer_lines[0]["peer"] == f"127.0.0.1:{closed}", peer_lines
    assert any(line["message"] == "shutting down" for line in lines)
