"""The bar chart of the big-job and small-job figures per system, drawn from the rows.

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
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (title, keys) in zip(axes, PANELS, strict=True):
        _panel(ax, title, [by_key[k] for k in keys], plt.get_cmap("tab10"))
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
