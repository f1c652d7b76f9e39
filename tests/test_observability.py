"""What an operator's stock tools see of a node (#17): gRPC reflection, so grpcurl needs
no .proto file, on every node of a real cluster; the schema is open, the calls are not."""

from __future__ import annotations

import json
import re
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


def test_a_json_role_change_line_carries_the_term_its_message_names(tmp_path: Path) -> None:
    """A one-node cluster goes pre-candidate (term 0), candidate and leader (term 1) in one
    step; the JSON line of the first said `"term": 1` beside "became pre-candidate term=0",
    the node's term when the line was written rather than the one it was about."""
    import os
    import re
    import signal
    import sys
    import time

    from node.testing.ports import free_ports

    node = subprocess.Popen(
        [sys.executable, "-m", "cli", "start", "--id", "n1", "--listen", f"127.0.0.1:{free_ports(1)[0]}",
         "--data-dir", str(tmp_path / "n1"), "--log-format", "json", "--parent-pid", str(os.getpid())],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    lines: list[dict[str, object]] = []
    try:
        assert node.stderr is not None
        deadline = time.monotonic() + 30
        while not any(str(line["message"]).startswith("became leader") for line in lines):
            assert time.monotonic() < deadline and node.poll() is None, f"no leader line: {lines}"
            lines.append(json.loads(node.stderr.readline()))
    finally:
        node.send_signal(signal.SIGTERM)
        node.communicate(timeout=30)
    changes = [(line["term"], re.fullmatch(r"became (\S+) term=(\d+).*", str(line["message"])))
               for line in lines if str(line["message"]).startswith("became ")]
    said = [(term, found.group(1), int(found.group(2))) for term, found in changes if found]
    assert [role for _, role, _ in said] == ["pre-candidate", "candidate", "leader"], said
    assert all(term == named for term, _, named in said), said


# ---- /metrics and /status.json (in-process daemons, real HTTP) ---------------------------

import asyncio  # noqa: E402
import socket  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from typing import Any  # noqa: E402

from inproc import CALM, StartCluster, poll, scraped  # noqa: E402
from msgspec.structs import replace  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from node import AsyncClient  # noqa: E402
from node.core.limits import Limits  # noqa: E402
from node.errors import InvalidJob, JobError  # noqa: E402
from node.server.daemon import Daemon  # noqa: E402
from node.testing.ports import free_ports  # noqa: E402

DESIGN_NAMES = {  # DESIGN §8: at least these
    "distnode_is_leader", "distnode_has_leader", "distnode_term", "distnode_leader_changes_seen",
    "distnode_peer_up", "distnode_jobs", "distnode_job_duration_seconds", "distnode_shard_duration_seconds",
    "distnode_shards_computed",
}


async def fetch(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, str]:
    def call() -> tuple[int, str]:
        request = urllib.request.Request(url, method=method, data=data)
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
    return await asyncio.to_thread(call)


async def scrape(daemon: Daemon) -> dict[str, Any]:
    """{sample name with sorted labels: value} from the node's /metrics, checked by Prometheus' parser."""
    status, text = await fetch(f"http://{daemon.config.http}/metrics")
    assert status == 200
    samples: dict[str, Any] = {"_families": set()}
    for family in text_string_to_metric_families(text):
        samples["_families"].add(family.name)
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def http_cluster(start_cluster: StartCluster, **overrides: Any) -> Any:
    ports = free_ports(3)
    return await start_cluster(
        3, node_overrides={f"n{i + 1}": {"http": f"127.0.0.1:{port}"} for i, port in enumerate(ports)},
        **overrides)


async def test_every_node_exports_the_design_names_and_no_job_id(start_cluster: StartCluster) -> None:
    cluster = await http_cluster(start_cluster)
    leader = cluster.leader()
    assert leader is not None
    async with AsyncClient(leader.config.address, timeout=20) as client:
        await client.submit(op="sum", source="range:n=1000", job_id="a-job-id-to-look-for")
    for daemon in cluster.daemons:
        metrics = await scrape(daemon)
        assert metrics["_families"] >= DESIGN_NAMES, DESIGN_NAMES - metrics["_families"]
        assert metrics["distnode_is_leader"] == (daemon is leader) and metrics["distnode_has_leader"] == 1
        assert metrics["distnode_term"] == leader.election.term
        assert metrics["distnode_leader_changes_seen_total"] >= 1, "each has seen a leader"
        labels = " ".join(str(key) for key in metrics)
        assert "job_id" not in labels and "a-job-id-to-look-for" not in labels and "range:" not in labels


async def test_job_metrics_count_each_outcome_shard_and_byte(start_cluster: StartCluster) -> None:
    cluster = await http_cluster(start_cluster, shard_elems=1 << 14, limits=Limits(job_timeout_s=0.2))
    leader = cluster.leader()
    assert leader is not None
    before = await scrape(leader)
    async with AsyncClient(leader.config.address, timeout=20) as client:
        for number in range(3):
            job_id = "reused" if number == 0 else None
            assert (await client.submit(op="sum", source="range:n=100000", job_id=job_id)).result == 4999950000
        with pytest.raises(InvalidJob):
            await client.submit(op="sum", source="range:n=0")
        with pytest.raises(InvalidJob, match="ALREADY_EXISTS"):  # refused before any run: it was not counted
            await client.submit(op="sum", source="range:n=5", job_id="reused")
        with pytest.raises(JobError, match="job-timeout-s"):
            await client.submit(op="sum", source="random:n=300000000,seed=1")
    after = await scrape(leader)
    for outcome, more in (("done", 3), ("refused", 2), ("failed", 1)):
        key = f"distnode_jobs_total{{outcome={outcome}}}"
        assert after[key] == before.get(key, 0) + more, (outcome, before, after)
    assert after["distnode_job_duration_seconds_count{op=sum}"] >= 3
    workers = [await scrape(d) for d in cluster.daemons]
    assert sum(m["distnode_shards_computed_total"] for m in workers) >= 3 * 7, "7 shards a job"
    assert all(m["distnode_shard_duration_seconds_count"] == m["distnode_shards_computed_total"] for m in workers)
    assert sum(m.get("distnode_source_bytes_read_total{kind=range}", 0) for m in workers) >= 3 * 100_000 * 8


async def test_a_follower_counts_the_jobs_it_relays(start_cluster: StartCluster) -> None:
    cluster = await http_cluster(start_cluster)
    leader = cluster.leader()
    assert leader is not None
    for follower in (d for d in cluster.daemons if d is not leader):
        assert (await scrape(follower)).get("distnode_relayed_total", 0) == 0
        async with AsyncClient(follower.config.address, timeout=20) as relayed:
            await relayed.submit(op="max", source="values:1,5")
        assert (await scrape(follower))["distnode_relayed_total"] >= 1
    assert (await scrape(leader)).get("distnode_relayed_total", 0) == 0, "a leader relays nothing"


async def test_heartbeat_metrics_move_for_each_peer(start_cluster: StartCluster) -> None:
    cluster = await http_cluster(start_cluster)
    leader = cluster.leader()
    assert leader is not None
    followers = [d.config.address for d in cluster.daemons if d is not leader]

    async def beats() -> dict[str, Any]:
        metrics = await scrape(leader)
        return {a: (metrics[f"distnode_heartbeat_replies_total{{peer={a}}}"],
                    sum(v for k, v in metrics.items()
                        if str(k).startswith("distnode_heartbeats_sent_total{") and f"peer={a}" in str(k)),
                    metrics[f"distnode_heartbeat_udp{{peer={a}}}"]) for a in followers} | {"_m": metrics}

    first = await beats()
    deadline = asyncio.get_running_loop().time() + 10
    later = await beats()
    while any(later[a][0] <= first[a][0] or later[a][1] <= first[a][1] for a in followers):
        assert asyncio.get_running_loop().time() < deadline, ("beats did not move", first, later)
        later = await beats()
    assert all(later[a][2] in (0, 1) for a in followers)
    metrics = later["_m"]
    assert metrics["distnode_heartbeat_rtt_seconds_count"] > first["_m"]["distnode_heartbeat_rtt_seconds_count"]
    assert metrics["distnode_heartbeat_rtt_seconds_sum"] > 0


async def test_journal_metrics_count_writes_and_time_commits(start_cluster: StartCluster) -> None:
    cluster = await http_cluster(start_cluster)
    leader = cluster.leader()
    assert leader is not None
    before = await scrape(leader)
    async with AsyncClient(leader.config.address, timeout=20) as client:
        await client.submit(op="sum", source="range:n=1000")

    async def moved() -> bool:
        after = await scrape(leader)
        return (after["distnode_journal_writes_total"] > before["distnode_journal_writes_total"]
                and after["distnode_commit_seconds_count"] > before["distnode_commit_seconds_count"])

    deadline = asyncio.get_running_loop().time() + 10
    while not await moved():  # the attached job's record, flushed within 100 ms
        assert asyncio.get_running_loop().time() < deadline, "no journal write or commit counted"


async def test_killing_the_leader_moves_the_election_and_peer_metrics(start_cluster: StartCluster) -> None:
    cluster = await http_cluster(start_cluster)
    leader = cluster.leader()
    assert leader is not None
    followers = [d for d in cluster.daemons if d is not leader]
    await poll(lambda: all(leader.peers.get(d.config.address).alive for d in followers),  # type: ignore[union-attr]
               what="the leader to hear both followers")
    metrics = await scrape(leader)
    assert all(metrics[f"distnode_peer_up{{peer={d.config.address}}}"] == 1 for d in followers), metrics
    # A follower hears only its leader, as `distnode status` says (it said 0 for its leader).
    seen = await scrape(followers[0])
    assert seen[f"distnode_peer_up{{peer={leader.config.address}}}"] == 1, seen
    assert seen[f"distnode_peer_up{{peer={followers[1].config.address}}}"] == 0, seen
    changes_before = {d.node_id: (await scrape(d))["distnode_leader_changes_seen_total"] for d in followers}
    old_term = leader.election.term
    leader.stop()  # the worker that dies is the old leader: its peer gauge drops on the new one
    await poll(lambda: any(d.is_leader for d in cluster.daemons if d is not leader), timeout_s=20,
               what="a new leader")
    successor = next(d for d in cluster.daemons if d is not leader and d.is_leader)
    other = next(d for d in cluster.daemons if d not in (leader, successor))
    await poll(lambda: successor.peers.get(other.config.address).alive,  # type: ignore[union-attr]
               what="the new leader to hear the live follower")
    metrics = await scrape(successor)
    assert metrics[f"distnode_peer_up{{peer={leader.config.address}}}"] == 0
    assert metrics[f"distnode_peer_up{{peer={other.config.address}}}"] == 1
    assert metrics["distnode_leader_changes_seen_total"] > changes_before[successor.node_id]
    assert metrics["distnode_is_leader"] == 1
    assert metrics["distnode_term"] == successor.election.term > old_term
    assert metrics["distnode_elections_started_total"] >= 1 and metrics["distnode_pre_votes_started_total"] >= 1


async def test_status_json_is_the_status_object_with_running_and_recent_jobs(start_cluster: StartCluster) -> None:
    # Elections wait 300-600 ms (CALM): a stall of a loaded host (100+ ms) must not move the
    # job to another leader than the one whose page is read.
    cluster = await http_cluster(start_cluster, shard_elems=1 << 16, election_ms_min=300, election_ms_max=600)
    leader = cluster.leader()
    assert leader is not None
    async with AsyncClient(leader.config.address, timeout=30) as client:
        await client.submit(op="max", source="values:4,2", job_id="small")
        big = asyncio.create_task(client.submit(op="sum", source="random:n=60000000,seed=2", job_id="big"))

        async def running() -> dict[str, Any] | None:
            status, text = await fetch(f"http://{leader.config.http}/status.json")
            document: dict[str, Any] = json.loads(text)
            assert status == 200
            jobs = [j for j in document["running"] if j["job_id"] == "big"]
            part_done = jobs and 0 < jobs[0]["shards_done"] < jobs[0]["shards"]
            return document if part_done and sum(jobs[0]["nodes"].values()) > 0 else None

        found = None
        deadline = asyncio.get_running_loop().time() + 30
        while found is None:
            assert asyncio.get_running_loop().time() < deadline, "never saw the big job part done"
            found = await running()
        await big
    assert list(found) == ["leader", "term", "nodes", "answered_by", "running", "recent"]
    assert found["leader"] == leader.node_id and len(found["nodes"]) == 3
    (big_row,) = [j for j in found["running"] if j["job_id"] == "big"]
    assert set(big_row["nodes"]) <= {d.node_id for d in cluster.daemons}
    assert sum(big_row["nodes"].values()) <= big_row["shards_done"] + len(big_row["nodes"]), "counts add up"
    assert {n["id"] for n in found["nodes"]} == {d.node_id for d in cluster.daemons}

    async def recent() -> list[dict[str, Any]]:
        return list(json.loads((await fetch(f"http://{leader.config.http}/status.json"))[1])["recent"])

    deadline = asyncio.get_running_loop().time() + 10
    listed = await recent()
    while not any(j["job_id"] == "small" and j["state"] == "done" for j in listed):
        assert asyncio.get_running_loop().time() < deadline, "the attached job never listed as done"
        listed = await recent()
    (small,) = [j for j in listed if j["job_id"] == "small"]
    # Times as `jobs --json` gives them (DESIGN §6: RFC 3339 UTC), where they were epoch floats.
    assert set(small) == {"job_id", "op", "source", "state", "shards", "elapsed_ms", "submitted_at",
                          "finished_at"}, small
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", small[name])
               for name in ("submitted_at", "finished_at")), small


async def test_a_followers_status_json_shows_which_node_delivered_a_detached_jobs_shards(
    start_cluster: StartCluster,
) -> None:
    cluster = await http_cluster(start_cluster, shard_elems=1 << 16)
    leader = cluster.leader()
    assert leader is not None
    follower = next(d for d in cluster.daemons if d is not leader)
    async with AsyncClient(follower.config.address, timeout=30) as client:
        job_id = await client.submit(op="sum", source="random:n=200000000,seed=3", detach=True)

        async def row() -> dict[str, Any] | None:
            document = json.loads((await fetch(f"http://{follower.config.http}/status.json"))[1])
            rows = [j for j in document["running"] if j["job_id"] == job_id]
            return rows[0] if rows and sum(rows[0]["nodes"].values()) > 0 else None

        found = None
        deadline = asyncio.get_running_loop().time() + 30
        while found is None:
            assert asyncio.get_running_loop().time() < deadline, "the follower never showed who computed what"
            found = await row()
        await client.cancel(job_id)
    assert set(found["nodes"]) <= {d.node_id for d in cluster.daemons}
    assert 0 < sum(found["nodes"].values()) <= found["shards"], found


async def test_http_is_read_only_and_a_slow_or_huge_request_stalls_nothing(start_cluster: StartCluster) -> None:
    cluster = await http_cluster(start_cluster, **CALM)  # it checks that the leadership stays
    leader = cluster.leader()
    assert leader is not None
    base = f"http://{leader.config.http}"
    assert (await fetch(f"{base}/nope"))[0] == 404
    assert (await fetch(f"{base}/metrics", "POST", b"x"))[0] == 405
    assert (await fetch(f"{base}/status.json", "DELETE"))[0] == 405
    host, port = leader.config.http.split(":")
    slow = socket.create_connection((host, int(port)))
    huge = socket.create_connection((host, int(port)))
    try:
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        huge.sendall(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        term = leader.election.term
        async with AsyncClient(leader.config.address, timeout=20) as client:
            for i in range(20):
                assert (await client.submit(op="sum", source=f"values:{i},1")).result == i + 1
        assert leader.is_leader and leader.election.term == term, "the election moved while HTTP was stuck"
        answer = await asyncio.to_thread(huge.recv, 100)
        assert answer.split(b" ")[1].startswith(b"4"), answer  # refused (400), not served
        assert (await fetch(f"{base}/metrics"))[0] == 200
    finally:
        slow.close()
        huge.close()


def test_http_beyond_loopback_needs_insecure() -> None:
    from node.errors import ConfigError
    from node.server.config import NodeConfig

    base = NodeConfig(node_id="n1", listen="127.0.0.1:7001", peers=(), data_dir=Path("unused"))
    with pytest.raises(ConfigError, match=r"http: 10\.0\.0\.1:9100 is reachable from the network.*--insecure"):
        replace(base, http="10.0.0.1:9100").validate()
    replace(base, http="127.0.0.1:9100").validate()
    replace(base, http="10.0.0.1:9100", insecure=True).validate()


def test_local_cluster_gives_every_node_an_http_side(tmp_path: Path) -> None:
    with LocalCluster(nodes=2, workdir=tmp_path, http=True, **FAST_TIMING) as cluster:  # type: ignore[arg-type]
        leader = cluster.wait_for_leader()
        leaders = 0.0
        for node_id in cluster.ids:
            samples = {s.name: s.value for s in scraped(cluster.http_addresses[node_id])}
            leaders += samples["distnode_is_leader"]
            with urllib.request.urlopen(f"http://{cluster.http_addresses[node_id]}/status.json", timeout=5) as reply:
                assert json.loads(reply.read())["answered_by"] == node_id
        assert leaders == 1 and leader in cluster.ids
