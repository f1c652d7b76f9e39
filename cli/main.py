"""`distnode`: parse the arguments, run the command, turn errors into exit codes.

Exit codes (DESIGN §1): 0 done; 1 the job failed or a limit refused it;
2 a usage error or a request the cluster refused as wrong (the caller's
mistakes, node.errors.CallerError: a bad field, a missing or forbidden file,
a reused job id, a missing or wrong token); 3 no node reachable, or no
leader within --timeout; 4 (`result`) the job had not finished within
--wait. `main(argv)` returns the code, so tests call it directly
(argparse's own usage errors still raise SystemExit(2), as it does);
`entry()` is the console script.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from cli import commands
from cli.exits import EXIT_JOB_FAILED, EXIT_PENDING, EXIT_UNAVAILABLE, EXIT_USAGE, UsageError
from cli.parser import build_parser, joined_signed_values
from node.errors import CallerError, ClusterUnavailable, InvalidJob, JobError, JobPending


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(joined_signed_values(sys.argv[1:] if argv is None else argv))
    try:
        if args.command == "start":
            return commands.run_start(args)
        if args.command == "submit":
            return asyncio.run(commands.run_submit(args))
        if args.command == "status":
            return asyncio.run(commands.run_status(args))
        if args.command in ("result", "jobs", "cancel"):
            return asyncio.run(commands.run_journal(args))
        if args.command == "certs":
            return commands.run_certs(args)
        return commands.run_local(args)
    except UsageError as exc:  # what argparse says of its own errors, in its words, and exit 2
        return _fail(EXIT_USAGE, f"distnode {args.command}: error: {exc}", args)
    except InvalidJob as exc:
        what = "job" if args.command == "submit" else "request"
        return _fail(EXIT_USAGE, f"distnode {args.command}: invalid {what}: {exc}", args)
    except CallerError as exc:
        return _fail(EXIT_USAGE, f"distnode {args.command}: {exc}", args)
    except JobPending as exc:
        return _fail(EXIT_PENDING, f"distnode {args.command}: {exc}", args)
    except JobError as exc:  # of the job table's calls, the message says what became of the job
        said = "job failed: " if args.command == "submit" else ""
        return _fail(EXIT_JOB_FAILED, f"distnode {args.command}: {said}{exc}", args)
    except ClusterUnavailable as exc:
        return _fail(EXIT_UNAVAILABLE, f"distnode {args.command}: cluster unavailable: {exc}", args)
    except KeyboardInterrupt:
        return 130


def _fail(code: int, message: str, args: argparse.Namespace | None = None) -> int:
    """Say why on stderr; a node started with `--log-format json` says it as its log lines
    are, one JSON object (a log pipeline reads no other line)."""
    if args is not None and args.command == "start" and getattr(args, "log_format", "text") == "json":
        from node.server.logs import JsonFormatter

        record = logging.LogRecord("distnode", logging.ERROR, __file__, 0, message, None, None)
        message = JsonFormatter(getattr(args, "id", None) or "").format(record)
    print(message, file=sys.stderr)
    return code


def entry() -> None:
    # Quiet the gRPC core's own logging unless the user asked for it.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
