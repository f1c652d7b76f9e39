"""`submit(..., trace=True)` and `distnode submit --trace FILE`: the job's timeline.

The document is the Trace Event Format: metadata events name one process
per node (and the client) and one thread per lane; complete events ("X")
are the spans. A fault-free run shows every shard computed once, on the
node the answer names, every shard merged once and in order, and the
leader's spans inside its job span inside the client's round trip (one
host, one clock).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from inproc import StartCluster, poll

from cli.main import main
from node import AsyncClient
from node.errors import InvalidJob
from node.wire.trace import Span, spans_from_json, spans_to_json, trace_document


def spans_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """Each complete event with its process and thread names in place of the numbers."""
    json.dumps(document)  # it is plain JSON
    process = {e["pid"]: e["args"]["name"] for e in document["traceEvents"] if e["name"] == "process_name"}
    thread = {(e["pid"], e["tid"]): e["args"]["name"] for e in document["traceEvents"]
              if e["name"] == "thread_name"}
    found = []
    for event in document["traceEvents"]:
        assert event["ph"] in ("M", "X"), event
        if event["ph"] == "X":
            assert event["dur"] >= 0 and event["ts"] > 0
            found.append({**event, "node": process[event["pid"]], "lane": thread[(event["pid"], event["tid"])]})
    return found


def ran_it(cluster: Any, leader: str) -> str:
    """The node the answer names as its leader: under load the leader of the submit
    can lose its term before the job runs, and the timeline is the new leader's."""
    assert leader in {d.node_id for d in cluster.daemons}, leader
    return leader


def check_timeline(document: dict[str, Any], shards: int, nodes: list[str], leader: str) -> list[dict[str, Any]]:
    spans = spans_of(document)
    computed = sorted((int(s["name"].split()[1]), s["node"]) for s in spans
                      if s["name"].startswith("shard ") and s["name"].split()[1].isdigit()
                      and len(s["name"].split()) == 2)
    assert [index for index, _ in computed] == list(range(shards)), computed
    assert {node for _, node in computed} == set(nodes), (computed, nodes)
    merged = [s["args"]["shard"] for s in sorted(spans, key=lambda s: s["ts"]) if s["lane"] == "merge"]
    assert merged == list(range(shards))
    (job,) = [s for s in spans if s["lane"] == "job"]
    (client,) = [s for s in spans if s["node"] == "client"]
    assert job["node"] == leader and job["args"]["shards"] == shards
    assert client["ts"] <= job["ts"] and job["ts"] + job["dur"] <= client["ts"] + client["dur"]
    for span in spans:
        if span["node"] == leader and span["lane"] != "job":
            assert job["ts"] <= span["ts"] and span["ts"] + span["dur"] <= job["ts"] + job["dur"] + 1, span
    for worker in set(nodes) - {leader}:
        assert any(s["lane"].startswith(f"rpc to {worker} ") and s["name"].startswith("Compute: ")
                   for s in spans), f"no Compute RPC to {worker}"
        trips = [s for s in spans if s["lane"] == f"reduce from {worker}"]
        assert trips and all(s["node"] == leader for s in trips)
    return spans


async def test_a_traced_job_shows_every_shard_rpc_and_merge_of_every_node(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(3, shard_elems=1 << 16)
    leader = cluster.leader()
    assert leader is not None
    follower = next(d for d in cluster.daemons if d is not leader)
    for address in (leader.config.address, follower.config.address):  # straight, and relayed
        async with AsyncClient(address, timeout=30) as client:
            answer = await client.submit(op="sum", source="range:n=2000000", trace=True)
            plain = await client.submit(op="sum", source="range:n=2000000")
        assert answer.result == plain.result == 1999999000000 and plain.trace is None
        assert answer.trace is not None and answer.shards == 31
        check_timeline(answer.trace, answer.shards, answer.nodes, ran_it(cluster, answer.leader))


async def test_a_tiny_job_is_traced_on_the_event_loop(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    async with AsyncClient(cluster.daemons[0].config.address, timeout=30) as client:
        answer = await client.submit(op="max", source="values:3,9,4", trace=True)
    assert answer.result == 9 and answer.trace is not None
    names = sorted(s["name"] for s in spans_of(answer.trace))
    assert names == ["job max", "shard 0 (on the event loop: tiny)", "submit: round trip"]


async def test_trace_and_detach_do_not_go_together(start_cluster: StartCluster) -> None:
    cluster = await start_cluster(1)
    async with AsyncClient(cluster.daemons[0].config.address, timeout=30) as client:
        with pytest.raises(InvalidJob, match="trace: a detached job"):
            await client.submit(op="sum", source="range:n=10", detach=True, trace=True)  # type: ignore[call-overload]


async def test_the_cli_writes_the_trace_file_and_refuses_one_it_cannot_write(
    start_cluster: StartCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    cluster = await start_cluster(3, shard_elems=1 << 16)
    leader = cluster.leader()
    assert leader is not None
    out = tmp_path / "job.trace.json"
    base = ["submit", "--cluster", leader.config.address, "--op", "sum", "--source", "range:n=500000", "--json"]
    assert await asyncio.to_thread(main, [*base, "--trace", str(out)]) == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[-1])  # after the daemons' LISTENING lines
    check_timeline(json.loads(out.read_text()), answer["shards"], answer["nodes"], ran_it(cluster, answer["leader"]))
    # An attached job's record is flushed after its answer (every 100 ms): count once it is in.
    await poll(lambda: leader.ledger.table.get(answer["job_id"]) is not None, what="the traced job's record")
    jobs_before = len(leader.ledger.table)
    for bad, words in ((tmp_path / "no-such-dir" / "t.json", "does not exist"), (tmp_path, "is a directory")):
        assert await asyncio.to_thread(main, [*base, "--trace", str(bad)]) == 2
        assert words in capsys.readouterr().err
    assert await asyncio.to_thread(main, [*base, "--trace", str(out), "--detach"]) == 2
    assert "a detached job has no timeline" in capsys.readouterr().err
    assert len(leader.ledger.table) == jobs_before, "a refused --trace submitted nothing"


def test_spans_round_trip_and_a_document_names_each_node_and_lane() -> None:
    spans = [Span("job sum", "n1", "job", 1_000, 9_000, {"shards": 2}),
             Span("shard 0", "n2", "shards for rpc to n2 #1", 2_000, 3_000, {"shard": 0}),
             Span("submit: round trip", "client", "submit", 500, 9_500)]
    assert spans_from_json(spans_to_json(spans)) == spans
    with pytest.raises(ValueError, match="trace_json"):
        spans_from_json('[{"name": 1}]')
    # Fields of the wrong type were taken, and failed later outside the caller's guard.
    good = json.loads(spans_to_json(spans[:1]))[0]
    for wrong in ({**good, "start_ns": "1000"}, {**good, "lane": 7}, {**good, "args": []}):
        with pytest.raises(ValueError, match="trace_json"):
            spans_from_json(json.dumps([wrong]))
    document = trace_document(spans)
    events = spans_of(document)
    assert [(e["node"], e["lane"], e["ts"], e["dur"]) for e in events] == [
        ("client", "submit", 0.5, 9.0), ("n1", "job", 1.0, 8.0), ("n2", "shards for rpc to n2 #1", 2.0, 1.0)]
    first = next(e for e in document["traceEvents"] if e["name"] == "process_name")
    assert first["args"]["name"] == "client", "the client is the top process"
