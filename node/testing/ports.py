"""Free localhost ports for daemons: each a TCP port whose UDP twin is free too.

They are drawn below the kernel's ephemeral range. A port the kernel hands out
for `bind(0)` comes from that range, which is also where every outgoing
connection's local port comes from: between the check and the daemon's bind,
any client socket on the machine could take it. Below the range only another
listener can, and a random draw makes two harnesses picking at once unlikely
to meet.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection
from pathlib import Path

#: Where the kernel says its ephemeral range is (Linux); the default where it cannot.
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_EPHEMERAL_LOW = 32768
#: The lowest port drawn: clear of the well-known and most registered services.
LOWEST_PORT = 20000
#: Its own generator, so a test that seeds `random` cannot make two harnesses draw alike.
_draw = random.Random()


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        return int(EPHEMERAL_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def _bindable(port: int) -> bool:
    """TCP and UDP both bind `port` on 127.0.0.1 right now."""
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            tcp.bind(("127.0.0.1", port))
            udp.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, avoid: Collection[int] = ()) -> list[int]:
    """`count` distinct ports free right now for TCP and UDP, below the ephemeral range,
    none of `avoid` (ports drawn before and not bound yet).

    Another listener may still take one before the daemon binds it; the daemon
    then exits and `start()` raises with its log (scripts/bench.py retries).
    """
    high = ephemeral_low()
    low = LOWEST_PORT if high > LOWEST_PORT else 1024  # a kernel with a low ephemeral range
    ports: list[int] = []
    for port in _draw.sample(range(low, high), high - low):
        if len(ports) == count:
            break
        if port not in avoid and _bindable(port):
            ports.append(port)
    if len(ports) < count:
        raise RuntimeError(f"found only {len(ports)} free ports of {count} in [{low}, {high})")
    return ports
