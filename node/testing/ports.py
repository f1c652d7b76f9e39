"""Free localhost ports for daemons: each a TCP port whose UDP twin is free too."""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free right now, for TCP and UDP both.

    Another process may take one before the daemon binds it; the daemon then
    exits and `start()` raises with its log (scripts/bench.py retries).
    """
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            port = sock.getsockname()[1]
            twin = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # heartbeats' UDP port
            sockets.append(twin)
            try:
                twin.bind(("127.0.0.1", port))
            except OSError:
                continue
            ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports
