"""What an idle cluster costs at each idle heartbeat interval, measured side by side.

    python scripts/idle_cpu.py [--idle-ms 50,100] [--windows 6] [--window-s 15] [--browser]
                               [--kills N] [--json PATH]

One idle 3-node `LocalCluster` per `--idle-heartbeat-ms` value (50 at the
default `--heartbeat-ms` of 50 is the unthinned beat), all running at once,
so the host's drift lands on every one alike. Each window reads every
daemon's CPU time from /proc before and after; the leader is asked anew in
each window. Medians over the windows, in % of one core, for the leader and
for the followers. /proc counts in clock ticks (10 ms), so one 15 s window
resolves 0.07 points. With `--browser`, every node serves `--http` and a
headless chromium per cluster keeps one follower's status page open (it
polls `/status.json` twice a second); that follower is reported apart.
With `--kills N`, N leader kills per cluster come after, the clusters
taking turns (bench.py's failover: SIGKILL, poll the survivors' status
every 5 ms until a new leader is named, restart). A killed leader is
found by its closed streams (leaderprobe.py), which waits out the beat it
owed: thinner beats cost that much more failover; a hung leader, which
this does not time, pays the timeout and the slack.

With `--ref DIR` (an unpacked tree, `git archive REV | tar -x -C DIR`), the
comparison is between trees instead: one idle 3-node cluster with default
settings from each of this tree and DIR, side by side, the same windows.
Each tree's daemons run its own code (they start in its folder).

Why: an idle node's CPU is mostly heartbeats (docs/observability.md), and
`--idle-heartbeat-ms` is the knob; this is the figure behind its default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchlib import print_json, process_cpu_s  # noqa: E402
from cluster_timing import time_failovers  # noqa: E402

from node import LocalCluster  # noqa: E402

SETTLE_S = 5.0


def open_page(stack: contextlib.ExitStack, url: str) -> None:
    """A headless chromium showing `url` until `stack` closes (the status page's test's settings)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    stack.callback(driver.quit)
    driver.get(url)


K = TypeVar("K")


def window_cpu_pct(pids: dict[K, dict[str, int]], window_s: float) -> dict[K, dict[str, float]]:
    """Every daemon's CPU over one window of `window_s`, in % of one core, all clusters at once."""
    before = {key: {node: process_cpu_s(pid) for node, pid in found.items()} for key, found in pids.items()}
    started = time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - started
    return {key: {node: 100 * (process_cpu_s(pid) - before[key][node]) / elapsed
                  for node, pid in found.items()} for key, found in pids.items()}


def measure(
    idle_ms: list[int], windows: int, window_s: float, browser: bool = False, kills: int = 0,
) -> dict[str, dict[str, float]]:
    with contextlib.ExitStack() as stack:
        clusters: dict[int, LocalCluster] = {}
        polled: dict[int, str] = {}
        for value in idle_ms:
            workdir = stack.enter_context(tempfile.TemporaryDirectory())
            cluster = stack.enter_context(LocalCluster(
                nodes=3, workdir=workdir, extra_args=["--idle-heartbeat-ms", str(value)], http=browser))
            leader = cluster.wait_for_leader()
            clusters[value] = cluster
            if browser:
                polled[value] = next(node for node in cluster.ids if node != leader)
                open_page(stack, f"http://{cluster.http_addresses[polled[value]]}/")
        time.sleep(SETTLE_S)  # start-up's own work (imports, first elections) is not idling
        leaders: dict[int, list[float]] = {value: [] for value in idle_ms}
        followers: dict[int, list[float]] = {value: [] for value in idle_ms}
        pages: dict[int, list[float]] = {value: [] for value in idle_ms}
        for _ in range(windows):
            pids = {value: {node: pid for node in cluster.ids if (pid := cluster.pid(node))}
                    for value, cluster in clusters.items()}
            leader_of = {value: cluster.leader() for value, cluster in clusters.items()}
            for value, cpu in window_cpu_pct(pids, window_s).items():
                for node, percent in cpu.items():
                    if node == leader_of[value]:
                        leaders[value].append(percent)
                    else:
                        (pages if node == polled.get(value) else followers)[value].append(percent)
        failovers: dict[int, list[float]] = {value: [] for value in idle_ms}
        for kill in range(kills):
            for value in idle_ms[::-1] if kill % 2 else idle_ms:
                failovers[value] += time_failovers(clusters[value], 1, lambda line: None)
    found = {}
    for value in idle_ms:
        figures = {"leader_pct": statistics.median(leaders[value]),
                   "followers_pct": statistics.median(followers[value])}
        if pages[value]:
            figures["polled_follower_pct"] = statistics.median(pages[value])
        if failovers[value]:
            figures["failover_median_ms"] = 1000 * statistics.median(failovers[value])
            figures["failover_max_ms"] = 1000 * max(failovers[value])
        found[str(value)] = {name: round(figure, 2) for name, figure in figures.items()}
    return found


#: Run in a tree's folder: an idle 3-node cluster of its code; prints the leader and
#: the daemons' pids as JSON, then holds the cluster until its stdin closes.
HOLD_CLUSTER = r"""
import json, os, sys, tempfile
sys.path.insert(0, os.getcwd())
from node import LocalCluster
with LocalCluster(nodes=3, workdir=tempfile.mkdtemp()) as cluster:
    leader = cluster.wait_all_alive()
    print(json.dumps({"leader": leader, "pids": {n: cluster.pid(n) for n in cluster.ids}}), flush=True)
    sys.stdin.read()
"""


def compare_trees(ref: Path, windows: int, window_s: float) -> dict[str, dict[str, float]]:
    """Leader and follower CPU of one idle default cluster per tree (this one, `ref`), side by side."""
    trees = {"this tree": ROOT, "ref": ref}
    with contextlib.ExitStack() as stack:
        held: dict[str, dict[str, int]] = {}
        leader_of: dict[str, str] = {}
        for name, tree in trees.items():
            process = subprocess.Popen([sys.executable, "-c", HOLD_CLUSTER], cwd=tree, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            stack.callback(process.wait, 60)
            stack.callback(process.stdin.close)  # type: ignore[union-attr]
            found = json.loads(process.stdout.readline())  # type: ignore[union-attr]
            held[name], leader_of[name] = found["pids"], found["leader"]
        time.sleep(SETTLE_S)
        leaders: dict[str, list[float]] = {name: [] for name in trees}
        followers: dict[str, list[float]] = {name: [] for name in trees}
        for _ in range(windows):
            for name, cpu in window_cpu_pct(held, window_s).items():
                for node, percent in cpu.items():
                    (leaders if node == leader_of[name] else followers)[name].append(percent)
    return {name: {"leader_pct": round(statistics.median(leaders[name]), 2),
                   "followers_pct": round(statistics.median(followers[name]), 2)} for name in trees}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--idle-ms", default="50,100", help="--idle-heartbeat-ms values, one cluster each")
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--window-s", type=float, default=15.0)
    parser.add_argument("--browser", action="store_true", help="chromium on a follower's page, per cluster")
    parser.add_argument("--kills", type=int, default=0, help="then this many leader kills per cluster")
    parser.add_argument("--ref", type=Path, default=None, help="compare this tree with DIR instead")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.ref is not None:
        print_json(compare_trees(args.ref.resolve(), args.windows, args.window_s), args.json)
        return 0
    idle_ms = [int(value) for value in args.idle_ms.split(",")]
    print_json(measure(idle_ms, args.windows, args.window_s, args.browser, args.kills), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
