"""Protobuf <-> the core's types, shared by clients and servers.

- jobs.py: `Job` <-> `JobSpec` (no numpy: a daemon relays before loading it).
- tensors.py: numpy arrays and partial states <-> `Tensor` / `Partial`.
- answers.py: Submit's reply without protobuf's copies.
- stubs.py: the stubs every party calls with (that reply, the token on each call).
- status.py: the trailer that signs every status a node sends.
"""
