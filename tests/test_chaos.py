"""A short seeded chaos run in CI: scripts/chaos.py on 3 nodes for 40 s.

The full run (`python scripts/chaos.py --nodes 5 --duration 600`) is a
benchmark and lives in scripts/; this one keeps the invariants honest on
every change: zero wrong answers, zero lost jobs, at most one leader per term,
one agreed leader soon after healing, no crash. The seed fixes the fault
schedule; on failure the run's summary and the path of its logs are printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
SEED = 20240601
DURATION_S = 40


@pytest.mark.timeout(150)
def test_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    summary_path = tmp_path / "summary.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chaos.py"), "--nodes", "3",
         "--duration", str(DURATION_S), "--seed", str(SEED),
         "--json", str(summary_path), "--workdir", str(tmp_path / "logs")],
        capture_output=True, text=True, timeout=140, cwd=ROOT,
    )
    report = f"exit {run.returncode}\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    assert summary_path.exists(), report
    summary = json.loads(summary_path.read_text())
    jobs = summary["jobs"]
    assert jobs["answered"] > 50 and sum(summary["faults"].values()) >= 5, report
    assert jobs["wrong"] == 0, report
    assert jobs["lost"] == 0, report
    assert summary["invariants"]["at most one leader per term"], report
    assert all(summary["invariants"].values()), report
    assert run.returncode == 0, report
