"""One daemon process: `distnode start`.

- daemon.py: the process (server, signals, tasks, shutdown) and the calls the servicer makes.
- api.py: those calls and what they return; service.py: gRPC -> calls -> replies, nothing else.
- elections.py + clock.py: the election core wired to time, disk (statestore.py) and network.
- jobs.py (leader: plan, lanes, merge), worker.py (Compute -> Reduce stream),
  relay.py (a follower passes client calls on), admission.py (per-client limit).
- peers.py (ids, liveness), heartbeats.py + beacons.py (the leader's beats),
  config.py, logs.py, memory.py.
"""
