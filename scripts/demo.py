"""The main job, end to end: a local 3-node cluster, a real job, a leader kill.

    python scripts/demo.py [--nodes 3] [--n 3e8]

1. starts N real daemons on 127.0.0.1 (default timing) and waits for a leader;
2. submits `sum` over `random:n=...` and, once the job is under way, kills
   the leader with SIGKILL;
3. the client retries the same job id, a new leader is elected and the job
   completes;
4. the killed node is restarted and the job is run again under a new id on
   the healed cluster: the two answers must be bit-for-bit equal, and an
   exact `range:` sum must match its closed form.

Exit status 0 only if every check holds.
"""

from __future__ import annotations

import argparse
import sys
import time

from node import Client, DistnodeError, LocalCluster
from node.core.sources import parse_count


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--n", default="3e8", help="elements of the random source (default 3e8)")
    args = parser.parse_args()
    n = parse_count(args.n, "n")
    source = f"random:n={n},seed=2026"
    started = time.perf_counter()
    with LocalCluster(nodes=args.nodes) as cluster, Client(cluster.addresses) as client:
        leader = cluster.leader()
        say(f"{args.nodes} nodes up, leader {leader} elected in {time.perf_counter() - started:.2f} s")
        say(f"submitting sum over {source}; the leader is killed (SIGKILL) once a shard is merged")
        try:
            run = cluster.run_with_fault(
                lambda: cluster.kill(leader), client=client, timeout_s=120,
                op="sum", source=source, job_id="demo-job",
            )
        except DistnodeError as exc:
            say(f"FAILED: {exc}")
            return 1
        if run.progress_at_fault is None:
            say("FAILED: the job finished before the kill could land; try a bigger --n")
            return 1
        done, total = run.progress_at_fault
        say(f"killed the leader {leader} after {run.fault_after_s:.2f} s with {done}/{total} shards merged")
        answer = run.answer
        say(
            f"answer {answer.result!r} from new leader {answer.leader} (term {answer.term}) "
            f"after {answer.retries} retries, {answer.elapsed_ms / 1000:.2f} s in all"
        )
        cluster.restart(leader)
        say(f"restarted {leader}; running the same job again on the healed cluster")
        again = client.submit(op="sum", source=source)
        exact = client.submit(op="sum", source="range:n=1e8")
        checks = {
            "same bits with and without the failure": again.result == answer.result,
            "range:n=1e8 sum is exact": exact.result == 10**8 * (10**8 - 1) // 2,
        }
        for name, ok in checks.items():
            say(f"{'ok ' if ok else 'BAD'} {name}")
        return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
