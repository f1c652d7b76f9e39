"""What heartbeats cost by transport alone, without distnode around them.

    python scripts/heartbeat_floor.py [--beat-ms 50] [--followers 2] [--seconds 15] [--reps 3]

A bare "leader" process sends a 40-byte message to each bare "follower"
process every beat and reads the echo: the message pattern of an idle
distnode leader, with no election, no protobuf and no bookkeeping. Each
process is on uvloop and runs an idle gRPC server, as a daemon does. Two
transports, alternated rep by rep in the same run:

- grpc: one long-lived bidirectional stream per follower (what distnode used
  for every beat before node/server/beacons.py, and still uses as the fallback);
- udp: one connected datagram socket per follower (what node/server/beacons.py uses).

It prints the leader's and the followers' CPU use, medians over the reps, as
a percentage of one core, and the ratio: the floor under the "idle node CPU"
figure of scripts/bench.py for each transport.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import grpc
import uvloop

from node.testing.ports import free_ports  # free for TCP and UDP both

METHOD = "/floor.Floor/Beat"
MESSAGE = b"x" * 40
TRANSPORTS = ("grpc", "udp")


def cpu_s(pid: int | None = None) -> float:
    stat = open(f"/proc/{pid or 'self'}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


async def idle_grpc_server(port: int, handler: Any = None) -> Any:
    server = grpc.aio.server()
    if handler is not None:
        server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


def follower(port: int) -> None:
    async def serve() -> None:
        async def echo(requests: Any, context: Any) -> Any:
            async for message in requests:
                yield message

        handler = grpc.method_handlers_generic_handler(
            "floor.Floor", {"Beat": grpc.stream_stream_rpc_method_handler(echo)}
        )
        server = await idle_grpc_server(port, handler)
        await asyncio.get_running_loop().create_datagram_endpoint(Echo, local_addr=("127.0.0.1", port))
        await server.wait_for_termination()

    uvloop.run(serve())


class Drain(asyncio.DatagramProtocol):
    def datagram_received(self, data: bytes, addr: Any) -> None:
        pass


async def grpc_beats(ports: list[int], cleanup: list[Callable[[], Any]]) -> Callable[[], None]:
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in ports]
    calls = [channel.stream_stream(METHOD)() for channel in channels]

    async def drain(call: Any) -> None:
        async for _ in call:
            pass

    readers = [asyncio.create_task(drain(call)) for call in calls]
    writers: set[asyncio.Task[None]] = set()

    def beat() -> None:
        for call in calls:
            task = asyncio.create_task(call.write(MESSAGE))
            writers.add(task)
            task.add_done_callback(writers.discard)

    async def close() -> None:
        for reader in readers:
            reader.cancel()
        for channel in channels:
            await channel.close()

    cleanup.append(close)
    return beat


async def udp_beats(ports: list[int], cleanup: list[Callable[[], Any]]) -> Callable[[], None]:
    loop = asyncio.get_running_loop()
    transports = [
        (await loop.create_datagram_endpoint(Drain, remote_addr=("127.0.0.1", port)))[0] for port in ports
    ]

    def beat() -> None:
        for transport in transports:
            transport.sendto(MESSAGE)

    async def close() -> None:
        for transport in transports:
            transport.close()

    cleanup.append(close)
    return beat


async def lead(transport: str, ports: list[int], follower_pids: list[int], beat_s: float,
               seconds: float) -> tuple[float, float]:
    server = await idle_grpc_server(free_ports(1)[0])
    cleanup: list[Callable[[], Any]] = []
    beat = await (grpc_beats if transport == "grpc" else udp_beats)(ports, cleanup)
    for _ in range(20):  # warm-up: connections up, streams open
        beat()
        await asyncio.sleep(beat_s)
    cpu0, wall0 = cpu_s(), time.monotonic()
    followers0 = [cpu_s(pid) for pid in follower_pids]
    due = time.monotonic()
    while time.monotonic() - wall0 < seconds:
        beat()
        due += beat_s
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    wall = time.monotonic() - wall0
    leader = (cpu_s() - cpu0) / wall * 100
    followers = max((cpu_s(pid) - c0) / wall * 100 for pid, c0 in zip(follower_pids, followers0, strict=True))
    for close in cleanup:
        await close()
    await server.stop(None)
    return leader, followers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beat-ms", type=int, default=50)
    parser.add_argument("--followers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    ports = free_ports(args.followers)
    processes = [multiprocessing.Process(target=follower, args=(port,), daemon=True) for port in ports]
    for process in processes:
        process.start()
    results: dict[str, list[tuple[float, float]]] = {t: [] for t in TRANSPORTS}
    try:
        time.sleep(1.0)
        pids = [p.pid for p in processes if p.pid is not None]
        for _ in range(args.reps):
            for transport in TRANSPORTS:
                results[transport].append(
                    uvloop.run(lead(transport, ports, pids, args.beat_ms / 1000, args.seconds))
                )
    finally:
        for process in processes:
            process.kill()
            process.join()
    print(f"heartbeat floor: {args.followers} followers, one 40-byte message each way per "
          f"{args.beat_ms} ms; % of a core, median of {args.reps} reps of {args.seconds:g} s")
    print("| transport | leader | busiest follower |")
    print("| --- | --- | --- |")
    medians = {}
    for transport, runs in results.items():
        medians[transport] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        print(f"| {transport} | {medians[transport][0]:.2f} % | {medians[transport][1]:.2f} % |")
    ratio = medians["udp"][0] / medians["grpc"][0] if medians["grpc"][0] else float("nan")
    print(f"udp / grpc, leader: {ratio:.2f}x")


if __name__ == "__main__":
    main()
