"""leaderprobe.py: only a refused connection makes a leader whose stream closed dead."""

from __future__ import annotations

import asyncio
import socket
import struct
from types import SimpleNamespace
from typing import Any

import pytest

from node.server.leaderprobe import after_stream_closed, gone


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Driver:
    """The parts of ElectionDriver the probe reads, and a record of `leader_gone`."""

    def __init__(self, address: str, following: bool = True) -> None:
        self.peers = SimpleNamespace(address_of=lambda node_id: address if node_id == "n1" else None)
        self.config = SimpleNamespace(heartbeat_ms=50)
        self.following = following
        self.gone: list[tuple[str, int]] = []

    def follows(self, leader_id: str, term: int) -> bool:
        return self.following and (leader_id, term) == ("n1", 7)

    def leader_gone(self, leader_id: str, term: int) -> None:
        self.gone.append((leader_id, term))


async def test_a_port_nothing_listens_on_is_gone() -> None:
    assert await gone(f"127.0.0.1:{closed_port()}", 1.0)


async def test_a_name_whose_every_address_refuses_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """`localhost` is often ::1 and 127.0.0.1; asyncio, dialling both itself, reports the two
    refusals as one plain OSError. Here a name resolves to two loopback addresses, neither
    served; and to one served and one not, which is alive."""
    loop = asyncio.get_running_loop()
    port = closed_port()
    resolved = {"twice.test": ["127.0.0.2", "127.0.0.1"]}
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in resolved:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in resolved[host]]
        return await real(host, port, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    assert await gone(f"twice.test:{port}", 1.0)
    server = await serving(b"\x00\x00\x12\x04", close=False)
    served = server.sockets[0].getsockname()[1]
    try:
        assert not await gone(f"twice.test:{served}", 1.0)  # 127.0.0.2 refuses, 127.0.0.1 speaks
    finally:
        server.close()
        await server.wait_closed()


async def serving(answer: bytes | None, close: bool, reset: bool = False) -> asyncio.Server:
    """A server on 127.0.0.1 that writes `answer` (if any) to each connection, then closes it
    if `close` (with a reset if `reset`: what a socket closed by an exiting process sends for
    the connections it had accepted), else keeps it open and silent."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if reset:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                       struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        try:
            if answer:
                writer.write(answer)
                await writer.drain()
            if not close:
                await reader.read()  # until the prober hangs up
        finally:
            writer.close()
            await writer.wait_closed()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize(("answer", "close", "reset", "dead"), [
    (b"\x00\x00\x12\x04", False, False, False),  # gRPC: its HTTP/2 settings at once
    (None, False, False, False),  # TLS: silent until the client speaks, longer than the probe waits
    (None, True, False, True),  # accepted, then closed before a byte
    (None, True, True, True),  # accepted by a listening socket whose process is exiting, then reset
])
async def test_a_server_is_alive_if_it_speaks_or_stays_silent(
    answer: bytes | None, close: bool, reset: bool, dead: bool
) -> None:
    server = await serving(answer, close, reset)
    try:
        assert await gone(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", 0.2) is dead
    finally:
        server.close()
        await server.wait_closed()


async def test_a_port_still_accepting_in_silence_is_dialled_once_more() -> None:
    """A killed process's listening socket may outlast its streams on a loaded host: the
    first dial is accepted and hears nothing for a beat, the second is refused. (One dial
    took that silence for a live leader, and its follower waited out its timer.)"""
    dials: list[int] = []

    async def dying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dials.append(1)
        server.close()  # the listening socket goes; this connection stays, silent
        await reader.read()
        writer.close()

    server = await asyncio.start_server(dying, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    assert await gone(f"127.0.0.1:{port}", 0.2)
    assert dials == [1]


async def test_a_dead_leader_is_reported_gone() -> None:
    driver = Driver(f"127.0.0.1:{closed_port()}")
    await after_stream_closed(driver, "n1", 7)  # type: ignore[arg-type]
    assert driver.gone == [("n1", 7)]


async def test_a_leader_that_answers_is_left_to_its_beats() -> None:
    """Its stream closed under it (a NAT, a conntrack flush): it still serves, so it lives."""
    server = await serving(b"\x00", close=False)
    try:
        driver = Driver(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        await after_stream_closed(driver, "n1", 7)  # type: ignore[arg-type]
        assert driver.gone == []
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stream_of_a_leader_we_no_longer_follow_is_not_even_dialled(monkeypatch: Any) -> None:
    dialled: list[str] = []

    async def record(address: str, timeout_s: float) -> bool:
        dialled.append(address)
        return True

    monkeypatch.setattr("node.server.leaderprobe.gone", record)
    driver = Driver(f"127.0.0.1:{closed_port()}", following=False)
    await after_stream_closed(driver, "n1", 7)  # type: ignore[arg-type]
    assert (dialled, driver.gone) == ([], [])
