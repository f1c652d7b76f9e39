"""What the commands print: answers, status tables, JSON, a progress bar."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the client side (and numpy) is imported by the commands that use it
    from node.client.answer import Answer, ClusterStatus


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def print_answer(answer: Answer) -> None:
    print(json.dumps(answer.result), flush=True)
    if sys.stderr.isatty():
        print(
            f"{answer.op}: {answer.shards} shard(s) on {','.join(answer.nodes)} in "
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

    table = Table(title=f"leader {view.leader or '(none)'}, term {view.term}")
    for column in ("id", "address", "role", "term", "alive", "last heartbeat"):
        table.add_column(column)
    for node in view.nodes:
        heard = "-" if node.last_heartbeat_ms is None else f"{node.last_heartbeat_ms:.0f} ms"
        table.add_row(node.id, node.address, node.role, str(node.term),
                      "yes" if node.alive else "no", heard)
    Console().print(table)
