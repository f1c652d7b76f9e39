"""The command line's grammar: `build_parser()` and the flag types it checks.

Every flag's help names its unit and its default. Values argparse cannot
check alone (addresses, timing relations, files) are checked by `node` when
the command runs and reported as usage errors too.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from node.client.retry import DEFAULT_TIMEOUT_S
from node.core.job import KERNELS, OPS, SHARD_ELEMS
from node.core.jobtable import STATES
from node.core.limits import MAX_MESSAGE_BYTES, Limits
from node.server.config import (
    DEFAULT_ELECTION_MS,
    DEFAULT_HEARTBEAT_MS,
    DEFAULT_KEEP_JOBS,
    DEFAULT_KEEP_RESULT_BYTES,
)

#: Where client commands find the cluster when --cluster is not given.
CLUSTER_ENV = "DISTNODE_CLUSTER"
STATUS_TIMEOUT_S = 5.0
SOURCES = ("range:n=N | random:n=N,seed=S[,dist=uniform|normal] | npy:PATH | values:1,2,3"
           " | zarr:PATH | hdf5:PATH#/DATASET | parquet:PATH#COLUMN")


N = TypeVar("N", int, float)


def _checked(
    convert: Callable[[str], N], accept: Callable[[N], bool], unparsed: str, rejected: str
) -> Callable[[str], N]:
    """An argparse type: `convert`, then `accept` (NaN fails every comparison, so it is refused)."""
    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unparsed}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {rejected}, got {text!r}")
        return value
    return parse


#: An integer as `--help` shows the defaults: in scientific notation ("1e+11", exact), or
#: with its thousands grouped ("8,388,608").
_SCIENTIFIC = re.compile(r"[0-9][0-9_]*(\.[0-9_]*)?[eE]\+?[0-9]{1,2}")
_GROUPED = re.compile(r"[0-9]{1,3}(,[0-9]{3})+")
#: No flag means more than an int64 holds (the wire's fields are 64-bit at most).
MAX_FLAG_INT = (1 << 63) - 1


def _integer(text: str) -> int:
    """int(text), or an integer written as `--help` writes defaults ("1e+11", "8,388,608");
    ArgumentTypeError past MAX_FLAG_INT."""
    written = text.strip()
    try:
        value = int(written)
    except ValueError:
        if _GROUPED.fullmatch(written):
            value = int(written.replace(",", ""))
        elif _SCIENTIFIC.fullmatch(written):
            number = Decimal(written.replace("_", ""))
            if number != number.to_integral_value():
                raise ValueError(text) from None
            value = int(number)
        else:
            raise
    if value > MAX_FLAG_INT:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_FLAG_INT}, got {text!r}")
    return value


_positive_int = _checked(_integer, lambda v: v > 0, "a positive integer", "a positive integer")
_non_negative_int = _checked(_integer, lambda v: v >= 0, "an integer of 0 or more", "an integer of 0 or more")
_non_negative_float = _checked(float, lambda v: v >= 0, "a number of 0 or more", "a number of 0 or more")
_positive_float = _checked(float, lambda v: v > 0, "a number of seconds", "a positive number of seconds")
#: A client's --timeout: gRPC fails a call at once given a deadline of 10^10 s or infinity.
_client_timeout = _checked(float, lambda v: 0 < v <= 1e6, "a number of seconds",
                           "a positive number of seconds, at most 1e6")


def _value_range(text: str) -> tuple[float, float]:
    lo_text, sep, hi_text = text.partition(":")
    try:
        lo, hi = float(lo_text), float(hi_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO:HI, got {text!r}") from None
    if not sep or not lo < hi:
        raise argparse.ArgumentTypeError(f"expected LO:HI with LO < HI, got {text!r}")
    return lo, hi


#: Options whose value may begin with "-": argparse takes `-3:3` for an option, not a value
#: (only a plain negative number such as `-3` passes), so `--range -3:3` would be a usage error.
_SIGNED_VALUES = frozenset({"--range"})
_SIGNED_START = re.compile(r"-(\d|\.\d|inf)")


def joined_signed_values(argv: Sequence[str]) -> list[str]:
    """`argv` with `--range -3:3` written as `--range=-3:3`, which argparse reads as meant. Only
    a word that starts as a number does: `--range --bins 4` stays a missing value."""
    joined: list[str] = []
    for word in argv:
        if joined and joined[-1] in _SIGNED_VALUES and _SIGNED_START.match(word):
            joined[-1] = f"{joined[-1]}={word}"
        else:
            joined.append(word)
    return joined


def version() -> str:
    import importlib.metadata  # only for --version: importing it costs every command ~15 ms

    try:
        return importlib.metadata.version("distnode")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """argparse's "version" action, with the version looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"distnode {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distnode", description="A self-healing peer-to-peer reduction cluster."
    )
    parser.add_argument("--version", action=_VersionAction, help="show the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_start(commands)
    _add_submit(commands)
    _add_journal_commands(commands)
    _add_status(commands)
    _add_local(commands)
    _add_certs(commands)
    return parser


def _add_start(commands: Any) -> None:
    start = commands.add_parser("start", help="run one node in the foreground")
    start.add_argument("--id", required=True, help="this node's id, unique in the cluster")
    start.add_argument("--listen", required=True, metavar="HOST:PORT",
                       help="where to serve gRPC (TCP) and take heartbeats (UDP, same port)")
    start.add_argument("--peers", default="", metavar="HOST:PORT[,...]",
                       help="the other nodes (default: none, a one-node cluster)")
    start.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="where term and vote are kept, fsync'd "
                            "(default: $XDG_STATE_HOME/distnode/ID-PORT, ~/.local/state without it)")
    _add_timing(start)
    start.add_argument("--advertise", metavar="HOST:PORT", default="",
                       help="address others use to reach this node (default: --listen)")
    start.add_argument("--data-root", type=Path, default=None, metavar="DIR",
                       help="directory source paths are confined to (default: the working directory)")
    start.add_argument("--formats", default=None, metavar="KIND[,...]",
                       help="the file formats this node reads, of zarr, hdf5, parquet "
                            "(default: each whose library is installed; '' for none)")
    start.add_argument("--shard-elems", type=_positive_int, default=None, metavar="N",
                       help=f"elements per shard, the same on every node (default {SHARD_ELEMS:,})")
    _add_tls_options(start, server=True)
    start.add_argument("--insecure", action="store_true",
                       help="allow listening beyond loopback without TLS and a token")
    start.add_argument("--no-udp-heartbeats", dest="udp_heartbeats", action="store_false",
                       help="send every heartbeat on gRPC, none as a UDP datagram "
                            "(costs an idle node about three times the CPU)")
    start.add_argument("--no-local-socket", dest="local_socket", action="store_false",
                       help="take jobs on gRPC only, not also on a local socket for clients "
                            "on this host (which saves them about 0.4 ms a small job)")
    start.add_argument("--keep-jobs", type=_non_negative_int, default=None, metavar="N",
                       help=f"finished jobs the job table keeps, oldest dropped first "
                            f"(default {DEFAULT_KEEP_JOBS:,})")
    start.add_argument("--keep-result-bytes", type=_non_negative_int, default=None, metavar="B",
                       help=f"bytes of finished jobs' results and sources the job table keeps "
                            f"(default {DEFAULT_KEEP_RESULT_BYTES:,})")
    start.add_argument("--http", metavar="HOST:PORT", default="",
                       help="serve /metrics (Prometheus) and /status.json over HTTP, read-only "
                            "(default: off)")
    start.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="stderr as lines of text, or one JSON object per line (default text)")
    start.add_argument("--reset-state", action="store_true",
                       help="replace a damaged election.json: the journal's last term, no vote "
                            "(this node may vote twice in a term it forgot; docs/operations.md)")
    _add_limits(start)
    start.add_argument("--tick-ms", type=_positive_int, default=None, help=argparse.SUPPRESS)
    start.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)


def _add_timing(parser: argparse.ArgumentParser) -> None:
    lo, hi = DEFAULT_ELECTION_MS
    parser.add_argument("--heartbeat-ms", type=_positive_int, default=None, metavar="MS",
                        help=f"milliseconds between the leader's heartbeats (default {DEFAULT_HEARTBEAT_MS})")
    parser.add_argument("--idle-heartbeat-ms", type=_positive_int, default=None, metavar="MS",
                        help="the same while no job runs and the log is committed: at least --heartbeat-ms "
                             "and under half the election minimum; followers wait the difference longer "
                             "(default: the longest whole tick under half the election minimum, at most "
                             "2.5 x --heartbeat-ms)")
    parser.add_argument("--election-ms", metavar="MIN-MAX", default=None,
                        help="milliseconds of silence before a follower campaigns, drawn from MIN-MAX; "
                             f"one number N means N-2N; MIN >= 3 x --heartbeat-ms (default {lo}-{hi})")


def _add_limits(start: argparse.ArgumentParser) -> None:
    default = Limits()
    limits = start.add_argument_group("limits (RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED beyond them)")
    for flag, unit, value in (
        ("--max-elements", "elements per job", f"{default.max_elements:.0e}"),
        ("--max-inline-bytes", "bytes of a values: source", f"{default.max_inline_bytes:,}"),
        ("--max-vector", "elements of an --axis 0 answer and of a 2-D row", f"{default.max_vector:.0e}"),
        ("--max-jobs", "jobs running on the leader", f"{default.max_jobs}"),
        ("--max-jobs-per-client", "jobs in flight per client connection", f"{default.max_jobs_per_client}"),
        ("--max-message-bytes", "bytes of any gRPC message, also to peers", f"{default.max_message_bytes:,}"),
    ):
        limits.add_argument(flag, type=_positive_int, default=None, metavar="N",
                            help=f"{unit} (default {value})")
    limits.add_argument("--job-timeout-s", type=_positive_float, default=None, metavar="S",
                        help=f"seconds one job may run (default {default.job_timeout_s:g})")


def _add_tls_options(parser: argparse.ArgumentParser, server: bool) -> None:
    group = parser.add_argument_group("security")
    who = "this node's" if server else "the client's (for mutual TLS)"
    group.add_argument("--tls-cert", type=Path, default=None, metavar="PEM",
                       help=f"{who} certificate (default: none)")
    group.add_argument("--tls-key", type=Path, default=None, metavar="PEM",
                       help=f"{who} private key (default: none)")
    group.add_argument("--tls-ca", type=Path, default=None, metavar="PEM",
                       help="CA to trust" + ("; also requires client certificates (mTLS)" if server else "")
                       + " (default: none; with --tls-cert alone, the system's CAs)")
    group.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                       help="file holding the cluster token (default: $DISTNODE_TOKEN, or none)")


def _add_cluster(parser: argparse.ArgumentParser) -> None:
    from_env = os.environ.get(CLUSTER_ENV, "")
    parser.add_argument(
        "--cluster", default=from_env or None, required=not from_env, metavar="HOST:PORT[,...]",
        help=f"any of the cluster's nodes (default: ${CLUSTER_ENV})",
    )


def _add_submit(commands: Any) -> None:
    submit = commands.add_parser("submit", help="run one job and print its answer")
    _add_cluster(submit)
    submit.add_argument("--op", required=True, choices=OPS)
    submit.add_argument("--source", required=True, metavar="SPEC", help=SOURCES)
    submit.add_argument("--map", choices=KERNELS, default=None, metavar="KERNEL",
                        help="applied to each element first, one of: " + ", ".join(KERNELS)
                             + " (default identity)")
    submit.add_argument("--axis", type=int, choices=[0], default=None,
                        help="0: reduce the rows of 2-D data to a vector (default: everything to one value)")
    submit.add_argument("--bins", type=_positive_int, default=None, metavar="N",
                        help="histogram: number of bins (required for histogram)")
    submit.add_argument("--range", type=_value_range, default=None, metavar="LO:HI",
                        help="histogram: the bins' span (required for histogram)")
    submit.add_argument("--job-id", default=None, metavar="ID",
                        help="resubmitting an id returns its answer, never a second run (default: a UUID)")
    submit.add_argument("--timeout", type=_client_timeout, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"seconds for the whole job, retries included (default {DEFAULT_TIMEOUT_S:g})")
    submit.add_argument("--json", action="store_true", help="print one JSON object")
    submit.add_argument("--trace", type=Path, default=None, metavar="FILE",
                        help="write the job's timeline here (Trace Event Format: open it in "
                             "https://ui.perfetto.dev or chrome://tracing); not with --detach "
                             "(default: no timeline)")
    submit.add_argument("--detach", action="store_true",
                        help="print the job id once the cluster has committed the job, and exit; "
                             "the job runs to completion without this client (see `result`)")
    submit.add_argument("--max-message-bytes", type=_positive_int, default=None, metavar="N",
                        help=f"bytes of the largest answer to accept (default {MAX_MESSAGE_BYTES:,})")
    _add_tls_options(submit, server=False)


def _add_journal_commands(commands: Any) -> None:
    result = commands.add_parser("result", help="print a job's answer (exit 4 if it is not done in time)")
    _add_cluster(result)
    result.add_argument("job_id", metavar="JOB_ID")
    result.add_argument("--wait", type=_non_negative_float, default=0.0, metavar="S",
                        help="seconds to wait for the job to end (default 0: answer at once)")
    result.add_argument("--json", action="store_true", help="print one JSON object, as submit --json")
    jobs = commands.add_parser("jobs", help="list jobs from the job table, newest first")
    _add_cluster(jobs)
    jobs.add_argument("--state", choices=STATES, default=None, help="only jobs in this state")
    jobs.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                      help="at most N jobs (default 100)")
    jobs.add_argument("--json", action="store_true", help="print one JSON object")
    cancel = commands.add_parser("cancel", help="cancel a queued or running job")
    _add_cluster(cancel)
    cancel.add_argument("job_id", metavar="JOB_ID")
    for command in (result, jobs, cancel):
        command.add_argument("--timeout", type=_client_timeout, default=DEFAULT_TIMEOUT_S, metavar="S",
                             help=f"seconds to find a node that answers (default {DEFAULT_TIMEOUT_S:g})")
        _add_tls_options(command, server=False)


def _add_status(commands: Any) -> None:
    status = commands.add_parser("status", help="show the leader and every node")
    _add_cluster(status)
    status.add_argument("--timeout", type=_client_timeout, default=STATUS_TIMEOUT_S, metavar="S",
                        help=f"seconds to wait for an answer (default {STATUS_TIMEOUT_S:g})")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    _add_tls_options(status, server=False)


def _add_local(commands: Any) -> None:
    local = commands.add_parser("local", help="run a whole cluster in the foreground")
    local.add_argument("--nodes", type=_positive_int, default=3, metavar="N", help="nodes (default 3)")
    local.add_argument("--base-port", type=_positive_int, default=None, metavar="PORT",
                       help="gRPC on PORT, PORT+1, ..., each node's page on the N ports after those"
                            " (default: free ports)")
    _add_timing(local)
    local.add_argument("--tls", action="store_true",
                       help="make a throwaway CA and run every link with mutual TLS")
    local.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                       help="require this cluster token on every RPC (default: $DISTNODE_TOKEN, or none)")
    local.add_argument("--cluster-file", type=Path, default=None, metavar="FILE",
                       help=f"write the nodes' addresses there, for ${CLUSTER_ENV} (default: no file)")
    local.add_argument("--keep-logs", action="store_true",
                       help="keep the nodes' logs and data after Ctrl-C (their directory is printed)")


def _add_certs(commands: Any) -> None:
    certs = commands.add_parser(
        "certs", help="make a throwaway CA and certificates for a test cluster (valid 30 days)"
    )
    certs.add_argument("--out", type=Path, required=True, metavar="DIR")
    certs.add_argument("--nodes", type=_positive_int, default=3, metavar="N",
                       help="node certificates n1..nN (default 3), plus one client certificate")
    certs.add_argument(
        "--hosts", default="", metavar="HOST[,...]",
        help="more names or IPs the nodes are reached at (default: none; 127.0.0.1, ::1 and "
             "localhost are always in)",
    )
