"""What a run works on: its parameters, the shared `.npy` files with their known answers, the machine.

Every system reads the same two files; each is dropped from the page cache
and read back by this process before anything is timed, so every system
finds it there, in the same state whatever the file's history
(`refresh_cache`).
The expected answers come from numpy on the same maps, and `answer_checks`
holds every system's answers against them.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import mmap
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchlib import format_files, log
from benchlib.format_files import FormatFile

#: Elements written (and squared for the expected answer) per step: 80 MB, not 800 MB, in memory.
WRITE_CHUNK = 10**7
#: Relative tolerance of a big sum against numpy's: summation order differs between systems.
REL_TOL = 1e-9
VEC_NAME = "vec.npy"


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

    @classmethod
    def from_json(cls, params: dict[str, Any]) -> Params:
        """The parameters as the JSON's `params` holds them (`to_json`'s output)."""
        rows, cols = params["vec_shape"]
        return cls(**{**params, "vec_shape": (int(rows), int(cols))})

    def to_json(self) -> dict[str, Any]:
        return vars(self) | {"vec_shape": list(self.vec_shape)}


@dataclass
class Data:
    big: Path
    vec: Path
    n: int
    vec_shape: tuple[int, int]
    expected_sum: float = 0.0
    expected_square_sum: float = 0.0
    expected_vec: np.ndarray = field(default_factory=lambda: np.zeros(0))
    #: The big array in each file format (format_files.py); empty without the formats extra.
    formats: dict[str, FormatFile] = field(default_factory=dict)
    #: The share of the big file this process found mapped in 2 MiB pages (huge_share).
    huge_mapped: float = 0.0


def big_name(n: int) -> str:
    return f"big-{n}.npy"


def fill_uniform(path: Path, n: int, rng: np.random.Generator) -> None:
    """A float64 `.npy` of n uniform [0, 1) values, written chunk by chunk through a memory map."""
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n,))
    for start in range(0, n, WRITE_CHUNK):
        stop = min(n, start + WRITE_CHUNK)
        big[start:stop] = rng.random(stop - start)
    big.flush()
    del big


def make_data(directory: Path, p: Params) -> Data:
    directory.mkdir(parents=True, exist_ok=True)
    data = Data(directory / big_name(p.n), directory / VEC_NAME, p.n, p.vec_shape)
    rng = np.random.default_rng(2026)
    t0 = time.perf_counter()
    if not data.big.exists() or data.big.stat().st_size < p.n * 8:
        fill_uniform(data.big, p.n, rng)
    vec = np.lib.format.open_memmap(data.vec, mode="w+", dtype=np.float64, shape=p.vec_shape)
    vec[:] = rng.standard_normal(p.vec_shape)
    vec.flush()
    del vec
    # Every file dropped from the page cache and read back: warm, and in the same
    # state for every system and every run, whatever happened to it before.
    refresh_cache(data.big)
    refresh_cache(data.vec)
    mapped = np.load(data.big, mmap_mode="r")
    data.expected_sum = float(np.sum(mapped))
    data.expected_square_sum = float(sum(
        float(np.sum(np.square(mapped[a:a + WRITE_CHUNK]))) for a in range(0, p.n, WRITE_CHUNK)
    ))
    data.expected_vec = np.load(data.vec).sum(axis=0)
    data.huge_mapped = huge_share([data.big])  # every page of `mapped` was read just above
    del mapped
    data.formats = format_files.write(directory, data.big)
    for file in data.formats.values():  # into the page cache too
        refresh_cache(file.path)
    log(f"data: {data.big} ({data.big.stat().st_size / 1e6:.0f} MB) and {data.vec} ready, "
        f"page cache warm, {data.huge_mapped:.0%} of the big file mapped in 2 MiB pages, "
        f"{time.perf_counter() - t0:.1f} s")
    return data


@contextlib.contextmanager
def bench_data(directory: str | None, keep: bool, p: Params) -> Iterator[Data]:
    """The run's data in `directory` (default: a temporary dir), deleted afterwards unless `keep`;
    a directory given by the caller stays, only the files this run wrote go."""
    own_dir = directory is None
    path = Path(tempfile.mkdtemp(prefix="distnode-bench-")) if directory is None else Path(directory)
    data = None
    try:
        data = make_data(path, p)
        yield data
    finally:
        if own_dir and not keep:
            shutil.rmtree(path, ignore_errors=True)
        elif not keep:
            for name in (big_name(p.n), VEC_NAME):
                (path / name).unlink(missing_ok=True)
            for file in (data.formats if data is not None else {}).values():
                format_files.remove(file.path)


def refresh_cache(path: Path) -> None:
    """Drop every file under `path` from the page cache, then read it back in 2 MiB pages.

    The kernel keeps a file's pages as they were first read or written: in
    4 KiB pages, or, where the filesystem has large folios (ext4 on Linux
    6.x), in 2 MiB ones that a memory map maps whole. One host summed the big
    file in 78 ms in the first state and 48 ms in the second
    (docs/timeline.md, "The page cache's page size"), and a file kept in a
    --data-dir may be in either. A plain read ramps its folios up from small
    ones, which an 8 MB Zarr chunk file never outgrows; faulting the file in
    through a map marked MADV_HUGEPAGE reads it in 2 MiB folios from the
    start. So every run and every system finds each file in the state in
    which memory is fastest, whatever its history.
    """
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        with file.open("rb") as handle:
            os.fsync(handle.fileno())  # only clean pages can be dropped
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            size = os.fstat(handle.fileno()).st_size
            if not size:
                continue
            with mmap.mmap(handle.fileno(), size, prot=mmap.PROT_READ) as mapped:
                if hasattr(mmap, "MADV_HUGEPAGE"):
                    mapped.madvise(mmap.MADV_HUGEPAGE)
                pages = np.frombuffer(mapped, dtype=np.uint8)[::mmap.PAGESIZE]
                int(pages.sum())  # a byte of every page read: each page faulted in
                del pages  # the map closes only once no array views it


def huge_share(paths: Collection[Path]) -> float:
    """The share of this process's maps of `paths` held in 2 MiB pages (FilePmdMapped over Rss
    in /proc/self/smaps); 0.0 where none of it is mapped."""
    names = {str(path.resolve()) for path in paths}
    fields = {"Rss": 0, "FilePmdMapped": 0}
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            words = line.split()
            if "-" in words[0] and len(words) >= 6:  # a mapping's header line: address range ... path
                inside = words[-1] in names
            elif inside and words[0].rstrip(":") in fields:
                fields[words[0].rstrip(":")] += int(words[1])
    return fields["FilePmdMapped"] / fields["Rss"] if fields["Rss"] else 0.0


def huge_mapped_fraction(path: Path) -> float:
    """How much of `path`, memory-mapped and read by this process, is mapped in 2 MiB pages."""
    mapped = np.load(path, mmap_mode="r")
    float(np.sum(mapped))  # fault every page in
    share = huge_share([path])
    del mapped
    return share


def close_enough(value: Any, expected: float) -> bool:
    try:
        return abs(float(value) - expected) <= REL_TOL * abs(expected)
    except (TypeError, ValueError):
        return False


def answer_checks(res: dict[str, Any], data: Data) -> list[str]:
    """Every wrong answer of the run, in words; empty when all agree."""
    problems = []
    big = res["distnode"].get("big") or {}
    for key in ("big_sum", "big_square_sum", "vector_reduce"):
        if key in big and not big[key].get("correct"):
            problems.append(f"distnode {key} answer wrong")
    kill = res["distnode"].get("kill_crossing")
    if kill and not kill.get("correct"):
        problems.append("distnode answer across the leader kill differs from the clean run")
    formats = res["distnode"].get("formats") or {}
    for name, figure in (formats.get("sum") or {}).items():
        if not (figure.get("correct") and figure.get("stable")):
            problems.append(f"distnode formats {name}: answer wrong, or not the same bits every round")
    if (formats.get("identity") or {}).get("differing"):
        problems.append(f"distnode formats: 1 node and 3 nodes differ on {formats['identity']['differing']}")
    scaling = res["distnode"].get("scaling") or {}
    for label in scaling.get("wrong_answers") or ():
        problems.append(f"scaling: {label} gave a wrong big sum")
    expected_first = float(data.expected_vec[0]) if data.expected_vec.size else None
    for name, peer in res["peers"].items():
        for key, expected, said in (("big_sum", data.expected_sum, "result"),
                                    ("big_square_sum", data.expected_square_sum, "result"),
                                    ("vector_reduce", expected_first, "result_first")):
            figure = (peer or {}).get(key, {})
            value = figure.get(said)
            if value is not None and expected is not None and not close_enough(value, expected):
                problems.append(f"{name} {key} = {value!r}, expected {expected!r}")
            if figure.get("wrong_reps"):
                problems.append(f"{name} {key}: {figure['wrong_reps']} reps gave a wrong answer")
        for fmt_name, figure in ((peer or {}).get("formats") or {}).items():
            if not close_enough(figure.get("result"), data.expected_sum):
                value = figure.get("result")
                problems.append(f"{name} formats {fmt_name} = {value!r}, expected {data.expected_sum!r}")
    return problems


def environment() -> dict[str, Any]:
    """The machine and the software versions, for the JSON and the page's machine section."""
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
        "cpu_model": _cpu_model(), "memory_gb": _memory_gb(),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or None


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / 1e9
    return None
