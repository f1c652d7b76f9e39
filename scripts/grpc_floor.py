"""The floor under a small job: what one gRPC round trip costs in Python on this host.

    python scripts/grpc_floor.py [--calls 2000] [--json PATH]

An echo server (grpc.aio on uvloop, in a process of its own, as a daemon is) answers
one byte; a client times round trips after 300 untimed ones, a unary call
and a write-then-read on one open bidirectional stream in turn (so the
host's drift lands on both), from the blocking and from the asyncio API.
Medians, in ms. Then the CPU one stream round trip costs each side: the
server process's CPU time (/proc) and the client's, over 5,000 round trips
on one stream of the blocking API (what the blocking Client does), in µs.

Beside the two gRPC round trips, one on an abstract Unix socket framed as a
node's local socket is (node/server/localsocket.py), with its CPU per round
trip too.

Last, what batching buys: on one asyncio stream, a writer and a reader
run at once (as the AsyncClient's 32 jobs in flight do), with every message
holding 1, 4 or 16 items of 120 bytes (a small job's request); CPU per item
of each side, in µs, over 16,000 items per size.

Why: a small job is one round trip plus microseconds of work, so its p50
cannot go below the unary figure; a multiplexed submit stream (many jobs on
one stream) pays the stream's figure instead, and a batched one (SubmitBatches)
the stream's figure divided among the jobs a message holds.
docs/timeline.md quotes the result.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import queue
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from benchlib import print_json, process_cpu_s

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from node.wire.localframes import ABSTRACT_PREFIX, HEADER

SERVICE = "floor.Echo"
#: The echo's abstract Unix socket, named by the server's pid.
UNIX_NAME = "distnode-grpc-floor-"
WARMUP = 300


async def _echo_frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The local socket's framing (node/wire/localframes.py): a 4-byte length, then the body."""
    try:
        while True:
            header = await reader.readexactly(HEADER.size)
            writer.write(header + await reader.readexactly(HEADER.unpack(header)[0]))
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _serve(ports: multiprocessing.Queue[int]) -> None:
    async def unary(request: bytes, context: Any) -> bytes:
        return request

    async def stream(requests: Any, context: Any) -> Any:
        async for request in requests:
            yield request

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.stream_stream_rpc_method_handler(stream),
    })
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await asyncio.start_unix_server(_echo_frames, path=ABSTRACT_PREFIX + UNIX_NAME + str(os.getpid()))
    ports.put(port)
    await server.wait_for_termination()


def serve(ports: multiprocessing.Queue[int]) -> None:
    """The echo server, on uvloop where it is installed, as a daemon runs."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(ports))
        return
    uvloop.run(_serve(ports))


def median_ms(samples_s: list[float]) -> float:
    return round(statistics.median(samples_s) * 1000, 3)


class StreamEcho:
    """One open echo stream on gRPC's blocking API, fed from a queue as the blocking Client
    feeds its streams: `round_trip` writes one byte and reads it back."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._requests: queue.Queue[bytes | None] = queue.Queue()
        self._replies = channel.stream_stream(f"/{SERVICE}/Stream")(self._feed())

    def _feed(self) -> Iterator[bytes]:
        while (request := self._requests.get()) is not None:
            yield request

    def round_trip(self) -> None:
        self._requests.put(b"x")
        next(self._replies)

    def close(self) -> None:
        self._requests.put(None)


class UnixEcho:
    """One connection to the server's abstract Unix socket, framed as a node's local socket
    is: `round_trip` writes one byte in a frame and reads the frame back."""

    def __init__(self, server_pid: int) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(ABSTRACT_PREFIX + UNIX_NAME + str(server_pid))
        self._frame = HEADER.pack(1) + b"x"

    def round_trip(self) -> None:
        self._sock.sendall(self._frame)
        got = 0
        while got < len(self._frame):
            got += len(self._sock.recv(64))

    def close(self) -> None:
        self._sock.close()


def blocking_figures(address: str, server_pid: int, calls: int) -> dict[str, float]:
    with grpc.insecure_channel(address) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        stream = StreamEcho(channel)
        unix = UnixEcho(server_pid)
        unary_s, stream_s, unix_s = [], [], []
        for number in range(WARMUP + calls):  # one of each in turn: drift lands on all
            started = time.perf_counter()
            unary(b"x")
            between = time.perf_counter()
            stream.round_trip()
            streamed = time.perf_counter()
            unix.round_trip()
            if number >= WARMUP:
                unary_s.append(between - started)
                stream_s.append(streamed - between)
                unix_s.append(time.perf_counter() - streamed)
        stream.close()
        unix.close()
    return {"blocking_unary_ms": median_ms(unary_s), "blocking_stream_ms": median_ms(stream_s),
            "unix_socket_ms": median_ms(unix_s)}


def cpu_figures(address: str, server_pid: int, calls: int = 5000) -> dict[str, float]:
    """CPU per round trip on an open blocking stream: the server's, and this client's."""
    with grpc.insecure_channel(address) as channel:
        stream = StreamEcho(channel)
        for _ in range(WARMUP):
            stream.round_trip()
        server0_s, client0_s = process_cpu_s(server_pid), time.process_time()
        for _ in range(calls):
            stream.round_trip()
        server_s, client_s = process_cpu_s(server_pid) - server0_s, time.process_time() - client0_s
        stream.close()
    unix = UnixEcho(server_pid)
    server0_s, client0_s = process_cpu_s(server_pid), time.process_time()
    for _ in range(calls):
        unix.round_trip()
    unix_server_s, unix_client_s = process_cpu_s(server_pid) - server0_s, time.process_time() - client0_s
    unix.close()
    return {"stream_server_cpu_us": round(server_s / calls * 1e6, 1),
            "stream_client_cpu_us": round(client_s / calls * 1e6, 1),
            "unix_server_cpu_us": round(unix_server_s / calls * 1e6, 1),
            "unix_client_cpu_us": round(unix_client_s / calls * 1e6, 1)}


async def asyncio_figures(address: str, calls: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        unary = channel.unary_unary(f"/{SERVICE}/Unary")
        call = channel.stream_stream(f"/{SERVICE}/Stream")()
        unary_s, stream_s = [], []
        for number in range(WARMUP + calls):
            started = time.perf_counter()
            await unary(b"x")
            between = time.perf_counter()
            await call.write(b"x")
            await call.read()
            if number >= WARMUP:
                unary_s.append(between - started)
                stream_s.append(time.perf_counter() - between)
        await call.done_writing()
    return {"asyncio_unary_ms": median_ms(unary_s), "asyncio_stream_ms": median_ms(stream_s)}


async def _batched(address: str, per_message: int, items: int) -> float:
    """This process's CPU per item, streaming `items` echoes `per_message` to a message."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.stream_stream(f"/{SERVICE}/Stream")()
        message = b"x" * (120 * per_message)
        for _ in range(WARMUP):
            await call.write(message)
            await call.read()

        async def write() -> None:
            for _ in range(items // per_message):
                await call.write(message)

        async def read() -> None:
            for _ in range(items // per_message):
                await call.read()

        started_s = time.process_time()
        await asyncio.gather(write(), read())
        took_s = time.process_time() - started_s
        await call.done_writing()
    return took_s / items * 1e6


def batch_figures(address: str, server_pid: int, items: int = 16_000) -> dict[str, float]:
    """CPU per item of each side, for messages of 1, 4 and 16 items."""
    found = {}
    for per_message in (1, 4, 16):
        server0_s = process_cpu_s(server_pid)
        client_us = asyncio.run(_batched(address, per_message, items))
        server_us = (process_cpu_s(server_pid) - server0_s) / items * 1e6
        found[f"batch_{per_message}_client_cpu_us"] = round(client_us, 1)
        found[f"batch_{per_message}_server_cpu_us"] = round(server_us, 1)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    server = multiprocessing.Process(target=serve, args=(ports,), daemon=True)
    server.start()
    try:
        address = f"127.0.0.1:{ports.get(timeout=30)}"
        assert server.pid is not None
        found = {"grpcio": grpc.__version__, **blocking_figures(address, server.pid, args.calls),
                 **asyncio.run(asyncio_figures(address, args.calls))}
        found.update(cpu_figures(address, server.pid))
        found.update(batch_figures(address, server.pid))
    finally:
        server.terminate()
        server.join(timeout=10)
    print_json(found, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
