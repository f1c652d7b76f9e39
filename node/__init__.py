"""distnode: a self-healing peer-to-peer reduction cluster.

    from node import Client, AsyncClient, LocalCluster

See README.md for the user's view and DESIGN.md for the architecture.
"""

from node.blocking import Client
from node.client import Answer, AsyncClient, ClusterStatus, NodeInfo
from node.errors import ClusterUnavailable, DistnodeError, InvalidJob, JobError
from node.harness import LocalCluster

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
