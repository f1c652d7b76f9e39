"""Ask every node at once, take the answers as they come: a paused node then costs nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

R = TypeVar("R")


class Fanout(Generic[R]):
    """`ask(address)` for every address at once; iterate for (address, answer) as they come.

    More addresses may be added while iterating (each is asked once); the calls
    still pending when the `async with` block ends are cancelled and awaited.
    """

    def __init__(self, ask: Callable[[str], Awaitable[R]], addresses: list[str]) -> None:
        self._ask = ask
        self._pending: dict[asyncio.Future[R], str] = {}
        self._asked: set[str] = set()
        for address in addresses:
            self.add(address)

    def add(self, address: str) -> None:
        if address not in self._asked:
            self._asked.add(address)
            self._pending[asyncio.ensure_future(self._ask(address))] = address

    async def __aenter__(self) -> Fanout[R]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._pending:
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        self._pending.clear()

    def __aiter__(self) -> Fanout[R]:
        return self

    async def __anext__(self) -> tuple[str, R]:
        if not self._pending:
            raise StopAsyncIteration
        done, _ = await asyncio.wait(self._pending, return_when=asyncio.FIRST_COMPLETED)
        task = next(iter(done))
        return self._pending.pop(task), task.result()
