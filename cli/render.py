"""What the commands print: answers, status tables, JSON, a progress bar."""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client side (and numpy) is imported by the commands that use it
    from node.client.answer import Answer, ClusterStatus
    from node.client.jobs import JobStatus


#: JSON has no NaN or infinities (strict parsers and jq refuse Python's NaN):
#: they are printed as these strings, which float() and JavaScript's Number() read back.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def strict_json(value: Any) -> str:
    """`value` as strict JSON: non-finite floats become the strings of NON_FINITE."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere: rare, so only then walk the value
        return json.dumps(_finite(value), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return NON_FINITE[repr(value)]
    if isinstance(value, list):
        return [_finite(item) for item in value]
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    return value


def print_json(value: Any) -> None:
    sys.stdout.write(strict_json(value) + "\n")
    sys.stdout.flush()


def print_answer(answer: Answer) -> None:
    print(strict_json(answer.result), flush=True)
    if sys.stderr.isatty():
        print(
            f"{answer.op}: {answer.shards} shard(s) on {','.join(answer.nodes) or '(nodes not kept)'} in "
            f"{answer.elapsed_ms:.1f} ms (leader {answer.leader}, term {answer.term}, "
            f"retries {answer.retries})",
            file=sys.stderr,
        )


class ProgressBar:
    """Shards done / total on the terminal; appears only once a job takes a while."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._progress = Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), transient=True,
        )
        self._task: Any = None

    def update(self, done: int, total: int) -> None:
        if self._task is None:
            self._progress.start()
            self._task = self._progress.add_task("shards", total=total)
        self._progress.update(self._task, completed=done, total=total)

    def close(self) -> None:
        if self._task is not None:
            self._progress.stop()


def print_status(view: ClusterStatus) -> None:
    from rich.console import Console
    from rich.table import Table

    seen_by = f", as {view.answered_by} sees it" if view.answered_by else ""
    table = Table(title=f"leader {view.leader or '(none)'}, term {view.term}{seen_by}")
    for column in ("id", "address", "role", "term", "alive", "last heard"):
        table.add_column(column)
    for node in view.nodes:
        heard = "-" if node.last_heartbeat_ms is None else f"{node.last_heartbeat_ms:.0f} ms ago"
        table.add_row(node.id or "?", node.address, node.role, str(node.term),
                      "yes" if node.alive else "no", heard)
    console = Console()
    console.print(table)
    for node in view.nodes:
        if node.storage_error:
            console.print(f"{node.id or node.address}: cannot write its state: {node.storage_error}")
        if node.problem:
            console.print(f"{node.id or node.address}: unreachable ({node.failures} failed contacts):"
                          f" {node.problem}")


def print_jobs(jobs: list[JobStatus]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(jobs)} job(s), newest first")
    # The id is what a user copies into `result`: never cut; the others give way.
    table.add_column("job id", no_wrap=True, min_width=max((len(job.job_id) for job in jobs), default=6))
    for column in ("op", "source", "state", "shards", "submitted", "result"):
        table.add_column(column, overflow="ellipsis")
    for job in jobs:
        shards = f"{job.shards_done}/{job.shards}" if job.shards else "-"
        result = strict_json(job.result) if job.result is not None else job.error or "-"
        table.add_row(job.job_id, job.op, job.source, job.state, shards, job.submitted_at or "-",
                      result if len(result) <= 40 else result[:37] + "...")
    # Piped or redirected, rich would squeeze the table into 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(table)
