"""The big-job figures and the scaling figure, in interleaved rounds (benchlib/rounds.py).

`measure_big`: on the main 3-node cluster, the big sum, the square-then-sum
and the vector reduce, each in rounds of distnode, mpi4py (3 ranks) and numpy
(one process). distnode's figures go to `res["distnode"]["big"]`, the
peers' to `res["peers"][name]` (where the table reads them), and each
round's ratios to `res["rounds"]`.

`measure_scaling`: the big sum on 1, 2, 3 and 4 nodes beside mpi4py at 1..4
ranks and numpy, all of them up at once and every one run once per round,
so 2 nodes over 1 node is a ratio within rounds too. Idle daemons and idle
ranks (which sleep between polls) cost a little CPU meanwhile, alike for
every system measured.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from cluster_timing import started_cluster

from benchlib import log
from benchlib.data import Data, Params, close_enough
from benchlib.peers import PEERS_DIR, RUNNERS, mpi_command, peer_env
from benchlib.rounds import DistnodeJobs, Rep, Server, described, interleaved, round_ratios

#: The peers that run in rounds beside distnode.
ROUND_PEERS = ("mpi4py", "numpy")
FIGURES = ("big_sum", "big_square_sum", "vector_reduce")
SCALE_NODES = (1, 2, 3, 4)
BIG_JOB_TIMEOUT_S = 300.0


def serve_spec(data: Data) -> str:
    return json.dumps({"serve": True, "big": str(data.big), "vec": str(data.vec)})


def start_server(name: str, data: Data, ranks: int = 3) -> Server:
    if name == "mpi4py":
        command, env = mpi_command(serve_spec(data), ranks)
        return Server(f"mpi4py np={ranks}", command, env)
    return Server(name, [sys.executable, str(PEERS_DIR / RUNNERS[name]), serve_spec(data)], peer_env())


@contextlib.contextmanager
def servers(wanted: dict[str, tuple[str, int]], data: Data) -> Iterator[dict[str, Server]]:
    """label -> (peer, ranks) started as servers, all closed on the way out."""
    started: dict[str, Server] = {}
    try:
        for label, (name, ranks) in wanted.items():
            started[label] = start_server(name, data, ranks)
        yield started
    finally:
        for server in started.values():
            server.close()


def distnode_jobs(cluster: Any, data: Data) -> DistnodeJobs:
    big, vec = f"npy:{data.big}", f"npy:{data.vec}"
    jobs = {"big_sum": {"op": "sum", "source": big},
            "big_square_sum": {"op": "sum", "source": big, "map": "square"},
            "vector_reduce": {"op": "sum", "source": vec, "axis": 0}}

    def vector(array: Any) -> list[Any]:
        return [bool(np.allclose(array, data.expected_vec, rtol=1e-12, atol=1e-9)), float(array[0])]

    keep: dict[str, Callable[[Any], Any]] = {"big_sum": float, "big_square_sum": float,
                                             "vector_reduce": vector}
    return DistnodeJobs(cluster, jobs, keep, BIG_JOB_TIMEOUT_S)


def measure_big(cluster: Any, data: Data, p: Params, res: dict[str, Any]) -> dict[str, Any]:
    """distnode's big figures (returned); the round peers' go into `res["peers"]`, the ratios
    into `res["rounds"]`."""
    peers = [name for name in ROUND_PEERS if name not in res["skipped"]]
    out: dict[str, Any] = {}
    jobs = distnode_jobs(cluster, data)
    with contextlib.closing(jobs), servers({name: (name, 3) for name in peers}, data) as running:
        for figure in FIGURES:
            systems: dict[str, Callable[[], Rep]] = {"distnode": lambda f=figure: jobs.rep(f)}
            systems |= {name: (lambda s=server, f=figure: s.rep(f)) for name, server in running.items()}
            reps = interleaved(systems, p.reps, p.warmup)
            out[figure] = {**described(reps["distnode"]), **_distnode_answers(figure, reps["distnode"], data)}
            for name in peers:
                answer = "result_first" if figure == "vector_reduce" else "result"
                wrong = sum(not close_enough(rep.value, right_answer(figure, data)) for rep in reps[name])
                res["peers"].setdefault(name, {})[figure] = {
                    **described(reps[name]), answer: reps[name][-1].value, "wrong_reps": wrong}
            res.setdefault("rounds", {})[figure] = round_ratios(reps, "distnode", peers)
            medians = {n: f"{v['median']:.2f}" for n, v in res["rounds"][figure].items()}
            log(f"distnode {figure}: median {out[figure]['median_ms']:.1f} ms, ratios {medians}, "
                f"correct {out[figure]['correct']}")
    return out


def right_answer(figure: str, data: Data) -> float:
    """A peer's right answer to `figure`: the vector reduce's is its first element."""
    if figure == "vector_reduce":
        return float(data.expected_vec[0])
    return data.expected_sum if figure == "big_sum" else data.expected_square_sum


def _distnode_answers(figure: str, reps: list[Rep], data: Data) -> dict[str, Any]:
    values = [rep.value for rep in reps]
    if figure == "vector_reduce":
        return {"result_first": values[-1][1], "correct": all(ok for ok, _ in values)}
    expected = data.expected_sum if figure == "big_sum" else data.expected_square_sum
    return {"result": values[-1], "correct": all(close_enough(v, expected) for v in values),
            "bit_identical": len({float(v).hex() for v in values}) == 1}


def measure_scaling(data: Data, p: Params, skipped: dict[str, str]) -> dict[str, Any]:
    """The big sum on 1..4 nodes, mpi4py at 1..4 ranks and numpy, all in the same rounds."""
    with contextlib.ExitStack() as stack:
        systems: dict[str, Callable[[], Rep]] = {}
        for nodes in SCALE_NODES:
            cluster = stack.enter_context(contextlib.closing(
                started_cluster(log, nodes=nodes, data_root=data.big.parent)))
            cluster.wait_all_alive(timeout_s=30.0)
            jobs = distnode_jobs(cluster, data)
            stack.callback(jobs.close)
            systems[f"distnode {nodes}"] = lambda j=jobs: j.rep("big_sum")
        wanted = {f"mpi4py {n}": ("mpi4py", n) for n in SCALE_NODES} if "mpi4py" not in skipped else {}
        wanted |= {"numpy": ("numpy", 1)} if "numpy" not in skipped else {}
        running = stack.enter_context(servers(wanted, data))
        systems |= {label: (lambda s=server: s.rep("big_sum")) for label, server in running.items()}
        log(f"scaling: {len(systems)} systems in {p.reps} rounds")
        reps = interleaved(systems, p.reps, p.warmup)
    wrong = [label for label, kept in reps.items() if not all(close_enough(r.value, data.expected_sum)
                                                              for r in kept)]
    out: dict[str, Any] = {"nodes": list(SCALE_NODES), "systems": {k: described(v) for k, v in reps.items()},
                           "wrong_answers": wrong, "ratios": {}}
    for nodes in SCALE_NODES:
        mine, others = f"distnode {nodes}", [k for k in (f"mpi4py {nodes}", "numpy") if k in reps]
        out["ratios"][str(nodes)] = {k: v["median"] for k, v in round_ratios(reps, mine, others).items()}
    for system in ("distnode", "mpi4py"):
        if f"{system} 1" in reps:
            two_over_one = [b.seconds / a.seconds for a, b in zip(reps[f"{system} 1"], reps[f"{system} 2"],
                                                                  strict=True)]
            out[f"{system}_2_over_1"] = statistics.median(two_over_one)
    log(f"scaling: {json.dumps(out['ratios'])}; 2 over 1 node: {out.get('distnode_2_over_1')}, "
        f"mpi4py: {out.get('mpi4py_2_over_1')}")
    return out
