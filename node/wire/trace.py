"""A job's timeline, in the Trace Event Format that Perfetto and chrome://tracing open.

The leader records `Span`s while it runs a job asked for with `trace`: its
own shards (queued, computed), each Compute RPC per lane, each partial's trip
up the Reduce stream, each merge; the workers' shard times travel in their
partials. The leader sends the spans with the answer (`SubmitReply.trace_json`,
`spans_to_json`); the client adds its own round trip and writes the document
(`trace_document`): one process per node, one thread per lane.

Times are each node's wall clock (`time.time_ns`): exact on one host, as
good as the hosts' clock sync across hosts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import msgspec


class Span(msgspec.Struct, frozen=True):
    """One thing that took time on one node."""

    name: str
    #: The process in the timeline: a node id, or "client".
    node: str
    #: The thread in the timeline: "job", "merge", "compute", "rpc to n2 #1", ...
    lane: str
    start_ns: int
    end_ns: int
    args: dict[str, Any] = msgspec.field(default_factory=dict)


def spans_to_json(spans: Iterable[Span]) -> str:
    return json.dumps([msgspec.structs.asdict(span) for span in spans], separators=(",", ":"))


def spans_from_json(text: str) -> list[Span]:
    """The leader's spans as sent; ValueError if they are not spans."""
    try:
        return msgspec.json.decode(text, type=list[Span])
    except msgspec.DecodeError as exc:  # malformed JSON, or a field of the wrong type
        raise ValueError(f"trace_json: not a list of spans: {exc}") from None


def trace_document(spans: Iterable[Span]) -> dict[str, Any]:
    """The Trace Event Format JSON object: complete ("X") events, with process and thread
    names as metadata ("M") events; the client first, then the nodes by id."""
    spans = sorted(spans, key=lambda s: s.start_ns)
    nodes = sorted({s.node for s in spans}, key=lambda n: (n != "client", n))
    pid = {node: number + 1 for number, node in enumerate(nodes)}
    tid: dict[tuple[str, str], int] = {}
    for span in sorted(spans, key=lambda s: (s.node, _lane_order(s.lane), s.lane)):
        tid.setdefault((span.node, span.lane), len(tid) + 1)
    events: list[dict[str, Any]] = []
    for node, number in pid.items():
        events.append({"ph": "M", "name": "process_name", "pid": number, "tid": 0, "args": {"name": node}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": number, "tid": 0,
                       "args": {"sort_index": number}})
    for (node, lane), number in tid.items():
        events.append({"ph": "M", "name": "thread_name", "pid": pid[node], "tid": number,
                       "args": {"name": lane}})
        events.append({"ph": "M", "name": "thread_sort_index", "pid": pid[node], "tid": number,
                       "args": {"sort_index": number}})
    for span in spans:
        events.append({"ph": "X", "name": span.name, "cat": span.lane.split(" ")[0],
                       "pid": pid[span.node], "tid": tid[(span.node, span.lane)],
                       "ts": span.start_ns / 1000, "dur": max(0, span.end_ns - span.start_ns) / 1000,
                       "args": span.args})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _lane_order(lane: str) -> int:
    """Within a node: the job on top, then its own computing, the RPCs, the streams, the merge."""
    for rank, prefix in enumerate(("job", "submit", "compute", "rpc", "shards", "reduce", "merge")):
        if lane.startswith(prefix):
            return rank
    return 99
