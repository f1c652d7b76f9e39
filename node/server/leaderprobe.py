"""Is a leader whose Heartbeat stream closed dead? One connect to its address says.

A killed process's sockets close at once, and its leader's `Heartbeat`
streams with them, so its followers hear of the death well before an
election timeout. But a stream also closes while its leader lives: a
conntrack flush, a NAT or proxy timing out idle connections, all of a
leader's streams at once. Forgetting a live leader on that alone would
let a quorum of followers elect another and abort its jobs. So the
follower first dials the leader's address (its own `--peers` entry):
only a refused or reset connection, no process serving there, counts as
dead. A server that answers, or stays silent for a beat twice, or a dial
that takes longer than a beat (a host down or cut off, which closes no
stream anyway), leaves the leader to the election timeout, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING

from node.addresses import split_host_port

if TYPE_CHECKING:
    from node.server.elections import ElectionDriver

log = logging.getLogger("distnode")


async def gone(address: str, timeout_s: float) -> bool:
    """True if no process serves `address` (HOST:PORT): the connect is refused, or the
    connection is reset or closed before a byte comes. A process being killed may close its
    streams before its listening socket, whose kernel still accepts; it resets what it
    accepted once that closes too. A live gRPC server writes its HTTP/2 settings at once;
    with TLS it waits for the client. Silence for `timeout_s` is asked once more (on a loaded
    host a killed process's port can outlast its streams by that much), then counts as alive."""
    for _ in range(2):
        verdict = await _dial(address, timeout_s)
        if verdict is not None:
            return verdict
    return False


async def _dial(address: str, timeout_s: float) -> bool | None:
    """One connect to `address`: True if nothing serves it, False if something does or the
    connect itself is slow (a host down or cut off), None if it accepted and stayed silent.

    A name is resolved here and each of its addresses dialled in turn, where asyncio would
    dial them itself: `localhost` is often ::1 and 127.0.0.1, and asyncio (3.11) reports
    two refusals as one plain OSError, which would leave a killed leader's followers to
    their election timeout. Every address refusing is gone; the first to accept is asked."""
    host, port = split_host_port(address)
    try:
        found = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s)
    except (OSError, TimeoutError):
        return False  # not resolved: nothing known of the process
    for _family, _type, _proto, _name, sockaddr in found:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(str(sockaddr[0]), port),
                                                    timeout_s)
        except ConnectionRefusedError:
            continue
        except (OSError, TimeoutError):
            return False
        return await _first_byte(reader, writer, timeout_s)
    return bool(found)


async def _first_byte(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float
) -> bool | None:
    """An accepted connection: True if it is reset or closed before a byte comes, False if a
    byte comes, None if it stays silent for `timeout_s`."""
    try:
        first = await asyncio.wait_for(reader.read(1), timeout_s)
    except ConnectionError:
        return True
    except TimeoutError:
        return None
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return first == b""


async def after_stream_closed(elections: ElectionDriver, leader_id: str, term: int) -> None:
    """The stream of `leader_id`'s beats in `term` closed: if it still leads us and nothing
    serves its address (`gone`, within a few beats), it is dead (`ElectionDriver.leader_gone`)."""
    address = elections.peers.address_of(leader_id)
    if not address or not elections.follows(leader_id, term):
        return
    if await gone(address, elections.config.heartbeat_ms / 1000):
        elections.leader_gone(leader_id, term)
    else:
        log.info("leader %s's stream closed but %s answers: waiting for its beats", leader_id, address)
