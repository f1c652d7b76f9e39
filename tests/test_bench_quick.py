"""`scripts/bench.py --quick` runs end to end and writes its table, JSON and page.

No timing assertions: the numbers depend on the machine. Peers that are not
installed (CI installs only `.[dev]`) must be skipped with a note, not fail.
The page (`--markdown`) must be a function of the JSON: `--render-from` the
JSON writes it again byte for byte, so docs/benchmarks.md can be trusted to
show what the bench printed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # benchlib, for its markers
BENCH = ROOT / "scripts" / "bench.py"
FIGURES = {
    "big_sum", "big_square_sum", "small_p50", "small_p99", "throughput", "vector_reduce",
    "scaling_1", "scaling_2", "scaling_3", "scaling_4", "scaling_2_over_1",
    "scaling_cpu_1", "scaling_cpu_2", "scaling_cpu_3", "scaling_cpu_4",
    "formats_npy", "formats_zarr3", "formats_zarr3_zstd", "formats_hdf5", "formats_parquet", "formats_identity",
    "start",
    "failover_median", "failover_max", "kill_crossing", "idle_rss", "idle_cpu", "idle_cpu_grpc",
    "scale_leader", "scale_ready", "scale_small_p50", "scale_elections",
}


@pytest.mark.process
@pytest.mark.timeout(240)
def test_bench_quick_writes_table_json_and_page(tmp_path: Path) -> None:
    out_json, out_png, out_page = tmp_path / "bench.json", tmp_path / "bench.png", tmp_path / "page.md"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out_json), "--png", str(out_png),
         "--markdown", str(out_page), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=200, cwd=tmp_path, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]

    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| figure | distnode |"), done.stdout
    assert "| target | met? |" in table[0]
    assert len(table) == 2 + len(FIGURES), done.stdout

    result = json.loads(out_json.read_text())
    assert set(result["targets"]) == FIGURES
    assert result["params"]["quick"] is True
    assert result["environment"]["nproc"] >= 1
    assert result["errors"] == {}, result["errors"]
    assert result["answer_problems"] == []
    distnode = result["distnode"]
    assert distnode["big"]["big_sum"]["median_ms"] > 0
    assert distnode["big"]["big_sum"]["correct"] and distnode["big"]["vector_reduce"]["correct"]
    assert distnode["small"]["median_ms"] > 0
    assert distnode["throughput"]["jobs"] > 0
    assert distnode["failover"]["n"] >= 1
    # The formats extra is installed by scripts/test.sh: every format was measured, and 1 node agreed with 3.
    formats = distnode["formats"]
    assert set(formats["sum"]) == {"npy", "zarr3", "zarr3_zstd", "hdf5", "parquet"}
    assert all(figure["correct"] and figure["stable"] for figure in formats["sum"].values())
    assert formats["identity"]["pairs"] == 60 and formats["identity"]["differing"] == []
    assert distnode["scale"]["nodes"] == 16
    # The leader's own "became leader" line was found and lies after the spawn.
    assert distnode["scale"]["elected_ms"] > 0 and distnode["start"]["elected_median_ms"] > 0
    # Every peer either ran or is listed as skipped with a reason.
    for peer in ("mpi4py", "dask", "ray", "numpy"):
        assert peer in result["peers"] or result["skipped"].get(peer), peer
    assert "numpy" in result["peers"]  # numpy is a dependency: never skipped
    assert out_png.exists() or any("chart skipped" in note for note in result["notes"])
    # The data dir given on the command line is kept only with --keep-data.
    assert not list((tmp_path / "data").glob("*.npy"))
    assert not list((tmp_path / "data").glob("big-*"))  # nor the format copies
    # The big figures ran in rounds beside numpy (always there) and mpi4py (when installed): one
    # ratio per round, and the median the table checks; numpy's reps were timed in the same rounds.
    for figure in ("big_sum", "big_square_sum", "vector_reduce"):
        ratios = result["rounds"][figure]["numpy"]
        assert len(ratios["per_round"]) == result["params"]["reps"] and ratios["median"] > 0
        assert result["peers"]["numpy"][figure]["n"] == result["params"]["reps"]
        assert ("mpi4py" in result["rounds"][figure]) == ("mpi4py" not in result["skipped"])
    scaling = distnode["scaling"]
    assert scaling["wrong_answers"] == [] and scaling["nodes"] == [1, 2, 3, 4]
    assert all(scaling["systems"][f"distnode {n}"]["cpu_ms"] > 0 for n in scaling["nodes"])
    assert scaling["distnode_2_over_1"] > 0 and set(scaling["ratios"]["3"]) >= {"numpy"}
    # Each timed figure keeps its spread beside its median.
    assert {"min_ms", "p25_ms", "p75_ms", "max_ms"} <= set(distnode["big"]["big_sum"])
    assert distnode["big"]["big_sum"]["min_ms"] <= distnode["big"]["big_sum"]["median_ms"]

    page = out_page.read_text()
    assert table[0] in page and all(line in page for line in table), page
    assert "## Machine" in page and f"{result['environment']['nproc']} CPUs" in page
    assert "quick run" in page and "--render-from" in page
    assert "## Spread of the timed figures" in page
    assert ("](bench.png)" in page) == out_png.exists()

    # The page is a function of the JSON alone: rebuilt elsewhere, it is the same bytes.
    again = tmp_path / "again"
    rebuilt = subprocess.run(
        [sys.executable, str(BENCH), "--render-from", str(out_json),
         "--markdown", str(again / "page.md"), "--png", str(again / "bench.png")],
        capture_output=True, text=True, timeout=30, cwd=again.parent, check=False,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-4000:]
    assert (again / "page.md").read_bytes() == out_page.read_bytes()

    # --readme rewrites only the block between the README's markers: the headline rows.
    from benchlib.page import SUMMARY_END, SUMMARY_START

    readme = tmp_path / "README.md"
    readme.write_text(f"# a project\n\n{SUMMARY_START}\nold figures\n{SUMMARY_END}\n\nthe rest\n")
    written = subprocess.run([sys.executable, str(BENCH), "--render-from", str(out_json), "--readme", str(readme)],
                             capture_output=True, text=True, timeout=30, check=False)
    assert written.returncode == 0, written.stderr[-4000:]
    text = readme.read_text()
    assert text.startswith("# a project\n") and text.endswith(f"{SUMMARY_END}\n\nthe rest\n")
    assert "old figures" not in text and table[0] in text and "--quick --markdown" in text
    assert next(line for line in table if "big: `sum`" in line) in text


def test_idle_cpu_measures_each_interval_side_by_side(tmp_path: Path) -> None:
    """scripts/idle_cpu.py: one cluster per --idle-heartbeat-ms value, a leader and followers each."""
    out = tmp_path / "idle.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "idle_cpu.py"), "--idle-ms", "50,100",
                    "--windows", "1", "--window-s", "0.5", "--kills", "1", "--json", str(out)],
                   check=True, capture_output=True, text=True, timeout=120)
    found = json.loads(out.read_text())
    assert sorted(found) == ["100", "50"]
    for figures in found.values():
        assert sorted(figures) == ["failover_max_ms", "failover_median_ms", "followers_pct", "leader_pct"]
        assert all(0 <= figures[name] < 100 for name in ("followers_pct", "leader_pct"))
        assert 0 < figures["failover_median_ms"] == figures["failover_max_ms"] < 10_000
