"""The chart: bars of the big-job and small-job figures per system, and the big sum's time
against the node count (distnode, mpi4py at as many ranks, numpy's one process), from the rows.

matplotlib is optional (the `[bench]` extra): without it the chart is
skipped with a reason, and the run goes on.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from benchlib.peers import PEERS
from benchlib.rows import Row

#: (panel title, the rows it shows)
PANELS = [("big jobs (median ms, lower is better)", ["big_sum", "big_square_sum", "vector_reduce"]),
          ("small jobs (ms, lower is better)", ["small_p50", "small_p99"])]


def write_png(path: Path, res: dict[str, Any], rows: list[Row]) -> str | None:
    """Bar chart of the big-job and small-job figures per system; None if written, else why not."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib not installed (pip install -e '.[bench]')"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {row.key: row for row in rows}
    scaling = [row for row in rows if row.key.startswith("scaling_") and row.key[8:].isdigit()]
    fig, axes = plt.subplots(1, 3 if scaling else 2, figsize=(18 if scaling else 12, 4.5))
    for ax, (title, keys) in zip(axes, PANELS, strict=False):
        _panel(ax, title, [by_key[k] for k in keys], plt.get_cmap("tab10"))
    if scaling:
        _scaling_panel(axes[2], scaling, plt.get_cmap("tab10"))
    fig.suptitle(f"distnode vs peers ({'quick' if res['params']['quick'] else 'full'} run, "
                 f"{res['environment']['nproc']} CPUs)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _panel(ax: Any, title: str, rows: list[Row], colours: Any) -> None:
    """One group of bars per row, one bar per system that has a value."""
    systems = ["distnode", *PEERS]
    width = 0.8 / len(systems)
    for i, system in enumerate(systems):
        heights = [row.values.get(system) or 0.0 for row in rows]
        if not any(heights):
            continue
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, heights, width, label=system, color=colours(i))
    ax.set_xticks(range(len(rows)), [row.key.replace("_", " ") for row in rows])
    ax.set_title(title)
    ax.set_ylabel("ms")
    shown = [v for row in rows for v in row.values.values() if v]
    if rows[0].key.startswith("small") and shown:
        ax.set_yscale("log")
        ax.set_ylim(bottom=min(shown) / 2)
    ax.legend(fontsize=8)


def _scaling_panel(ax: Any, rows: list[Row], colours: Any) -> None:
    """Big sum time against nodes (ranks for mpi4py); numpy's one process as a flat line."""
    nodes = [int(row.key.rsplit("_", 1)[1]) for row in rows]
    systems = ["distnode", *PEERS]
    for i, system in enumerate(systems):
        points = [(n, row.values.get(system)) for n, row in zip(nodes, rows, strict=True)]
        shown = [(n, v) for n, v in points if v]
        if not shown:
            continue
        label = f"{system} (1 process)" if system == "numpy" else system
        ax.plot([n for n, _ in shown], [v for _, v in shown], marker="o", label=label, color=colours(i),
                linestyle="--" if system == "numpy" else "-")
    ax.set_xticks(nodes)
    ax.set_xlabel("nodes (distnode) / ranks (mpi4py)")
    ax.set_ylabel("ms")
    ax.set_ylim(bottom=0)
    ax.set_title("big sum vs nodes (median ms, lower is better)")
    ax.legend(fontsize=8)
