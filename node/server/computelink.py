"""Compute calls between a leader and a worker on one host, without gRPC: the leader's end.

Each remote shard of a big job costs its leader and worker a share of a
`Compute` call and a `Reduce` message on gRPC's asyncio stack, and on the
2-core host of the benchmarks that stack was most of the event loops' CPU
per big job, taken from the computation (docs/timeline.md, "Compute calls
on the local socket"). A client and its node already skip it on the node's
local socket (localsocket.py). So does a leader and its worker when they
share a network namespace: a worker that has a local socket names it in its
`ComputeReply`, and the leader's next calls to it go on a *compute link*,
a connection to that socket opened for LOCAL_COMPUTE. The leader writes
`ComputeCall` frames (a call number it chose, the request, its deadline, or
a cancellation); the worker answers each call with `ComputeEvent` frames:
every partial as soon as it is computed, then the call's end. The worker
serves its end in threads beside its event loop (linkserve.py).

What the gRPC calls give, the link keeps:

- Authentication: the handshake of the local socket (localframes.py), with
  the key handed out only over gRPC; the leader also checks that the node
  that proved itself is the worker it meant to call. The key is also every
  local client's, and a link's partials come back to whoever opened it,
  where gRPC's go to the worker's leader: so both ends also require the
  other to run as their own user (SO_PEERCRED), one who may read the data
  and the node's memory anyway. Nodes of different users keep gRPC.
- Delivery: one ordered connection carries a call's partials and then its
  end, so when the leader reads the end it holds every partial, where a
  `Reduce` stream's partials may still be on their way when `Compute`
  returns (jobs.py waits for them).
- Cancellation: a cancelled call sends a cancellation, which cancels the
  call's task on the worker as gRPC cancels a handler; a link that closes
  cancels every call on it at the worker's end and fails every call at the
  leader's (`LinkBroken`: the lane gives the batch to others, as for a
  failed RPC).
- Deadlines: each call carries its own, which the worker enforces as gRPC
  does (DEADLINE_EXCEEDED), and the leader bounds it too.
- Limits: a partial over `--max-message-bytes` (or a call: the frame is
  refused before it is read) breaks the link.
- Skips: the leader may ask the worker to let shards of a job go to an idle
  node (`SkipShards`, numbered as a call and answered with the shards let
  go: stealing.py); they apply to the calls of that job read before them,
  and the answer comes before those calls end.
- Fallback: a leader that cannot reach the socket (another network
  namespace or host) remembers that and keeps gRPC for that worker; a
  link that breaks is dropped, and the next call goes on gRPC, whose reply
  names the worker's socket again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

import msgspec
from google.protobuf.message import DecodeError

from node._proto import distnode_pb2 as pb
from node.errors import LimitExceeded
from node.wire.localframes import (
    UNREACHABLE,
    NotProven,
    frame,
    read_async,
    same_user,
    shake_hands,
)

log = logging.getLogger(__name__)

#: How long a leader waits to connect to a worker's socket and shake hands before
#: it uses gRPC for that call.
CONNECT_TIMEOUT_S = 1.0
#: A skip (on a link, or a Skip call) unanswered this long is taken as a no. Had the
#: worker let a shard go, its call's reply says so, and its lane puts it back in the
#: queue (lanes.py).
SKIP_TIMEOUT_S = 5.0
#: What a ComputeEvent adds around a Partial (call number, tags, lengths): the limit
#: applies to the partial, as on gRPC, not to its envelope.
ENVELOPE_BYTES = 64

class Computed(msgspec.Struct, frozen=True):
    """What a worker's Compute call did: the partials it sent, and the shards it let go
    to an idle node (stealing.py) and sent none for."""

    sent: int
    skipped: tuple[int, ...] = ()


#: The leader's taker of a partial that arrived on a link.
AcceptPartial = Callable[[pb.Partial], object]


class LinkBroken(ConnectionError):
    """A compute link closed, or carried something that is not a ComputeEvent."""


class LinkCallFailed(Exception):
    """The worker answered a call on the link with an error ("CODE: details")."""


# The worker's end is linkserve.py: it runs in threads, off the worker's event loop.


def _write(writer: asyncio.StreamWriter, message: pb.ComputeCall) -> None:
    """One frame. On a connection already lost, uvloop raises RuntimeError where asyncio
    drops the write: callers catch it."""
    writer.write(frame(message))


# --- the leader's end --------------------------------------------------------


class ComputeLink:
    """A leader's open link to one worker, and the calls waiting on it."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, accept: AcceptPartial,
        max_bytes: int,
    ) -> None:
        self._events = reader
        self._writer = writer
        self._accept = accept
        self._max_bytes = max_bytes
        self._numbers = itertools.count(1)
        self._calls: dict[int, asyncio.Future[pb.ComputeReply]] = {}
        self._skips: dict[int, asyncio.Future[pb.SkipReply]] = {}
        #: Why the link is no longer usable (set once); None while it is.
        self.broken: LinkBroken | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def compute(self, request: pb.ComputeRequest, timeout_s: float) -> pb.ComputeReply:
        """One Compute call: its reply once every partial of it has been accepted.

        LinkCallFailed if the worker failed it; LinkBroken if the link ends first;
        TimeoutError past `timeout_s`."""
        number = next(self._numbers)
        done: asyncio.Future[pb.ComputeReply] = asyncio.get_running_loop().create_future()
        self._send(pb.ComputeCall(call=number, request=request, timeout_s=timeout_s))
        self._calls[number] = done
        try:
            async with asyncio.timeout(timeout_s):
                return await done
        except BaseException:
            # Cancelled or timed out (either cancels `done`): the worker stops the call.
            answered = done.done() and not done.cancelled()
            if answered:
                done.exception()  # an error that came as we were cancelled: seen, not logged
            elif self.broken is None:
                with contextlib.suppress(LinkBroken):
                    self._send(pb.ComputeCall(call=number, cancel=True))
            raise
        finally:
            self._calls.pop(number, None)

    async def skip(self, job_id: str, shards: list[int]) -> list[int]:
        """Ask the worker to let `shards` of `job_id` go: those it let go, none if the link
        ends or it does not answer within SKIP_TIMEOUT_S."""
        number = next(self._numbers)
        answered: asyncio.Future[pb.SkipReply] = asyncio.get_running_loop().create_future()
        self._skips[number] = answered
        try:
            self._send(pb.ComputeCall(call=number, skip=pb.SkipShards(job_id=job_id, shards=shards)))
            async with asyncio.timeout(SKIP_TIMEOUT_S):
                return list((await answered).skipped)
        except (LinkBroken, TimeoutError):
            return []
        finally:
            self._skips.pop(number, None)

    def _send(self, call: pb.ComputeCall) -> None:
        """Write a frame; LinkBroken if the link is (or just turned out to be) gone."""
        if not self.usable:
            self._break(LinkBroken("compute link: closed"))
            assert self.broken is not None
            raise LinkBroken(*self.broken.args)
        try:
            _write(self._writer, call)
        except (ConnectionError, RuntimeError) as exc:  # uvloop raises on a lost connection
            self._break(LinkBroken(f"compute link: {exc}"))
            assert self.broken is not None
            raise LinkBroken(*self.broken.args) from None

    @property
    def usable(self) -> bool:
        """Not broken, and not closing (uvloop may know before our reader does)."""
        return self.broken is None and not self._writer.is_closing()

    def close(self) -> None:
        self._break(LinkBroken("compute link: closed by the leader"))

    def _take(self, partial: pb.Partial) -> None:
        """A partial, of a call given up too (its job drops what it has); one that cannot
        be read breaks the link, as it ends a Reduce stream."""
        try:
            self._accept(partial)
        except Exception as exc:
            raise LinkBroken(f"compute link: a partial that cannot be taken: {exc}") from exc

    async def _read(self) -> None:
        try:
            while True:
                event = await read_async(self._events, pb.ComputeEvent, self._max_bytes + ENVELOPE_BYTES)
                if event is None:
                    raise LinkBroken("compute link: closed by the worker")
                kind = event.WhichOneof("event")
                if kind == "partial":
                    self._take(event.partial)
                    continue
                answered = self._skips.get(event.call)
                if answered is not None:
                    # A worker of an older version takes a skip for a call, and fails it:
                    # it lets nothing go.
                    if not answered.done():
                        answered.set_result(event.skipped if kind == "skipped" else pb.SkipReply())
                    continue
                done = self._calls.get(event.call)
                if done is None or done.done():
                    continue
                if kind == "done":
                    done.set_result(event.done)
                else:
                    done.set_exception(LinkCallFailed(event.error or "the worker said nothing"))
        except asyncio.CancelledError:
            self._break(LinkBroken("compute link: closed by the leader"))
        except LimitExceeded as exc:
            limit = f"--max-message-bytes ({self._max_bytes})"
            self._break(LinkBroken(f"compute link: a partial over {limit}: {exc}"))
        except (OSError, asyncio.IncompleteReadError, DecodeError, ValueError) as exc:
            self._break(exc if isinstance(exc, LinkBroken) else LinkBroken(f"compute link: {exc}"))

    def _break(self, why: LinkBroken) -> None:
        if self.broken is not None:
            return
        self.broken = why
        waiting: list[asyncio.Future[Any]] = [*self._calls.values(), *self._skips.values()]
        for done in waiting:
            if not done.done():
                done.set_exception(why)
                done.exception()  # its caller may have gone: not an error nobody saw
        self._writer.close()
        if self._reader is not asyncio.current_task():
            self._reader.cancel()


async def open_link(
    endpoint: pb.LocalEndpoint, node_id: str, accept: AcceptPartial, max_bytes: int
) -> ComputeLink:
    """Connect to a worker's socket and shake hands as a leader.

    NotProven if the node there is not `node_id`, cannot prove it holds the key, or runs
    as another user; the OSErrors of connecting otherwise."""
    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        reader, writer, _ = await shake_hands(endpoint, pb.LOCAL_COMPUTE, node_id)
    if not same_user(writer.get_extra_info("socket")):  # the worker refuses us too
        writer.close()
        raise NotProven("local socket: the worker runs as another user")
    return ComputeLink(reader, writer, accept, max_bytes)


class ComputeLinks:
    """The leader's links, by worker address: learned from `ComputeReply.local`, opened
    at the next call, dropped when they break."""

    def __init__(self, accept: AcceptPartial, max_bytes: int) -> None:
        self._accept = accept
        self._max_bytes = max_bytes
        self._known: dict[str, tuple[str, pb.LocalEndpoint]] = {}
        self._links: dict[str, ComputeLink] = {}
        self._opening: dict[str, asyncio.Task[ComputeLink | None]] = {}
        #: Worker address -> the name of its socket found out of reach (another network
        #: namespace, another user) or answered by another node: not tried again.
        self._unreachable: dict[str, str] = {}
        self._closed = False

    def learn(self, address: str, node_id: str, endpoint: pb.LocalEndpoint) -> None:
        """The worker at `address` (`node_id`) named its local socket in a ComputeReply."""
        if not endpoint.name or self._unreachable.get(address) == endpoint.name:
            return
        if self.linked(address) or address in self._opening:
            return
        self._known[address] = (node_id, endpoint)

    def linked(self, address: str) -> bool:
        """Whether calls to `address` go on a link now."""
        return self.current(address) is not None

    def current(self, address: str) -> ComputeLink | None:
        """The worker's link if it is open and usable now (none is opened)."""
        link = self._links.get(address)
        return link if link is not None and link.usable else None

    async def link(self, address: str) -> ComputeLink | None:
        """The worker's open link, opened now if its socket is known; None: use gRPC."""
        return self.current(address) or await self._open(address)

    async def _open(self, address: str) -> ComputeLink | None:
        stale = self._links.pop(address, None)
        if stale is not None:
            stale.close()
        opening = self._opening.get(address)
        if opening is None:
            if self._closed or address not in self._known:
                return None
            opening = asyncio.create_task(self._connect(address))
            self._opening[address] = opening
            opening.add_done_callback(lambda _: self._opening.pop(address, None))
        return await asyncio.shield(opening)

    async def _connect(self, address: str) -> ComputeLink | None:
        node_id, endpoint = self._known.pop(address)  # a link that breaks is learned anew over gRPC
        try:
            link = await open_link(endpoint, node_id, self._accept, self._max_bytes)
        except UNREACHABLE as exc:
            self._unreachable[address] = endpoint.name
            log.info("worker %s: its local socket is out of reach (%s); Compute stays on gRPC", node_id, exc)
            return None
        except (OSError, asyncio.IncompleteReadError) as exc:  # a timeout, a paused node: gRPC this time
            log.debug("worker %s: no compute link (%s)", node_id, exc)
            return None
        if self._closed:
            link.close()
            return None
        self._links[address] = link
        return link

    def close(self) -> None:
        self._closed = True
        for opening in self._opening.values():
            opening.cancel()
        for link in self._links.values():
            link.close()
        self._links.clear()
