"""What ties an asyncio object to one event loop: that of its first use.

grpc.aio's channels and calls, and the tasks and sockets an `AsyncClient` keeps,
belong to the loop they were made on. Used from another (a second
`asyncio.run` with one client), they failed deep inside grpc with "Event loop
is closed"; `OneLoop.check` says so up front, as a `ConfigError`.
"""

from __future__ import annotations

import asyncio

from node.errors import ConfigError


class OneLoop:
    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.loop: asyncio.AbstractEventLoop | None = None

    def check(self) -> None:
        """Take the running loop as this object's if it has none; ConfigError if it has another."""
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
        elif loop is not self.loop:
            raise ConfigError(f"{self.owner}: made on another event loop; make one per loop "
                              f"(`async with {self.owner}(...)` inside each asyncio.run)")

    @property
    def gone(self) -> bool:
        """Its loop has closed: whatever was opened on it went with it."""
        return self.loop is not None and self.loop.is_closed()
