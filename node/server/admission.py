"""How many jobs one client may have in flight at the node it submits to.

Counted per gRPC connection (the peer string gRPC reports), or per process on
the local socket (`local:pid=N`, localsocket.py), on the first hop
only: a follower relaying to the leader counts its client's jobs, the leader
does not count them again. Over the limit is RESOURCE_EXHAUSTED, before the
job costs anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from node.errors import LimitExceeded


class ClientSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[str, int] = {}

    @contextlib.contextmanager
    def take(self, client: str) -> Iterator[None]:
        """Hold one of `client`'s slots for the duration of the block."""
        held = self._in_flight.get(client, 0)
        if held >= self.limit:
            raise LimitExceeded(f"max-jobs-per-client: {self.limit} jobs already in flight from {client}")
        self._in_flight[client] = held + 1
        try:
            yield
        finally:
            self._in_flight[client] -= 1
            if not self._in_flight[client]:
                del self._in_flight[client]

    def held(self, client: str) -> int:
        return self._in_flight.get(client, 0)
