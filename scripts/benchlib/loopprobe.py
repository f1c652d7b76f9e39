"""How long each node's event loop does not serve, seen from outside: a thread per node
calls its `Status` every PROBE_S, and a call's round trip is at least how long that
node's loop was stopped (snapshot_catchup.py, large_answers.py)."""

from __future__ import annotations

import threading
import time

#: How often each node's Status is called.
PROBE_S = 0.005


class Probe:
    """A thread per node calling its Status; the longest round trip since `reset`."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self.longest_s = dict.fromkeys(addresses, 0.0)
        self.calls = dict.fromkeys(addresses, 0)
        #: Bumped by `reset`: a call begun before it counts for no window.
        self._generation = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(node_id, address), daemon=True)
                         for node_id, address in addresses.items()]
        for thread in self._threads:
            thread.start()

    def _run(self, node_id: str, address: str) -> None:
        import grpc

        from node._proto import distnode_pb2 as pb
        from node._proto import distnode_pb2_grpc as pb_grpc

        while not self._stop.is_set():
            # A fresh channel after each failure: a restarted node is measured from its first
            # moments, not after gRPC's reconnection backoff (a second or more).
            with grpc.insecure_channel(address) as channel:
                stub = pb_grpc.NodeStub(channel)
                while not self._stop.is_set():
                    started, generation = time.monotonic(), self._generation
                    try:
                        stub.Status(pb.StatusRequest(), timeout=10)
                    except grpc.RpcError:
                        time.sleep(PROBE_S)  # restarting: nothing to measure
                        break
                    with self._lock:
                        if generation == self._generation:
                            self.longest_s[node_id] = max(self.longest_s[node_id], time.monotonic() - started)
                            self.calls[node_id] += 1
                    time.sleep(PROBE_S)

    def reset(self) -> None:
        with self._lock:
            self._generation += 1
            for node_id in self.longest_s:
                self.longest_s[node_id], self.calls[node_id] = 0.0, 0

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
