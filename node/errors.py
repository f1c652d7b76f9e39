"""The errors a distnode user can catch.

Two families, as in h11: `InvalidJob` means the caller asked for something
that cannot run (fix the request); `JobError` and `ClusterUnavailable` mean
the cluster could not deliver (retry later, or look at the cluster).
"""

from __future__ import annotations


class DistnodeError(Exception):
    """Base class of every error the client raises."""


class InvalidJob(DistnodeError):
    """The job was rejected before running: bad op, source, kernel or option.

    `field` names the offending field ("op", "source", "axis", ...).
    """

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class JobError(DistnodeError):
    """The job was accepted but did not produce an answer."""


class ClusterUnavailable(DistnodeError):
    """No node answered, or no leader was elected, within the timeout."""
