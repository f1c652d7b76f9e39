"""The daemon's log: one line per event on stderr, and gRPC's tracebacks tamed.

Role changes are logged as `became leader term=5` (DESIGN §1: tools and tests
read these lines).
"""

from __future__ import annotations

import logging
import sys


class GrpcCoreLogFilter(logging.Filter):
    """Turns two of gRPC's tracebacks about other parties' doings into one line.

    - A request that is not valid protobuf: a client's mistake (or a fuzzer's).
    - `ExecuteBatchError` after a handler returned: its reply could not be
      sent because the caller had already cancelled the call or gone, as a
      leader does with the Compute calls of a job that finished meanwhile.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        kind = type(exc).__name__ if exc is not None else ""
        if kind == "DecodeError":
            record.msg, record.args = "rejected a request that is not valid protobuf: %s", (exc,)
            record.exc_info, record.levelno, record.levelname = None, logging.WARNING, "WARNING"
        elif kind == "ExecuteBatchError":
            record.msg, record.args = "a reply was not sent, its caller had gone: %s", (
                record.getMessage(),
            )
            record.exc_info, record.levelno, record.levelname = None, logging.INFO, "INFO"
        return True


def configure_logging(node_id: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format=f"%(asctime)s {node_id} %(levelname)s %(message)s",
    )
    logging.getLogger("grpc._cython.cygrpc").addFilter(GrpcCoreLogFilter())
