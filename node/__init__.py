"""distnode: a self-healing peer-to-peer reduction cluster.

    from node import Client, AsyncClient, LocalCluster

See README.md for the user's view and docs/design.md for the architecture:
node/core/ is the pure part (election, compute, sources), node/server/ one
daemon, node/client/ the two clients, node/testing/ the local cluster harness.

The names below are imported on first use (PEP 562), so a daemon, which
needs none of the client or harness code, does not pay for importing it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.client.answer import Answer, ClusterStatus, NodeInfo
    from node.client.async_client import AsyncClient
    from node.client.blocking import Client
    from node.client.jobs import JobStatus
    from node.errors import (
        AccessDenied,
        ClusterUnavailable,
        DistnodeError,
        InvalidJob,
        JobCancelled,
        JobError,
        JobFailed,
        JobFinished,
        JobPending,
        UnknownJob,
    )
    from node.security import TlsFiles
    from node.testing.cluster import LocalCluster

#: Public name -> the module that defines it.
_HOMES = {
    "AccessDenied": "node.errors",
    "Answer": "node.client.answer",
    "AsyncClient": "node.client.async_client",
    "Client": "node.client.blocking",
    "ClusterStatus": "node.client.answer",
    "ClusterUnavailable": "node.errors",
    "DistnodeError": "node.errors",
    "InvalidJob": "node.errors",
    "JobCancelled": "node.errors",
    "JobError": "node.errors",
    "JobFailed": "node.errors",
    "JobFinished": "node.errors",
    "JobPending": "node.errors",
    "JobStatus": "node.client.jobs",
    "UnknownJob": "node.errors",
    "LocalCluster": "node.testing.cluster",
    "NodeInfo": "node.client.answer",
    "TlsFiles": "node.security",
}

__all__ = [
    "AccessDenied",
    "Answer",
    "AsyncClient",
    "Client",
    "ClusterStatus",
    "ClusterUnavailable",
    "DistnodeError",
    "InvalidJob",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "JobFinished",
    "JobPending",
    "JobStatus",
    "LocalCluster",
    "NodeInfo",
    "TlsFiles",
    "UnknownJob",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'node' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
