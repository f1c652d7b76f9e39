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
import threading
import time

from node import Answer, Client, LocalCluster
from node.compute import parse_count


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def run_in_background(client: Client, **job: object) -> tuple[threading.Thread, dict[str, object]]:
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["answer"] = client.submit(**job)  # type: ignore[arg-type]
        except Exception as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, box


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
        say(f"submitting sum over {source}")
        thread, box = run_in_background(client, op="sum", source=source, job_id="demo-job")
        progress = wait_for_progress(cluster)
        cluster.kill(leader)
        say(f"killed the leader {leader} (SIGKILL) with {progress[0]}/{progress[1]} shards merged")
        thread.join()
        if "error" in box:
            say(f"FAILED: {box['error']}")
            return 1
        answer = box["answer"]
        assert isinstance(answer, Answer)
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


def wait_for_progress(cluster: LocalCluster, timeout_s: float = 60) -> tuple[int, int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = cluster.client.progress("demo-job")
        if progress is not None and progress[0] >= 1:
            return progress
        time.sleep(0.005)
    raise SystemExit("the job never started")


if __name__ == "__main__":
    sys.exit(main())
