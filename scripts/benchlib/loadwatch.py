"""How busy the rest of the machine is while the bench runs, phase by phase.

A benchmark on a shared machine is only as good as its quiet. The machine's
busy time (/proc/stat: every CPU's user, nice, system, irq and softirq time)
less what this process and its descendants spent (utime+stime, and cutime+
cstime for the children they reaped) is what others used: so a process that
starts and ends between two samples counts too, as summing the others' own
utime+stime missed it. The hypervisor's steal time (a virtual machine's
vCPUs not running because the host ran something else) is reported beside
it. The notes under the table flag a phase where others used more than
`QUIET_CORES` on average, or more than BURST_CORES in one sample, or steal
passed `QUIET_CORES`; before each phase the bench can wait for quiet.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import log

#: The machine's (busy, stolen) ticks, and ours by pid.
Reading = tuple[tuple[int, int], dict[int, int]]
#: Other processes using less than this many cores on average leave a phase's figures trustworthy.
QUIET_CORES = 0.1
#: ... and never more than this in one sample (a burst inside one system's reps).
BURST_CORES = 0.5


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
        before = self._reading()[0]
        t0 = time.monotonic()
        time.sleep(seconds)
        after = self._reading()[0]
        return self._cores(before, after, time.monotonic() - t0)[0]

    def _cores(self, before: Reading, after: Reading, seconds: float) -> tuple[float, float]:
        """Cores others used, and cores stolen, between two readings `seconds` apart.

        Ours is what each process in our tree at the second reading grew by (all it has, if
        it is new): one that left the tree (a daemon that detached, as Ray's do) counts as
        another's from then, but the history it took along is not read as others' work; a
        child of ours that one of ours reaped adds its life to its parent's, which can only
        make that sample's figure for others low (never below 0)."""
        (busy0, steal0), own0 = before
        (busy1, steal1), own1 = after
        ours = sum(max(0, ticks - own0.get(pid, 0)) for pid, ticks in own1.items())
        others = max(0, (busy1 - busy0) - ours)
        return others / self._ticks / seconds, (steal1 - steal0) / self._ticks / seconds

    def _reading(self) -> tuple[Reading, dict[int, int], dict[int, str]]:
        """One pass over /proc: the machine's ticks with ours by pid (a `Reading`), every
        other process's own CPU ticks, and every process's name."""
        fields_of, names, parents = {}, {}, {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            pid, fields = int(entry.name), _fields(stat)
            fields_of[pid], parents[pid] = fields, int(fields[1])
            names[pid] = stat[stat.index("(") + 1:stat.rindex(")")]
        ours = _descendants(os.getpid(), parents)
        # Ours with the children each reaped (cutime, cstime); the others' own utime+stime.
        own = {pid: sum(int(f) for f in fields[11:15]) for pid, fields in fields_of.items() if pid in ours}
        foreign = {pid: int(f[11]) + int(f[12]) for pid, f in fields_of.items() if pid not in ours}
        return (_machine_ticks(), own), foreign, names

    def _run(self) -> None:
        totals, before, _ = self._reading()
        t0 = time.monotonic()
        while not self._stop.wait(self.interval_s):
            now, after, names = self._reading()
            t1 = time.monotonic()
            others, stolen = self._cores(totals, now, t1 - t0)
            # Who it was, where they lived through the sample (a process that came and went is
            # in `foreign_cores`, not here).
            deltas = {pid: after[pid] - before[pid] for pid in after if pid in before}
            top = sorted(deltas.items(), key=lambda kv: -kv[1])[:3]
            self.samples.append({
                "phase": self.phase, "seconds": t1 - t0, "loadavg1": os.getloadavg()[0],
                "foreign_cores": others, "steal_cores": stolen,
                "top": [f"{names.get(pid, '?')}[{pid}] {d / self._ticks / (t1 - t0):.2f}" for pid, d in top],
            })
            before, totals, t0 = after, now, t1

    def report(self) -> dict[str, Any]:
        """Per phase: mean and max cores used by others, max load average; and every sample."""
        phases: dict[str, dict[str, list[float]]] = {}
        for sample in self.samples:
            phase = phases.setdefault(sample["phase"],
                                      {"foreign_cores": [], "steal_cores": [], "loadavg1": []})
            for key, values in phase.items():
                values.append(sample[key])
        return {
            name: {"foreign_cores_mean": statistics.mean(v["foreign_cores"]),
                   "foreign_cores_max": max(v["foreign_cores"]),
                   "steal_cores_mean": statistics.mean(v["steal_cores"]), "loadavg1_max": max(v["loadavg1"])}
            for name, v in phases.items()
        } | {"samples": self.samples}


def _fields(stat: str) -> list[str]:
    """The fields of a /proc/PID/stat line after the command's name (which may hold spaces)."""
    return stat[stat.rindex(")") + 2:].split()


def _machine_ticks() -> tuple[int, int]:
    """Every CPU's busy ticks (user, nice, system, irq, softirq) and stolen ticks, since boot."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


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
