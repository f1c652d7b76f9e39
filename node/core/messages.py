"""What goes into the election core and what comes out: data, no behaviour.

Inputs are messages between nodes (`step(message)`); outputs are what the
caller must do, in list order (node/core/election.py explains the contract).
All are frozen dataclasses, so a simulated network can copy, delay, reorder
and compare them freely (tests/simnet.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


# Messages. For a pre-vote request `term` is the candidate's *future* term.


@dataclass(frozen=True)
class VoteRequest:
    src: str
    dst: str
    term: int
    pre_vote: bool = False


@dataclass(frozen=True)
class VoteResponse:
    src: str
    dst: str
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True)
class Heartbeat:
    src: str
    dst: str
    term: int


@dataclass(frozen=True)
class HeartbeatResponse:
    src: str
    dst: str
    term: int


Message: TypeAlias = VoteRequest | VoteResponse | Heartbeat | HeartbeatResponse


# Outputs, executed by the caller in list order.


@dataclass(frozen=True)
class Persist:
    """Make (term, voted_for) durable before executing any later Send in the list."""

    term: int
    voted_for: str | None


@dataclass(frozen=True)
class Send:
    message: Message


@dataclass(frozen=True)
class RoleChanged:
    """The role or the known leader changed (for logs and leader-only duties)."""

    role: Role
    term: int
    leader: str | None


Output: TypeAlias = Persist | Send | RoleChanged
