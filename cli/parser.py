"""The command line's grammar: `build_parser()` and the flag types it checks.

Values argparse cannot check alone (addresses, timing relations, files) are
checked by `node` when the command runs and reported as usage errors too.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from node.client.retry import DEFAULT_TIMEOUT_S
from node.core.job import KERNELS, OPS


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _value_range(text: str) -> tuple[float, float]:
    lo_text, sep, hi_text = text.partition(":")
    try:
        lo, hi = float(lo_text), float(hi_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO:HI, got {text!r}") from None
    if not sep or not lo < hi:
        raise argparse.ArgumentTypeError(f"expected LO:HI with LO < HI, got {text!r}")
    return lo, hi


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distnode", description="A self-healing peer-to-peer reduction cluster."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_start(commands)
    _add_submit(commands)
    _add_status(commands)
    _add_local(commands)
    _add_certs(commands)
    return parser


def _add_start(commands: Any) -> None:
    start = commands.add_parser("start", help="run one node in the foreground")
    start.add_argument("--id", required=True, help="this node's id, unique in the cluster")
    start.add_argument("--listen", required=True, metavar="HOST:PORT")
    start.add_argument("--peers", required=True, metavar="HOST:PORT[,...]",
                       help="the other nodes (may be empty for a one-node cluster)")
    start.add_argument("--data-dir", type=Path, help="where term and vote are kept (fsync)")
    start.add_argument("--heartbeat-ms", type=_positive_int, default=None)
    start.add_argument("--election-ms", metavar="MIN-MAX", default=None)
    start.add_argument("--advertise", metavar="HOST:PORT", default="",
                       help="address others use to reach this node (default: --listen)")
    start.add_argument("--data-root", type=Path, default=None,
                       help="directory that relative npy: paths are resolved against")
    start.add_argument("--shard-elems", type=_positive_int, default=None,
                       help="elements per shard; keep it equal on every node")
    _add_tls_options(start, server=True)
    start.add_argument("--insecure", action="store_true",
                       help="allow listening beyond loopback without TLS and a token")
    start.add_argument("--no-udp-heartbeats", dest="udp_heartbeats", action="store_false",
                       help="send every heartbeat on gRPC, none as a UDP datagram "
                            "(costs an idle node about three times the CPU)")
    limits = start.add_argument_group("limits (RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED beyond them)")
    limits.add_argument("--max-elements", type=_positive_int, default=None)
    limits.add_argument("--max-inline-bytes", type=_positive_int, default=None)
    limits.add_argument("--max-vector", type=_positive_int, default=None)
    limits.add_argument("--max-jobs", type=_positive_int, default=None)
    limits.add_argument("--max-jobs-per-client", type=_positive_int, default=None)
    limits.add_argument("--max-message-bytes", type=_positive_int, default=None)
    limits.add_argument("--job-timeout-s", type=_positive_float, default=None)
    start.add_argument("--tick-ms", type=_positive_int, default=None, help=argparse.SUPPRESS)
    start.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)


def _add_tls_options(parser: argparse.ArgumentParser, server: bool) -> None:
    group = parser.add_argument_group("security")
    who = "this node's" if server else "the client's (for mutual TLS)"
    group.add_argument("--tls-cert", type=Path, default=None, help=f"{who} certificate (PEM)")
    group.add_argument("--tls-key", type=Path, default=None, help=f"{who} private key (PEM)")
    group.add_argument("--tls-ca", type=Path, default=None,
                       help="CA to trust" + ("; also requires client certificates (mTLS)" if server else ""))
    group.add_argument("--token-file", type=Path, default=None,
                       help="file holding the cluster token (default: $DISTNODE_TOKEN)")


def _add_submit(commands: Any) -> None:
    submit = commands.add_parser("submit", help="run one job and print its answer")
    submit.add_argument("--cluster", required=True, metavar="HOST:PORT[,...]")
    submit.add_argument("--op", required=True, choices=OPS)
    submit.add_argument("--source", required=True, metavar="SPEC",
                        help="range:n=N | random:n=N,seed=S[,dist=uniform|normal] | npy:PATH | values:1,2,3")
    submit.add_argument("--map", choices=KERNELS, default=None, metavar="KERNEL",
                        help="one of: " + ", ".join(KERNELS))
    submit.add_argument("--axis", type=int, choices=[0], default=None)
    submit.add_argument("--bins", type=_positive_int, default=None)
    submit.add_argument("--range", type=_value_range, default=None, metavar="LO:HI")
    submit.add_argument("--job-id", default=None)
    submit.add_argument("--timeout", type=_positive_float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help=f"give up after S seconds, retries included (default {DEFAULT_TIMEOUT_S:g})")
    submit.add_argument("--json", action="store_true", help="print one JSON object")
    submit.add_argument("--max-message-bytes", type=_positive_int, default=None, metavar="N",
                        help="largest answer to accept (default 64 MiB, as the nodes' own limit)")
    _add_tls_options(submit, server=False)


def _add_status(commands: Any) -> None:
    status = commands.add_parser("status", help="show the leader and every node")
    status.add_argument("--cluster", required=True, metavar="HOST:PORT[,...]")
    status.add_argument("--timeout", type=_positive_float, default=5.0, metavar="S")
    status.add_argument("--json", action="store_true")
    _add_tls_options(status, server=False)


def _add_local(commands: Any) -> None:
    local = commands.add_parser("local", help="run a whole cluster in the foreground")
    local.add_argument("--nodes", type=_positive_int, default=3)
    local.add_argument("--base-port", type=_positive_int, default=None, metavar="PORT")
    local.add_argument("--heartbeat-ms", type=_positive_int, default=None)
    local.add_argument("--election-ms", metavar="MIN-MAX", default=None)
    local.add_argument("--tls", action="store_true",
                       help="make a throwaway CA and run every link with mutual TLS")
    local.add_argument("--token-file", type=Path, default=None,
                       help="require this cluster token on every RPC (default: $DISTNODE_TOKEN)")


def _add_certs(commands: Any) -> None:
    certs = commands.add_parser("certs", help="make a throwaway CA and certificates for a test cluster")
    certs.add_argument("--out", type=Path, required=True, metavar="DIR")
    certs.add_argument("--nodes", type=_positive_int, default=3)
    certs.add_argument(
        "--hosts", default="", metavar="HOST[,...]",
        help="extra names or IPs the certificates are valid for (127.0.0.1 and localhost always)",
    )
