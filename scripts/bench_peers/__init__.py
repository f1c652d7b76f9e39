"""The peer runners of scripts/bench.py, one script per system, each run in its own process.

The runners import `peerdata` by its bare name (their folder is on PYTHONPATH);
the bench imports the same module as `bench_peers.peerdata`.
"""
