"""Draw a job's timeline (a `submit --trace` file) as a PNG: one row per node and lane.

    python scripts/trace_png.py TRACE.json OUT.png
    python scripts/trace_png.py --big [--nodes 3] [--n 100000000] OUT.png

The first form draws an existing trace. `--big` makes one: a float64 `.npy`
of `--n` elements in a temporary directory, a `LocalCluster` of `--nodes`
nodes reading it, three untraced warm-up sums, then one traced sum; the
trace goes beside OUT.png as OUT.json. Perfetto (https://ui.perfetto.dev)
and chrome://tracing open the JSON too; this picture is for the docs, drawn
with matplotlib (the `bench` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Bar colour by what the span is.
COLOURS = {"queued": "#d9d9d9", "shard": "#4c72b0", "Compute": "#dd8452", "merge": "#55a868",
           "job": "#8172b3", "submit": "#937860", "reduce": "#c44e52"}


def colour(name: str, lane: str) -> str:
    if name.endswith("queued"):
        return COLOURS["queued"]
    if lane.startswith("reduce"):
        return COLOURS["reduce"]
    for key in ("Compute", "merge", "job", "submit"):
        if name.startswith(key) or lane.startswith(key):
            return COLOURS[key]
    return COLOURS["shard"]


def draw(document: dict[str, Any], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = document["traceEvents"]
    process = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    thread = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    spans = [e for e in events if e["ph"] == "X"]
    origin = min(e["ts"] for e in spans)
    rows = sorted({(e["pid"], e["tid"]) for e in spans})
    fig, ax = plt.subplots(figsize=(13, 0.42 * len(rows) + 1.5))
    for y, row in enumerate(rows):
        for e in (e for e in spans if (e["pid"], e["tid"]) == row):
            ax.barh(y, e["dur"] / 1000, left=(e["ts"] - origin) / 1000, height=0.7,
                    color=colour(e["name"], thread[row]), edgecolor="white", linewidth=0.4)
            if e["dur"] / 1000 > 2 and e["name"].startswith("shard") and not e["name"].endswith("queued"):
                ax.text((e["ts"] - origin + e["dur"] / 2) / 1000, y, e["name"].split()[1], ha="center",
                        va="center", fontsize=6, color="white")
    ax.set_yticks(range(len(rows)), [f"{process[p]}: {thread[(p, t)]}" for p, t in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the client called submit")
    ax.set_title(title)
    handles = [matplotlib.patches.Patch(color=c, label=k) for k, c in COLOURS.items()]
    ax.legend(handles=handles, fontsize=7, loc="lower right", ncol=4)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def big_trace(nodes: int, n: int, workdir: Path) -> tuple[dict[str, Any], str]:
    import numpy as np

    from node import LocalCluster

    path = workdir / "big.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n,))
    step = 10**7
    for start in range(0, n, step):
        data[start:start + step] = np.random.default_rng(start).random(min(step, n - start))
    data.flush()
    del data
    float(np.load(path, mmap_mode="r").sum())  # in the page cache for everybody
    with LocalCluster(nodes=nodes, data_root=workdir) as cluster:
        for _ in range(3):
            cluster.client.submit(op="sum", source=f"npy:{path}")
        answer = cluster.client.submit(op="sum", source=f"npy:{path}", trace=True)
    assert answer.trace is not None
    title = (f"sum over {n:,} float64 (.npy), {nodes} nodes, {answer.shards} shards: "
             f"{answer.elapsed_ms:.1f} ms at the client")
    return answer.trace, title


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="TRACE.json OUT.png, or OUT.png with --big")
    parser.add_argument("--big", action="store_true", help="trace a big sum on a fresh local cluster first")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--n", type=int, default=10**8)
    args = parser.parse_args()
    if args.big:
        if len(args.paths) != 1:
            parser.error("--big takes one path: OUT.png")
        out = Path(args.paths[0])
        with tempfile.TemporaryDirectory(prefix="distnode-trace-") as tmp:
            document, title = big_trace(args.nodes, args.n, Path(tmp))
        out.with_suffix(".json").write_text(json.dumps(document))
    else:
        if len(args.paths) != 2:
            parser.error("give TRACE.json OUT.png")
        document, out = json.loads(Path(args.paths[0]).read_text()), Path(args.paths[1])
        title = f"{args.paths[0]}"
    draw(document, out, title)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
