"""Every exception distnode raises, in two families (as h11 splits local and remote errors).

- `CallerError`: the caller asked for something that cannot be done. Fix the
  request, the flags, the files or the token; retrying the same thing fails
  the same way. The CLI exits 2.
- `ClusterError`: the cluster could not deliver: `JobError` (exit 1: the job
  failed, or a limit refused it) and `ClusterUnavailable` (exit 3). Retry
  later, or look at the cluster; the request itself may be fine.

The client raises the public names (`InvalidJob`, `AccessDenied`,
`JobError`, `ClusterUnavailable`, and their base `DistnodeError`). The daemon raises the
finer classes below them, and its servicer turns each into one gRPC status
(node/server/service.py, `STATUS_OF`), which the client turns back into the
public names. Messages name the field and the problem: "op: unknown op 'sums'".
"""

from __future__ import annotations


class DistnodeError(Exception):
    """Base class of every error distnode raises."""


# -- the caller's mistakes -------------------------------------------------------


class CallerError(DistnodeError):
    """The request or the configuration is wrong; the same call fails again."""


class InvalidJob(CallerError):
    """The job was rejected before running: bad op, source, kernel or option.

    `field` names the offending field ("op", "source", "axis", ...).
    """

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


#: The most of a problem's text an error carries, in UTF-8 bytes: it may quote a request's
#: field, which may be a megabyte, and gRPC ends a call whose status passes 16 KiB (a
#: byte past ASCII takes three there) as RESOURCE_EXHAUSTED.
PROBLEM_BYTES = 2000


class InvalidField(InvalidJob):
    """A field of a request is malformed (gRPC INVALID_ARGUMENT)."""

    def __init__(self, field: str, problem: str) -> None:
        encoded = problem.encode(errors="replace")
        if len(encoded) > PROBLEM_BYTES:
            kept = encoded[:PROBLEM_BYTES].decode(errors="ignore")
            problem = f"{kept}... ({len(encoded) - PROBLEM_BYTES} more bytes)"
        super().__init__(f"{field}: {problem}", field)
        self.problem = problem


class SourceNotFound(InvalidField):
    """The source names a file that does not exist (gRPC NOT_FOUND)."""


class Forbidden(InvalidField):
    """The request names something it may not touch (gRPC PERMISSION_DENIED)."""


class SourceForbidden(Forbidden):
    """The source names a file outside the data root."""


class NotAMember(Forbidden):
    """A node id that is not behind any of this node's --peers addresses."""


class JobConflict(InvalidJob):
    """The job id is already taken by a different job (gRPC ALREADY_EXISTS)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "job_id")


class AccessDenied(CallerError):
    """The cluster refused this client: no token, or the wrong one (gRPC UNAUTHENTICATED)."""


class ConfigError(CallerError, ValueError):
    """A configuration value is malformed or inconsistent with another one."""


class SecurityError(ConfigError):
    """A token or certificate file is missing, empty or unreadable."""


class StateFileError(ConfigError):
    """The node's durable election state cannot be read; it refuses to guess."""


class CannotStart(ConfigError):
    """This machine refuses what the node was configured with: its port, its data dir."""


# -- the cluster's failures ------------------------------------------------------


class ClusterError(DistnodeError):
    """The cluster could not deliver; the request may succeed later or elsewhere."""


class JobError(ClusterError):
    """The job was accepted but did not produce an answer."""


class LimitExceeded(JobError):
    """A node's limit refused the job (RESOURCE_EXHAUSTED); the message names the limit.

    A cluster's failure rather than the caller's: some limits pass later
    (jobs in flight), and what is too big is the node's setting to decide.
    """


class MissingExtra(JobError):
    """This node lacks the optional library a source needs (FAILED_PRECONDITION)."""


class JobFailed(JobError):
    """The leader itself could not compute a shard: the job cannot finish (INTERNAL)."""


class JobTimedOut(JobError):
    """A job ran past the node's job deadline (DEADLINE_EXCEEDED)."""


class UnknownJob(JobError):
    """No node's job table holds this job id (NOT_FOUND): never submitted, or past retention."""


class JobFinished(JobError):
    """The job already ended, so it cannot be cancelled (FAILED_PRECONDITION); names its state."""


class JobCancelled(JobError):
    """The job was cancelled before it finished; it has no answer."""


class JobPending(JobError):
    """The job has not finished within the wait; `state`, `shards_done` and `shards` say how far it is."""

    def __init__(self, message: str, state: str, shards_done: int = 0, shards: int = 0) -> None:
        super().__init__(message)
        self.state = state
        self.shards_done = shards_done
        self.shards = shards


class WorkerFailed(JobError):
    """A worker could not finish its batch (dead, unreachable, or it errored).

    Never reaches a caller: the leader moves the batch to another lane.
    """


class ClusterUnavailable(ClusterError):
    """No node answered, or no leader was elected, within the timeout."""


class NotLeader(ClusterUnavailable):
    """This node is not (or no longer) the leader; the client retries elsewhere (UNAVAILABLE)."""


class NoLeader(ClusterUnavailable):
    """This node knows no leader to relay a call to; the client retries (UNAVAILABLE)."""


class RunAbandoned(ClusterUnavailable):
    """The run a caller joined ended with the caller that started it; retry the job id (UNAVAILABLE)."""


class ReduceFailed(ClusterUnavailable):
    """A worker's partials could not be delivered to the aggregator (UNAVAILABLE)."""


class RelayFailed(ClusterUnavailable):
    """A follower could not relay a call to its leader; `code` is the leader's
    gRPC status name, passed on to the caller unchanged."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(details)
        self.code = code


class AttemptFailed(ClusterUnavailable):
    """One client attempt at one node failed in a way another node may not.

    The client's retry loop catches it and tries the next node; it reaches a
    caller only as the last error inside `ClusterUnavailable` or `JobError`.
    """

    def __init__(self, message: str, accepted: bool = False, reached: bool = True) -> None:
        super().__init__(message)
        #: The cluster had accepted the job before the attempt failed.
        self.accepted = accepted
        #: A node was reached (a status it signed, or a call on a connection it
        #: had accepted): the failure is the cluster's, not a misconfiguration.
        self.reached = reached


class GaveUp(AttemptFailed):
    """The client ended the attempt itself: its timeout passed, or the node stopped
    answering progress probes. Not sent to the same node again in another form."""
