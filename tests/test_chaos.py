"""scripts/chaos.py: its nemesis against a recording fake cluster, and a short seeded run in CI.

The nemesis tests start no process: each fault kind must touch the cluster the
way its name says and repair what it broke before the next fault, and a seed
must keep naming the same schedule (a run is reproduced from its seed alone).

The chaos run (3 nodes, 40 s) keeps the invariants honest on every change:
zero wrong answers, zero lost jobs, at most one leader per term, one agreed
leader soon after healing, no crash, and not one traceback, ERROR or CRITICAL
log entry. There is no list of excused entries: a known bug fails the run
until it is fixed. The full run (`python scripts/chaos.py --nodes 5
--duration 600`) is a benchmark and lives in scripts/. On failure the run's
summary and the path of its logs are printed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SEED = 20240601
DURATION_S = 40


@pytest.fixture(scope="module")
def chaos() -> Iterator[ModuleType]:
    """scripts/chaos.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("chaos_script", ROOT / "scripts" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_script"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    del sys.modules["chaos_script"]


# ---- the nemesis, against a fake cluster --------------------------------------------------


class RecordingCluster:
    """The part of LocalCluster the nemesis uses; records every call, breaks nothing."""

    def __init__(self, nodes: int, leader: str | None = "n1") -> None:
        self.ids = [f"n{i}" for i in range(1, nodes + 1)]
        self.leader = leader
        self.calls: list[tuple[Any, ...]] = []

    def pid(self, node: str) -> int:
        return 1000 + self.ids.index(node)

    def kill(self, node: str) -> None:
        self.calls.append(("kill", node))

    def restart(self, node: str) -> None:
        self.calls.append(("restart", node))

    def pause(self, node: str) -> None:
        self.calls.append(("pause", node))

    def resume(self, node: str) -> None:
        self.calls.append(("resume", node))

    def cut(self, a: str, b: str, both: bool = True) -> None:
        self.calls.append(("cut", a, b, both))

    def delay(self, a: str, b: str, ms: float, both: bool = True) -> None:
        self.calls.append(("delay", a, b, ms, both))

    def heal(self) -> None:
        self.calls.append(("heal",))


class InstantStop:
    """The nemesis's stop event without the waiting: set once `faults` faults are logged."""

    def __init__(self, record: Any, faults: int) -> None:
        self.record = record
        self.faults = faults

    def wait(self, timeout: float) -> bool:
        return len(self.record.faults) >= self.faults


def nemesis_for(chaos: ModuleType, monkeypatch: pytest.MonkeyPatch, cluster: RecordingCluster,
                seed: int, faults: int = 1) -> Any:
    monkeypatch.setattr(chaos, "current_leader", lambda c: c.leader)
    monkeypatch.setattr(chaos, "say", lambda message: None)
    nemesis = chaos.Nemesis(cluster, seed, 500, chaos.Record())
    nemesis.stop = InstantStop(nemesis.record, faults)
    return nemesis


def test_every_fault_kind_has_one_method(chaos: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    nemesis = nemesis_for(chaos, monkeypatch, RecordingCluster(3), seed=0)
    assert tuple(nemesis.inject) == chaos.FAULT_KINDS


@pytest.mark.parametrize("leader", ["n1", None])
@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("kind", ["kill", "pause", "partition", "one-way", "delay"])
def test_each_fault_breaks_what_its_name_says_then_repairs_it(
    chaos: ModuleType, monkeypatch: pytest.MonkeyPatch, kind: str, nodes: int, leader: str | None
) -> None:
    for seed in range(20):
        cluster = RecordingCluster(nodes, leader)
        nemesis = nemesis_for(chaos, monkeypatch, cluster, seed)
        nemesis.inject[kind]()
        assert [f["kind"] for f in nemesis.record.faults] == [kind]
        *breaks, repair = cluster.calls
        check_fault(kind, cluster, breaks, repair, nemesis.killed_pids)


def check_fault(kind: str, cluster: RecordingCluster, breaks: list[tuple[Any, ...]],
                repair: tuple[Any, ...], killed_pids: set[int]) -> None:
    if kind in ("kill", "pause"):
        [(verb, node)] = breaks
        assert (verb, repair) == (kind, ("restart" if kind == "kill" else "resume", node))
        assert killed_pids == ({cluster.pid(node)} if kind == "kill" else set())
        return
    assert repair == ("heal",)
    assert {call[0] for call in breaks} == {"delay" if kind == "delay" else "cut"}
    if kind == "partition":
        minority = {call[1] for call in breaks}
        majority = set(cluster.ids) - minority
        assert 1 <= len(minority) <= (len(cluster.ids) - 1) // 2
        assert sorted(breaks) == sorted(("cut", a, b, True) for a in minority for b in majority)
    else:  # one-way and delay: the links from one node, to one other or to all
        assert len({call[1] for call in breaks}) == 1
        assert len(breaks) in (1, len(cluster.ids) - 1)
        assert all(call[-1] is (kind == "delay") for call in breaks)


#: What seed 424242 injects on 5 nodes whose leader is n1 (the fake's), up to the
#: first fault of the last kind to appear. Pinned so that a change to the
#: nemesis's draws, which would make every recorded seed replay other faults,
#: cannot pass unnoticed.
SCHEDULE_424242 = [
    ("pause", "SIGSTOP n1 (leader) for 1.86 s"),
    ("pause", "SIGSTOP n5 for 2.29 s"),
    ("one-way", "n2 -/-> n4"),
    ("delay", "n4 <-> n1,n2,n3,n5 +150 ms each way"),
    ("pause", "SIGSTOP n2 for 1.85 s"),
    ("one-way", "n1 -/-> all (leader)"),
    ("pause", "SIGSTOP n2 for 2.81 s"),
    ("pause", "SIGSTOP n1 (leader) for 0.82 s"),
    ("kill", "kill -9 n3"),
    ("one-way", "n1 -/-> all (leader)"),
    ("partition", "n1,n2 | n3,n4,n5"),
]


def test_a_seed_names_the_same_schedule(chaos: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    nemesis = nemesis_for(chaos, monkeypatch, RecordingCluster(5), 424242, faults=len(SCHEDULE_424242))
    nemesis._run()
    assert nemesis.error is None
    assert [(f["kind"], f["what"]) for f in nemesis.record.faults] == SCHEDULE_424242


# ---- a short chaos run on real daemons ----------------------------------------------------


@pytest.mark.process
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
    assert summary["invariants"]["no crash, traceback or ERROR"], report
    assert summary["details"]["bad_log_entries"] == [], report
    assert "known_bugs" not in summary["details"], report
    detached = summary["detached"]
    assert detached["acknowledged"] > 10 and detached["lost"] == 0 and detached["wrong"] == 0, report
    assert detached["by_dying_clients"] + detached["clients_killed_before_ack"] > 3, report
    assert all(summary["invariants"].values()), report
    assert run.returncode == 0, report
