"""Who answered lately: the consensus core's failure detector, in ticks.

A leader keeps its role only while the peers that answered within the last
election timeout and itself are a quorum (CheckQuorum, thesis §6.2), and the
daemon hands work only to those peers. A new leader starts with no evidence.
"""

from __future__ import annotations


class Liveness:
    def __init__(self, peers: tuple[str, ...]) -> None:
        # Ticks since each peer last answered us; None: not since `forget()`.
        self._heard: dict[str, int | None] = dict.fromkeys(peers)

    def __contains__(self, peer: str) -> bool:
        return peer in self._heard

    def tick(self, ticks: int = 1) -> None:
        for peer, heard in self._heard.items():
            if heard is not None:
                self._heard[peer] = heard + ticks

    def heard(self, peer: str) -> None:
        if peer in self._heard:
            self._heard[peer] = 0

    def forget(self) -> None:
        """No evidence from anybody yet (a new term's leader)."""
        self._heard = dict.fromkeys(self._heard)

    def ticks_since_heard(self) -> dict[str, int | None]:
        return dict(self._heard)

    def active(self, limit: int) -> set[str]:
        """Peers that answered within the last `limit` ticks."""
        return {peer for peer, ticks in self._heard.items() if ticks is not None and ticks <= limit}
