"""Benchmark distnode against the tools our users would otherwise pick, in one run.

Usage:

    python scripts/bench.py [--quick] [--json PATH] [--png PATH] [--markdown PATH] [--readme PATH]
                            [--peers mpi4py,dask,ray,numpy|none] [--data-dir DIR] [--keep-data]
                            [--wait-quiet S]
    python scripts/bench.py --render-from JSON [--markdown PATH] [--readme PATH] [--png PATH]

Prints one markdown table (figure, distnode, each peer, ratio, target, met?)
on stdout, progress on stderr, and writes the raw numbers to `--json`
(default `bench.json`) and a bar chart to `--png` (default `bench.png`, only
when matplotlib is installed). `--markdown` also writes the documentation
page (docs/benchmarks.md: the machine, the table, the spread of every timed
figure, the notes, the chart) from the JSON; `--render-from JSON` rebuilds
that page, and the chart when `--png` is given, from an existing JSON
without measuring anything. `--readme` rewrites the README's headline
table (between its bench-summary markers) the same way. Peers come from the optional extra
`pip install -e '.[bench]'` (Open MPI itself: `apt-get install openmpi-bin
libopenmpi-dev`); a peer that is not installed is skipped and the table says
so. `--quick` (10^7 elements, few reps, 10 s scale window) runs in about a
minute; it is what `tests/test_bench_quick.py` runs.

How it is kept fair (all systems, same machine, same run, one at a time):

- Same data. One float64 `.npy` of N = 10^8 elements (800 MB; uniform [0, 1),
  written once in 10^7-element chunks with `open_memmap`) and one (3, 10^6)
  float64 `.npy` for the vector reduce, in a temporary dir (`--data-dir`),
  deleted at the end unless `--keep-data`. Every file is dropped from the
  page cache and read back by this process before anything is timed, so
  every system finds it there, nobody pays the first disk read, and every
  run finds it in the same state whatever its history: where the kernel
  keeps a freshly read file in 2 MiB pages, a kept file read long ago may
  sit in 4 KiB ones, and summing it then took 1.6 times as long
  (benchlib/data.py, `refresh_cache`; the JSON's `big_file_huge_mapped`).
- Same parallelism. 3 distnode nodes / 3 MPI ranks / 3 Dask worker processes
  with one thread each / `ray.init(num_cpus=3)`; numpy is one process, the
  single-core memory-bandwidth ceiling. The machine may have fewer cores than
  3: everybody is oversubscribed alike (`mpiexec --oversubscribe --bind-to
  none`). The environment (OPENBLAS_CORETYPE and the rest) is inherited
  unchanged by every system.
- Same caching. Every peer process opens the `.npy` as a read-only memory map
  once and reuses it across reps; distnode caches its npy memmaps per node.
- Installed code. distnode's own modules are byte-compiled first, as `pip
  install` does; where PYTHONDONTWRITEBYTECODE is set, an uncompiled tree
  would compile in every daemon at start.
- Start-up excluded. distnode's daemons are running before its jobs are
  timed; MPI times inside one `mpiexec` launch (`Barrier`, partial sum of
  the rank's contiguous third, `comm.reduce(op=SUM, root=0)`, clock stopped
  on rank 0 and counted from the earliest rank's start, as a client's clock
  counts all of a distnode job); Dask and Ray time after their cluster is up.
- Interleaved rounds for the big figures (benchlib/rounds.py): distnode,
  mpi4py and numpy stay up (the peers as servers reading one figure per
  line) and each runs the figure once per round, the order turned by one
  each round, so the machine's drift (15-60 % within an hour here) lands on
  all alike. The table's ratio is the median of the rounds' ratios; each
  system's absolute median is kept. Dask and Ray keep their own phase:
  their idle schedulers would use CPU charged to whoever runs beside them.
- Scaling: the big sum on 1, 2, 3 and 4 nodes beside mpi4py at 1..4 ranks
  and numpy, all up at once and all in the same rounds (so "2 nodes over 1"
  is a ratio within rounds too), with the CPU time every system's processes
  spend per job (the runners' own process time summed over ranks;
  distnode's daemons from /proc schedstat plus this process, the client).
- Warm-ups excluded, medians reported. Every timed figure runs `warmup`
  untimed reps first (2 for big jobs, 50/20 for small jobs), then the median
  (and nearest-rank p99 where it matters) of the timed reps; the JSON keeps
  each figure's samples and spread (min, p25, p75, max) beside them.
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
- File formats (with the `formats` extra): the big array again as Zarr 3
  (chunks of 2^20, uncompressed and Blosc/Zstd), HDF5 (chunks of 2^20, no
  filter) and a directory of Parquet files (2^23 rows each, row groups of
  2^20, Snappy), written from the `.npy` and read once before timing
  (benchlib/format_files.py). `sum` over each: distnode on the 3-node
  cluster, in interleaved rounds with `.npy` (one job per source per round,
  medians over the same rounds, so the ratio to `.npy` is fair under
  drift); Dask with `from_zarr`, `from_array(h5py dataset, its chunks)`,
  `dask.dataframe.read_parquet`; one process reading all of it with the
  format's library, then `np.sum` (the "numpy (1 proc)" column), both in
  interleaved rounds too. Then every op on every source on the 3-node
  cluster and on a fresh 1-node cluster: the answers' bytes must match.
- Fault figures (distnode only, default timing): start = wall time of
  `LocalCluster(nodes=3).start()` (spawn until a status names a leader),
  median of 5 clusters; failover = SIGKILL the leader, poll `status()` on the
  survivors every 5 ms until a new leader is named (the killed node is then
  restarted and all nodes seen alive + 0.5 s settle before the next kill),
  median and max of 20 kills; big job crossing a kill = submit the big sum,
  SIGKILL the leader once `progress()` shows >= 1 shard merged (the
  harness's `LocalCluster.run_with_fault`), compare with
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
import json
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import compile_tree, log
from benchlib.chart import write_png
from benchlib.clients import client_worker
from benchlib.data import Params, answer_checks, bench_data, environment
from benchlib.fresh_phases import GROUPS, run_distnode
from benchlib.loadwatch import QUIET_CORES, LoadWatch
from benchlib.page import write_page, write_readme
from benchlib.peers import PEERS, run_peers, skipped_peers
from benchlib.report import render_table, result_notes, targets
from benchlib.rows import Row, build_rows

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_PNG = "bench.png"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and counts, about a minute")
    parser.add_argument("--json", metavar="PATH", default="bench.json", help="raw numbers (bench.json)")
    parser.add_argument("--png", metavar="PATH",
                        help=f"chart ({DEFAULT_PNG}; with --render-from, only when given)")
    parser.add_argument("--markdown", metavar="PATH",
                        help="also write the documentation page here (docs/benchmarks.md)")
    parser.add_argument("--readme", metavar="PATH",
                        help="also rewrite the headline table between the markers of this README")
    parser.add_argument("--render-from", metavar="JSON",
                        help="measure nothing: write --markdown, --readme, --png from this bench JSON")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"peers to run, comma-separated, or 'none' (default {','.join(PEERS)})")
    parser.add_argument("--data-dir", help="where the .npy files go (default: a temporary dir)")
    parser.add_argument("--keep-data", action="store_true", help="do not delete the .npy files")
    parser.add_argument("--wait-quiet", type=float, metavar="S",
                        help="before each phase wait up to S seconds until other processes use "
                             f"< {QUIET_CORES} core (default 20, quick 0)")
    parser.add_argument("--skip-distnode", default="",
                        help=f"comma-separated distnode groups to skip: {','.join(GROUPS)} (for debugging)")
    parser.add_argument("--client-worker", help=argparse.SUPPRESS)
    parser.add_argument("--cluster", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--inflight", type=int, default=32, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.render_from and not (opts.markdown or opts.readme):
        parser.error("--render-from writes pages: give it --markdown PATH and/or --readme PATH")
    if opts.png is None and not opts.render_from:
        opts.png = DEFAULT_PNG
    return opts


def measure(opts: argparse.Namespace) -> dict[str, Any]:
    """Every phase, one at a time: the peers, then distnode; the raw numbers as the JSON holds them."""
    p = Params.make(opts.quick)
    wait_quiet_s = opts.wait_quiet if opts.wait_quiet is not None else (0.0 if opts.quick else 20.0)
    skip = {x.strip() for x in opts.skip_distnode.split(",") if x.strip()}
    began = time.perf_counter()
    compile_tree(ROOT)
    res: dict[str, Any] = {"params": p.to_json(), "environment": environment(), "distnode": {}, "peers": {},
                           "skipped": skipped_peers(opts.peers), "errors": {}, "targets": {}}
    with LoadWatch(wait_quiet_s=wait_quiet_s) as watch, bench_data(opts.data_dir, opts.keep_data, p) as data:
        res["environment"]["big_file_huge_mapped"] = round(data.huge_mapped, 3)
        run_peers(res, data, p, watch)
        run_distnode(res, data, p, watch, skip)
        problems = answer_checks(res, data)
    res["total_s"] = time.perf_counter() - began
    res["machine_load"] = watch.report()
    res["answer_problems"] = problems
    return res


def draw_chart(png: str | None, res: dict[str, Any], rows: list[Row]) -> tuple[Path | None, str | None]:
    """The chart's path if one was written, and the note saying where it went or why it did not."""
    if not png:
        return None, None
    why_not = write_png(Path(png), res, rows)
    if why_not is not None:
        return None, f"chart skipped: {why_not}"
    return Path(png), f"chart: {png}"


def write_outputs(res: dict[str, Any], opts: argparse.Namespace) -> None:
    """The table and its notes on stdout; the chart, the JSON and the page where asked."""
    rows = build_rows(res, Params.from_json(res["params"]))
    res["targets"] = targets(rows, res["skipped"])
    notes = result_notes(res)
    chart, chart_note = draw_chart(opts.png, res, rows)
    if chart_note:
        notes.append(chart_note)
    if opts.json:
        notes.append(f"json: {opts.json}")
    res["notes"] = notes
    text = json.dumps(res, indent=2, default=str) + "\n"
    if opts.json:
        Path(opts.json).write_text(text)
    print(render_table(rows, res["skipped"]))
    print()
    for note in notes:
        print(f"- {note}")
    # From the JSON as written, exactly as `--render-from` will read it.
    if opts.markdown:
        write_page(json.loads(text), Path(opts.markdown), chart)
    if opts.readme:
        write_readme(json.loads(text), Path(opts.readme))


def render_from(opts: argparse.Namespace) -> int:
    res = json.loads(Path(opts.render_from).read_text())
    chart, chart_note = draw_chart(opts.png, res, build_rows(res, Params.from_json(res["params"])))
    if chart_note:
        log(chart_note)
    if opts.markdown:
        write_page(res, Path(opts.markdown), chart)
        log(f"page: {opts.markdown}, from {opts.render_from}")
    if opts.readme:
        write_readme(res, Path(opts.readme))
        log(f"README summary: {opts.readme}, from {opts.render_from}")
    return 0


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.client_worker:
        client_worker(opts)
        return 0
    if opts.render_from:
        return render_from(opts)
    res = measure(opts)
    write_outputs(res, opts)
    return 1 if res["answer_problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
