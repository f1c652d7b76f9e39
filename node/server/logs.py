"""The daemon's log: one line per event on stderr, and gRPC's tracebacks tamed.

Role changes are logged as `became leader term=5` (DESIGN §1: tools and tests
read these lines). `--log-format json` makes each line one JSON object for a
log pipeline: time (UTC, RFC 3339), level, node, term, message, and `peer`,
`job_id` or `shard` where the line is about one (a log call's `extra`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable

LOG_FORMATS = ("text", "json")
#: Fields a log call may add (`extra=`), copied into a JSON line when present.
CONTEXT_FIELDS = ("peer", "job_id", "shard")


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


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `term` asks the node for its current term, unless the
    record states its own (a role change is logged as the core has moved on: a pre-candidate
    of term 0 may be a candidate of term 1 by then)."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id
        self.term: Callable[[], int] | None = None

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        term = getattr(record, "term", None)  # a role change's own; else the node's now
        if term is None and self.term is not None:
            term = self.term()
        line: dict[str, object] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z", "level": record.levelname, "node": self.node_id,
            "term": term, "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure_logging(node_id: str, log_format: str = "text") -> JsonFormatter | None:
    """Log to stderr; the JSON formatter, when that is the format (the daemon tells it the term)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter(node_id) if log_format == "json" else None
    handler.setFormatter(formatter or logging.Formatter(f"%(asctime)s {node_id} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("grpc._cython.cygrpc").addFilter(GrpcCoreLogFilter())
    return formatter
