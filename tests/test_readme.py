"""Every code block of the README runs, as written.

Each block is marked with a comment the reader does not see, saying how it
runs: `quickstart` (the demo runs here, and CI runs the test command),
`shell-1` (a long-running shell, stopped with Ctrl-C once `shell-2` has run
beside it), `python` (each in a fresh interpreter) and `synopsis` (every flag
it shows must be one the CLI takes). A block without a mark fails the test.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MARKED = re.compile(r"<!-- readme-test: (\S+) -->\n```(\w*)\n(.*?)```", re.S)
KINDS = {"quickstart", "shell-1", "shell-2", "python", "synopsis"}
BLOCKS = [(kind, body) for kind, _, body in MARKED.findall(README)]


def blocks(kind: str) -> list[str]:
    return [body for found, body in BLOCKS if found == kind]


def test_every_block_is_marked_with_how_it_runs() -> None:
    fences = len(re.findall(r"^```", README, re.M)) // 2
    assert len(BLOCKS) == fences, "a code block without a readme-test mark"
    assert {kind for kind, _ in BLOCKS} == KINDS


def test_the_quick_start_is_the_demo_and_what_ci_runs() -> None:
    (block,) = blocks("quickstart")
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    assert "scripts/test.sh" in (ROOT / ".ci" / "run").read_text()  # CI runs the second


@pytest.mark.process
@pytest.mark.timeout(240)
def test_the_demo_runs() -> None:
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, capture_output=True, text=True, timeout=230)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ok  same bits with and without the failure" in done.stdout


@pytest.mark.process
@pytest.mark.timeout(180)
def test_the_shell_blocks_run_side_by_side(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (first,) = blocks("shell-1")
    (second,) = blocks("shell-2")
    cluster = subprocess.Popen(["bash", "-c", first], cwd=tmp_path, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "cluster.txt").exists():
            assert cluster.poll() is None and time.monotonic() < deadline, "no cluster.txt"
            time.sleep(0.05)
        done = subprocess.run(["bash", "-e", "-c", second], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == str(10**8 * (10**8 - 1) // 2)
        assert '"op": "mean"' in lines[1] and "leader" in done.stdout
    finally:
        os.killpg(cluster.pid, signal.SIGINT)
        try:
            cluster.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait()
        assert cluster.stdout is not None
        cluster.stdout.close()


@pytest.mark.process
@pytest.mark.timeout(240)
@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_the_python_blocks_run(index: int, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", blocks("python")[index]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=230)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_the_synopsis_shows_only_flags_the_cli_takes() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    (block,) = blocks("synopsis")
    command = ""
    for line in block.splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["distnode"] and len(words) > 1 and not words[1].startswith("-"):
            command = words[1]
        known = parser if words[1:2] and words[1].startswith("-") else commands[command]
        for flag in re.findall(r"--[a-z][a-z-]*", line.split("#")[0]):
            assert flag in known._option_string_actions, f"{command}: {flag}"
