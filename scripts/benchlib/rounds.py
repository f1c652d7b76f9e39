"""Interleaved rounds: one rep of every system per round, the order rotated each round.

This machine's speed drifts by 15-60 % within an hour, more than the systems
differ, so a figure measured minutes after another compares the hours, not
the systems. In rounds, every system runs the same job once per round and
the order turns by one each round: drift lands on all alike. The figure is
the ratio of two systems within one round, and the headline its median
over the rounds; each system's absolute median is kept beside it.

mpi4py and numpy run as servers (`"serve": true` in their spec, see
bench_peers/): they stay up between reps, as distnode's daemons do, and run
one figure per line they read. Dask and Ray keep a phase of their own: their
idle schedulers and raylets use CPU that would be charged to whoever runs
beside them.

CPU per job is the CPU time all of a system's processes spend on one rep:
the runners report their own (summed over the ranks); distnode's is read
from the daemons' /proc schedstat before and after, plus this process's own,
where the client runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bench_peers.peerdata import QUIT, REP_PREFIX, summary

from node import Client, LocalCluster

#: How long one rep may take before the server is declared stuck.
REP_TIMEOUT_S = 300.0
#: How long a closing server's reader may take to reach the end of its output once it exited.
READER_JOIN_S = 10.0


@dataclass
class Rep:
    seconds: float
    cpu_s: float
    value: Any


class Server:
    """A peer runner in serve mode: one figure name in, one `BENCH_REP` line out."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        self._stderr: IO[str] = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by close())
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._stderr, text=True, env=env)
        self._lines: queue.Queue[str] = queue.Queue()
        # A thread reads stdout, so a rep can wait with a deadline and a peer's other output
        # (MPI's warnings) never fills the pipe.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        with stdout:  # closed here, at its end, which may come after `close` stopped waiting for it
            for line in stdout:
                if line.startswith(REP_PREFIX):
                    self._lines.put(line[len(REP_PREFIX):])
        self._lines.put("")

    def rep(self, figure: str) -> Rep:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(figure + "\n")
            self.process.stdin.flush()
        except OSError:  # its end of the pipe is closed (it ended?): say how, and what it said
            raise RuntimeError(f"{self.name} ended (exit {self._exit_said('input')}) before {figure}: "
                               f"{self.stderr_tail()}") from None
        try:
            line = self._lines.get(timeout=REP_TIMEOUT_S)
        except queue.Empty:
            raise RuntimeError(f"{self.name}: no answer to {figure} in {REP_TIMEOUT_S:.0f} s") from None
        if not line:  # its output ended: so has it, or it soon will
            raise RuntimeError(f"{self.name} ended (exit {self._exit_said('output')}): {self.stderr_tail()}")
        found = json.loads(line)
        return Rep(found["s"], found["cpu_s"], found["value"])

    def _exit_said(self, closed: str) -> str:
        """How it ended, waited for at most a rep's timeout: its exit code, or that it closed
        its `closed` pipe and ran on, and was killed."""
        code = self._ended_within(REP_TIMEOUT_S)
        return f"none: it closed its {closed} and ran on; killed" if code is None else str(code)

    def _ended_within(self, timeout_s: float) -> int | None:
        """Its exit code once it ends within `timeout_s`; None if it did not, and was killed."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    def stderr_tail(self) -> str:
        self._stderr.seek(0)
        return "\n".join(self._stderr.read().strip().splitlines()[-15:])

    def close(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        with contextlib.suppress(OSError, ValueError):  # already gone
            stdin.write(QUIT + "\n")
        with contextlib.suppress(OSError, ValueError):
            stdin.close()
        self._ended_within(30.0)
        # The reader closes the output at its end, which came with the exit, unless a process the
        # runner left behind holds the pipe open: closing it here would wait for that process.
        self._reader.join(timeout=READER_JOIN_S)
        self._stderr.close()


def thread_times_s(pid: int) -> dict[str, float] | None:
    """CPU time of each of a process's live threads, by tid, in nanoseconds' precision
    (schedstat); None if unknown.

    utime+stime count whole clock ticks (10 ms): over an idle window of 30 s
    that is a 0.03 % grain, and a ~1 % figure deserves better.
    """
    try:
        return {tid: int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]) / 1e9
                for tid in os.listdir(f"/proc/{pid}/task")}
    except (OSError, ValueError, IndexError):
        return None


def cpu_between_s(before: Mapping[object, float], after: Mapping[object, float]) -> float:
    """CPU spent between two readings of threads' times: each live thread's growth, one born
    since counted from zero. A thread that ended between them counts nothing (its time since
    `before` is not known here); the sum of the live threads' totals subtracted its whole
    life, and gRPC ends idle pool threads 20 s after their last work."""
    return sum(spent - before.get(thread, 0.0) for thread, spent in after.items())


class DistnodeJobs:
    """distnode's reps on one running cluster, through one blocking client in this process."""

    def __init__(self, cluster: LocalCluster, jobs: dict[str, dict[str, Any]],
                 keep: dict[str, Callable[[Any], Any]], timeout_s: float) -> None:
        self.cluster, self.jobs, self.keep = cluster, jobs, keep
        self.client = Client(cluster.addresses, timeout=timeout_s)

    def _threads_s(self) -> dict[object, float]:
        """Each daemon thread's CPU time, and this process's, by (pid, tid)."""
        times: dict[object, float] = {"client": time.process_time()}
        for pid in (pid for nid in self.cluster.ids if (pid := self.cluster.pid(nid))):
            times.update(((pid, tid), spent) for tid, spent in (thread_times_s(pid) or {}).items())
        return times

    def rep(self, figure: str) -> Rep:
        before, t0 = self._threads_s(), time.perf_counter()
        answer = self.client.submit(**self.jobs[figure])
        elapsed_s = time.perf_counter() - t0
        cpu_s = cpu_between_s(before, self._threads_s())
        return Rep(elapsed_s, cpu_s, self.keep[figure](answer.array))

    def close(self) -> None:
        self.client.close()


def interleaved(systems: dict[str, Callable[[], Rep]], rounds: int, warmup: int) -> dict[str, list[Rep]]:
    """`warmup` untimed rounds, then `rounds` timed ones; round r starts at system r mod n."""
    names = list(systems)
    kept: dict[str, list[Rep]] = {name: [] for name in names}
    for number in range(warmup + rounds):
        turn = number % len(names)
        for name in names[turn:] + names[:turn]:
            rep = systems[name]()
            if number >= warmup:
                kept[name].append(rep)
    return kept


def described(reps: list[Rep]) -> dict[str, Any]:
    """A system's reps as the JSON holds a figure: the time summary, and the median CPU per job."""
    return {**summary([r.seconds for r in reps]), "cpu_ms": statistics.median(r.cpu_s for r in reps) * 1000,
            "cpu_samples_s": [r.cpu_s for r in reps]}


def round_ratios(reps: dict[str, list[Rep]], mine: str, others: Iterable[str]) -> dict[str, Any]:
    """Per other system: `mine`'s time over its time, round by round, and the median."""
    out: dict[str, Any] = {}
    for other in others:
        ratios = [a.seconds / b.seconds for a, b in zip(reps[mine], reps[other], strict=True)]
        out[other] = {"per_round": ratios, "median": statistics.median(ratios)}
    return out
