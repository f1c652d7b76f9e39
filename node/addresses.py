"""HOST:PORT strings: parsed once, at the edge, with errors that name the flag."""

from __future__ import annotations

import ipaddress

from node.errors import ConfigError


def parse_address(text: str, field_name: str = "address") -> str:
    """Validate HOST:PORT and return it normalised (no surrounding spaces)."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{field_name}: expected HOST:PORT, got {text!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{field_name}: port must be 0-65535, got {port!r} in {text!r}")
    return f"{host}:{int(port)}"


def split_host_port(address: str) -> tuple[str, int]:
    """("::1", 5000) from "[::1]:5000"; ("10.0.0.2", 5000) from "10.0.0.2:5000"."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def parse_addresses(text: str, field_name: str) -> tuple[str, ...]:
    """Parse a comma-separated list of HOST:PORT; empty items are skipped."""
    items = [item for item in text.split(",") if item.strip()]
    return tuple(parse_address(item, field_name) for item in items)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
