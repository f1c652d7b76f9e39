"""mpi4py peer, run as `mpiexec -n 3 python mpi_reduce.py SPEC_JSON`.

Each rank memory-maps the .npy once (the map is reused across reps), then for
every rep: `Barrier`, its clock start, its contiguous third summed (or squared
and summed a block at a time, `peerdata.square_sum`) with numpy,
`comm.reduce(op=SUM, root=0)`; rank 0 stops the clock
when the reduced value arrives, and the rep's time runs from the *earliest*
rank's start (gathered after the rep, off the clock; CLOCK_MONOTONIC, one
clock for every process of a host). Timing from rank 0's own start, as
MPI codes often do, left out the head start of the ranks that leave the
Barrier first: with three ranks on two cores rank 0 left it last in 66 of
70 reps, 3-3.6 ms after the first (median; docs/timeline.md, "mpi4py's
clock"). Vector reduce: each rank holds one row of the
(3, N) .npy (a view of the map) and `comm.Reduce`s it into rank 0's buffer.
Process start-up and `MPI_Init` are outside the timed region, as distnode's
daemons are already running when its jobs are timed. Warm-up reps are run
and dropped. Rank 0 prints one `BENCH_RESULT {json}` line.

With `"serve": true` in the spec the ranks time nothing by themselves: rank 0
reads one figure name per line on stdin and passes it to every rank
(`Ibcast`, waited on with sleeps of IDLE_POLL_S so idle ranks do not spin
on a core the other systems need); the ranks run it once, timed as above, and
rank 0 prints one `BENCH_REP` line with the CPU time of all ranks summed,
until `quit` (the bench's interleaved rounds, benchlib/rounds.py). Any
number of ranks: the vector reduce is offered when there is a row per rank.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def main() -> int:
    import peerdata
    from mpi4py import MPI

    spec = json.loads(sys.argv[1])
    comm = MPI.COMM_WORLD
    if spec.get("serve"):
        return serve(spec, comm, MPI)
    rank, size = comm.Get_rank(), comm.Get_size()
    reps, warmup = int(spec["reps"]), int(spec["warmup"])
    out: dict[str, Any] = {"ranks": size, "library": MPI.Get_library_version().splitlines()[0].strip()}

    def timed(body: Callable[[], Any]) -> tuple[list[float], Any]:
        samples, value = [], None
        for rep in range(warmup + reps):
            elapsed_s, value = from_first_start(comm, body)
            if rep >= warmup and elapsed_s is not None:
                samples.append(elapsed_s)
        return samples, value

    figures = spec["figures"]
    if "big_sum" in figures or "big_square_sum" in figures:
        path = spec["big"]
        data = peerdata.memmap(path)
        start, stop = peerdata.thirds(int(data.shape[0]), size)[rank]
        mine = data[start:stop]
        if "big_sum" in figures:
            samples, value = timed(lambda: comm.reduce(float(np.sum(mine)), op=MPI.SUM, root=0))
            out["big_sum"] = {**peerdata.summary(samples), "result": value}
        if "big_square_sum" in figures:
            samples, value = timed(
                lambda: comm.reduce(peerdata.square_sum(mine), op=MPI.SUM, root=0)
            )
            out["big_square_sum"] = {**peerdata.summary(samples), "result": value}
    if "vector_reduce" in figures:
        matrix = peerdata.memmap(spec["vec"])
        if matrix.shape[0] != size:
            raise SystemExit(f"vector reduce needs one row per rank: {matrix.shape[0]} rows, {size} ranks")
        mine = peerdata.row(spec["vec"], rank)
        total = np.empty_like(mine) if rank == 0 else None

        def reduce_vector() -> float | None:
            comm.Reduce(mine, total, op=MPI.SUM, root=0)
            return float(total[0]) if total is not None else None

        samples, value = timed(reduce_vector)
        out["vector_reduce"] = {**peerdata.summary(samples), "result_first": value}
    if rank == 0:
        peerdata.emit(out)
    return 0


def from_first_start(comm: Any, body: Callable[[], Any]) -> tuple[float | None, Any]:
    """After a Barrier, run `body` on every rank; on rank 0, the seconds from the earliest
    rank's start until `body` returned there (where the reduced value arrives), else None."""
    comm.Barrier()
    start_s = time.monotonic()
    value = body()
    end_s = time.monotonic()
    starts = comm.gather(start_s, root=0)
    return (None if starts is None else end_s - min(starts)), value


#: How often an idle rank looks for the next command; the wait is before the Barrier, off
#: the clock. An idle server runs beside the other systems' reps, and what it spends is
#: charged to them: polled every 1 ms, its ranks took 3.8-4.2 % of a core and 1,900-2,200
#: context switches a second from a distnode cluster's big sums (about 1.5 % of their
#: time); every 20 ms, 0.7 % and 160, about what one idle distnode node spends.
IDLE_POLL_S = 0.02


def serve(spec: dict[str, Any], comm: Any, mpi: Any) -> int:
    import peerdata

    rank, size = comm.Get_rank(), comm.Get_size()
    data = peerdata.memmap(spec["big"])
    start, stop = peerdata.thirds(int(data.shape[0]), size)[rank]
    mine = data[start:stop]
    bodies: dict[str, Callable[[], Any]] = {
        "big_sum": lambda: comm.reduce(float(np.sum(mine)), op=mpi.SUM, root=0),
        "big_square_sum": lambda: comm.reduce(peerdata.square_sum(mine), op=mpi.SUM, root=0),
    }
    if peerdata.memmap(spec["vec"]).shape[0] == size:
        row = peerdata.row(spec["vec"], rank)
        total = np.empty_like(row) if rank == 0 else None

        def reduce_vector() -> float | None:
            comm.Reduce(row, total, op=mpi.SUM, root=0)
            return float(total[0]) if total is not None else None

        bodies["vector_reduce"] = reduce_vector
    names = [peerdata.QUIT, *bodies]
    command = np.zeros(1, dtype=np.int64)
    while True:
        if rank == 0:
            command[0] = names.index(sys.stdin.readline().strip() or peerdata.QUIT)
        request = comm.Ibcast(command, root=0)
        while not request.Test():
            time.sleep(IDLE_POLL_S)
        figure = names[int(command[0])]
        if figure == peerdata.QUIT:
            return 0
        cpu0_s = time.process_time()
        elapsed_s, value = from_first_start(comm, bodies[figure])
        cpu_s = comm.reduce(time.process_time() - cpu0_s, op=mpi.SUM, root=0)
        if rank == 0:
            assert elapsed_s is not None
            peerdata.emit_rep(figure, elapsed_s, value, cpu_s)


if __name__ == "__main__":
    sys.exit(main())
