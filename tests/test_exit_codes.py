"""`distnode submit`'s exit code for every status a node can answer with (the README's table).

A stand-in node (a gRPC server in a thread) answers every Submit with one
status, signed as a node signs it; the CLI runs in this process against it.
So each row checks the whole path: status -> client error -> exit code.
"""

from __future__ import annotations

import contextlib

import grpc
import pytest
from standin import refuse, stand_in

from cli.main import main

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


def node_answering(code: grpc.StatusCode, details: str) -> contextlib.AbstractContextManager[str]:
    return stand_in({"Submit": refuse(code, details)})


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
