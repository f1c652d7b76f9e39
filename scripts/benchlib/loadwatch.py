"""How busy the rest of the machine is while the bench runs, phase by phase.

A benchmark on a shared machine is only as good as its quiet: the CPU time
(utime+stime from /proc) of every process that is not this process or one
of its descendants is summed per phase and reported as cores in use. The
notes under the table flag a phase where others used more than
`QUIET_CORES` on average; before each phase the bench can wait for quiet.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import log

#: Other processes using less than this many cores on average leave a phase's figures trustworthy.
QUIET_CORES = 0.1


class LoadWatch:
    """Samples, every `interval_s`, how much CPU processes outside this benchmark use.

    `enter(name)` starts a phase: it first waits up to `wait_quiet_s` for the
    others to go below `QUIET_CORES`, then labels the samples that follow.
    """

    def __init__(self, interval_s: float = 2.0, wait_quiet_s: float = 0.0) -> None:
        self.interval_s = interval_s
        self.wait_quiet_s = wait_quiet_s
        self.phase = "setup"
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-loadwatch", daemon=True)
        self._ticks = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> LoadWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def enter(self, name: str) -> None:
        """Begin phase `name`, after waiting (up to `wait_quiet_s`) for a quiet machine."""
        deadline = time.monotonic() + self.wait_quiet_s
        waited = False
        while self.wait_quiet_s > 0:
            busy = self.foreign_cores(1.0)
            if busy < QUIET_CORES:
                break
            if time.monotonic() >= deadline:
                log(f"machine still busy ({busy:.2f} cores used by others); going on with {name!r}")
                break
            if not waited:
                log(f"waiting up to {self.wait_quiet_s:.0f} s for a quiet machine before {name!r}: "
                    f"others use {busy:.2f} cores")
                waited = True
        self.phase = name
        log(name)

    def foreign_cores(self, seconds: float = 1.0) -> float:
        """Cores used by other processes over the next `seconds`."""
        before, _ = self._snapshot()
        t0 = time.monotonic()
        time.sleep(seconds)
        after, _ = self._snapshot()
        used = sum(after[pid] - before[pid] for pid in after if pid in before)
        return used / self._ticks / (time.monotonic() - t0)

    def _snapshot(self) -> tuple[dict[int, int], dict[int, str]]:
        """CPU ticks of every process outside this benchmark's tree, and every process's name."""
        cpu, names, parents = {}, {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            pid = int(entry.name)
            close = stat.rindex(")")
            fields = stat[close + 2:].split()
            names[pid] = stat[stat.index("(") + 1:close]
            parents[pid] = int(fields[1])
            cpu[pid] = int(fields[11]) + int(fields[12])
        ours = _descendants(os.getpid(), parents)
        foreign = {pid: ticks for pid, ticks in cpu.items() if pid not in ours}
        return foreign, names

    def _run(self) -> None:
        before, _ = self._snapshot()
        t0 = time.monotonic()
        while not self._stop.wait(self.interval_s):
            after, names = self._snapshot()
            t1 = time.monotonic()
            deltas = {pid: after[pid] - before[pid] for pid in after if pid in before}
            top = sorted(deltas.items(), key=lambda kv: -kv[1])[:3]
            self.samples.append({
                "phase": self.phase, "seconds": t1 - t0, "loadavg1": os.getloadavg()[0],
                "foreign_cores": sum(deltas.values()) / self._ticks / (t1 - t0),
                "top": [f"{names.get(pid, '?')}[{pid}] {d / self._ticks / (t1 - t0):.2f}" for pid, d in top],
            })
            before, t0 = after, t1

    def report(self) -> dict[str, Any]:
        """Per phase: mean and max cores used by others, max load average; and every sample."""
        phases: dict[str, dict[str, Any]] = {}
        for sample in self.samples:
            phase = phases.setdefault(sample["phase"], {"foreign_cores": [], "loadavg1": []})
            phase["foreign_cores"].append(sample["foreign_cores"])
            phase["loadavg1"].append(sample["loadavg1"])
        return {
            name: {"foreign_cores_mean": statistics.mean(v["foreign_cores"]),
                   "foreign_cores_max": max(v["foreign_cores"]), "loadavg1_max": max(v["loadavg1"])}
            for name, v in phases.items()
        } | {"samples": self.samples}


def _descendants(root: int, parents: dict[int, int]) -> set[int]:
    """`root` and every process below it, from a pid -> parent pid map."""
    ours = {root}
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in ours and pid not in ours:
                ours.add(pid)
                changed = True
    return ours
