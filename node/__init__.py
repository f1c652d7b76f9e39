"""distnode: a self-healing peer-to-peer reduction cluster.

    from node import Client, AsyncClient, LocalCluster

See README.md for the user's view and DESIGN.md for the architecture.

The names below are imported on first use (PEP 562), so a daemon, which
needs none of the client or harness code, does not pay for importing it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.blocking import Client
    from node.client import Answer, AsyncClient, ClusterStatus, NodeInfo
    from node.errors import ClusterUnavailable, DistnodeError, InvalidJob, JobError
    from node.harness import LocalCluster

#: Public name -> the module that defines it.
_HOMES = {
    "Answer": "node.client",
    "AsyncClient": "node.client",
    "Client": "node.blocking",
    "ClusterStatus": "node.client",
    "ClusterUnavailable": "node.errors",
    "DistnodeError": "node.errors",
    "InvalidJob": "node.errors",
    "JobError": "node.errors",
    "LocalCluster": "node.harness",
    "NodeInfo": "node.client",
}

__all__ = [
    "Answer",
    "AsyncClient",
    "Client",
    "ClusterStatus",
    "ClusterUnavailable",
    "DistnodeError",
    "InvalidJob",
    "JobError",
    "LocalCluster",
    "NodeInfo",
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
