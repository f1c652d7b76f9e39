"""Durable election state: the current term and the vote cast in it.

Raft §5.2 only works if a node never votes twice in one term, including
across a crash. So `save()` writes a temporary file, fsyncs it, renames it over
the old one and fsyncs the directory (durable.py); the caller sends the vote only after
`save()` returns ("persist before you send"). `TermKeeper` is what a running node
keeps of it: what its disk holds, and why its last save failed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgspec

from node.errors import StateFileError
from node.server.config import is_node_id
from node.server.durable import replace_durably

log = logging.getLogger("distnode")

STATE_FILE = "election.json"
#: No honest cluster gets near this many terms; a bigger one is an attack on
#: the election (term + 1 would overflow the wire's uint64).
MAX_TERM = 1 << 62


class ElectionState(msgspec.Struct, frozen=True):
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
            text = self.path.read_text()
        except FileNotFoundError:
            return ElectionState()
        except OSError as exc:
            raise StateFileError(f"cannot read election state {self.path}: {exc.strerror or exc}") from None
        try:
            raw = json.loads(text)
        except ValueError as exc:
            # A torn write cannot happen (rename is atomic), so this is a damaged,
            # foreign or hand-edited file: refuse rather than forget a vote.
            raise self._damaged(f"is not JSON ({len(text)} bytes: {exc})") from None
        if not isinstance(raw, dict) or "term" not in raw:
            raise self._damaged('is not {"term": N, "voted_for": ID or null}')
        term, voted_for = raw["term"], raw.get("voted_for")
        if isinstance(term, bool) or not isinstance(term, int) or not 0 <= term <= MAX_TERM:
            raise self._damaged(f"has term {term!r}: not an integer from 0 to {MAX_TERM}")
        if voted_for is not None and (not isinstance(voted_for, str) or not is_node_id(voted_for)):
            raise self._damaged(f"has voted_for {voted_for!r}: not a node id or null")
        return ElectionState(term, voted_for)

    def _damaged(self, problem: str) -> StateFileError:
        return StateFileError(
            f"election state {self.path} {problem}; restore it from a backup, or start with"
            " --reset-state once you have read what that risks (docs/operations.md)"
        )

    def load_beside(self, last_log_term: int, journal_used: bool) -> ElectionState:
        """`load`, refused (StateFileError) where it contradicts the journal beside it: a node
        saves a term before it takes an entry of that term, so a journal that holds entries
        was written by a node whose file exists, with a term at least its last entry's. A
        file lost or swapped for an older one may have lost a vote: the node could vote twice
        in one term."""
        if journal_used and not self.path.exists():
            raise self._contradicts(f"is missing beside a journal of entries up to term {last_log_term}")
        state = self.load()
        if state.term < last_log_term:
            raise self._contradicts(f"has term {state.term}, below its journal's last ({last_log_term})")
        return state

    def _contradicts(self, problem: str) -> StateFileError:
        return StateFileError(
            f"election state {self.path} {problem}: it was lost or replaced by an older copy, and a vote"
            " with it; start with --reset-state once you have read what that risks (docs/operations.md)"
        )

    def reset(self, last_log_term: int, journal_used: bool = False) -> None:
        """Replace a state that cannot be read with the journal's last term and no vote
        (`--reset-state`); keep one that can.

        The term a node may have voted in is lost with the file: with no vote
        recorded it could vote again in that term, and two leaders of one term
        become possible. The journal's last term is only a floor. Safe when the
        cluster has moved past every term this node could have voted in (a
        leader elected since it stopped, which is what docs/operations.md asks
        the operator to check first). A file that loads, and agrees with the journal
        (`load_beside`), is never replaced: the
        flag left in a service's command line would otherwise drop the vote, and
        lower the term to the journal's, at every restart.
        """
        try:
            kept = self.load_beside(last_log_term, journal_used)
        except StateFileError:
            pass
        else:
            if not self.path.exists():
                return  # a new node: nothing to replace, nothing kept
            log.warning("--reset-state: %s is whole (term %d, %s): kept; the flag replaces only a state"
                        " that cannot be read", self.path, kept.term,
                        f"voted for {kept.voted_for}" if kept.voted_for else "no vote")
            return
        log.warning("--reset-state: %s replaced with term %d and no vote; this node may vote a"
                    " second time in a term it had voted in", self.path, last_log_term)
        self.save(ElectionState(last_log_term, None))

    def save(self, state: ElectionState) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"term": state.term, "voted_for": state.voted_for})
        replace_durably(self.path, payload.encode())


class TermKeeper:
    """The term and vote the disk holds, and why the last save failed ("" while saves work).

    Nothing that follows a failed save is sent (Raft §5.2): the caller goes back to
    `durable`, so the node refuses votes and heartbeats of newer terms instead of
    dragging its peers' terms along. It keeps serving, and saves again once every
    `retry_ticks` (`retry`) and at its next step, so a disk that frees up heals it."""

    def __init__(self, store: StateStore, durable: ElectionState, retry_ticks: int) -> None:
        self.store = store
        self.durable = durable
        self.error = ""
        self._retry_ticks = retry_ticks
        self._retry_in_ticks = 0

    def save(self, term: int, voted_for: str | None) -> bool:
        """Make `term` and `voted_for` durable; False (said once, as an ERROR) if the disk refused."""
        state = ElectionState(term, voted_for)
        try:
            self.store.save(state)
        except OSError as exc:
            if not self.error:
                log.error("cannot persist term %d and vote %r in %s: %s; refusing newer terms until it can",
                          term, voted_for, self.store.path, exc)
            self.error = f"{self.store.path}: {exc.strerror or exc}"
            return False
        self.durable = state
        if self.error:
            log.warning("%s is writable again (term %d)", self.store.path, term)
            self.error = ""
        return True

    def retry(self, ticks: int) -> None:
        """`ticks` elapsed: while a save has failed, save the durable state again once every
        `retry_ticks`, so a healed disk clears the error."""
        if not self.error:
            return
        self._retry_in_ticks -= ticks
        if self._retry_in_ticks <= 0:
            self._retry_in_ticks = self._retry_ticks
            self.save(self.durable.term, self.durable.voted_for)
