"""The harness's links: a fault proxy between every ordered pair of nodes, and from clients to each.

Every node dials its peers only through its own `--peers` entries, so a
`LocalCluster(link_faults=True)` gives node i the address of the link i -> j
(a `Link` of node/testing/faults.py, in the harness's process) as its entry
for j. Cutting, healing and delaying links then needs no help from the
daemons. Clients keep the nodes' real addresses unless they ask for
`client_addresses`, which cross the links CLIENT -> j.
"""

from __future__ import annotations

from node.testing.faults import FaultProxy, Mode

#: The pseudo node id of clients in the link-fault API: `cut(CLIENT, "n2")`.
CLIENT = "client"


def link_name(src: str, to: str) -> str:
    return f"{src}->{to}"


class Links:
    """One link per ordered pair of `targets` (node id -> real address), plus CLIENT -> each."""

    def __init__(self, targets: dict[str, str], mode: Mode = "blackhole") -> None:
        self._nodes = list(targets)
        self._proxy = FaultProxy()
        #: (from, to) -> the address `from` dials to reach `to`.
        self._addresses: dict[tuple[str, str], str] = {}
        for to, target in targets.items():
            for src in [*targets, CLIENT]:
                if src != to:
                    self._addresses[src, to] = self._proxy.add(link_name(src, to), target, mode)

    def address(self, src: str, to: str) -> str:
        """The address `src` dials to reach `to` (CLIENT for `src`: a client's link)."""
        self._names(src, to, both=False)  # validates the ids
        return self._addresses[src, to]

    def target_of(self, address: str) -> str | None:
        """The node a link's address leads to, if `address` is one of ours."""
        for (_, to), link_address in self._addresses.items():
            if link_address == address:
                return to
        return None

    def _names(self, a: str, b: str, both: bool) -> list[str]:
        for node_id in (a, b):
            if node_id != CLIENT and node_id not in self._nodes:
                raise KeyError(f"no node {node_id!r}; nodes are {', '.join(self._nodes)}")
        if a == b:
            raise ValueError(f"a link joins two different nodes, got {a!r} twice")
        pairs = [(a, b), (b, a)] if both else [(a, b)]
        return [link_name(*pair) for pair in pairs if pair in self._addresses]

    def cut(self, a: str, b: str, both: bool = True) -> None:
        """Cut the link a -> b (the connections a initiates to b), and b -> a if `both`.

        Established connections are closed; new ones are blackholed (or
        refused, in mode "refuse") until `heal`. gRPC replies travel on the
        initiator's connection, so a one-way cut a -> b fails a's RPCs to b
        while b's RPCs to a still work.
        """
        for name in self._names(a, b, both):
            self._proxy.cut(name)

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        """Reopen links and remove their delays: a <-> b, every link of a, or all of them."""
        if a is not None and b is not None:
            names = self._names(a, b, both=True)
        elif a is not None or b is not None:
            node_id = a if a is not None else b
            names = [link_name(*pair) for pair in self._addresses if node_id in pair]
        else:
            names = self._proxy.names
        for name in names:
            self._proxy.heal(name)

    def isolate(self, a: str, clients: bool = False) -> None:
        """Cut every link to and from `a` (and from clients to it, if `clients`)."""
        if a != CLIENT and a not in self._nodes:
            raise KeyError(f"no node {a!r}; nodes are {', '.join(self._nodes)}")
        for src, to in self._addresses:
            if a in (src, to) and (clients or CLIENT not in (src, to)):
                self._proxy.cut(link_name(src, to))

    def delay(self, a: str, b: str, ms: float, both: bool = True) -> None:
        """Hold every chunk on the link a -> b (and b -> a if `both`) for `ms`, each way.

        A request and its reply each wait `ms`, so an RPC a -> b takes 2 x ms
        more. `delay(a, b, 0)` removes the delay and leaves a cut in place.
        """
        for name in self._names(a, b, both):
            self._proxy.delay(name, ms)

    def datagrams(self, a: str, b: str) -> int:
        """Datagrams (heartbeats) the link a -> b has delivered, both directions together."""
        (name,) = self._names(a, b, both=False)
        return self._proxy.link(name).datagrams

    def is_cut(self, a: str, b: str) -> bool:
        return self._proxy.link(link_name(a, b)).cut

    def close(self) -> None:
        self._proxy.close()
