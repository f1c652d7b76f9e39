"""The bench's JSON read back as the table's rows: one row per figure, a value per system.

Rows are built from the JSON alone (`res`, and its `params`), so the table,
the targets, the chart and the page come out the same from a fresh run and
from `--render-from` an old one. The targets are stated for the full-size
run (10^8 elements); a quick run shows them too, against its smaller data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from benchlib.data import Params
from benchlib.format_files import LABELS
from benchlib.peers import PEERS


@dataclass
class Row:
    key: str
    label: str
    unit: str
    #: (reference, factor): reference is a peer name or "abs" (the factor is then the target itself).
    checks: list[tuple[str, float]]
    higher_better: bool = False
    values: dict[str, float | None] = field(default_factory=dict)
    #: Peers the figure is measured for, so a skipped one shows "skipped" rather than "—".
    applies: tuple[str, ...] = ()
    note: str = ""
    #: system -> the summary of its timed reps (`bench_peers.peerdata.summary`), for the spread.
    reps: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: reference -> the median over interleaved rounds of distnode's time over the reference's:
    #: where it exists, the targets are checked against it rather than the ratio of two medians.
    round_ratios: dict[str, float] = field(default_factory=dict)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "jobs/s":
        return f"{value:,.0f} jobs/s"
    if unit == "count":
        return f"{value:.0f}"
    precision = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:,.{precision}f} {unit}"


def get(source: dict[str, Any], *path: str) -> float | None:
    node: Any = source
    for key in path:
        if not isinstance(node, dict) or key not in node or node[key] is None:
            return None
        node = node[key]
    return float(node)


def summary_at(source: dict[str, Any], *path: str) -> dict[str, Any] | None:
    """The reps' summary at `path`, None where the figure was not measured or has no reps."""
    node: Any = source
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) and node.get("samples_s") else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


class _Figures:
    """One figure's value, or its reps' summary, for distnode and for every peer."""

    def __init__(self, res: dict[str, Any]) -> None:
        self.d = res["distnode"]
        self.peers = {name: res["peers"].get(name) or {} for name in PEERS}
        self.rounds: dict[str, Any] = res.get("rounds") or {}

    def ratios(self, figure: str) -> dict[str, float]:
        """reference -> median of the rounds' ratios, for a figure measured in rounds."""
        return {ref: found["median"] for ref, found in (self.rounds.get(figure) or {}).items()}

    def values(self, mine: tuple[str, ...], theirs: tuple[str, ...]) -> dict[str, float | None]:
        return {"distnode": get(self.d, *mine), **{n: get(p, *theirs) for n, p in self.peers.items()}}

    def reps(self, mine: tuple[str, ...], theirs: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
        found = {"distnode": summary_at(self.d, *mine)}
        if theirs:
            found |= {name: summary_at(peer, *theirs) for name, peer in self.peers.items()}
        return {system: reps for system, reps in found.items() if reps is not None}


def build_rows(res: dict[str, Any], p: Params) -> list[Row]:
    f = _Figures(res)
    return _job_rows(f, p) + _scaling_rows(f) + _format_rows(f, p) + _cluster_rows(f, p)


def _job_rows(f: _Figures, p: Params) -> list[Row]:
    """Big jobs, small jobs and throughput: distnode against the peers."""
    big_sum, square = ("big", "big_sum"), ("big", "big_square_sum")
    vector, task_peers = ("big", "vector_reduce"), ("dask", "ray")
    big_n = f"10^{round(math.log10(p.n))}"
    return [
        Row("big_sum", f"big: `sum` over {big_n} float64 .npy", "ms",
            [("mpi4py", 1.10), ("numpy", 1.0), ("dask", 0.6)],
            values=f.values((*big_sum, "median_ms"), ("big_sum", "median_ms")), applies=PEERS,
            reps=f.reps(big_sum, ("big_sum",)), round_ratios=f.ratios("big_sum")),
        Row("big_square_sum", "big: `--map square` then `sum`", "ms", [("mpi4py", 1.10)],
            values=f.values((*square, "median_ms"), ("big_square_sum", "median_ms")), applies=PEERS,
            reps=f.reps(square, ("big_square_sum",)), round_ratios=f.ratios("big_square_sum")),
        Row("small_p50", "small job (1,000 elements) p50, separate client", "ms",
            [("abs", 0.6), ("ray", 0.4), ("dask", 0.1)],
            values=f.values(("small", "median_ms"), ("small", "median_ms")), applies=task_peers,
            reps=f.reps(("small",), ("small",))),
        Row("small_p99", "small job p99", "ms", [("abs", 1.5)],
            values=f.values(("small", "p99_ms"), ("small", "p99_ms")), applies=task_peers),
        Row("throughput", f"throughput, small jobs, {p.inflight} in flight, one client", "jobs/s",
            [("abs", 5000.0)], higher_better=True,
            values=f.values(("throughput", "jobs_per_s"), ("throughput", "jobs_per_s")), applies=task_peers),
        Row("vector_reduce", "vector reduce `--axis 0`, (3, 10^6) float64", "ms", [("mpi4py", 2.0)],
            values=f.values((*vector, "median_ms"), ("vector_reduce", "median_ms")), applies=PEERS,
            reps=f.reps(vector, ("vector_reduce",)), round_ratios=f.ratios("vector_reduce")),
    ]


def _scaling_rows(f: _Figures) -> list[Row]:
    """The big sum on 1..4 nodes beside mpi4py at as many ranks and numpy in one process
    (all in the same rounds); the CPU every system spends on one such job."""
    scaling = f.d.get("scaling") or {}
    systems, ratios = scaling.get("systems") or {}, scaling.get("ratios") or {}
    if not systems:
        return []

    def at(label: str, key: str) -> float | None:
        return get(systems, label, key)

    def values(nodes: int, key: str) -> dict[str, float | None]:
        return {"distnode": at(f"distnode {nodes}", key), "mpi4py": at(f"mpi4py {nodes}", key),
                "numpy": at("numpy", key)}

    rows = []
    for nodes in scaling["nodes"]:
        rows.append(Row(
            f"scaling_{nodes}", f"scaling: big `sum`, {nodes} node(s) / ranks", "ms",
            [("mpi4py", 1.10)] if nodes == 3 else [], values=values(nodes, "median_ms"),
            round_ratios={ref.split()[0]: r for ref, r in (ratios.get(str(nodes)) or {}).items()},
            reps={s: v for s, v in (("distnode", systems.get(f"distnode {nodes}")),
                                    ("mpi4py", systems.get(f"mpi4py {nodes}"))) if v}))
    rows.append(Row("scaling_2_over_1", "scaling: big `sum`, 2 nodes over 1 node (median of rounds)", "x",
                    [("abs", 0.8)], values={"distnode": get(scaling, "distnode_2_over_1"),
                                            "mpi4py": get(scaling, "mpi4py_2_over_1")}))
    for nodes in scaling["nodes"]:
        rows.append(Row(f"scaling_cpu_{nodes}", f"scaling: CPU per big `sum`, {nodes} node(s) / ranks",
                        "ms", [], values=values(nodes, "cpu_ms"), note="all of a system's processes"))
    return rows


def _format_rows(f: _Figures, p: Params) -> list[Row]:
    """The big sum in each file format: distnode (3 nodes) beside Dask and one process reading it
    all with the format's library, and beside distnode's own `.npy` in the same rounds."""
    big_n = f"10^{round(math.log10(p.n))}"
    npy = get(f.d, "formats", "sum", "npy", "median_ms")
    rows = [Row("formats_npy", f"formats: `sum` over {big_n} float64, .npy in the same rounds", "ms", [],
                values={"distnode": npy}, reps=f.reps(("formats", "sum", "npy")))]
    for name, label in LABELS.items():
        # Uncompressed chunks cost what .npy costs to read: the format itself must add little.
        checks = ([("npy", 1.3)] if name in ("zarr3", "hdf5") else []) + [("dask", 0.6)]
        mine, theirs = ("formats", "sum", name, "median_ms"), ("formats", name, "median_ms")
        rows.append(Row(f"formats_{name}", f"formats: `sum`, {label}", "ms", checks,
                        values={**f.values(mine, theirs), "npy": npy}, applies=("dask", "numpy"),
                        note="numpy (1 proc): the format's library reads it all" if name == "zarr3" else "",
                        reps=f.reps(mine[:-1], theirs[:-1])))
    identity = f.d.get("formats", {}).get("identity") or {}
    rows.append(Row("formats_identity", "formats: 1 node vs 3 nodes, answers identical (every source x op)",
                    "count", [("abs", float(identity.get("pairs") or 0))], higher_better=True,
                    values={"distnode": get(identity, "identical")}))
    return rows


def _cluster_rows(f: _Figures, p: Params) -> list[Row]:
    """Start, faults, idle cost and 16 nodes: distnode's own figures against absolute targets."""
    d, n = f.d, p.scale_nodes
    start_values = {"distnode": get(d, "start", "median_ms"), "dask": _ms(get(f.peers["dask"], "start_s")),
                    "ray": _ms(get(f.peers["ray"], "start_s"))}
    crossing = {"distnode, clean": summary_at(d, "kill_crossing", "clean"),
                "distnode, across the kill": summary_at(d, "kill_crossing", "crossing")}
    return [
        Row("start", "start 3 daemons → leader elected", "ms", [("abs", 1000.0)], values=start_values,
            note="dask/ray: cluster start-up, for reference", reps=f.reps(("start",))),
        Row("failover_median", f"leader kill -9 → new leader, median of {p.kills}", "ms", [("abs", 400.0)],
            values={"distnode": get(d, "failover", "median_ms")}, reps=f.reps(("failover",))),
        Row("failover_max", f"leader kill -9 → new leader, max of {p.kills}", "ms", [("abs", 800.0)],
            values={"distnode": get(d, "failover", "max_ms")}),
        Row("kill_crossing", "big job crossing a leader kill: extra time", "ms", [("abs", 1500.0)],
            values={"distnode": get(d, "kill_crossing", "extra_ms")},
            reps={k: v for k, v in crossing.items() if v is not None}),
        Row("idle_rss", "idle node RSS (max over nodes)", "MB", [("abs", 80.0)],
            values={"distnode": get(d, "idle", "rss_mb")}),
        Row("idle_cpu", "idle node CPU (max over nodes)", "% core", [("abs", 0.8)],
            values={"distnode": get(d, "idle", "cpu_pct")}),
        Row("idle_cpu_grpc", "idle node CPU, every heartbeat on gRPC", "% core", [],
            values={"distnode": get(d, "idle_grpc", "cpu_pct")}, note="`--no-udp-heartbeats`, for reference"),
        Row("scale_leader", f"scale: {n} nodes, spawn → leader elected, median of {p.scale_starts}", "ms",
            [("abs", 2000.0)], values={"distnode": get(d, "scale", "elected_ms")},
            note="from the leader's own log line", reps=f.reps(("scale", "elected"))),
        Row("scale_ready", f"scale: {n} nodes, spawn → all listening and a client sees the leader", "ms", [],
            values={"distnode": get(d, "scale", "leader_ms")}, note="the harness's start(), for reference",
            reps=f.reps(("scale", "ready"))),
        Row("scale_small_p50", f"scale: {n} nodes, small job p50", "ms", [("abs", 2.0)],
            values={"distnode": get(d, "scale", "small", "median_ms")}, reps=f.reps(("scale", "small"))),
        Row("scale_elections", f"scale: spurious elections in {p.scale_window_s:.0f} s", "count",
            [("abs", 0.0)], values={"distnode": get(d, "scale", "spurious_candidates")}),
    ]
