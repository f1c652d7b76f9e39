"""A bench peer runner in serve mode (scripts/benchlib/rounds.py's `Server`) that ends between reps.

A full bench run lost its scaling phase to a `BrokenPipeError` writing the next figure
to a runner whose process had ended: nothing said which runner, how it ended or what it
printed. Now the error names all three.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # benchlib

from bench_peers.peerdata import REP_PREFIX  # noqa: E402
from benchlib import rounds  # noqa: E402
from benchlib.rounds import Server  # noqa: E402

#: Answers one figure, then ends with a complaint: a runner that died after its first rep.
ONE_REP_THEN_DIE = f"""
import json, sys
figure = sys.stdin.readline().strip()
print({REP_PREFIX!r} + json.dumps({{"figure": figure, "s": 0.5, "cpu_s": 0.1, "value": 3}}), flush=True)
print("out of patience", file=sys.stderr, flush=True)
sys.exit(7)
"""


@pytest.mark.timeout(60)
def test_a_runner_that_ended_between_reps_is_named_with_its_exit_and_its_last_words() -> None:
    server = Server("numpy", [sys.executable, "-c", ONE_REP_THEN_DIE], {})
    try:
        first = server.rep("big_sum")
        assert (first.seconds, first.value) == (0.5, 3)
        server.process.wait(timeout=30)  # it has ended: the next figure meets a closed pipe
        with pytest.raises(RuntimeError) as failed:
            for _ in range(64):  # the pipe's buffer may take the first writes: a rep still fails
                server.rep("big_sum")
    finally:
        server.close()
    said = str(failed.value)
    assert said.startswith("numpy ended (exit 7)") and "out of patience" in said, said


#: Leaves a process behind that holds its stdout, writes that process's pid to the file
#: named by its argument, and ends when told to.
LEAVES_A_HOLDER = """
import pathlib, subprocess, sys
holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
pathlib.Path(sys.argv[1]).write_text(str(holder.pid))
sys.stdin.readline()
"""


@pytest.mark.timeout(60)
def test_closing_a_runner_whose_leftover_process_holds_its_output_does_not_wait_for_that_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Closing the output pipe while the reader thread is blocked on it waits for every
    process that holds its other end: a rank an MPI launcher left behind, say."""
    monkeypatch.setattr(rounds, "READER_JOIN_S", 0.5)
    said = tmp_path / "holder.pid"
    server = Server("mpi4py np=2", [sys.executable, "-c", LEAVES_A_HOLDER, str(said)], {})
    holder = None
    try:
        deadline = time.monotonic() + 30
        while holder is None and time.monotonic() < deadline:
            text = said.read_text() if said.exists() else ""
            holder = int(text) if text else None
            time.sleep(0.01)  # polling, with a deadline: the runner starts a Python of its own
        assert holder is not None, "the runner did not start its holder"
        started = time.monotonic()
        server.close()
        took_s = time.monotonic() - started
        assert took_s < 10.0, took_s  # the holder sleeps 30 s
    finally:
        if holder is not None:
            os.kill(holder, signal.SIGKILL)
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


#: Closes its output at the first figure and runs on: a runner whose output ended but not it.
CLOSES_ITS_OUTPUT = """
import os, sys, time
sys.stdin.readline()
os.close(1)
time.sleep(600)
"""


@pytest.mark.timeout(60)
def test_a_runner_whose_output_ended_but_not_it_is_killed_after_the_reps_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rep that read the end of a runner's output waited for its exit without a bound."""
    monkeypatch.setattr(rounds, "REP_TIMEOUT_S", 1.0)
    server = Server("dask", [sys.executable, "-c", CLOSES_ITS_OUTPUT], {})
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match=r"dask ended \(exit none: it closed its output and ran on"):
            server.rep("big_sum")
        assert time.monotonic() - started < 30, "waited for the runner past the rep's timeout"
        assert server.process.poll() is not None, "the runner was left running"
    finally:
        server.close()


def test_the_peers_square_then_sum_a_block_at_a_time_and_agree_with_numpy() -> None:
    """The peers squared a whole third at once (a 267 MB temporary in fresh pages): their
    square-then-sum measured that kernel, not their reduction. They square as distnode
    does now, a block at a time into one buffer, with the same answer."""
    import numpy as np
    from bench_peers import peerdata

    data = np.random.default_rng(3).random(3 * peerdata.SQUARE_BLOCK + 17)
    assert np.isclose(peerdata.square_sum(data), float(np.sum(np.square(data))), rtol=1e-12, atol=0)
    assert peerdata.square_sum(data[:5]) == float(np.sum(np.square(data[:5])))


def test_cpu_between_two_readings_does_not_subtract_a_thread_that_ended() -> None:
    """Idle CPU summed the live threads' totals at both ends: a thread that ended in the
    window (gRPC ends idle pool threads after 20 s) took its whole life off the figure."""
    import threading

    before = rounds.thread_times_s(os.getpid())
    assert before is not None

    def spin() -> None:
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass

    worker = threading.Thread(target=spin)
    worker.start()
    worker.join()  # born and ended between the readings
    mid = rounds.thread_times_s(os.getpid())
    assert mid is not None
    lived = threading.Thread(target=spin)
    lived.start()
    lived.join()
    after = rounds.thread_times_s(os.getpid())
    assert after is not None
    assert rounds.cpu_between_s(before, after) >= 0
    # A reading that holds a thread the later one has not: it is not taken off.
    ended = {**mid, "ended-thread": 0.2}
    assert rounds.cpu_between_s(ended, after) == rounds.cpu_between_s(mid, after) >= 0


def test_the_quiet_check_counts_what_others_spent_whoever_it_was() -> None:
    """It summed the utime+stime of the other processes alive at both ends of a sample: one
    that came and went between them, or children another process reaped, counted nothing,
    and a virtual machine's stolen time was not read. Others' cores are now the machine's
    busy time less this bench's own, its reaped children's included."""
    import subprocess

    from benchlib import loadwatch

    watch = loadwatch.LoadWatch()
    own0 = watch._reading()[0][1]
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)  # a child, reaped
    grown = sum(ticks - own0.get(pid, 0) for pid, ticks in watch._reading()[0][1].items())
    assert grown / os.sysconf("SC_CLK_TCK") >= 0.25, "a reaped child is ours"
    ticks = os.sysconf("SC_CLK_TCK")  # readings of ((busy, stolen), ours by pid), 2 s apart
    others, stolen = watch._cores(((1000, 50), {1: 400, 2: 300}), ((1150, 90), {1: 420}), 2.0)
    assert (others, stolen) == (130 / ticks / 2.0, 40 / ticks / 2.0), "2 left the tree: not others' work"
