"""Who answered lately: the consensus core's failure detector, in ticks.

A leader keeps its role only while the peers that answered within the last
election timeout and itself are a quorum (CheckQuorum, thesis §6.2), and the
daemon hands work only to those peers. A new leader starts with no evidence.

When to ask (`check_due`): on the first beat tick once `window` ticks have
passed since the last check. A leader beats at least twice a window, so the
check comes at most one beat interval late, and it rides a wake the leader
has anyway: a wake of its own costs an idle leader more than the check
(docs/observability.md). Never sooner than a window apart: asking more often
would find more of a loaded host's late answers, and depose more leaders.
"""

from __future__ import annotations


class Liveness:
    def __init__(self, peers: tuple[str, ...], window: int) -> None:
        # Ticks since each peer last answered us; None: not since `forget()`.
        self._heard: dict[str, int | None] = dict.fromkeys(peers)
        self.window = window
        #: Ticks since the quorum was last checked (or since `forget()`).
        self.since_check = 0

    def __contains__(self, peer: str) -> bool:
        return peer in self._heard

    def tick(self, ticks: int = 1) -> None:
        self.since_check += ticks
        for peer, heard in self._heard.items():
            if heard is not None:
                self._heard[peer] = heard + ticks

    def heard(self, peer: str) -> None:
        if peer in self._heard:
            self._heard[peer] = 0

    def forget(self) -> None:
        """No evidence from anybody yet (a new term's leader), and no check for a window."""
        self._heard = dict.fromkeys(self._heard)
        self.since_check = 0

    def check_due(self, beat: bool) -> bool:
        """Is CheckQuorum to run on this tick (`beat`: a beat goes out on it)?"""
        return beat and self.since_check >= self.window

    def ticks_since_heard(self) -> dict[str, int | None]:
        return dict(self._heard)

    def active(self, limit: int) -> set[str]:
        """Peers that answered within the last `limit` ticks."""
        return {peer for peer, ticks in self._heard.items() if ticks is not None and ticks <= limit}
