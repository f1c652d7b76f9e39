"""What a node checks before it serves: a data dir it can write and no other process
holds, a port it can listen on.

A node that could not persist its vote or its journal would only find out at
its first election, and then fail at every one; so the directory is tried
(created, a file written, fsync'd and removed) before the node listens. gRPC
says only "Failed to bind" when a port is refused; `why_not_listening` asks
the operating system the reason with a plain socket. Either failure is a
CannotStart, one line naming the thing and the reason: `distnode start`
prints it and exits 2. The port is asked before gRPC binds it, as gRPC
would print a line of its own.

The data dir is locked (`flock` on its LOCK_FILE) for the life of the node: two
processes on one dir, a node started twice by mistake, would share one vote and
one journal, and the second's opening of the journal (it cuts what looks torn,
and creates the next segment) would break the first's writes.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

import grpc

from node.addresses import split_host_port
from node.errors import CannotStart
from node.security import TlsFiles
from node.server.durable import fsync_dir

PROBE_FILE = ".distnode-write-check"
LOCK_FILE = "lock"


class DirClaim:
    """A data dir's lock, held until `release` (or this process ends)."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file

    def release(self) -> None:
        self._file.close()


def check_data_dir(data_dir: Path) -> DirClaim:
    """`data_dir`, locked for this process; CannotStart unless it exists (or can be made),
    takes a durable write and no other process holds it."""
    step = "create it"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / PROBE_FILE
        step = "write a file in it"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"distnode")
            step = "fsync a file in it"
            os.fsync(fd)
        finally:
            os.close(fd)
        step = "remove a file from it"
        probe.unlink()
        fsync_dir(data_dir)
    except OSError as exc:
        raise CannotStart(f"data-dir {data_dir}: cannot {step}: {exc.strerror or exc}") from None
    return _claim(data_dir)


def _claim(data_dir: Path) -> DirClaim:
    try:
        file = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held open: the lock lives with it)
    except OSError as exc:
        raise CannotStart(f"data-dir {data_dir}: cannot open its {LOCK_FILE} file: {exc.strerror}") from None
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        file.seek(0)
        holder = file.read().strip()
        file.close()
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise CannotStart(f"data-dir {data_dir}: in use by another distnode process{by}; each node needs"
                          " its own --data-dir") from None
    file.truncate(0)
    file.write(f"{os.getpid()}\n")
    file.flush()
    return DirClaim(file)


def why_not_listening(listen: str) -> str:
    """Why `listen` cannot be bound, as the operating system says it (lower case); "" if it can."""
    try:
        host, port = split_host_port(listen)
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as exc:
        return f"cannot resolve it: {exc}"
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        try:
            probe.bind(where)
        except OSError as exc:
            return (exc.strerror or str(exc)).lower()
    return ""


def bind_port(server: grpc.aio.Server, listen: str, tls: TlsFiles) -> int:
    """Take `listen` for the server (its port), or CannotStart with the reason."""
    reason = why_not_listening(listen)  # asked first: gRPC would print a line of its own
    if not reason:
        try:
            if tls.enabled:
                return server.add_secure_port(listen, tls.server_credentials())
            return server.add_insecure_port(listen)
        except RuntimeError:  # gRPC's "Failed to bind to address": taken since we asked
            reason = why_not_listening(listen) or "gRPC could not bind it"
    raise CannotStart(f"cannot listen on {listen}: {reason}")
