"""distnode on the big array in each file format: the sum's time beside `.npy`'s, and the
same answers on 1 node as on 3 for every source and op.

Timing: interleaved rounds on the main 3-node cluster. Each round submits
the sum once per source, `.npy` first; warm-up rounds are dropped and each
source's median is taken over the same rounds, so drift of the machine
(15-60 % within an hour here) falls on every source alike and the ratio to
`.npy` is fair. Every answer must be right (numpy's, rel 1e-9) and the same
bits in every round. (The shards are the `.npy` shards, since 2^20 units
divide 2^23; mapped uncompressed chunks are summed chunk by chunk, so their
last bits may differ from `.npy`'s: `same_bits_as_npy` says which.)

Identity: every op (and `--map square` with `sum`) on every source, once on
the 3-node cluster and once on a fresh 1-node cluster; the answers' bytes
and dtypes are compared.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Any

from bench_peers.peerdata import summary
from cluster_timing import started_cluster

from benchlib import log
from benchlib.data import Data, Params, close_enough
from node import Client, LocalCluster

JOB_TIMEOUT_S = 300.0
#: Every op distnode has, as submit's keywords (histogram: the data is uniform in [0, 1)).
IDENTITY_JOBS: list[dict[str, Any]] = [
    {"op": op} for op in ("sum", "prod", "min", "max", "mean", "count", "var", "std", "argmin", "argmax")
] + [{"op": "histogram", "bins": 16, "range": (0.0, 1.0)}, {"op": "sum", "map": "square"}]


def sources(data: Data) -> dict[str, str]:
    """Name -> distnode source spec, `.npy` first."""
    return {"npy": f"npy:{data.big}", **{name: file.spec for name, file in data.formats.items()}}


def measure_formats(cluster: LocalCluster, data: Data, p: Params) -> dict[str, Any]:
    specs = sources(data)
    samples: dict[str, list[float]] = {name: [] for name in specs}
    answers: dict[str, set[str]] = {name: set() for name in specs}
    with Client(cluster.addresses, timeout=JOB_TIMEOUT_S) as client:
        for round_number in range(p.warmup + p.reps):
            for name, spec in specs.items():
                t0 = time.perf_counter()
                answer = client.submit(op="sum", source=spec)
                elapsed = time.perf_counter() - t0
                answers[name].add(float(answer.array).hex())
                if round_number >= p.warmup:
                    samples[name].append(elapsed)
        three = digests(client, specs)
    npy_answers = answers["npy"]
    out: dict[str, Any] = {}
    for name in specs:
        value = float.fromhex(next(iter(answers[name])))
        out[name] = {**summary(samples[name]), "result": value,
                     "correct": close_enough(value, data.expected_sum), "stable": len(answers[name]) == 1,
                     "same_bits_as_npy": answers[name] == npy_answers}
        log(f"distnode formats {name}: median {out[name]['median_ms']:.1f} ms, "
            f"correct {out[name]['correct']}, same bits every round {out[name]['stable']}")
    return {"sum": out, "rounds": p.reps, "warmup_rounds": p.warmup,
            "identity": one_vs_three(data, specs, three)}


def digests(client: Client, specs: dict[str, str]) -> dict[str, str]:
    """`source/job` -> sha256 of the answer's dtype and bytes, for every source and identity job."""
    out = {}
    for name, spec in specs.items():
        for job in IDENTITY_JOBS:
            array = client.submit(source=spec, **job).array
            digest = hashlib.sha256(str(array.dtype).encode() + array.tobytes())
            out[f"{name}/{job_label(job)}"] = digest.hexdigest()
    return out


def job_label(job: dict[str, Any]) -> str:
    return job["op"] + (f" --map {job['map']}" if "map" in job else "")


def one_vs_three(data: Data, specs: dict[str, str], three: dict[str, str]) -> dict[str, Any]:
    """The identity jobs again on a fresh 1-node cluster, compared with the 3-node answers."""
    alone = started_cluster(log, nodes=1, data_root=data.big.parent)
    with contextlib.closing(alone), Client(alone.addresses, timeout=JOB_TIMEOUT_S) as client:
        one = digests(client, specs)
    differing = sorted(key for key in three if one.get(key) != three[key])
    log(f"distnode formats: 1 node vs 3 nodes, {len(three) - len(differing)} of {len(three)} answers "
        f"identical{'' if not differing else ': differ ' + ', '.join(differing)}")
    return {"pairs": len(three), "identical": len(three) - len(differing), "differing": differing}
