"""Committed entries on their way into the job table, a follower's a slice at a time.

Every node applies each committed record to its job table (ledger.py). The
leader batches attached jobs' records, a few hundred to an entry at a
thousand small jobs a second, and both followers learn of the commit in the
same heartbeat round. Decoding and applying such an entry at once took each
follower most of a millisecond, both cores together, while the leader and
its client were in the middle of the next small job: those jobs waited for
a core, and they were the small-job p99 (docs/journal.md, "Followers apply
in slices").

So a follower applies SLICE_RECORDS records a turn, one turn every GAP_S,
or more a turn when its backlog would otherwise outlast WITHIN_S (whatever
the rate, a backlog ends inside the leader's flush interval), decoding each
record only when its turn comes. Records go in in log order and the table
after each is a function of the records before it (JobTable.put), so
slicing changes nothing a reader can see once the backlog is applied, and
every reader of the table applies it first (`drain`).
"""

from __future__ import annotations

import asyncio
import collections
import math
from collections.abc import Callable, Mapping

from node.core.jobtable import JobTable, Proposed, Records
from node.core.raftlog import Entry

#: Records a follower applies in one turn of its event loop, at least.
SLICE_RECORDS = 4
#: Between two turns.
GAP_S = 0.003
#: A backlog is applied within about this long, however large (the slices grow).
WITHIN_S = 0.09

#: Told, after each application, of the entries it ended (maybe none: a slice may end
#: inside one) and of the job ids whose record changed, in order.
OnApplied = Callable[[list[Entry], list[str]], None]


class Backlog:
    def __init__(self, table: JobTable, on_applied: OnApplied) -> None:
        self._table = table
        self._on_applied = on_applied
        #: Entries not yet wholly applied, each with its records still to go.
        self._entries: collections.deque[tuple[Entry, Records]] = collections.deque()
        #: About how many records are still to go, and how many a turn takes until none are.
        self._records = 0
        self._per_turn = SLICE_RECORDS
        self._later: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        """Entries not yet wholly applied."""
        return len(self._entries)

    def feed(self, entries: tuple[Entry, ...], known: Mapping[int, Proposed] | None, at_once: bool) -> None:
        """`add` them, then apply them now (`at_once`) or a slice now and the rest later."""
        self.add(entries, known)
        if at_once:
            self.drain()
        else:
            self.pace()

    def add(self, entries: tuple[Entry, ...], known: Mapping[int, Proposed] | None = None) -> None:
        """Committed entries, in log order (`known`: see JobTable.records)."""
        for entry in entries:
            self._entries.append((entry, self._table.records(entry, known)))
            if entry.kind == "command":
                self._records += entry.data.count(b"\n") + 1
        self._per_turn = max(self._per_turn, math.ceil(self._records * GAP_S / WITHIN_S))

    def drain(self) -> None:
        """Apply everything now."""
        if self._entries:
            self.apply(None)

    def pace(self) -> None:
        """Apply a slice now and the rest in later turns (a no-op while slices are under way)."""
        if self._later is None:
            self._slice()

    def close(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None

    def _slice(self) -> None:
        self._later = None
        self.apply(self._per_turn)
        if self._entries:
            self._later = asyncio.get_running_loop().call_later(GAP_S, self._slice)

    def apply(self, limit: int | None) -> None:
        """Apply up to `limit` records (None: all), in order; report what changed."""
        changed: list[str] = []
        ended: list[Entry] = []
        while self._entries:
            entry, records = self._entries[0]
            for record, line in records:
                self._records -= 1
                if self._table.put(record, line):
                    changed.append(record.job_id)
                if limit is not None:
                    limit -= 1
                    if limit <= 0:
                        break
            else:
                self._entries.popleft()
                ended.append(entry)
                continue
            break  # the slice is done; the entry's rest, maybe none, goes next time
        if not self._entries:
            self._records, self._per_turn = 0, SLICE_RECORDS
        if ended or changed:
            self._on_applied(ended, changed)
