"""Benchmark distnode against the tools our users would otherwise pick, in one run.

Usage:

    python scripts/bench.py [--quick] [--json PATH] [--png PATH]
                            [--peers mpi4py,dask,ray,numpy|none] [--data-dir DIR] [--keep-data]
                            [--wait-quiet S]

Prints one markdown table (figure, distnode, each peer, ratio, target, met?)
on stdout, progress on stderr, and writes the raw numbers to `--json`
(default `bench.json`) and a bar chart to `--png` (default `bench.png`, only
when matplotlib is installed). Peers come from the optional extra
`pip install -e '.[bench]'` (Open MPI itself: `apt-get install openmpi-bin
libopenmpi-dev`); a peer that is not installed is skipped and the table says
so. `--quick` (10^7 elements, few reps, 10 s scale window) runs in about a
minute; it is what `tests/test_bench_quick.py` runs.

How it is kept fair (all systems, same machine, same run, one at a time):

- Same data. One float64 `.npy` of N = 10^8 elements (800 MB; uniform [0, 1),
  written once in 10^7-element chunks with `open_memmap`) and one (3, 10^6)
  float64 `.npy` for the vector reduce, in a temporary dir (`--data-dir`),
  deleted at the end unless `--keep-data`. The big file is read once by this
  process before anything is timed, so every system finds it in the page
  cache and nobody pays the first disk read.
- Same parallelism. 3 distnode nodes / 3 MPI ranks / 3 Dask worker processes
  with one thread each / `ray.init(num_cpus=3)`; numpy is one process, the
  single-core memory-bandwidth ceiling. The machine may have fewer cores than
  3: everybody is oversubscribed alike (`mpiexec --oversubscribe --bind-to
  none`). The environment (OPENBLAS_CORETYPE and the rest) is inherited
  unchanged by every system.
- Same caching. Every peer process opens the `.npy` as a read-only memory map
  once and reuses it across reps; distnode caches its npy memmaps per node.
- Start-up excluded. distnode's daemons are running before its jobs are
  timed; MPI times inside one `mpiexec` launch (`Barrier`, `Wtime`, partial
  sum of the rank's contiguous third, `comm.reduce(op=SUM, root=0)`, clock
  stopped on rank 0); Dask and Ray time after their cluster is up.
- Warm-ups excluded, medians reported. Every timed figure runs `warmup`
  untimed reps first (2 for big jobs, 50/20 for small jobs), then the median
  (and nearest-rank p99 where it matters) of the timed reps.
- What a job is. distnode: `Client.submit(op="sum", source="npy:PATH")`
  (`map="square"`; `axis=0` on the (3, 10^6) file), client wall time in this
  process, with default timing and shard size (2^23 elements). Dask: a
  `dask.array` of 2^23-element chunks, each a `from_delayed` view of the
  worker's memory map (graph built per job), `.sum().compute()`. Ray: three
  tasks, one per contiguous third, partials summed by the driver. Vector
  reduce: distnode `--axis 0`; MPI `comm.Reduce` of each rank's row (a view of
  the map) into rank 0; Dask/Ray reduce three rows and return the vector.
- Small jobs: `sum` over 1,000 elements. distnode: `range:n=1000` from a
  separate client process (this script re-run with `--client-worker`),
  sequential round trips. Peers do the same work: a task that sums
  `np.arange(1000)` (`client.submit(..., pure=False).result()` for Dask,
  `ray.get(f.remote(1000))` for Ray). Throughput: one client process keeps 32
  jobs in flight (`AsyncClient` + 32 coroutines) for 3 s (1 s quick);
  Dask/Ray keep 32 tasks in flight the same way (for reference).
- Fault figures (distnode only, default timing): start = wall time of
  `LocalCluster(nodes=3).start()` (spawn until a status names a leader),
  median of 5 clusters; failover = SIGKILL the leader, poll `status()` on the
  survivors every 5 ms until a new leader is named (the killed node is then
  restarted and all nodes seen alive + 0.5 s settle before the next kill),
  median and max of 20 kills; big job crossing a kill = submit the big sum,
  SIGKILL the leader once `progress()` shows >= 1 shard merged, compare with
  a clean run just before (median of 3 pairs), answer checked bit-for-bit
  against the clean run; idle = VmRSS and the CPU time of each daemon's
  threads (/proc schedstat, ns; utime+stime kept in the JSON) over 30 s after
  one small job (max over nodes), then the same on a
  fresh cluster started with `--no-udp-heartbeats` (every heartbeat on gRPC,
  for reference); scale = 16 nodes:
  spawn-to-leader wall time, small-job p50 (separate client), and
  `became candidate` lines logged during a 2-minute window (10 s quick)
  after the first leader.
- Machine quiet: a thread sums, every 2 s, the CPU time of every process
  that is not this benchmark or its descendants (from /proc), per phase; the
  notes under the table flag any phase where others used > 0.1 core on
  average (the JSON's `machine_load` names the busiest processes). Before
  each phase the full run waits up to `--wait-quiet` seconds (default 20;
  0 with --quick) for the others to go below 0.1 core.
- Answers are checked: every system's big sum against `np.sum` of the map
  (relative 1e-9), vector reduce against `matrix.sum(axis=0)`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cluster_timing import SETTLE_S, election_counts, first_leader_s, last_listening_s, time_failovers

from node import AsyncClient, Client, LocalCluster

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "bench_peers"
PEERS = ("mpi4py", "dask", "ray", "numpy")
RESULT_PREFIX = "BENCH_RESULT "
SMALL_SOURCE = "range:n=1000"
SMALL_EXPECTED = 999 * 1000 // 2
WRITE_CHUNK = 10**7
REL_TOL = 1e-9


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def summary(samples_s: list[float]) -> dict[str, Any]:
    return {
        "samples_s": samples_s, "n": len(samples_s),
        "median_ms": statistics.median(samples_s) * 1000, "p99_ms": percentile(samples_s, 99) * 1000,
    }


@dataclass
class Params:
    quick: bool
    n: int
    vec_shape: tuple[int, int] = (3, 10**6)
    reps: int = 11
    warmup: int = 2
    small_jobs: int = 1000
    small_warmup: int = 50
    throughput_s: float = 3.0
    inflight: int = 32
    kills: int = 20
    kill_pairs: int = 3
    start_reps: int = 5
    idle_s: float = 30.0
    scale_nodes: int = 16
    scale_starts: int = 3
    scale_window_s: float = 120.0
    scale_small_jobs: int = 300

    @classmethod
    def make(cls, quick: bool) -> Params:
        if not quick:
            return cls(quick=False, n=10**8)
        return cls(
            quick=True, n=10**7, reps=3, small_jobs=200, small_warmup=20, throughput_s=1.0,
            kills=3, kill_pairs=1, start_reps=2, idle_s=2.0, scale_starts=1, scale_window_s=10.0,
            scale_small_jobs=100,
        )


@dataclass
class Data:
    big: Path
    vec: Path
    n: int
    vec_shape: tuple[int, int]
    expected_sum: float = 0.0
    expected_square_sum: float = 0.0
    expected_vec: np.ndarray = field(default_factory=lambda: np.zeros(0))


# -- data -----------------------------------------------------------------------


VEC_NAME = "vec.npy"


def big_name(n: int) -> str:
    return f"big-{n}.npy"


def make_data(directory: Path, p: Params) -> Data:
    directory.mkdir(parents=True, exist_ok=True)
    data = Data(directory / big_name(p.n), directory / VEC_NAME, p.n, p.vec_shape)
    rng = np.random.default_rng(2026)
    t0 = time.perf_counter()
    if not data.big.exists() or data.big.stat().st_size < p.n * 8:
        big = np.lib.format.open_memmap(data.big, mode="w+", dtype=np.float64, shape=(p.n,))
        for start in range(0, p.n, WRITE_CHUNK):
            stop = min(p.n, start + WRITE_CHUNK)
            big[start:stop] = rng.random(stop - start)
        big.flush()
        del big
    vec = np.lib.format.open_memmap(data.vec, mode="w+", dtype=np.float64, shape=p.vec_shape)
    vec[:] = rng.standard_normal(p.vec_shape)
    vec.flush()
    del vec
    # Read everything once: the page cache is warm for every system alike.
    mapped = np.load(data.big, mmap_mode="r")
    data.expected_sum = float(np.sum(mapped))
    data.expected_square_sum = float(sum(
        float(np.sum(np.square(mapped[a:a + WRITE_CHUNK]))) for a in range(0, p.n, WRITE_CHUNK)
    ))
    data.expected_vec = np.load(data.vec).sum(axis=0)
    del mapped
    log(f"data: {data.big} ({data.big.stat().st_size / 1e6:.0f} MB) and {data.vec} ready, "
        f"page cache warm, {time.perf_counter() - t0:.1f} s")
    return data


def close_enough(value: Any, expected: float) -> bool:
    try:
        return abs(float(value) - expected) <= REL_TOL * abs(expected)
    except (TypeError, ValueError):
        return False


# -- machine load ------------------------------------------------------------------


class LoadWatch:
    """Samples, every `interval_s`, how much CPU processes outside this benchmark use.

    A benchmark on a shared machine is only as good as its quiet: the CPU time
    (utime+stime from /proc) of every process that is not this process or one
    of its descendants is summed per phase, and reported as cores in use.
    """

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
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

    def _snapshot(self) -> tuple[dict[int, int], dict[int, str]]:
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
        ours = {os.getpid()}
        changed = True
        while changed:
            changed = False
            for pid, parent in parents.items():
                if parent in ours and pid not in ours:
                    ours.add(pid)
                    changed = True
        foreign = {pid: ticks for pid, ticks in cpu.items() if pid not in ours}
        return foreign, names

    def foreign_cores(self, seconds: float = 1.0) -> float:
        """Cores used by other processes over the next `seconds`."""
        before, _ = self._snapshot()
        t0 = time.monotonic()
        time.sleep(seconds)
        after, _ = self._snapshot()
        used = sum(after[pid] - before[pid] for pid in after if pid in before)
        return used / self._ticks / (time.monotonic() - t0)

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


WATCH = LoadWatch()
#: Before each phase, wait up to this long for other processes to use < QUIET_CORES.
WAIT_QUIET_S = 0.0
QUIET_CORES = 0.1


def phase(name: str) -> None:
    deadline = time.monotonic() + WAIT_QUIET_S
    waited = False
    while WAIT_QUIET_S > 0:
        busy = WATCH.foreign_cores(1.0)
        if busy < QUIET_CORES:
            break
        if time.monotonic() >= deadline:
            log(f"machine still busy ({busy:.2f} cores used by others); going on with {name!r}")
            break
        if not waited:
            log(f"waiting up to {WAIT_QUIET_S:.0f} s for a quiet machine before {name!r}: "
                f"others use {busy:.2f} cores")
            waited = True
    WATCH.phase = name
    log(name)


# -- peers ----------------------------------------------------------------------


def peer_available(name: str) -> tuple[bool, str]:
    def has(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    if name == "numpy":
        return True, ""
    if name == "mpi4py":
        if not has("mpi4py"):
            return False, "mpi4py not installed (pip install -e '.[bench]')"
        if shutil.which("mpiexec") is None:
            return False, "mpiexec not found (apt-get install openmpi-bin libopenmpi-dev)"
        return True, ""
    if name == "dask":
        if not (has("dask") and has("distributed")):
            return False, "dask[distributed] not installed (pip install -e '.[bench]')"
        return True, ""
    if name == "ray":
        if not has("ray"):
            return False, "ray not installed (pip install -e '.[bench]'; no wheel for some platforms)"
        return True, ""
    return False, f"unknown peer {name!r}"


def peer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PEERS_DIR), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def mpi_command(spec: str) -> tuple[list[str], dict[str, str]]:
    mpiexec = shutil.which("mpiexec") or "mpiexec"
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, check=False).stdout
    command = [mpiexec]
    env = peer_env()
    if "Open MPI" in version or "OpenRTE" in version:
        command += ["--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            command += ["--allow-run-as-root"]
        # Containers: no CMA/ptrace for single-copy, shared memory between ranks on one host.
        env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        env.setdefault("OMPI_MCA_btl", "self,vader")
        env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    command += ["-n", "3", sys.executable, str(PEERS_DIR / "mpi_reduce.py"), spec]
    return command, env


def run_peer(name: str, data: Data, p: Params, timeout_s: float) -> dict[str, Any]:
    figures = {
        "mpi4py": ["big_sum", "big_square_sum", "vector_reduce"],
        "numpy": ["big_sum", "big_square_sum", "vector_reduce"],
        "dask": ["big_sum", "big_square_sum", "vector_reduce", "small", "throughput"],
        "ray": ["big_sum", "big_square_sum", "vector_reduce", "small", "throughput"],
    }[name]
    spec = json.dumps({
        "big": str(data.big), "n": data.n, "vec": str(data.vec), "vec_shape": list(data.vec_shape),
        "reps": p.reps, "warmup": p.warmup, "small_jobs": p.small_jobs,
        "small_warmup": p.small_warmup, "throughput_s": p.throughput_s, "inflight": p.inflight,
        "figures": figures,
    })
    if name == "mpi4py":
        command, env = mpi_command(spec)
    else:
        script = {"numpy": "numpy_runner.py", "dask": "dask_runner.py", "ray": "ray_runner.py"}[name]
        command, env = [sys.executable, str(PEERS_DIR / script), spec], peer_env()
    t0 = time.perf_counter()
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout_s, env=env, check=False,
        stdin=subprocess.DEVNULL,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"{name} runner exited {done.returncode}:\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["wall_s"] = time.perf_counter() - t0
    return result


# -- distnode helpers -------------------------------------------------------------


def timed_start(attempts: int = 3, **options: Any) -> tuple[LocalCluster, int, float]:
    """A started LocalCluster, when its successful start began (time.time_ns) and
    how long `start()` took (s); a daemon that lost the race for its free port
    means a fresh try."""
    for attempt in range(attempts):
        cluster = LocalCluster(**options)
        wall0 = time.time_ns()
        t0 = time.perf_counter()
        try:
            cluster.start()
        except RuntimeError as exc:
            cluster.close()
            if "bind" not in str(exc) or attempt == attempts - 1:
                raise
            log(f"a daemon lost its port to another process; starting the cluster again ({exc!s:.80})")
            continue
        return cluster, wall0, time.perf_counter() - t0
    raise AssertionError("unreachable")


def started_cluster(attempts: int = 3, **options: Any) -> LocalCluster:
    return timed_start(attempts, **options)[0]


def client_process(cluster: LocalCluster, mode: str, **options: Any) -> dict[str, Any]:
    """Run this script as a separate client process; return its JSON answer."""
    command = [sys.executable, str(Path(__file__).resolve()), "--client-worker", mode,
               "--cluster", ",".join(cluster.addresses)]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"client worker ({mode}) exited {done.returncode}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def client_worker(opts: argparse.Namespace) -> None:
    addresses = opts.cluster.split(",")
    if opts.client_worker == "latency":
        latencies: list[float] = []
        with Client(addresses, timeout=30.0) as client:
            for i in range(opts.warmup + opts.jobs):
                t0 = time.perf_counter()
                answer = client.submit(op="sum", source=SMALL_SOURCE)
                elapsed = time.perf_counter() - t0
                if answer.result != SMALL_EXPECTED:
                    raise SystemExit(f"wrong answer {answer.result!r}")
                if i >= opts.warmup:
                    latencies.append(elapsed)
        print(json.dumps({"latencies_s": latencies}), flush=True)
    elif opts.client_worker == "throughput":
        print(json.dumps(asyncio.run(_throughput(addresses, opts.seconds, opts.inflight))), flush=True)
    else:
        raise SystemExit(f"unknown client worker mode {opts.client_worker!r}")


async def _throughput(addresses: list[str], seconds: float, inflight: int) -> dict[str, Any]:
    async with AsyncClient(addresses, timeout=30.0) as client:
        async def one() -> None:
            answer = await client.submit(op="sum", source=SMALL_SOURCE)
            if answer.result != SMALL_EXPECTED:
                raise SystemExit(f"wrong answer {answer.result!r}")

        await asyncio.gather(*(one() for _ in range(2 * inflight)))  # warm-up
        done = 0
        started = time.perf_counter()
        stop_at = started + seconds

        async def lane() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await one()
                done += 1

        await asyncio.gather(*(lane() for _ in range(inflight)))
        elapsed = time.perf_counter() - started
    return {"jobs": done, "seconds": elapsed, "jobs_per_s": done / elapsed, "inflight": inflight}


def timed_jobs(
    client: Client, p: Params, keep: Callable[[Any], Any] = float, **job: Any
) -> tuple[list[float], list[Any]]:
    """Client wall time per job, and `keep(answer.array)` of each answer.

    `keep` runs after the clock stops and should return something small (a
    float, a correctness flag): like the peers' runners, which keep one float
    per rep, the bench holds no answer array across reps.
    """
    samples, kept = [], []
    for rep in range(p.warmup + p.reps):
        t0 = time.perf_counter()
        answer = client.submit(**job)
        elapsed = time.perf_counter() - t0
        kept.append(keep(answer.array))
        del answer
        if rep >= p.warmup:
            samples.append(elapsed)
    return samples, kept


def proc_sample(pid: int) -> tuple[float, int, int]:
    """(cpu seconds, VmRSS bytes, RssAnon bytes) of a process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = anon = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("RssAnon:"):
            anon = int(line.split()[1]) * 1024
    return cpu, rss, anon


def run_time_s(pid: int) -> float | None:
    """CPU time of a process's live threads in nanoseconds' precision (schedstat), None if unknown.

    utime+stime count whole clock ticks (10 ms): over an idle window of 30 s
    that is a 0.03 % grain, and a ~1 % figure deserves better.
    """
    try:
        return sum(int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
                   for tid in os.listdir(f"/proc/{pid}/task")) / 1e9
    except (OSError, ValueError, IndexError):
        return None


# -- distnode figures ---------------------------------------------------------------


def measure_idle(cluster: LocalCluster, seconds: float) -> dict[str, Any]:
    cluster.client.submit(op="sum", source=SMALL_SOURCE)
    time.sleep(1.0)
    pids = {nid: cluster.pid(nid) for nid in cluster.ids}
    before = {nid: proc_sample(pid) for nid, pid in pids.items() if pid}
    before_run = {nid: run_time_s(pid) for nid, pid in pids.items() if pid}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    nodes = {}
    for nid, pid in pids.items():
        if not pid:
            continue
        cpu, rss, anon = proc_sample(pid)
        run0, run1 = before_run[nid], run_time_s(pid)
        ticks_pct = (cpu - before[nid][0]) / wall * 100
        cpu_pct = ticks_pct if run0 is None or run1 is None else (run1 - run0) / wall * 100
        nodes[nid] = {"cpu_pct": cpu_pct, "cpu_pct_ticks": ticks_pct,
                      "rss_mb": rss / 2**20, "rss_anon_mb": anon / 2**20}
    return {
        "seconds": wall, "nodes": nodes, "leader": cluster.leader(),
        "rss_mb": max(v["rss_mb"] for v in nodes.values()),
        "cpu_pct": max(v["cpu_pct"] for v in nodes.values()),
    }


def measure_kill_crossing(cluster: LocalCluster, data: Data, pairs: int) -> dict[str, Any]:
    source = f"npy:{data.big}"
    clean_s, kill_s, runs = [], [], []
    ok = True
    with Client(cluster.addresses, timeout=300.0) as client, \
            Client(cluster.addresses, timeout=5.0) as prober:
        for pair in range(pairs):
            cluster.wait_all_alive(timeout_s=30.0)
            time.sleep(SETTLE_S)
            clean = client.submit(op="sum", source=source)
            leader = cluster.leader()
            job_id = f"bench-kill-{uuid.uuid4()}"
            box: dict[str, Any] = {}

            def submit(job_id: str = job_id, box: dict[str, Any] = box) -> None:
                try:
                    box["answer"] = client.submit(op="sum", source=source, job_id=job_id)
                except Exception as exc:  # reported below
                    box["error"] = exc

            thread = threading.Thread(target=submit)
            t0 = time.perf_counter()
            thread.start()
            killed_at = None
            while thread.is_alive():
                progress = prober.progress(job_id)
                if progress is not None and progress[0] >= 1:
                    cluster.kill(leader)
                    killed_at = time.perf_counter() - t0
                    break
                time.sleep(0.001)
            thread.join()
            wall = time.perf_counter() - t0
            if "error" in box:
                raise RuntimeError(f"job across the kill failed: {box['error']!r}\n{cluster.logs()}")
            answer = box["answer"]
            same = float(answer.result).hex() == float(clean.result).hex()
            ok = ok and same and close_enough(answer.result, data.expected_sum)
            run = {"clean_s": clean.elapsed_ms / 1000, "kill_s": wall, "killed_at_s": killed_at,
                   "killed": leader if killed_at is not None else None, "retries": answer.retries,
                   "new_leader": answer.leader, "bit_identical": same, "result": answer.result}
            runs.append(run)
            log(f"kill crossing {pair + 1}/{pairs}: clean {run['clean_s'] * 1000:.0f} ms, with kill of "
                f"{leader} at {(killed_at or 0) * 1000:.0f} ms: {wall * 1000:.0f} ms, "
                f"retries {answer.retries}, bit-identical {same}")
            if killed_at is not None:
                clean_s.append(run["clean_s"])
                kill_s.append(wall)
                cluster.restart(leader)
    result: dict[str, Any] = {"runs": runs, "correct": ok}
    if kill_s:
        result.update(clean_median_ms=statistics.median(clean_s) * 1000,
                      kill_median_ms=statistics.median(kill_s) * 1000)
        result["extra_ms"] = result["kill_median_ms"] - result["clean_median_ms"]
    else:
        result["note"] = "the job finished before a shard was seen merged; no kill landed"
    return result


def measure_failover(cluster: LocalCluster, kills: int) -> dict[str, Any]:
    times_s = time_failovers(cluster, kills, log)
    return {**summary(times_s), "max_ms": max(times_s) * 1000}


def measure_main_cluster(data: Data, p: Params, out: dict[str, Any], errors: dict[str, str]) -> None:
    """Everything that runs on one 3-node cluster, in an order that keeps each figure clean."""
    # The daemons read npy: files only under their --data-root.
    with contextlib.closing(started_cluster(nodes=3, data_root=data.big.parent)) as cluster:
        cluster.wait_all_alive(timeout_s=30.0)
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("idle", lambda: measure_idle(cluster, p.idle_s)),
            ("small", lambda: _small(cluster, p.small_jobs, p.small_warmup)),
            ("throughput", lambda: client_process(
                cluster, "throughput", seconds=p.throughput_s, inflight=p.inflight)),
            ("big", lambda: _big(cluster, data, p)),
            ("kill_crossing", lambda: measure_kill_crossing(cluster, data, p.kill_pairs)),
            ("failover", lambda: measure_failover(cluster, p.kills)),
        ]
        for name, step in steps:
            phase(f"distnode: {name}")
            try:
                cluster.wait_all_alive(timeout_s=30.0)
                out[name] = step()
            except Exception as exc:
                errors[f"distnode.{name}"] = f"{type(exc).__name__}: {exc}"[:4000]
                log(f"distnode {name} failed: {exc!r}")
        out["elections_main"] = election_counts(cluster)


def _small(cluster: LocalCluster, jobs: int, warmup: int) -> dict[str, Any]:
    latencies = client_process(cluster, "latency", jobs=jobs, warmup=warmup)["latencies_s"]
    return summary(latencies)


def _big(cluster: LocalCluster, data: Data, p: Params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with Client(cluster.addresses, timeout=300.0) as client:
        samples, results = timed_jobs(client, p, op="sum", source=f"npy:{data.big}")
        out["big_sum"] = {**summary(samples), "result": float(results[-1]),
                          "correct": all(close_enough(r, data.expected_sum) for r in results),
                          "bit_identical": len({float(r).hex() for r in results}) == 1}
        samples, results = timed_jobs(client, p, op="sum", source=f"npy:{data.big}", map="square")
        out["big_square_sum"] = {**summary(samples), "result": float(results[-1]),
                                 "correct": all(close_enough(r, data.expected_square_sum) for r in results)}
        def vector_check(array: Any) -> tuple[bool, float]:
            return bool(np.allclose(array, data.expected_vec, rtol=1e-12, atol=1e-9)), float(array[0])

        samples, results = timed_jobs(client, p, vector_check, op="sum", source=f"npy:{data.vec}", axis=0)
        out["vector_reduce"] = {**summary(samples), "result_first": results[-1][1],
                                "correct": all(ok for ok, _ in results)}
    for key in ("big_sum", "big_square_sum", "vector_reduce"):
        log(f"distnode {key}: median {out[key]['median_ms']:.1f} ms, correct {out[key]['correct']}")
    return out


def measure_idle_grpc(seconds: float) -> dict[str, Any]:
    """The idle figure again on a cluster whose heartbeats all go on gRPC (the fallback path)."""
    with contextlib.closing(started_cluster(nodes=3, extra_args=["--no-udp-heartbeats"])) as cluster:
        cluster.wait_all_alive(timeout_s=30.0)
        return measure_idle(cluster, seconds)


def measure_start(reps: int) -> dict[str, Any]:
    leader_s, listening_s, elected_s = [], [], []
    lost = 0
    while len(leader_s) < reps:
        cluster = LocalCluster(nodes=3)
        try:
            wall0 = time.time_ns()
            t0 = time.perf_counter()
            cluster.start()
            leader_s.append(time.perf_counter() - t0)
            listening_s.append(last_listening_s(cluster, wall0))
            elected = first_leader_s(cluster, wall0)
            if elected is not None:
                elected_s.append(elected)
        except RuntimeError as exc:  # a port taken by another process: not a start-up time
            lost += 1
            if "bind" not in str(exc) or lost > reps:
                raise
        finally:
            cluster.close()
    return {**summary(leader_s), "listening_median_ms": statistics.median(listening_s) * 1000,
            "elected_median_ms": statistics.median(elected_s) * 1000 if elected_s else None}


def start_scale_cluster(p: Params) -> tuple[LocalCluster, dict[str, float | None]]:
    """Start `p.scale_nodes` daemons; the times from spawn (seconds): a leader
    in its own log, the last daemon listening, and `start()` returning (every
    daemon listening, then a leader seen by a client)."""
    cluster, wall0, harness_s = timed_start(nodes=p.scale_nodes, start_timeout_s=60.0)
    times = {"harness_s": harness_s, "listening_s": last_listening_s(cluster, wall0),
             "elected_s": first_leader_s(cluster, wall0)}
    return cluster, times


def measure_scale(p: Params) -> dict[str, Any]:
    starts: list[dict[str, float | None]] = []
    for number in range(p.scale_starts):
        cluster, times = start_scale_cluster(p)
        starts.append(times)
        elected = times["elected_s"]
        log(f"scale: start {number + 1}/{p.scale_starts} of {p.scale_nodes} nodes: leader elected after "
            f"{'?' if elected is None else f'{elected * 1000:.0f}'} ms, all listening after "
            f"{(times['listening_s'] or 0) * 1000:.0f} ms, start() returned after "
            f"{(times['harness_s'] or 0) * 1000:.0f} ms")
        if number < p.scale_starts - 1:
            cluster.close()
    try:
        first_term = cluster.client.status().term
        window0 = time.monotonic()
        before = election_counts(cluster)
        log(f"scale: watching the last cluster for {p.scale_window_s:.0f} s")
        cluster.wait_all_alive(timeout_s=60.0)
        small = _small(cluster, p.scale_small_jobs, p.small_warmup)
        while time.monotonic() - window0 < p.scale_window_s:
            time.sleep(min(1.0, max(0.0, p.scale_window_s - (time.monotonic() - window0))))
        after = election_counts(cluster)
        last_term = cluster.client.status().term
    finally:
        cluster.close()

    def median_ms(key: str) -> float | None:
        values = [t[key] for t in starts if t[key] is not None]
        return statistics.median(values) * 1000 if values else None

    return {
        "nodes": p.scale_nodes, "starts": starts, "elected_ms": median_ms("elected_s"),
        "leader_ms": median_ms("harness_s"), "listening_ms": median_ms("listening_s"),
        "small": small, "window_s": p.scale_window_s,
        "spurious_candidates": after["candidate"] - before["candidate"],
        "spurious_pre_candidates": after["pre_candidate"] - before["pre_candidate"],
        "term_first": first_term, "term_last": last_term,
    }


# -- report ---------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    label: str
    unit: str
    #: (reference, factor): reference is a peer name or "abs"; "ge" means higher is better.
    checks: list[tuple[str, float]]
    higher_better: bool = False
    values: dict[str, float | None] = field(default_factory=dict)
    applies: tuple[str, ...] = ()
    note: str = ""


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


def build_rows(res: dict[str, Any], p: Params) -> list[Row]:
    d, peers = res["distnode"], res["peers"]
    big_n = f"10^{round(math.log10(p.n))}"

    def peer_values(*path: str) -> dict[str, float | None]:
        return {name: get(peers.get(name) or {}, *path) for name in PEERS}

    rows = [
        Row("big_sum", f"big: `sum` over {big_n} float64 .npy", "ms", [("mpi4py", 1.15), ("dask", 0.6)],
            values={"distnode": get(d, "big", "big_sum", "median_ms"),
                    **peer_values("big_sum", "median_ms")}, applies=PEERS),
        Row("big_square_sum", "big: `--map square` then `sum`", "ms", [("mpi4py", 1.25)],
            values={"distnode": get(d, "big", "big_square_sum", "median_ms"),
                    **peer_values("big_square_sum", "median_ms")}, applies=PEERS),
        Row("small_p50", "small job (1,000 elements) p50, separate client", "ms",
            [("abs", 0.8), ("ray", 0.5), ("dask", 0.1)],
            values={"distnode": get(d, "small", "median_ms"), **peer_values("small", "median_ms")},
            applies=("dask", "ray")),
        Row("small_p99", "small job p99", "ms", [("abs", 2.0)],
            values={"distnode": get(d, "small", "p99_ms"), **peer_values("small", "p99_ms")},
            applies=("dask", "ray")),
        Row("throughput", f"throughput, small jobs, {p.inflight} in flight, one client", "jobs/s",
            [("abs", 3000.0)], higher_better=True,
            values={"distnode": get(d, "throughput", "jobs_per_s"),
                    **peer_values("throughput", "jobs_per_s")}, applies=("dask", "ray")),
        Row("vector_reduce", "vector reduce `--axis 0`, (3, 10^6) float64", "ms", [("mpi4py", 3.0)],
            values={"distnode": get(d, "big", "vector_reduce", "median_ms"),
                    **peer_values("vector_reduce", "median_ms")}, applies=PEERS),
        Row("start", "start 3 daemons → leader elected", "ms", [("abs", 1000.0)],
            values={"distnode": get(d, "start", "median_ms"),
                    "dask": _ms(get(peers.get("dask") or {}, "start_s")),
                    "ray": _ms(get(peers.get("ray") or {}, "start_s"))},
            note="dask/ray: cluster start-up, for reference"),
        Row("failover_median", f"leader kill -9 → new leader, median of {p.kills}", "ms", [("abs", 400.0)],
            values={"distnode": get(d, "failover", "median_ms")}),
        Row("failover_max", f"leader kill -9 → new leader, max of {p.kills}", "ms", [("abs", 800.0)],
            values={"distnode": get(d, "failover", "max_ms")}),
        Row("kill_crossing", "big job crossing a leader kill: extra time", "ms", [("abs", 1500.0)],
            values={"distnode": get(d, "kill_crossing", "extra_ms")}),
        Row("idle_rss", "idle node RSS (max over nodes)", "MB", [("abs", 80.0)],
            values={"distnode": get(d, "idle", "rss_mb")}),
        Row("idle_cpu", "idle node CPU (max over nodes)", "% core", [("abs", 1.0)],
            values={"distnode": get(d, "idle", "cpu_pct")}),
        Row("idle_cpu_grpc", "idle node CPU, every heartbeat on gRPC", "% core", [],
            values={"distnode": get(d, "idle_grpc", "cpu_pct")},
            note="`--no-udp-heartbeats`, for reference"),
        Row("scale_leader", f"scale: {p.scale_nodes} nodes, spawn → leader elected, median of "
            f"{p.scale_starts}", "ms", [("abs", 2000.0)],
            values={"distnode": get(d, "scale", "elected_ms")},
            note="from the leader's own log line"),
        Row("scale_ready", f"scale: {p.scale_nodes} nodes, spawn → all listening and a client "
            "sees the leader", "ms", [],
            values={"distnode": get(d, "scale", "leader_ms")}, note="the harness's start(), for reference"),
        Row("scale_small_p50", f"scale: {p.scale_nodes} nodes, small job p50", "ms", [("abs", 2.0)],
            values={"distnode": get(d, "scale", "small", "median_ms")}),
        Row("scale_elections", f"scale: spurious elections in {p.scale_window_s:.0f} s", "count",
            [("abs", 0.0)], values={"distnode": get(d, "scale", "spurious_candidates")}),
    ]
    if not p.quick:
        return rows
    for row in rows:  # the targets are stated for the full-size run
        row.label = row.label.replace("10^8", big_n)
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def evaluate(row: Row, skipped: dict[str, str]) -> tuple[str, str, str, list[dict[str, Any]]]:
    """(ratio cell, target cell, met cell, machine-readable checks)."""
    mine = row.values.get("distnode")
    ratios, targets, verdicts, checks = [], [], [], []
    for ref, factor in row.checks:
        op = "≥" if row.higher_better else "≤"
        if ref == "abs":
            targets.append(f"{op} {fmt(factor, row.unit)}")
            reference = factor
        else:
            targets.append(f"{op} {factor:g} x {ref}")
            reference = row.values.get(ref)
        check: dict[str, Any] = {"reference": ref, "factor": factor, "value": mine}
        if mine is None or reference is None:
            why = f"{ref} skipped" if ref in skipped else "no value"
            verdicts.append(f"n/a ({why})")
            check["met"] = None
        else:
            if ref == "abs":
                ratio = mine / reference if reference else None
                met = mine >= reference if row.higher_better else mine <= reference
                if ratio is not None:
                    ratios.append(f"{ratio:.2f}x target")
            else:
                ratio = mine / reference if reference else None
                met = ratio is not None and ratio <= factor
                ratios.append(f"{ratio:.2f}x {ref}" if ratio is not None else f"? x {ref}")
            check.update(ratio=ratio, met=met)
            verdicts.append("yes" if met else f"**NO**{'' if ref == 'abs' else f' (vs {ref})'}")
        checks.append(check)
    if not verdicts:
        met_cell = "—"  # shown for reference, no target
    elif all(v == "yes" for v in verdicts):
        met_cell = "yes"
    elif any(v.startswith("**NO**") for v in verdicts):
        met_cell = "; ".join(v for v in verdicts if v != "yes")
    else:
        met_cell = "; ".join(verdicts)
    return "; ".join(ratios) or "—", "; ".join(targets), met_cell, checks


def render(res: dict[str, Any], rows: list[Row]) -> str:
    skipped = res["skipped"]
    header = ["figure", "distnode", *[f"{n} (1 proc)" if n == "numpy" else n for n in PEERS],
              "ratio", "target", "met?"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        ratio, target, met, checks = evaluate(row, skipped)
        res["targets"][row.key] = {"label": row.label, "unit": row.unit, "values": row.values,
                                   "checks": checks, "met": met}
        label = row.label + (f" ({row.note})" if row.note else "")
        cells = [label, fmt(row.values.get("distnode"), row.unit)]
        for name in PEERS:
            value = row.values.get(name)
            if value is None and name in skipped and (name in row.applies or name in row.values):
                cells.append("skipped")
            else:
                cells.append(fmt(value, row.unit))
        cells += [ratio, target, met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def answer_checks(res: dict[str, Any], data: Data) -> list[str]:
    problems = []
    big = res["distnode"].get("big") or {}
    for key in ("big_sum", "big_square_sum", "vector_reduce"):
        if key in big and not big[key].get("correct"):
            problems.append(f"distnode {key} answer wrong")
    kill = res["distnode"].get("kill_crossing")
    if kill and not kill.get("correct"):
        problems.append("distnode answer across the leader kill differs from the clean run")
    for name, peer in res["peers"].items():
        for key, expected in (("big_sum", data.expected_sum), ("big_square_sum", data.expected_square_sum)):
            value = (peer or {}).get(key, {}).get("result")
            if value is not None and not close_enough(value, expected):
                problems.append(f"{name} {key} = {value!r}, expected {expected!r}")
    return problems


def write_png(path: Path, res: dict[str, Any], rows: list[Row]) -> str | None:
    """Bar chart of the big-job and small-job figures per system; None if written, else why not."""
    if importlib.util.find_spec("matplotlib") is None:
        return "matplotlib not installed (pip install -e '.[bench]')"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_key = {row.key: row for row in rows}
    systems = ["distnode", *PEERS]
    panels = [("big jobs (median ms, lower is better)", ["big_sum", "big_square_sum", "vector_reduce"]),
              ("small jobs (ms, lower is better)", ["small_p50", "small_p99"])]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (title, keys) in zip(axes, panels, strict=True):
        width = 0.8 / len(systems)
        for i, system in enumerate(systems):
            heights = [by_key[k].values.get(system) or 0.0 for k in keys]
            if not any(heights):
                continue
            xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(keys))]
            ax.bar(xs, heights, width, label=system, color=plt.get_cmap("tab10")(i))
        ax.set_xticks(range(len(keys)), [k.replace("_", " ") for k in keys])
        ax.set_title(title)
        ax.set_ylabel("ms")
        shown = [v for k in keys for v in by_key[k].values.values() if v]
        if keys[0].startswith("small") and shown:
            ax.set_yscale("log")
            ax.set_ylim(bottom=min(shown) / 2)
        ax.legend(fontsize=8)
    fig.suptitle(f"distnode vs peers ({'quick' if res['params']['quick'] else 'full'} run, "
                 f"{os.cpu_count()} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def environment() -> dict[str, Any]:
    versions = {}
    for dist in ("distnode", "numpy", "grpcio", "mpi4py", "dask", "distributed", "ray", "matplotlib"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    mpi = None
    if shutil.which("mpiexec"):
        text = subprocess.run(["mpiexec", "--version"], capture_output=True, text=True, check=False).stdout
        mpi = (text.strip().splitlines() or [None])[0]
    return {
        "python": sys.version.split()[0], "platform": platform.platform(), "nproc": os.cpu_count(),
        "versions": versions, "mpiexec": mpi,
        "env": {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL", "OMPI_"))},
    }


# -- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and counts, about a minute")
    parser.add_argument("--json", metavar="PATH", default="bench.json", help="raw numbers (bench.json)")
    parser.add_argument("--png", metavar="PATH", default="bench.png", help="chart (bench.png)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"peers to run, comma-separated, or 'none' (default {','.join(PEERS)})")
    parser.add_argument("--data-dir", help="where the .npy files go (default: a temporary dir)")
    parser.add_argument("--keep-data", action="store_true", help="do not delete the .npy files")
    parser.add_argument("--wait-quiet", type=float, metavar="S",
                        help="before each phase wait up to S seconds until other processes use "
                             f"< {QUIET_CORES} core (default 20, quick 0)")
    parser.add_argument("--skip-distnode", default="",
                        help="comma-separated distnode groups to skip: "
                             "main,start,idle_grpc,scale (for debugging)")
    parser.add_argument("--client-worker", help=argparse.SUPPRESS)
    parser.add_argument("--cluster", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--inflight", type=int, default=32, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.client_worker:
        client_worker(opts)
        return 0

    p = Params.make(opts.quick)
    global WAIT_QUIET_S
    WAIT_QUIET_S = opts.wait_quiet if opts.wait_quiet is not None else (0.0 if opts.quick else 20.0)
    wanted = [] if opts.peers.strip() == "none" else [x.strip() for x in opts.peers.split(",") if x.strip()]
    skip_groups = {x.strip() for x in opts.skip_distnode.split(",") if x.strip()}
    began = time.perf_counter()
    WATCH.__enter__()
    res: dict[str, Any] = {"params": vars(p) | {"vec_shape": list(p.vec_shape)}, "environment": environment(),
                           "distnode": {}, "peers": {}, "skipped": {}, "errors": {}, "targets": {}}
    for name in PEERS:
        if name not in wanted:
            res["skipped"][name] = "not requested (--peers)"
        else:
            ok, why = peer_available(name)
            if not ok:
                res["skipped"][name] = why
    own_dir = opts.data_dir is None
    data_dir = Path(opts.data_dir) if opts.data_dir else Path(tempfile.mkdtemp(prefix="distnode-bench-"))
    try:
        data = make_data(data_dir, p)
        for name in PEERS:
            if name in res["skipped"]:
                log(f"{name}: skipped ({res['skipped'][name]})")
                continue
            phase(f"{name}: running")
            try:
                res["peers"][name] = run_peer(name, data, p, timeout_s=300 if p.quick else 1200)
                log(f"{name}: done in {res['peers'][name]['wall_s']:.1f} s")
            except Exception as exc:
                res["skipped"][name] = f"failed: {exc}"[:2000]
                log(f"{name}: failed: {exc}")
        d = res["distnode"]
        if "main" not in skip_groups:
            measure_main_cluster(data, p, d, res["errors"])
        groups = (("start", lambda: measure_start(p.start_reps)),
                  ("idle_grpc", lambda: measure_idle_grpc(p.idle_s)),
                  ("scale", lambda: measure_scale(p)))
        for group, step in groups:
            if group in skip_groups:
                continue
            phase(f"distnode: {group}")
            try:
                d[group] = step()
            except Exception as exc:
                res["errors"][f"distnode.{group}"] = f"{type(exc).__name__}: {exc}"[:4000]
                log(f"distnode {group} failed: {exc!r}")
        problems = answer_checks(res, data)
    finally:
        WATCH.__exit__()
        if not opts.keep_data:
            if own_dir:
                shutil.rmtree(data_dir, ignore_errors=True)
            else:
                for path in (data_dir / big_name(p.n), data_dir / VEC_NAME):
                    path.unlink(missing_ok=True)
    res["total_s"] = time.perf_counter() - began
    res["machine_load"] = WATCH.report()

    rows = build_rows(res, p)
    table = render(res, rows)
    res["answer_problems"] = problems
    notes = [f"{'quick' if p.quick else 'full'} run: big n={p.n:,} ({p.n * 8 / 1e6:.0f} MB), "
             f"{p.reps} timed reps after {p.warmup} warm-up (medians), {p.small_jobs} small jobs, "
             f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}, took {res['total_s']:.0f} s"]
    for name, why in res["skipped"].items():
        notes.append(f"skipped {name}: {why.splitlines()[0] if why else ''}")
    busy = {k: v for k, v in res["machine_load"].items()
            if k != "samples" and v["foreign_cores_mean"] > QUIET_CORES}
    if busy:
        phases = ", ".join(f"'{k}' {v['foreign_cores_mean']:.2f} (max {v['foreign_cores_max']:.2f})"
                           for k, v in busy.items())
        notes.append(f"**machine not quiet**: other processes used cores on average during {phases}; "
                     "those figures are suspect (machine_load in the JSON names the processes)")
    else:
        notes.append(f"machine quiet: other processes used < {QUIET_CORES} core on average in every phase")
    for where, what in res["errors"].items():
        notes.append(f"error in {where}: {what.splitlines()[0]}")
    notes.append("answers: " + ("all checked answers agree (rel 1e-9, bit-identical across the kill)"
                                if not problems else "; ".join(problems)))
    if opts.png:
        why_not = write_png(Path(opts.png), res, rows)
        notes.append(f"chart: {opts.png}" if why_not is None else f"chart skipped: {why_not}")
    if opts.json:
        notes.append(f"json: {opts.json}")
    res["notes"] = notes
    if opts.json:
        Path(opts.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(table)
    print()
    for note in notes:
        print(f"- {note}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
