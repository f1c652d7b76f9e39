"""`distnode start --http HOST:PORT`: the node's read-only HTTP side.

`/metrics` is the Prometheus text of the node's registry (metrics.py);
`/status.json` is what `distnode status --json` prints, as this node sees
it, plus the running jobs (with their shard progress) and the last jobs of
its table; `/` is the live page that draws it (statuspage.py). Only GET (and HEAD) of these paths: any other
method is 405, any other path 404, and a request with a body is refused
(nothing can be submitted or changed over HTTP).

aiohttp runs on the daemon's own event loop: no thread, so a scrape costs
the loop what it costs, in its turn, and the heartbeats keep their turns;
prometheus-client's own server would be a thread of blocking http.server.
The port obeys the gRPC port's exposure rule (config.py): beyond loopback
only with --insecure, as this side has no TLS and no token.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node.addresses import split_host_port
from node.core.jobtable import JobTable
from node.errors import CannotStart, ClusterError
from node.server.api import JobProgress, StatusView
from node.server.metrics import NodeMetrics
from node.server.startchecks import why_not_listening
from node.server.statuspage import PAGE
from node.wire.times import rfc3339

#: The largest request accepted: a GET has no body.
MAX_REQUEST_BYTES = 1024
#: Finished jobs listed in /status.json.
RECENT_JOBS = 20


def status_document(
    view: StatusView, running: list[dict[str, Any]], recent: list[dict[str, Any]]
) -> dict[str, Any]:
    """`status --json`'s object from this node's view, with its jobs."""
    nodes = [
        {"id": n.id or None, "address": n.address, "role": n.role, "term": n.term, "alive": n.alive,
         "last_heartbeat_ms": None if n.last_heartbeat_ms is None else round(n.last_heartbeat_ms, 1),
         "storage_error": n.storage_error or None, "problem": n.problem or None, "failures": n.failures}
        for n in sorted(view.nodes, key=lambda n: (n.id, n.address))
    ]
    return {"leader": view.leader_id or None, "term": view.term, "nodes": nodes, "answered_by": view.node_id,
            "running": running, "recent": recent}


async def running_jobs(
    own: list[dict[str, Any]], table: JobTable, progress: Callable[[str], Awaitable[JobProgress]]
) -> list[dict[str, Any]]:
    """The jobs this node runs as leader; on a follower, the table's running (detached) jobs
    with their progress asked of the leader, all at once (a follower's page shows them too,
    and goes on showing them when the leader changes)."""
    if own:
        return own
    records = table.jobs(state="running", limit=RECENT_JOBS)
    asked = await asyncio.gather(*(progress(r.job_id) for r in records), return_exceptions=True)
    found = []
    for record, known in zip(records, asked, strict=True):
        if isinstance(known, ClusterError):
            continue  # no leader to ask just now
        if isinstance(known, BaseException):
            raise known
        found.append({"job_id": record.job_id, "op": record.op, "source": record.source,
                      "shards": known.shards_total, "shards_done": known.shards_done,
                      "nodes": known.by_node})
    return found


def recent_jobs(table: JobTable, limit: int = RECENT_JOBS) -> list[dict[str, Any]]:
    """The table's newest jobs, as /status.json lists them."""
    return [{"job_id": r.job_id, "op": r.op, "source": r.source, "state": r.state, "shards": r.shards,
             "elapsed_ms": r.elapsed_ms, "submitted_at": rfc3339(r.submitted_at),
             "finished_at": rfc3339(r.finished_at)} for r in table.jobs(limit=limit)]


async def serve_http(
    listen: str, metrics: NodeMetrics, status: Callable[[], Awaitable[dict[str, Any]]]
) -> web.AppRunner:
    """Start serving on `listen` (CannotStart with the reason if the port is refused)."""
    reason = why_not_listening(listen)
    if reason:
        raise CannotStart(f"cannot listen on http {listen}: {reason}")

    async def metrics_page(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_page(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(await status()), content_type="application/json")

    async def live_page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_get("/", live_page)
    app.router.add_get("/metrics", metrics_page)
    app.router.add_get("/status.json", status_page)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = split_host_port(listen)
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise CannotStart(f"cannot listen on http {listen}: {(exc.strerror or str(exc)).lower()}") from None
    return runner
