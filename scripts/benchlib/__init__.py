"""The parts of scripts/bench.py, one job per module; bench.py's docstring is the method.

- `data`: the run's parameters, the shared `.npy` files and their known answers, the machine.
- `loadwatch`: how busy the rest of the machine is, per phase; waiting for quiet.
- `peers`: running MPI, Dask, Ray and numpy, each in its own process.
- `clients`: the separate client process (small jobs, throughput).
- `rounds`: interleaved rounds (one rep of every system per round) and the peers as servers.
- `big_rounds`: the big-job figures and the 1..4-node scaling figure, in rounds.
- `cluster_phases`: the figures measured on one 3-node distnode cluster.
- `fresh_phases`: the figures that need fresh clusters (scaling, start, idle on gRPC, 16 nodes).
- `rows`: the JSON read back as the table's rows.
- `report`: targets, the table and the notes under it.
- `page`: docs/benchmarks.md; `chart`: the PNG.

Everything after the measuring (rows, table, notes, page, chart) reads only
the JSON, so `--render-from` rebuilds the page without measuring.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def log(message: str) -> None:
    """Progress goes to stderr so stdout holds only the table and its notes."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def print_json(found: Any, path: Path | None) -> None:
    """A measuring script's result: indented JSON on stdout, and in `path` as well if given."""
    text = json.dumps(found, indent=2)
    print(text)
    if path is not None:
        path.write_text(text)


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of process `pid` so far, all its threads (/proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def compile_tree(root: Path) -> None:
    """Byte-compile distnode's own packages in `root`, as `pip install` does for a wheel.

    An editable install or a bare checkout compiles nothing, and where
    PYTHONDONTWRITEBYTECODE is set (containers, CI hosts) every daemon
    compiles its ~80 modules again at start: about 45 ms of CPU, which
    sixteen daemons on two cores feel. The bench measures the code as
    installed, not the compiler.
    """
    for package in ("node", "cli"):
        compileall.compile_dir(str(root / package), quiet=1)


def turn_order(names: list[T], number: int) -> list[T]:
    """Round `number`'s order of two or more trees (or clusters) compared in interleaved
    rounds: as given, reversed every other round, so the host's drift lands on all alike."""
    return names if number % 2 == 0 else names[::-1]


@contextlib.contextmanager
def in_tree(tree: Path) -> Iterator[None]:
    """Daemons started meanwhile start in `tree`'s folder, so `python -m cli` runs its code."""
    here = os.getcwd()
    os.chdir(tree)
    try:
        yield
    finally:
        os.chdir(here)


def add_tree_options(parser: argparse.ArgumentParser, root: Path) -> None:
    """`--ref DIR`, the tree compared against (unpacked: `git archive REV | tar -x -C DIR`),
    and `--after DIR`, the tree measured (default: `root`, this one)."""
    parser.add_argument("--ref", type=Path, required=True, help="the tree to compare against")
    parser.add_argument("--after", type=Path, default=root, help="the tree measured (default: this one)")


def trees_compared(args: argparse.Namespace, compiled: bool = True) -> dict[str, Path]:
    """The trees of `add_tree_options`, as {"before": ..., "after": ...}; byte-compiled first
    unless `compiled` is False, so neither pays the compiler (`compile_tree`)."""
    trees: dict[str, Path] = {"before": args.ref.resolve(), "after": args.after.resolve()}
    for tree in trees.values() if compiled else ():
        compile_tree(tree)
    return trees
