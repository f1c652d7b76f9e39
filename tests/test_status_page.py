"""The live status page in a real browser (Debian's chromium, driven by selenium): a
3-node cluster's page shows three nodes and one leader, a running job's progress moving,
and the new leader after the old one is killed, all without a reload."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from node import Client, LocalCluster
from node.testing.cluster import FAST_TIMING

pytestmark = pytest.mark.process

#: Where the page's screenshot is kept (CI keeps it as an artifact); a temporary directory by default.
ARTIFACTS_ENV = "DISTNODE_ARTIFACTS"


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def until(check: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.1)
    return found


def test_the_page_follows_the_cluster_live(browser: Any, tmp_path: Path) -> None:
    def page() -> dict[str, Any]:
        """What the page shows now, read from its DOM in one script (it redraws twice a second)."""
        shown: dict[str, Any] = browser.execute_script("""
            const rows = [...document.querySelectorAll("#nodes tbody tr")];
            const bars = {};
            for (const row of document.querySelectorAll("#running tbody tr")) {
                const bar = row.querySelector("progress");
                bars[row.dataset.job] = [bar.value, bar.max];
            }
            return {nodes: rows.length, leaders: rows.filter(r => r.className === "leader").map(r => r.dataset.id),
                    progress: bars};
        """)
        return shown

    with LocalCluster(nodes=3, workdir=tmp_path / "cluster", http=True, shard_elems=1 << 21,
                      **FAST_TIMING) as cluster:  # type: ignore[arg-type]
        leader = cluster.wait_for_leader()
        watcher = next(n for n in cluster.ids if n != leader)  # its page must outlive the leader
        browser.get(f"http://{cluster.http_addresses[watcher]}/")
        browser.execute_script("window.loadedOnce = true;")  # gone if the page ever reloads
        until(lambda: page()["nodes"] == 3 and page()["leaders"] == [leader], "three nodes, one leader")
        with Client(cluster.addresses, timeout=60) as client:
            job = client.submit(op="sum", source="random:n=600000000,seed=5", detach=True)

            def part_done() -> float | None:
                value, total = page()["progress"].get(job, (0.0, 0.0))
                return value if 0 < value < total else None

            first = until(part_done, "the job's progress bar", timeout_s=60)
            until(lambda: (part_done() or 0) > first, "the progress bar to move", timeout_s=60)
            shots = Path(os.environ.get(ARTIFACTS_ENV) or tmp_path)
            shots.mkdir(parents=True, exist_ok=True)
            browser.save_screenshot(str(shots / "status-page.png"))
            cluster.kill(leader)
            until(lambda: page()["leaders"] and page()["leaders"] != [leader], "the new leader", timeout_s=30)
            assert browser.execute_script("return window.loadedOnce === true;"), "the page reloaded"
            assert client.result(job, wait=120).result is not None
    assert (shots / "status-page.png").stat().st_size > 10_000
