"""What the CLI and the clients refuse before any node is asked: one line, the flag or field
named, exit 2 (DESIGN §1), never a traceback; and what they take that argparse alone would not."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from cli.main import main
from cli.parser import build_parser, joined_signed_values
from node import AsyncClient, Client
from node.channels import ChannelFactory
from node.client.retry import classify, new_request
from node.errors import InvalidField, InvalidJob, LimitExceeded, SecurityError
from node.security import load_token
from node.server.config import NodeConfig

UNUSED = "127.0.0.1:9"  # nothing is sent: every case here is refused first
SUBMIT = ["submit", "--cluster", UNUSED, "--op", "histogram", "--source", "range:n=3", "--bins", "4"]


def exit_code_and_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = int(exit_info.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("words", "span"), [
    (["--range", "-3:3"], (-3.0, 3.0)), (["--range", "-.5:1e3"], (-0.5, 1000.0)),
    (["--range", "-inf:0"], (float("-inf"), 0.0)), (["--range=-1:1"], (-1.0, 1.0)),
    (["--range", "0:1"], (0.0, 1.0)),
])
def test_a_histogram_range_below_zero_is_a_value_not_an_option(words: list[str], span: tuple[float, float]) -> None:
    args = build_parser().parse_args(joined_signed_values([*SUBMIT, *words]))
    assert args.range == span


NEEDED = {"start": ["--id", "n1", "--listen", "127.0.0.1:7001"], "submit": SUBMIT[1:], "jobs": ["--cluster", UNUSED],
          "local": []}


def test_the_defaults_help_shows_are_taken_back_as_written() -> None:
    """`start --help` shows "--max-elements N ... (default 1e+11)" and "--shard-elems N ...
    (default 8,388,608)"; typed back, both were refused as not integers. Every integer default
    any command's help shows is taken back as it is written."""
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    shown = [(name, flag, value) for name in NEEDED for flag, value in re.findall(
        r"(--[\w-]+) (?:N|B|MS|PORT) [^()]*?\(default ([^)]+)\)", " ".join(commands[name].format_help().split()))]
    assert {(flag, value) for _, flag, value in shown} >= {("--max-elements", "1e+11"), ("--shard-elems", "8,388,608")}
    for name, flag, value in shown:
        args = build_parser().parse_args([name, *NEEDED[name], flag, value])
        assert getattr(args, flag[2:].replace("-", "_")) == int(Decimal(value.replace(",", ""))), (name, flag)
    assert build_parser().parse_args([*SUBMIT, "--bins", "2e6"]).bins == 2_000_000
    assert build_parser().parse_args(["jobs", "--cluster", UNUSED, "--limit", "1E2"]).limit == 100
    assert build_parser().parse_args(["start", *NEEDED["start"], "--keep-jobs", "0e3"]).keep_jobs == 0


@pytest.mark.parametrize("value", ["1.5e0", "1e-3", "2.5", "1e", "e5", "1e999", "0e3", "1x", "1,00", "1,000,00", ",100"])
def test_integer_flags_still_refuse_what_is_not_an_exact_positive_integer(
    value: str, capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = exit_code_and_error([*SUBMIT, "--bins", value], capsys)
    assert code == 2 and f"--bins: expected a positive integer, got {value!r}" in err, err


def test_an_integer_flag_past_an_int64_is_refused_by_its_bound(capsys: pytest.CaptureFixture[str]) -> None:
    """`--shard-elems 1e20` was taken, then failed where the wire's 64-bit field took it."""
    for value in ("1e20", str(1 << 63)):
        code, err = exit_code_and_error([*SUBMIT, "--bins", value], capsys)
        assert code == 2 and f"--bins: expected at most {(1 << 63) - 1}, got {value!r}" in err, err


async def test_a_traced_detached_job_is_refused_naming_the_trace_field() -> None:
    """Every other refusal before sending names its field in `InvalidJob.field`; this one said ""."""
    with Client(UNUSED) as client, pytest.raises(InvalidJob, match="trace: a detached job") as refused:
        client.submit(op="sum", source="range:n=10", detach=True, trace=True)  # type: ignore[call-overload]
    assert refused.value.field == "trace"
    async with AsyncClient(UNUSED) as async_client:
        with pytest.raises(InvalidJob, match="trace: a detached job") as refused:
            await async_client.submit(op="sum", source="range:n=10", detach=True, trace=True)  # type: ignore[call-overload]
    assert refused.value.field == "trace"


def test_certs_refuses_to_replace_a_ca_it_made_before(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run twice on one directory, `distnode certs` made a new CA over the old one, with exit 0:
    nodes restarted on the new files no longer trusted those still on the old."""
    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out), "--nodes", "1"]) == 0
    ca = (out / "ca.pem").read_bytes()
    code, err = exit_code_and_error(["certs", "--out", str(out), "--nodes", "1"], capsys)
    assert code == 2 and f"out: {out} already holds a CA (ca.pem)" in err and err.count("\n") == 1, err
    assert (out / "ca.pem").read_bytes() == ca


class SizeRefusal:
    """A failed call as gRPC reports a message over a side's limit (no node signed it)."""

    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


@pytest.mark.parametrize(("details", "said"), [
    ("SERVER: Sent message larger than max (160099 vs. 65536)",
     "the job's answer, 160,099 bytes, is over the node's --max-message-bytes, 65,536"),
    ("SERVER: Received message larger than max (120078 vs. 65536)",
     "the job's request, 120,078 bytes, is over the node's --max-message-bytes, 65,536"),
    ("CLIENT: Received message larger than max (9000000 vs. 4194304)",
     "the job's answer, 9,000,000 bytes, is over this client's max_message_bytes, 4,194,304"),
])
def test_grpcs_size_refusal_says_which_message_is_over_whose_limit(details: str, said: str) -> None:
    """It said only gRPC's "SERVER: Sent message larger than max (160099 vs. 65536)"."""
    refused = classify(SizeRefusal(details), accepted=False)
    assert isinstance(refused, LimitExceeded) and str(refused) == f"RESOURCE_EXHAUSTED: {details} ({said})"
    other = classify(SizeRefusal("max-jobs: 256 jobs already running on the leader"), accepted=False)
    assert str(other) == "RESOURCE_EXHAUSTED: max-jobs: 256 jobs already running on the leader"


def test_a_range_with_no_value_still_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = exit_code_and_error([*SUBMIT, "--range", "--json"], capsys)
    assert code == 2 and "--range: expected one argument" in err, err


def test_the_cli_reads_a_negative_range_through_main(capsys: pytest.CaptureFixture[str]) -> None:
    # No node listens on UNUSED: getting as far as the cluster is what is checked (exit 3, not 2).
    code, err = exit_code_and_error([*SUBMIT, "--range", "-3:3", "--timeout", "0.3"], capsys)
    assert code == 3 and "cluster unavailable" in err, err


@pytest.mark.parametrize("token", ["abc\ndef", "p\u00e4ss", "tab\there"])
def test_a_token_no_grpc_header_can_carry_is_refused_where_it_is_given(tmp_path: Path, token: str) -> None:
    path = tmp_path / "token"
    path.write_text(token)
    with pytest.raises(SecurityError, match=rf"token-file: {path}: the token holds"):
        load_token(path)
    with pytest.raises(SecurityError, match="DISTNODE_TOKEN: the token holds"):
        load_token(None, {"DISTNODE_TOKEN": token})
    with pytest.raises(SecurityError, match="token: the token holds"):
        ChannelFactory(None, token)
    with pytest.raises(SecurityError, match="token: the token holds"):
        Client(UNUSED, token=token)
    with pytest.raises(SecurityError, match="token: the token holds"):
        NodeConfig(node_id="n1", listen="127.0.0.1:1", peers=(), data_dir=tmp_path, token=token).validate()


def test_a_token_file_that_is_not_text_is_said_so(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SecurityError, match="is not text"):
        load_token(path)


@pytest.mark.parametrize("command", [["status"], ["jobs"], ["submit", "--op", "sum", "--source", "range:n=3"],
                                     ["start", "--id", "n1", "--listen", "127.0.0.1:0", "--peers", "127.0.0.1:1"]])
def test_every_command_given_such_a_token_exits_2_with_one_line(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "token"
    path.write_text("first\nsecond\n")
    cluster = [] if command[0] == "start" else ["--cluster", UNUSED]
    code, err = exit_code_and_error([command[0], *cluster, *command[1:], "--token-file", str(path)], capsys)
    assert code == 2 and "the token holds '\\n'" in err and err.count("\n") == 1, err


SURROGATE = "caf\udce9"  # what Python makes of a Latin-1 file name on a UTF-8 system


def test_text_protobuf_cannot_carry_is_refused_naming_its_field() -> None:
    with pytest.raises(InvalidField, match="source: is not UTF-8 text") as refused:
        new_request("sum", f"npy:{SURROGATE}.npy", None, None, None, None, None)
    assert refused.value.field == "source"


async def test_the_async_client_refuses_such_job_ids_before_asking() -> None:
    async with AsyncClient(UNUSED, timeout=0.5) as client:
        for call in (client.result(SURROGATE), client.cancel(SURROGATE), client.progress(SURROGATE)):
            with pytest.raises(InvalidField, match="job_id: is not UTF-8 text"):
                await call


@pytest.mark.parametrize("command", [["submit", "--op", "sum", "--source", f"npy:{SURROGATE}.npy"],
                                     ["result", SURROGATE], ["cancel", SURROGATE]])
def test_the_cli_says_so_in_one_line(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, err = exit_code_and_error([command[0], "--cluster", UNUSED, *command[1:]], capsys)
    assert code == 2 and "is not UTF-8 text" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("where", ["missing/cluster.txt", "."])
def test_local_refuses_a_cluster_file_it_cannot_write_before_starting_any_node(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import node.testing.cluster

    started: list[object] = []

    def spawn(**kwargs: object) -> None:
        started.append(kwargs)
        raise RuntimeError("a node was started")

    monkeypatch.setattr(node.testing.cluster, "LocalCluster", spawn)
    code, err = exit_code_and_error(["local", "--nodes", "1", "--cluster-file", str(tmp_path / where)], capsys)
    assert code == 2 and "--cluster-file" in err and err.count("\n") == 1, err
    assert started == []
