"""Running the peers (MPI, Dask, Ray, plain numpy), each in a process of its own.

A peer's runner (scripts/bench_peers/) gets one JSON spec on its command
line, times its figures and prints one `BENCH_RESULT {json}` line. A peer
that is not installed, or whose runner fails, is skipped with the reason,
never a failed run: the table says so.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_peers.peerdata import RESULT_PREFIX

from benchlib import log
from benchlib.data import Data, Params
from benchlib.loadwatch import LoadWatch

PEERS_DIR = Path(__file__).resolve().parents[1] / "bench_peers"
PEERS = ("mpi4py", "dask", "ray", "numpy")
#: The figures each peer measures in a phase of its own; the small-job figures need a task system,
#: which MPI and numpy are not. mpi4py's and numpy's big figures are measured in rounds beside
#: distnode's (benchlib/big_rounds.py).
FIGURES: dict[str, list[str]] = {
    "mpi4py": [],
    "numpy": [],
    "dask": ["big_sum", "big_square_sum", "vector_reduce", "small", "throughput"],
    "ray": ["big_sum", "big_square_sum", "vector_reduce", "small", "throughput"],
}
#: peer -> (modules it imports, how to install them)
NEEDS = {
    "mpi4py": (("mpi4py",), "mpi4py not installed (pip install -e '.[bench]')"),
    "dask": (("dask", "distributed"), "dask[distributed] not installed (pip install -e '.[bench]')"),
    "ray": (("ray",), "ray not installed (pip install -e '.[bench]'; no wheel for some platforms)"),
    "numpy": ((), ""),
}
#: Peers that also read the file formats: Dask, and one process with the format's library.
FORMAT_PEERS = ("dask", "numpy")
RUNNERS = {"numpy": "numpy_runner.py", "dask": "dask_runner.py", "ray": "ray_runner.py"}


def peer_available(name: str) -> tuple[bool, str]:
    """Whether `name` can run here, and if not, why (with the install command)."""
    if name not in NEEDS:
        return False, f"unknown peer {name!r}"
    modules, why = NEEDS[name]
    if not all(importlib.util.find_spec(module) is not None for module in modules):
        return False, why
    if name == "mpi4py" and shutil.which("mpiexec") is None:
        return False, "mpiexec not found (apt-get install openmpi-bin libopenmpi-dev)"
    return True, ""


def skipped_peers(peers_option: str) -> dict[str, str]:
    """peer -> reason, for every peer that will not run: not asked for (`--peers`) or not installed."""
    names = [] if peers_option.strip() == "none" else peers_option.split(",")
    wanted = [x.strip() for x in names if x.strip()]
    skipped = {}
    for name in PEERS:
        if name not in wanted:
            skipped[name] = "not requested (--peers)"
            continue
        ok, why = peer_available(name)
        if not ok:
            skipped[name] = why
    return skipped


def peer_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PEERS_DIR), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def mpi_command(spec: str, ranks: int = 3) -> tuple[list[str], dict[str, str]]:
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
    command += ["-n", str(ranks), sys.executable, str(PEERS_DIR / "mpi_reduce.py"), spec]
    return command, env


def peer_spec(name: str, data: Data, p: Params) -> str:
    figures = FIGURES[name] + (["formats"] if name in FORMAT_PEERS and data.formats else [])
    return json.dumps({
        "big": str(data.big), "n": data.n, "vec": str(data.vec), "vec_shape": list(data.vec_shape),
        "reps": p.reps, "warmup": p.warmup, "small_jobs": p.small_jobs,
        "small_warmup": p.small_warmup, "throughput_s": p.throughput_s, "inflight": p.inflight,
        "figures": figures, "formats": {n: f.to_json() for n, f in data.formats.items()},
    })


def run_peer(name: str, data: Data, p: Params, timeout_s: float) -> dict[str, Any]:
    """The peer's figures as its runner printed them, with the runner's wall time (`wall_s`)."""
    spec = peer_spec(name, data, p)
    if name == "mpi4py":
        command, env = mpi_command(spec)
    else:
        command, env = [sys.executable, str(PEERS_DIR / RUNNERS[name]), spec], peer_env()
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


def run_peers(res: dict[str, Any], data: Data, p: Params, watch: LoadWatch) -> None:
    """Each peer not in `res["skipped"]`, one at a time, into `res["peers"]`; a failure skips it."""
    for name in PEERS:
        if name in res["skipped"]:
            log(f"{name}: skipped ({res['skipped'][name]})")
            continue
        if not FIGURES[name] and not (name in FORMAT_PEERS and data.formats):
            continue  # all its figures are measured in the rounds
        watch.enter(f"{name}: running")
        try:
            found = run_peer(name, data, p, timeout_s=300 if p.quick else 1200)
            res["peers"].setdefault(name, {}).update(found)
            log(f"{name}: done in {res['peers'][name]['wall_s']:.1f} s")
        except Exception as exc:
            res["skipped"][name] = f"failed: {exc}"[:2000]
            log(f"{name}: failed: {exc}")
