"""Raft's log in memory: entries after a snapshot, and the checks of §5.3, §5.4.1 and §7.

Pure data structure: no I/O. The consensus core (election.py, replication.py)
changes it and tells the caller, as `AppendLog` outputs, what to make durable
in the same order, so the caller's file and this object hold the same log.

Index 0 is the empty prefix (term 0). A snapshot replaces every entry up to
`snapshot_index`; their terms are gone except the last one's
(`snapshot_term`), which is all log matching needs (§7).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

#: What an entry's `data` is for (see Entry).
KINDS = ("noop", "command", "config")


class Entry(msgspec.Struct, frozen=True):
    """One log entry. `kind` says how to read `data`: "noop" (a new leader's first
    entry, §5.4.2), "command" (for the state machine); a membership change
    (§6) would be one more kind, so the log needs no new shape for it."""

    index: int
    term: int
    kind: str = "command"
    data: bytes = b""


class RaftLog:
    def __init__(
        self, snapshot_index: int = 0, snapshot_term: int = 0, entries: Iterable[Entry] = ()
    ) -> None:
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        self._entries: list[Entry] = []
        for entry in entries:
            self.append(entry)

    def __len__(self) -> int:
        return len(self._entries)

    def copy(self) -> RaftLog:
        return RaftLog(self.snapshot_index, self.snapshot_term, self._entries)

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`; None if it is compacted away or not there yet."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if index < self.snapshot_index or index > self.last_index:
            return None
        return self._entries[index - self.snapshot_index - 1].term

    def entry(self, index: int) -> Entry:
        if not self.snapshot_index < index <= self.last_index:
            raise IndexError(f"entry {index} is not in the log ({self.snapshot_index}, {self.last_index}]")
        return self._entries[index - self.snapshot_index - 1]

    def entries(self, first: int, last: int | None = None) -> tuple[Entry, ...]:
        """Entries `first`..`last` inclusive (to the end if `last` is None); `first` after the snapshot."""
        if first <= self.snapshot_index:
            raise IndexError(f"entry {first} is compacted (snapshot at {self.snapshot_index})")
        end = self.last_index if last is None else min(last, self.last_index)
        return tuple(self._entries[first - self.snapshot_index - 1:end - self.snapshot_index])

    def up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a log ending at (last_index, last_term) is at least as up to date as ours."""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def append(self, entry: Entry) -> None:
        if entry.index != self.last_index + 1 or entry.term < self.last_term:
            raise ValueError(
                f"entry ({entry.index}, {entry.term}) cannot follow ({self.last_index}, {self.last_term})"
            )
        self._entries.append(entry)

    def merge(self, entries: tuple[Entry, ...]) -> tuple[int, tuple[Entry, ...]]:
        """§5.3 step 3-4: drop our entries from the first conflict on, append what is new.

        The caller has checked that the entry before `entries[0]` matches.
        Returns (after, appended): entries past index `after` were replaced by
        `appended` (nothing changed if `appended` is empty), which is exactly
        what the caller must make durable.
        """
        for position, entry in enumerate(entries):
            if entry.index <= self.snapshot_index:
                continue  # committed, so already ours (§5.4.3)
            ours = self.term_at(entry.index)
            if ours == entry.term:
                continue
            if ours is not None:
                del self._entries[entry.index - self.snapshot_index - 1:]
            rest = entries[position:]
            for new in rest:
                self.append(new)
            return entry.index - 1, rest
        return self.last_index, ()

    def replace_after(self, after: int, entries: tuple[Entry, ...]) -> None:
        """What an `AppendLog` asks of a durable copy: drop the entries after `after`, append these."""
        if not self.snapshot_index <= after <= self.last_index:
            raise IndexError(f"cannot append after {after}: log ({self.snapshot_index}, {self.last_index}]")
        del self._entries[after - self.snapshot_index:]
        for entry in entries:
            self.append(entry)

    def conflict_hint(self, prev_index: int) -> int:
        """Where a leader should try next after our log did not match at `prev_index`:
        one past our end, or the first index of our conflicting term (fast back-off, §5.3)."""
        if prev_index > self.last_index:
            return self.last_index + 1
        term = self.term_at(prev_index)
        index = prev_index
        while index - 1 > self.snapshot_index and self.term_at(index - 1) == term:
            index -= 1
        return max(index, self.snapshot_index + 1)

    def compact(self, index: int) -> None:
        """§7: entries up to `index` are in a snapshot now; forget them."""
        term = self.term_at(index)
        if term is None:
            raise IndexError(
                f"cannot compact to {index}: not in the log ({self.snapshot_index}, {self.last_index}]"
            )
        del self._entries[:index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term

    def restore(self, index: int, term: int) -> bool:
        """§7, a follower given a snapshot: keep the entries after it if ours agree at
        `index`, else drop the whole log. True if the suffix was kept."""
        if self.term_at(index) == term and index >= self.snapshot_index:
            self.compact(index)
            return True
        self._entries.clear()
        self.snapshot_index, self.snapshot_term = index, term
        return False
