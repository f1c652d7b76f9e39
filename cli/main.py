"""`distnode start | submit | status | local`: parse, delegate, map errors to exit codes.

Exit codes (DESIGN §1): 0 done, 1 job failed, 2 usage error, 3 cluster
unreachable or no leader within --timeout. `main(argv)` returns the code, so
tests call it directly; `entry()` is the console script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from node.compute import KERNELS, OPS
from node.errors import ClusterUnavailable, InvalidJob, JobError

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class UsageError(Exception):
    """A bad flag value found after parsing; reported like argparse's own errors."""


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
    start.add_argument("--tick-ms", type=_positive_int, default=None, help=argparse.SUPPRESS)
    start.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)


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
    submit.add_argument("--timeout", type=_positive_float, default=120.0, metavar="S")
    submit.add_argument("--json", action="store_true", help="print one JSON object")


def _add_status(commands: Any) -> None:
    status = commands.add_parser("status", help="show the leader and every node")
    status.add_argument("--cluster", required=True, metavar="HOST:PORT[,...]")
    status.add_argument("--timeout", type=_positive_float, default=5.0, metavar="S")
    status.add_argument("--json", action="store_true")


def _add_local(commands: Any) -> None:
    local = commands.add_parser("local", help="run a whole cluster in the foreground")
    local.add_argument("--nodes", type=_positive_int, default=3)
    local.add_argument("--base-port", type=_positive_int, default=None, metavar="PORT")
    local.add_argument("--heartbeat-ms", type=_positive_int, default=None)
    local.add_argument("--election-ms", metavar="MIN-MAX", default=None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            from cli.commands import run_start
            return run_start(args)
        if args.command == "submit":
            from cli.commands import run_submit
            return asyncio.run(run_submit(args))
        if args.command == "status":
            from cli.commands import run_status
            return asyncio.run(run_status(args))
        from cli.commands import run_local
        return run_local(args)
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"distnode {args.command}: error: {exc}\n")
    except InvalidJob as exc:
        return _fail(EXIT_USAGE, f"distnode {args.command}: invalid job: {exc}")
    except JobError as exc:
        return _fail(EXIT_JOB_FAILED, f"distnode {args.command}: job failed: {exc}")
    except ClusterUnavailable as exc:
        return _fail(EXIT_UNAVAILABLE, f"distnode {args.command}: cluster unavailable: {exc}")
    except KeyboardInterrupt:
        return 130


def _fail(code: int, message: str) -> int:
    print(message, file=sys.stderr)
    return code


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def entry() -> None:
    # Quiet the gRPC core's own logging unless the user asked for it.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
