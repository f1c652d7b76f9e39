"""`distnode submit`'s exit code for every status a node can answer with (the README's table).

A stand-in node (a gRPC server in a thread) answers every Submit with one
status, signed as a node signs it; the CLI runs in this process against it.
So each row checks the whole path: status -> client error -> exit code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from cli.main import main
from node.wire.answers import SUBMIT_METHOD
from node.wire.status import node_trailer

#: (status, details, exit code, words on stderr). The README's exit-code table says the same.
ROWS = [
    (grpc.StatusCode.INVALID_ARGUMENT, "op: unknown op 'sums'", 2, "invalid job"),
    (grpc.StatusCode.ALREADY_EXISTS, "job_id: 'j' was already used for a different job", 2, "invalid job"),
    (grpc.StatusCode.NOT_FOUND, "source: no such file 'x.npy'", 2, "invalid job"),
    (grpc.StatusCode.PERMISSION_DENIED, "source: 'x.npy' is outside the data root", 2, "invalid job"),
    (grpc.StatusCode.UNAUTHENTICATED, "authorization: missing or wrong cluster token", 2, "token"),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "max-elements: too many", 1, "job failed"),
    (grpc.StatusCode.DEADLINE_EXCEEDED, "job-timeout-s: job ran past 5 s", 1, "job failed"),
    (grpc.StatusCode.INTERNAL, "computation failed: boom", 1, "job failed"),
    (grpc.StatusCode.FAILED_PRECONDITION, "a node cannot do that", 1, "job failed"),
    (grpc.StatusCode.UNAVAILABLE, "no leader known to n1 (term 3); retry", 3, "cluster unavailable"),
]


@contextlib.contextmanager
def node_answering(code: grpc.StatusCode, details: str) -> Iterator[str]:
    def refuse(request: bytes, context: Any) -> bytes:
        context.abort_with_status(_Status(code, details))
        raise AssertionError("abort returned")

    handler = grpc.method_handlers_generic_handler(
        SUBMIT_METHOD.split("/")[1], {SUBMIT_METHOD.split("/")[2]: grpc.unary_unary_rpc_method_handler(refuse)}
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=2), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)


class _Status(grpc.Status):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = node_trailer("n1")


@pytest.mark.parametrize(("code", "details", "exit_code", "words"), ROWS, ids=[row[0].name for row in ROWS])
def test_each_status_has_its_exit_code(
    code: grpc.StatusCode, details: str, exit_code: int, words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with node_answering(code, details) as address:
        got = main(["submit", "--cluster", address, "--op", "sum", "--source", "range:n=3", "--timeout", "1"])
    err = capsys.readouterr().err
    assert got == exit_code, err
    assert words in err and "Traceback" not in err
    assert err.count("\n") == 1  # one line
