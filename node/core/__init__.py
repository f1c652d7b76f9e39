"""The pure part of a node: no I/O but reading a source, no clock, no asyncio, no gRPC.

- election.py: Raft's leader election as a tick-driven state machine, and the
  failure detector; messages.py: what goes into it and comes out.
- job.py: what a job is (ops, kernels, the `Job` record), without numpy.
- compute.py: kernels, ops, mergeable partial states, the fixed shard plan.
- sources.py: the `--source` specs and the arrays they name.
- limits.py: what one request may cost a node.

tests/test_layout.py imports each of these in a fresh interpreter and fails
if asyncio, grpc, socket or time come with it.
"""
