"""`free_ports`: where LocalCluster's daemons listen, chosen so nothing else takes them first."""

from __future__ import annotations

import socket

import pytest

from node.testing import ports
from node.testing.ports import ephemeral_low, free_ports


def test_ports_are_distinct_free_for_tcp_and_udp_and_below_the_ephemeral_range() -> None:
    """A port from the ephemeral range can be taken by any client socket's local end
    before the daemon binds it (CI saw `address already in use`); below it, it cannot."""
    found = free_ports(16)
    assert len(set(found)) == 16
    assert all(1024 <= port < ephemeral_low() for port in found), found
    for port in found:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", port))
            udp.bind(("127.0.0.1", port))


def test_a_port_another_listener_holds_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    held, free = free_ports(2)
    low, high = min(held, free), max(held, free) + 1
    monkeypatch.setattr(ports, "LOWEST_PORT", low)
    monkeypatch.setattr(ports, "ephemeral_low", lambda: high)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", held))
        listener.listen()
        assert held not in free_ports(1)
        with pytest.raises(RuntimeError, match=r"found only \d+ free ports of .*"):
            free_ports(high - low)


def test_ports_drawn_before_and_not_bound_yet_are_not_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """`distnode local` drew its nodes' gRPC and HTTP ports in two draws, neither bound yet:
    a port could be handed to both, and that node did not start."""
    monkeypatch.setattr(ports, "LOWEST_PORT", 20_000)
    monkeypatch.setattr(ports, "ephemeral_low", lambda: 20_008)
    monkeypatch.setattr(ports, "_bindable", lambda port: True)
    grpc_ports = free_ports(4)
    assert sorted(free_ports(4, avoid=grpc_ports) + grpc_ports) == list(range(20_000, 20_008))
