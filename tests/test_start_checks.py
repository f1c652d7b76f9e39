"""`distnode start` on a machine or a configuration that cannot work: one line naming the
thing and the problem, exit 2, no traceback, and nothing served (#15's table, rows 1-4)."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from msgspec.structs import replace

from cli.exits import EXIT_USAGE
from node.core.raftlog import Entry
from node.errors import CannotStart
from node.server.journal import Journal
from node.server.statestore import MAX_TERM, ElectionState, StateStore
from node.testing.ports import free_ports

pytestmark = pytest.mark.process


def start(data_dir: Path, port: int = 0, *flags: str) -> subprocess.CompletedProcess[str]:
    port = port or free_ports(1)[0]
    return subprocess.run(
        [sys.executable, "-m", "cli", "start", "--id", "n1", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(data_dir), *flags],
        capture_output=True, text=True, timeout=60,
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    """The refusal: exit 2, one line on stderr, no traceback, never a node that served."""
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "Traceback" not in done.stderr and "DISTNODE_LISTENING" not in done.stdout, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    return done.stderr.strip()


def test_a_port_already_taken_is_named_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_line(start(tmp_path / "n1", port))
    assert line == f"distnode start: cannot listen on 127.0.0.1:{port}: address already in use"


def test_a_refused_start_with_json_logs_says_so_in_json(tmp_path: Path) -> None:
    """With `--log-format json` every log line is one JSON object, but a refused start was one
    line of plain text: a log pipeline reading the node's stderr could not parse why it stopped."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = json.loads(one_line(start(tmp_path / "n1", port, "--log-format", "json")))
    assert {"time", "level", "node", "term", "message"} <= set(line), line
    assert line["level"] == "ERROR" and line["node"] == "n1" and str(line["time"]).endswith("Z")
    assert line["message"] == f"distnode start: cannot listen on 127.0.0.1:{port}: address already in use"


def test_a_data_dir_that_cannot_be_created_is_refused_before_listening(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    line = one_line(start(tmp_path / "file" / "n1"))
    assert line == f"distnode start: data-dir {tmp_path}/file/n1: cannot create it: Not a directory"


def test_a_data_root_that_is_not_a_directory_is_refused_before_listening(tmp_path: Path) -> None:
    """Such a node started and served, and refused every job's path, each time about the file."""
    (tmp_path / "file").write_text("not a directory")
    line = one_line(start(tmp_path / "n1", 0, "--data-root", str(tmp_path / "nowhere")))
    assert line == f"distnode start: error: data-root: {str(tmp_path / 'nowhere')!r} does not exist"
    line = one_line(start(tmp_path / "n1", 0, "--data-root", str(tmp_path / "file")))
    assert line == f"distnode start: error: data-root: {str(tmp_path / 'file')!r} is not a directory"
    # Python 3.11's is_dir() raises where the path cannot be looked at (here: a name too long)
    line = one_line(start(tmp_path / "n1", 0, "--data-root", str(tmp_path / ("x" * 300))))
    assert line.startswith("distnode start: error: data-root: ") and line.endswith(
        "cannot be examined: File name too long"), line


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only file system (a tmpfs mounted ro; the suite runs as root)."""
    where = tmp_path / "ro"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_data_dir_on_a_read_only_file_system_is_refused_before_listening(read_only_dir: Path) -> None:
    line = one_line(start(read_only_dir))
    assert line == f"distnode start: data-dir {read_only_dir}: cannot write a file in it: Read-only file system"


@pytest.mark.parametrize(("content", "problem"), [
    ('{"term": 3, "vot', "is not JSON (16 bytes: "),
    ('{"term": -5, "voted_for": 7}', f"has term -5: not an integer from 0 to {MAX_TERM}"),
    ('{"term": 5, "voted_for": 7}', "has voted_for 7: not a node id or null"),
    ('{"term": 5, "voted_for": "a b"}', "has voted_for 'a b': not a node id or null"),
    ('{"term": true}', "has term True"),
    ('[5, "n2"]', 'is not {"term": N, "voted_for": ID or null}'),
    ("", "is not JSON (0 bytes"),
])
def test_a_damaged_election_state_is_named_with_what_to_do(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "election.json").write_text(content)
    line = one_line(start(tmp_path))
    assert line.startswith(f"distnode start: election state {tmp_path}/election.json {problem}"), line
    assert line.endswith("restore it from a backup, or start with --reset-state once you have read what"
                         " that risks (docs/operations.md)"), line


def test_reset_state_replaces_a_damaged_state_with_the_journals_last_term(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, (Entry(1, 2, "noop"), Entry(2, 4, "noop")))
    journal.close()
    (tmp_path / "election.json").write_text('{"term": 3, "vot')
    port = free_ports(1)[0]
    node = subprocess.Popen(
        [sys.executable, "-m", "cli", "start", "--id", "n1", "--listen", f"127.0.0.1:{port}",
         "--data-dir", str(tmp_path), "--reset-state", "--parent-pid", str(os.getpid())],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert node.stdout is not None
        assert node.stdout.readline().startswith("DISTNODE_LISTENING id=n1"), "it did not start"
        deadline = time.monotonic() + 20
        while json.loads((tmp_path / "election.json").read_text())["term"] < 5:  # it has led since
            assert time.monotonic() < deadline and node.poll() is None, "it never became leader"
            time.sleep(0.05)
    finally:
        node.send_signal(signal.SIGTERM)
        _, stderr = node.communicate(timeout=30)
    assert node.returncode == 0, stderr
    assert "--reset-state: " in stderr and "replaced with term 4 and no vote" in stderr, stderr
    assert "Traceback" not in stderr


def test_reset_state_keeps_a_state_that_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The flag left in a service's command line must not drop the vote, nor lower the term to
    the journal's, at every restart: only a state that cannot be read is replaced."""
    store = StateStore(tmp_path)
    store.save(ElectionState(57, "n2"))
    with caplog.at_level(logging.WARNING):
        store.reset(last_log_term=50)
    assert store.load() == ElectionState(57, "n2")
    assert "is whole (term 57, voted for n2): kept" in caplog.text
    (tmp_path / "election.json").write_text('{"term": 57, "voted_for": ')
    store.reset(last_log_term=50)
    assert store.load() == ElectionState(50, None)


def test_an_election_state_that_contradicts_the_journal_is_refused(tmp_path: Path) -> None:
    """A node saves a term before it takes an entry of that term: a journal of entries beside no
    `election.json`, or beside one of an older term, means the file was lost or swapped, and
    with it maybe a vote. Such a node started at term 0 with no vote, free to vote twice."""
    from node.server.statestore import StateFileError

    store = StateStore(tmp_path)
    with pytest.raises(StateFileError, match="is missing beside a journal of entries up to term 4"):
        store.load_beside(last_log_term=4, journal_used=True)
    assert store.load_beside(last_log_term=0, journal_used=False) == ElectionState()  # a new node
    store.save(ElectionState(3, "n2"))
    with pytest.raises(StateFileError, match=r"has term 3, below its journal's last \(4\): it was lost"):
        store.load_beside(last_log_term=4, journal_used=True)
    store.reset(last_log_term=4, journal_used=True)  # --reset-state replaces it: it does not agree
    assert store.load_beside(last_log_term=4, journal_used=True) == ElectionState(4, None)
    (tmp_path / "election.json").unlink()
    store.reset(last_log_term=4, journal_used=True)
    assert store.load() == ElectionState(4, None)


def test_a_node_does_not_start_on_a_journal_without_its_election_state(tmp_path: Path) -> None:
    from node.server.config import NodeConfig
    from node.server.daemon import Daemon
    from node.server.statestore import StateFileError

    journal = Journal(tmp_path)
    journal.open()
    journal.append(0, (Entry(1, 2, "noop"), Entry(2, 4, "noop")))
    journal.close()
    config = NodeConfig(node_id="n1", listen="127.0.0.1:1", peers=(), data_dir=tmp_path)
    with pytest.raises(StateFileError, match=r"election\.json is missing beside a journal"):
        Daemon(config)
    daemon = Daemon(replace(config, reset_state=True))  # the way out the message names
    daemon.journal.close()
    daemon._claim.release()
    daemon.executor.shutdown()
    assert StateStore(tmp_path).load() == ElectionState(4, None)


def test_a_data_dir_in_use_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """A node started twice on one data dir (the same id and port: its default dir) opened
    the journal before it found the port taken, creating the next segment and cutting what
    looked torn: the first node's next roll then failed and it stopped leading. Two nodes on
    one dir on different ports would share one vote."""
    from node.server.config import NodeConfig
    from node.server.daemon import Daemon

    first = Daemon(NodeConfig(node_id="n1", listen="127.0.0.1:1", peers=(), data_dir=tmp_path))
    try:
        before = sorted((p.name, p.stat().st_size) for p in tmp_path.iterdir())
        with pytest.raises(CannotStart, match=rf"data-dir {tmp_path}: in use by another distnode process"
                                              rf" \(pid {os.getpid()}\); each node needs its own --data-dir"):
            Daemon(NodeConfig(node_id="n2", listen="127.0.0.1:2", peers=(), data_dir=tmp_path))
        assert sorted((p.name, p.stat().st_size) for p in tmp_path.iterdir()) == before
    finally:
        first.journal.close()
        first._claim.release()
        first.executor.shutdown()
    again = Daemon(NodeConfig(node_id="n1", listen="127.0.0.1:1", peers=(), data_dir=tmp_path))
    again.journal.close()
    again._claim.release()
    again.executor.shutdown()
