"""One daemon process: `distnode start`.

- daemon.py: the process (clock, signals, tasks) and the calls the servicer makes.
- service.py: gRPC -> calls on the node (api.py), results -> replies; nothing else.
- elections.py + clock.py: the election core wired to time, disk and network.
- jobs.py (leader: plan, lanes, merge), worker.py (Compute -> Reduce stream),
  relay.py (a follower passes client calls on), admission.py (per-client limit).
- peers.py (ids, liveness), heartbeats.py + beacons.py (the leader's beats),
  statestore.py (term and vote, fsync), config.py, logs.py, memory.py.
"""
