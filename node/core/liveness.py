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

After a stall of the leader's loop (`stalled`), answers read then may be as old
as the stall, and the stall is not counted as time (clock.py): the leader's
reads, which rest on a quorum hearing it, wait until a quorum answered a message
numbered after the stall (`serial`), or until a window of ticks has passed since.
"""

from __future__ import annotations


class Liveness:
    def __init__(self, peers: tuple[str, ...], window: int) -> None:
        # Ticks since each peer last answered us; None: not since `forget()`.
        self._heard: dict[str, int | None] = dict.fromkeys(peers)
        #: The number of the newest message each peer answered (Heartbeat.serial).
        self._serials: dict[str, int] = {}
        self.window = window
        #: Ticks since the quorum was last checked (or since `forget()`).
        self.since_check = 0
        #: After a stall: the last message number sent before it, and the ticks until evidence
        #: counts again anyway.
        self._stall_serial: int | None = None
        self._stall_ticks_left = 0

    def __contains__(self, peer: str) -> bool:
        return peer in self._heard

    def tick(self, ticks: int = 1) -> None:
        self.since_check += ticks
        for peer, heard in self._heard.items():
            if heard is not None:
                self._heard[peer] = heard + ticks
        self._stall_ticks_left -= ticks
        if self._stall_ticks_left <= 0:
            self._stall_serial = None

    def heard(self, peer: str, serial: int = 0, again: bool = False) -> None:
        """`peer` answered; `serial`: the number of the message it answered (0: unknown). An
        answer to a message no newer than one already counted is no news (a reply held while
        the leader's own write was pending is counted on arrival, then stepped after it),
        unless `again`: an answer never held and never stepped (a writing one), so never
        counted twice, though its number may be old (a snapshot's chunks share one, answered
        one by one as they arrive, maybe after later messages' answers by datagram). The
        numbers themselves only go up (`current`)."""
        if peer in self._heard:
            if serial:
                seen = self._serials.get(peer, 0)
                if serial > seen:
                    self._serials[peer] = serial
                elif not again:
                    return
            self._heard[peer] = 0

    def stalled(self, serial: int) -> None:
        """The leader's loop stalled; `serial`: the last message number it sent before."""
        # A window and a tick: evidence read just after the stall counts while its age is at most a window.
        self._stall_serial, self._stall_ticks_left = serial, self.window + 1

    def current(self, quorum: int) -> bool:
        """Whether the evidence holds for reads: no stall since a window, or a quorum (counting
        the leader) answered a message sent after it."""
        stall = self._stall_serial
        return stall is None or sum(1 for serial in self._serials.values() if serial > stall) + 1 >= quorum

    def forget(self) -> None:
        """No evidence from anybody yet (a new term's leader), and no check for a window."""
        self._heard = dict.fromkeys(self._heard)
        self.since_check = 0
        self._serials, self._stall_serial = {}, None

    def check_due(self, beat: bool) -> bool:
        """Is CheckQuorum to run on this tick (`beat`: a beat goes out on it)?"""
        return beat and self.since_check >= self.window

    def ticks_since_heard(self) -> dict[str, int | None]:
        return dict(self._heard)

    def active(self, limit: int) -> set[str]:
        """Peers that answered within the last `limit` ticks."""
        return {peer for peer, ticks in self._heard.items() if ticks is not None and ticks <= limit}
