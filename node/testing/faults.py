"""A fault-injecting TCP proxy: the harness's way to cut, heal and slow links.

Theory of operation
-------------------
A `Link` listens on a fresh 127.0.0.1 port and forwards every connection it
accepts to one target address, byte for byte (so it is blind to HTTP/2 and
would carry TLS unchanged). The harness makes one link per ordered pair of
nodes (i -> j) and gives node i the links' addresses as its `--peers`, so
every connection i *initiates* to j crosses the link i -> j. gRPC replies
travel back on the initiator's connection, so cutting i -> j alone means
"i's RPCs to j fail" while j's RPCs to i still work: a one-way cut as the
transport sees it.

A link is open or cut. Cutting it closes every established connection at once
(in-flight RPCs fail, nothing half-delivered survives), then treats new
connections by the link's `mode`:

- "blackhole" (default, the realistic one): accept and forward nothing, like
  a partition in which packets vanish; the peer's RPCs time out. Held
  connections are closed when the link heals, so the peer reconnects afresh.
- "refuse": accept and close at once, like a dead host's RST; RPCs fail fast.

A delay holds every chunk for `delay_ms` before forwarding it, in both
directions of the connection, so a request/reply pair costs 2 x delay_ms
more; order is kept and backpressure is preserved (bounded queues).

Each link also relays UDP on the same port number, because a node sends its
heartbeats as datagrams to the UDP twin of a peer's address
(node/server/beacons.py). Datagrams to the link go to the target's UDP port; the
target's answers go back to whoever sent to the link last (only the near-end
node does). A cut drops datagrams both ways, in either mode (UDP has no
connection to refuse); a delay holds each one for `delay_ms`.

All links run on one asyncio loop in a daemon thread (`FaultProxy`); its
methods are thread-safe and return once the change is in effect, so a caller
that cuts a link knows the established connections are already gone. The
thread dies with the process: links never outlive the harness.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from node.addresses import split_host_port

T = TypeVar("T")
Mode = Literal["blackhole", "refuse"]
MODES: tuple[Mode, ...] = ("blackhole", "refuse")

#: Bytes read at once from either side.
CHUNK_BYTES = 64 * 1024
#: Chunks buffered per direction before the reader waits for the writer.
QUEUE_CHUNKS = 64
#: How long the proxy waits to reach a target (a dead target refuses at once).
CONNECT_TIMEOUT_S = 2.0
#: How long a thread-safe call waits for the proxy loop to act.
CALL_TIMEOUT_S = 10.0
#: Fresh ports tried when a link's UDP twin port is taken.
BIND_TRIES = 20


@dataclass(eq=False)  # kept in sets: identity, not value, is what counts
class _Connection:
    """One accepted connection and, once open, its upstream; aborted as a whole."""

    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in self.writers:
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class Link:
    """One listening port forwarding to `target`, with its faults. Loop-thread only."""

    def __init__(self, name: str, target: str, mode: Mode = "blackhole") -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {mode!r}")
        self.name = name
        self.target = target
        self.mode: Mode = mode
        self.cut = False
        self.delay_s = 0.0
        #: Connections accepted and forwarding, and those held by a blackhole.
        self._open: set[_Connection] = set()
        self._held: set[_Connection] = set()
        #: Every connection accepted and not yet ended, whatever its state: stop() aborts
        #: them all (one accepted as the link stopped, still connecting to its target or not
        #: yet handled, was left open, and its transport warned when collected).
        self._accepted: set[_Connection] = set()
        self._stopped = False
        self._server: asyncio.Server | None = None
        self.port = 0
        self._udp_front: Any = None  # DatagramTransport on `port`
        self._udp_back: Any = None  # DatagramTransport connected to the target
        self._udp_sender: Any = None  # the address that last sent to the link
        #: Counters, for tests and reports.
        self.accepted = 0
        self.blackholed = 0
        self.refused = 0
        self.datagrams = 0
        self.datagrams_dropped = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(BIND_TRIES):
            server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            try:
                self._udp_front, _ = await loop.create_datagram_endpoint(
                    lambda: _Datagrams(self._from_sender), local_addr=("127.0.0.1", port)
                )
            except OSError:  # the UDP twin is taken: try another port
                server.close()
                continue
            self._server, self.port = server, port
            break
        else:
            raise OSError(f"link {self.name}: no port free for both TCP and UDP in {BIND_TRIES} tries")
        self._udp_back, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._from_target), remote_addr=split_host_port(self.target)
        )

    async def stop(self) -> None:
        self._stopped = True
        if self._server is not None:
            self._server.close()
        for transport in (self._udp_front, self._udp_back):
            if transport is not None:
                transport.close()
        for conn in [*self._open, *self._held, *self._accepted]:
            conn.abort()
        self._open.clear()
        self._held.clear()
        self._accepted.clear()

    def set_cut(self, cut: bool) -> None:
        """Cut: drop established connections. Heal: drop the blackholed ones."""
        self.cut = cut
        doomed = self._open if cut else self._held
        for conn in list(doomed):
            conn.abort()
        doomed.clear()

    # -- datagrams ---------------------------------------------------------

    def _from_sender(self, data: bytes, addr: Any) -> None:
        self._udp_sender = addr
        self._relay(lambda: self._udp_back.sendto(data))

    def _from_target(self, data: bytes, addr: Any) -> None:
        sender = self._udp_sender
        if sender is not None:
            self._relay(lambda: self._udp_front.sendto(data, sender))

    def _relay(self, send: Callable[[], None]) -> None:
        if self.cut:
            self.datagrams_dropped += 1
        elif self.delay_s > 0:
            asyncio.get_running_loop().call_later(self.delay_s, self._deliver, send)
        else:
            self._deliver(send)

    def _deliver(self, send: Callable[[], None]) -> None:
        if self.cut:  # cut while it was held
            self.datagrams_dropped += 1
            return
        self.datagrams += 1
        with contextlib.suppress(OSError):
            send()

    # -- per connection ---------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(writers=[writer])
        if self._stopped:  # accepted as the link stopped: ended at once
            conn.abort()
            return
        self.accepted += 1
        self._accepted.add(conn)
        try:
            await self._handle(conn, reader, writer)
        finally:
            self._accepted.discard(conn)

    async def _handle(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.cut:
            await self._refuse_or_hold(conn, reader)
            return
        connecting = asyncio.ensure_future(asyncio.open_connection(*split_host_port(self.target)))
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                up_reader, up_writer = await asyncio.shield(connecting)
        except BaseException as exc:
            # Given up (timed out, or the proxy stopping cancelled us) as the connection may have
            # just been made: closed then, not left to the garbage collector's warning.
            connecting.cancel()
            connecting.add_done_callback(_close_if_made)
            if not isinstance(exc, OSError):
                raise
            conn.abort()  # refused, or timed out: the initiator sees the connection die
            return
        conn.writers.append(up_writer)
        if self.cut or self._stopped:  # cut, or stopped, while we were connecting
            conn.abort()
            return
        self._open.add(conn)
        conn.tasks = [
            asyncio.create_task(self._pump(reader, up_writer, conn)),
            asyncio.create_task(self._pump(up_reader, writer, conn)),
        ]
        await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def _refuse_or_hold(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        if self.mode == "refuse":
            self.refused += 1
            conn.abort()
            return
        # Blackhole: swallow whatever arrives until the peer gives up or we heal.
        self.blackholed += 1
        self._held.add(conn)
        with contextlib.suppress(OSError):
            while await reader.read(CHUNK_BYTES):
                pass
        self._held.discard(conn)
        conn.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        """Copy one direction, holding each chunk for the link's delay."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        sender = asyncio.create_task(self._send(queue, writer, conn))
        try:
            while data := await reader.read(CHUNK_BYTES):
                await queue.put((loop.time() + self.delay_s, data))
            await queue.put((loop.time() + self.delay_s, b""))  # EOF, after the data
            await sender
        except OSError:
            pass
        finally:
            sender.cancel()
            # One side is done: so is the connection (gRPC never half-closes).
            self._open.discard(conn)
            conn.abort()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter, conn: _Connection
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due_s, data = await queue.get()
                wait_s = due_s - loop.time()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if not data:
                    return
                writer.write(data)
                await writer.drain()
        except OSError:
            self._open.discard(conn)
            conn.abort()  # the other side is gone: so is the connection


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Any], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # nothing listens at the target (yet): the datagram is lost, as UDP allows


class FaultProxy:
    """Links on a private event loop in a daemon thread. Every method is thread-safe."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="distnode-faults", daemon=True
        )
        self._thread.start()
        self._links: dict[str, Link] = {}

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT_S)

    def add(self, name: str, target: str, mode: Mode = "blackhole") -> str:
        """Start a link forwarding to `target` (HOST:PORT); return the address it listens on."""
        if name in self._links:
            raise ValueError(f"link {name!r} exists already")
        link = Link(name, target, mode)
        self._call(link.start())
        self._links[name] = link
        return link.address

    def link(self, name: str) -> Link:
        try:
            return self._links[name]
        except KeyError:
            raise KeyError(f"no link {name!r}") from None

    @property
    def names(self) -> list[str]:
        return list(self._links)

    def cut(self, name: str) -> None:
        self._call(self._set(name, cut=True))

    def heal(self, name: str) -> None:
        """Reopen the link and remove its delay."""
        self._call(self._set(name, cut=False, delay_s=0.0))

    def delay(self, name: str, ms: float) -> None:
        if ms < 0:
            raise ValueError(f"delay: ms must be >= 0, got {ms}")
        self._call(self._set(name, delay_s=ms / 1000))

    async def _set(self, name: str, cut: bool | None = None, delay_s: float | None = None) -> None:
        link = self.link(name)
        if delay_s is not None:
            link.delay_s = delay_s
        if cut is not None and cut != link.cut:
            link.set_cut(cut)

    def close(self) -> None:
        """Stop every link and the loop thread (idempotent)."""
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(self._stop_all())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CALL_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()

    async def _stop_all(self) -> None:
        for link in self._links.values():
            await link.stop()
        # With every connection aborted, each handler ends by itself. Cancelling
        # one instead makes asyncio's stream server (Python 3.11) log the
        # cancellation as an error, once per connection.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not others:
            return
        _, stuck = await asyncio.wait(others, timeout=CALL_TIMEOUT_S / 2)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)


def _close_if_made(connecting: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result()[1].close()
