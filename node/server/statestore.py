"""Durable election state: the current term and the vote cast in it.

Raft §5.2 only works if a node never votes twice in one term, including
across a crash. So `save()` writes a temporary file, fsyncs it, renames it over
the old one and fsyncs the directory (durable.py); the caller sends the vote only after
`save()` returns ("persist before you send").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from node.errors import StateFileError
from node.server.durable import replace_durably

STATE_FILE = "election.json"


@dataclass(frozen=True)
class ElectionState:
    term: int = 0
    voted_for: str | None = None


class StateStore:
    """One small JSON file in the node's data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / STATE_FILE

    def load(self) -> ElectionState:
        """The last saved state, or term 0 with no vote for a new node."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return ElectionState()
        except (OSError, ValueError) as exc:
            # A torn write cannot happen (rename is atomic), so this is a
            # foreign or hand-edited file: refuse rather than forget a vote.
            raise StateFileError(f"cannot read election state {self.path}: {exc}") from exc
        try:
            return ElectionState(term=int(raw["term"]), voted_for=raw.get("voted_for"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateFileError(f"election state {self.path} is not a term and a vote: {exc!r}") from exc

    def save(self, state: ElectionState) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"term": state.term, "voted_for": state.voted_for})
        replace_durably(self.path, payload.encode())
