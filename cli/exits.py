"""Exit codes (DESIGN §1) and the one error the command line raises itself."""

from __future__ import annotations

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_PENDING = 4  # `result`: the job had not finished within --wait


class UsageError(Exception):
    """A bad flag value found after parsing; reported like argparse's own errors (exit 2)."""
