"""A node's data dir opened: locked for this process, its journal replayed, and the term
and vote saved beside it read (and checked against the journal). Whatever fails on the
way lets the lock go, so the same process may try again."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from node.core.raftlog import RaftLog
from node.server.journal import Journal
from node.server.startchecks import DirClaim, check_data_dir
from node.server.statestore import ElectionState, StateStore


class Opened(NamedTuple):
    claim: DirClaim
    store: StateStore
    journal: Journal
    log: RaftLog
    saved: ElectionState


def open_data_dir(data_dir: Path, reset_state: bool) -> Opened:
    """CannotStart (no dir, no durable write, held by another process), JournalDamaged or
    StateFileError: one line each, exit 2 for `distnode start`."""
    claim = check_data_dir(data_dir)
    try:
        store, journal = StateStore(data_dir), Journal(data_dir)
        raft_log = journal.open()
        journal_used = raft_log.last_index > 0
        if reset_state:
            store.reset(raft_log.last_term, journal_used)
        return Opened(claim, store, journal, raft_log, store.load_beside(raft_log.last_term, journal_used))
    except BaseException:
        claim.release()
        raise
