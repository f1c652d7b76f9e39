"""File formats on real daemons (LocalCluster): a worker killed mid-job costs no bits.

For each format a job runs clean, then again with a worker killed once the
first shards are merged; the answers must be identical to the bit, and the
leader must say it moved the dead worker's shards. Every wait polls with a
deadline; the killed node is restarted before the next format.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from formats_data import write

from node import Client, LocalCluster
from node.testing.cluster import FAST_TIMING

pytestmark = pytest.mark.process

CHUNK_ROWS = 1 << 15
ROWS = 8_000_000  # 245 shards of one chunk each: a few hundred ms of work on three nodes
LAYOUTS = ("zarr3-sharded", "zarr2-blosc", "hdf5-chunked", "parquet-dir")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("formats")


@pytest.fixture(scope="module")
def specs(data_root: Path) -> dict[str, str]:
    data = np.random.default_rng(5).standard_normal(ROWS)
    return {layout: write(layout, data_root, layout, data, CHUNK_ROWS) for layout in LAYOUTS}


@pytest.fixture(scope="module")
def cluster(data_root: Path) -> Iterator[LocalCluster]:
    with LocalCluster(nodes=3, shard_elems=CHUNK_ROWS, data_root=data_root, **FAST_TIMING) as running:  # type: ignore[arg-type]
        yield running


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_worker_killed_mid_job_changes_no_bit(cluster: LocalCluster, specs: dict[str, str], layout: str) -> None:
    leader = cluster.wait_all_alive(timeout_s=20)
    job = {"op": "std", "source": specs[layout], "map": "exp"}
    clean = cluster.client.submit(**job)
    assert set(clean.nodes) == set(cluster.ids), clean.nodes  # every node reads the format

    worker = next(node for node in cluster.ids if node != leader)
    logged_before = len(cluster.log(leader))
    with Client([cluster.address(leader)]) as client:  # not through the worker we kill
        run = cluster.run_with_fault(lambda: cluster.kill(worker), client=client,
                                     job_id=f"kill-{layout}", **job)
    assert run.landed_mid_job, f"the kill did not land mid-job: {run.progress_at_fault}"
    assert run.answer.array.tobytes() == clean.array.tobytes(), cluster.logs()
    assert run.answer.leader == leader and run.answer.retries == 0
    moved = re.search(rf"job kill-{layout}: worker {worker} failed \(.*\); reassigning (\d+) shards",
                      cluster.log(leader)[logged_before:])
    assert moved and int(moved.group(1)) >= 1, cluster.log(leader)
    cluster.restart(worker)
