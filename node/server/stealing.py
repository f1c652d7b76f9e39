"""A running job's shards that are handed out and not yet back, and moving a queued
one from a busy node to an idle one (work stealing).

The leader hands a big job's shards out in batches (lanes.py): on 3 nodes,
two calls of two shards to each worker and a batch to its own pool, all of a
12-shard job at once. A node that computes slower than the others, because
its host is busier or slower, or the scheduler gives it less of a shared
core, then holds up the end of every job with the shards it still has
queued, while the others idle. MPI's fixed split has the same weakness.

So a lane that finds the queue empty, on a node about to run dry (it holds
at most the shard it may be computing), asks for a shard another node holds
(`Holdings.pick`): the last one handed to the node that holds the most, if
that is two more than the thief holds and the thief would begin it sooner
by a quarter of one of its shards, judged from how long each node's last
shard took and when its last partial came. A shard is asked for once: it
does not hop from thief to thief. The holder gives it up, or says it began
it already, through the `GiveUp` it was handed with: the leader's own lane
drops it from its queue or marks it skipped in its pool; a worker is asked
on its compute link or in a `Skip` call (`SkipShards`, answered with the
shards it let go). Either way a pool's thread checks `Skips` just before it
begins a shard, so each handing of a shard is let go there or begun,
decided in one step, and the thief computes it only once its holder has let
it go: a move never has a shard computed twice (a thief that fails loses
its shards as any failed node does, and they are computed again). A worker
that let a shard go sends no partial for it; its lane stops waiting for it.
The call's reply names the shards it let go, so one whose yes came too late
for the thief (read as a no) goes back to the queue when the call ends,
rather than holding its lane for the partials' grace and then dropping a
healthy worker. The thief's ask ends as a no if its holder is declared dead
first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

R = TypeVar("R")
K = TypeVar("K")

#: Asks a shard's holder to give up shard `index`: True once it has, and so will not
#: compute it; False if it began it, or cannot say.
GiveUp = Callable[[int], Awaitable[bool]]

#: A shard moves only if its thief would begin it this much of one of its own shards
#: sooner than its holder: less is not worth asking (and the holder, about to begin it,
#: would mostly say no).
LEAD_SHARDS = 0.25

#: The fate of a pool entry let go (one begun holds a token of its own).
_SKIPPED = object()


class Holdings:
    """Shards handed to each node and not yet back, in the order handed, and how fast each
    node computes (leader only). Times are the leader's monotonic clock, in ns."""

    def __init__(self) -> None:
        #: Node -> the shards it holds, in the order handed (a dict: each step is O(1), as a job
        #: may hand out a batch of thousands of small shards), each with how to ask for it.
        self._by_node: dict[str, dict[int, GiveUp | None]] = {}
        self._holder: dict[int, str] = {}
        #: Shards taken once: never taken again, so one shard does not hop from thief to thief.
        self._moved: set[int] = set()
        #: Node -> when it began the shard it computes now, as far as the leader can tell: when
        #: its last partial came, or when it was handed shards with none in hand.
        self._began_ns: dict[str, int] = {}
        #: Node -> how long its last shard took to compute (its pool's thread, start to end).
        self._took_ns: dict[str, int] = {}
        #: Thief -> shards it asked for and has not been answered: counted as its own.
        self._asking: dict[str, int] = {}

    def hand(self, node: str, shards: list[int], give_up: GiveUp | None, now_ns: int) -> None:
        """`node` now holds `shards`; `give_up` asks it to let one go (None: it cannot)."""
        if not shards:
            return
        held = self._by_node.setdefault(node, {})
        if not held:
            self._began_ns[node] = now_ns
        for shard in shards:
            if shard in self._holder:
                self.drop((shard,))
            held[shard] = give_up
            self._holder[shard] = node

    def arrived(self, shard: int, now_ns: int, took_ns: int | None) -> None:
        """The partial of `shard` came (`took_ns`: its computation, if the partial says)."""
        node = self._holder.get(shard)
        if node is not None:
            self._began_ns[node] = now_ns  # it went straight on to its next shard
            if took_ns is not None and took_ns > 0:
                self._took_ns[node] = took_ns
        self.drop((shard,))

    def drop(self, shards: Iterable[int]) -> None:
        """Nobody holds these shards any more: their partial arrived, or they went back to the queue."""
        for shard in shards:
            node = self._holder.pop(shard, None)
            if node is not None:
                del self._by_node[node][shard]

    def holder(self, shard: int) -> str | None:
        return self._holder.get(shard)

    def most(self) -> int:
        """The most shards any node holds: below 2, no `pick` can succeed."""
        return max(map(len, self._by_node.values()), default=0)

    def held_by(self, node: str) -> int:
        return len(self._by_node.get(node, ())) + self._asking.get(node, 0)

    def pick(self, thief: str, now_ns: int) -> tuple[int, str, GiveUp] | None:
        """A shard for `thief` to ask for, the node that holds it, and how to ask: the last
        one handed to the node that holds the most. None if `thief` holds more than the one
        it may be computing (it is not about to run dry), if no node holds two more than
        it, or if none of those would begin its last one later than the thief by
        LEAD_SHARDS of a shard (`_sooner`) and can be asked. A shard is asked for once,
        whatever the answer; `settle` takes the answer."""
        mine = self.held_by(thief)
        if mine > 1:
            return None
        ranked = sorted(self._by_node.items(), key=lambda item: len(item[1]), reverse=True)
        for node, held in ranked:
            if len(held) < mine + 2:
                return None
            shard = next(reversed(held))
            give_up = held[shard]
            if node == thief or shard in self._moved or give_up is None:
                continue
            if self._sooner(thief, mine, node, len(held), now_ns):
                self._moved.add(shard)
                self._asking[thief] = self._asking.get(thief, 0) + 1
                return shard, node, give_up
        return None

    def settle(self, thief: str, shard: int, given: bool) -> None:
        """The answer to `thief`'s ask for `shard`: given up (its holder holds it no more;
        the thief's lane hands it to the thief), or not."""
        self._asking[thief] -= 1
        if given:
            self.drop((shard,))

    def _sooner(self, thief: str, mine: int, holder: str, held: int, now_ns: int) -> bool:
        """Whether `thief` would begin `holder`'s last shard LEAD_SHARDS of one of its own
        shards sooner than `holder` would: worth the move, and the word not to begin it
        reaches the holder first. The holder's shard under way ends when its last one took
        to compute, or, once it is late, as late again as it already is (a node that
        delivers nothing is slow, whatever it did before). With nothing measured of the
        thief, the count alone decides."""
        thief_ns = self._took_ns.get(thief)
        if thief_ns is None:
            return True
        holder_ns = self._took_ns.get(holder, thief_ns)
        elapsed_ns = now_ns - self._began_ns.get(holder, now_ns)
        if elapsed_ns <= holder_ns:
            current_ends_ns = now_ns + holder_ns - elapsed_ns
        else:
            current_ends_ns = now_ns + elapsed_ns - holder_ns
        holder_begins_ns = current_ends_ns + (held - 2) * holder_ns
        thief_begins_ns = now_ns + mine * thief_ns
        return holder_begins_ns - thief_begins_ns > LEAD_SHARDS * thief_ns


class Skips:
    """One job's shards in one node's pool: each handing of a shard is begun by the pool's
    thread or let go at the leader's word, whichever comes first, and begun at most once.

    A pool entry is keyed by the shard and which handing of it queued it (`entry`), so a
    shard let go, then handed here again (its thief failed), is computed by the new entry
    and not by the old one. `dict.setdefault` decides each key: one step under the GIL, so
    the event loop's `skip` and a thread's start cannot both win, nor two threads."""

    def __init__(self) -> None:
        self._fate: dict[tuple[int, int], object] = {}
        #: Shard -> how many times calls registered here handed it; only these can be let go.
        self._handings: dict[int, int] = {}

    def hand(self, shards: Iterable[int]) -> None:
        """A call hands these shards to this node (again, maybe): a new handing of each."""
        for shard in shards:
            self._handings[shard] = self._handings.get(shard, 0) + 1

    def entry(self, shard: int) -> tuple[int, int]:
        """The key of a pool entry of `shard` queued now: the shard and its latest handing."""
        return shard, self._handings.get(shard, 0)

    def skip(self, shard: int) -> bool:
        """Ask that `shard` not be begun: True if it is let go, False if it is not here (its
        call not registered yet) or a thread has begun its latest handing already."""
        if shard not in self._handings:
            return False
        return self._fate.setdefault(self.entry(shard), _SKIPPED) is _SKIPPED

    def guarded(self, compute: Callable[..., tuple[R, int, int]]) -> Callable[..., tuple[R | None, int, int]]:
        """`compute(*args)` as `run(entry, *args)`, in the pool's thread: (None, 0, 0) if the
        entry's handing was let go, or begun by another entry, before this one came to it."""
        def run(entry: tuple[int, int], *args: Any) -> tuple[R | None, int, int]:
            begun = object()
            if self._fate.setdefault(entry, begun) is not begun:
                return None, 0, 0
            return compute(*args)
        return run


class CallSkips:
    """One call's shards under its job's `Skips`, each keyed by the handing this call made
    (its `entry` as the call arrived): a call may wait in the pool behind others, and a
    shard of it let go, then handed here again by a later call, is the later call's to
    compute, not this one's (a compute link's call: linkserve.py)."""

    def __init__(self, skips: Skips, shards: Iterable[int]) -> None:
        self._skips = skips
        self._entries = {shard: skips.entry(shard) for shard in shards}

    def entry(self, shard: int) -> tuple[int, int]:
        return self._entries[shard]

    def guarded(self, compute: Callable[..., tuple[R, int, int]]) -> Callable[..., tuple[R | None, int, int]]:
        return self._skips.guarded(compute)


class SkipsByCall(Generic[K]):
    """A node's `Skips`, one per key (a job on one compute link; a leader and job for gRPC
    calls), kept while calls of the key run here: a call registers as it arrives, so a
    skip that comes after it finds its shards, and unregisters as it ends."""

    def __init__(self) -> None:
        self._skips: dict[K, Skips] = {}
        self._calls: dict[K, int] = {}

    def register(self, key: K, shards: Iterable[int]) -> Skips:
        """A call of `key` arrived, handing `shards` here: the Skips it computes them under."""
        skips = self._skips.setdefault(key, Skips())
        self._calls[key] = self._calls.get(key, 0) + 1
        skips.hand(shards)
        return skips

    def unregister(self, key: K) -> None:
        """A call of `key` ended; with the last, its Skips goes."""
        self._calls[key] -= 1
        if not self._calls[key]:
            del self._calls[key], self._skips[key]

    def skip(self, key: K, shards: Iterable[int]) -> list[int]:
        """A skip for `key`: the shards let go (none if no call of `key` runs here)."""
        skips = self._skips.get(key)
        return [index for index in shards if skips is not None and skips.skip(index)]

    def __len__(self) -> int:
        return len(self._skips)
