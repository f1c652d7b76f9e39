"""A job running in the background while something breaks: the harness's fault-mid-job helper.

    run = cluster.run_with_fault(lambda: cluster.kill(cluster.leader()), op="sum", source=...)
    run.answer.result, run.progress_at_fault, run.fault_after_s

The job is submitted from a thread; the harness polls its progress (any node
answers, followers relay) and calls `fault` once at least `after_shards`
shards are merged, then waits for the answer. A job that finishes before its
progress is ever seen at that point gets no fault (`progress_at_fault` None),
so callers can tell a fault that landed mid-job from one that never did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.client.answer import Answer
from node.client.blocking import Client

#: How often the harness asks for the job's progress.
POLL_S = 0.005


@dataclass(frozen=True)
class FaultedJob:
    answer: Answer
    #: (shards merged, shards in all) when the fault was made; None if it never was.
    progress_at_fault: tuple[int, int] | None
    #: Seconds from the submission to the fault; None if it never was made.
    fault_after_s: float | None
    #: Seconds from the submission to the answer, as seen by the harness.
    elapsed_s: float

    @property
    def landed_mid_job(self) -> bool:
        progress = self.progress_at_fault
        return progress is not None and progress[0] < progress[1]


class BackgroundJob:
    """A `submit` running in a thread, so the caller can break things meanwhile."""

    def __init__(self, client: Client, job_id: str, timeout_s: float, **job: Any) -> None:
        self.job_id = job_id
        self.started_s = time.monotonic()
        self._answer: Answer | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(client, job_id, timeout_s, job), name=f"job-{job_id}", daemon=True
        )
        self._thread.start()

    def _run(self, client: Client, job_id: str, timeout_s: float, job: dict[str, Any]) -> None:
        try:
            self._answer = client.submit(job_id=job_id, timeout=timeout_s, **job)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout_s: float) -> Answer:
        """The answer, or the submit's own exception; TimeoutError if it is still running."""
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TimeoutError(f"job {self.job_id} did not finish within {timeout_s} s")
        if self._error is not None:
            raise self._error
        assert self._answer is not None
        return self._answer


def run_with_fault(
    client: Client,
    progress: Callable[[str], tuple[int, int] | None],
    fault: Callable[[], None],
    job_id: str,
    after_shards: int,
    timeout_s: float,
    **job: Any,
) -> FaultedJob:
    """Submit `job`, call `fault` once `after_shards` shards are merged, return what happened."""
    running = BackgroundJob(client, job_id, timeout_s, **job)
    deadline = running.started_s + timeout_s
    seen: tuple[int, int] | None = None
    fault_after_s = None
    while not running.done and time.monotonic() < deadline:
        seen = progress(job_id)
        if seen is not None and seen[0] >= after_shards:
            fault_after_s = time.monotonic() - running.started_s
            fault()
            if running.done:  # it finished while the fault was being made: nothing crossed it
                seen = (seen[1], seen[1])
            break
        time.sleep(POLL_S)
    answer = running.result(max(0.0, deadline - time.monotonic()) + 1.0)
    return FaultedJob(
        answer, seen if fault_after_s is not None else None, fault_after_s,
        time.monotonic() - running.started_s,
    )
