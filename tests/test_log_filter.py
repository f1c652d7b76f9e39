"""The daemon's filter on gRPC's core logger: other parties' doings get one line, not an ERROR."""

from __future__ import annotations

import logging
import sys

from node.server.logs import GrpcCoreLogFilter


class ExecuteBatchError(Exception):
    """Named as gRPC's: the filter goes by the exception's type name."""


class DecodeError(Exception):
    pass


def record_for(exc: Exception, msg: str, *args: object) -> logging.LogRecord:
    try:
        raise exc
    except Exception:
        info = sys.exc_info()
    return logging.LogRecord("grpc._cython.cygrpc", logging.ERROR, "server.pyx", 1, msg, args, info)


def test_a_reply_to_a_caller_that_left_is_one_info_line() -> None:
    record = record_for(ExecuteBatchError("Failed execute_batch"),
                        "ExecuteBatchError raised in core by servicer method [%s]", "/distnode.v1.Node/Compute")
    assert GrpcCoreLogFilter().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == ("a reply was not sent, its caller had gone: ExecuteBatchError "
                                   "raised in core by servicer method [/distnode.v1.Node/Compute]")


def test_a_request_that_is_not_protobuf_is_one_warning_line() -> None:
    record = record_for(DecodeError("truncated"), "Unexpected [%s] raised", "DecodeError")
    assert GrpcCoreLogFilter().filter(record)
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert record.getMessage() == "rejected a request that is not valid protobuf: truncated"


def test_anything_else_stays_an_error_with_its_traceback() -> None:
    record = record_for(RuntimeError("boom"), "Unexpected [%s] raised", "RuntimeError")
    assert GrpcCoreLogFilter().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is not None
