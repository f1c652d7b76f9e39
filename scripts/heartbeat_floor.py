"""What heartbeats cost on gRPC's asyncio stack alone, without distnode.

    python scripts/heartbeat_floor.py [--beat-ms 50] [--followers 2] [--seconds 20]

A bare "leader" process keeps one bidirectional stream open to each bare
"follower" process (uvloop, as the daemon), writes a 40-byte message on
every stream every beat, and reads the echo: the same message pattern as an
idle distnode leader, with no election, no protobuf and no bookkeeping.
It prints the leader's CPU use as a percentage of one core: the floor under
the "idle node CPU" figure of scripts/bench.py at that beat.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import time
from typing import Any

import grpc
import uvloop

METHOD = "/floor.Floor/Beat"


def cpu_s() -> float:
    stat = open("/proc/self/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def follower(port: int) -> None:
    async def serve() -> None:
        async def echo(requests: Any, context: Any) -> Any:
            async for message in requests:
                yield message

        handler = grpc.method_handlers_generic_handler(
            "floor.Floor", {"Beat": grpc.stream_stream_rpc_method_handler(echo)}
        )
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(serve())


async def lead(ports: list[int], beat_s: float, seconds: float) -> float:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    calls = [channel.stream_stream(METHOD)() for channel in channels]

    async def drain(call: Any) -> None:
        async for _ in call:
            pass

    readers = [asyncio.create_task(drain(call)) for call in calls]
    writers: set[asyncio.Task[None]] = set()

    async def beat() -> None:
        for call in calls:
            task = asyncio.create_task(call.write(b"x" * 40))
            writers.add(task)
            task.add_done_callback(writers.discard)
        await asyncio.sleep(beat_s)

    for _ in range(20):  # warm-up: connections up, streams open
        await beat()
    cpu0, wall0 = cpu_s(), time.monotonic()
    while time.monotonic() - wall0 < seconds:
        await beat()
    used = (cpu_s() - cpu0) / (time.monotonic() - wall0) * 100
    for reader in readers:
        reader.cancel()
    for channel in channels:
        await channel.close()
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beat-ms", type=int, default=50)
    parser.add_argument("--followers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    ports = [free_port() for _ in range(args.followers)]
    processes = [multiprocessing.Process(target=follower, args=(port,), daemon=True) for port in ports]
    for process in processes:
        process.start()
    try:
        time.sleep(1.0)
        used = uvloop.run(lead(ports, args.beat_ms / 1000, args.seconds))
    finally:
        for process in processes:
            process.kill()
            process.join()
    print(f"bare gRPC heartbeat floor: leader CPU {used:.2f} % of a core "
          f"({args.followers} followers, one message each way per {args.beat_ms} ms)")


if __name__ == "__main__":
    main()
