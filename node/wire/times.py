"""A job's times as users read them: RFC 3339 in UTC, to the millisecond (DESIGN §6).

The job table keeps seconds since the epoch; `jobs --json`, `result --json` and a
node's /status.json all show them this way.
"""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(seconds: float | None) -> str | None:
    """Seconds since the epoch as RFC 3339 UTC (None for 0 or None: not yet)."""
    if not seconds:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
