"""One daemon process of a local cluster, and how every one of them is stopped.

A `DaemonProcess` runs `python -m cli start ...` with its output appended to
files in the cluster's work directory (kept across restarts, so a test that
fails can print every incarnation's log). Waits poll the files with a
deadline. Stopping is SIGCONT + SIGINT, then SIGKILL after a grace period,
and runs from a finalizer too, so daemons never outlive whoever started them
(they also watch their parent's pid: `--parent-pid`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

READY_LINE = "DISTNODE_LISTENING"
#: How often a wait looks at the daemon's output again.
POLL_S = 0.01


class DaemonProcess:
    def __init__(self, node_id: str, port: int, workdir: Path) -> None:
        self.node_id = node_id
        self.port = port
        self.data_dir = workdir / node_id
        self.stdout_path = workdir / f"{node_id}.out"
        self.stderr_path = workdir / f"{node_id}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False
        #: Where this incarnation's stdout starts: the file is appended to across restarts.
        self._stdout_offset = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.running else None

    def log(self) -> str:
        """Its stderr so far, every incarnation (role changes, warnings)."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def spawn(self, command: Sequence[str]) -> subprocess.Popen[bytes]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self._stdout_offset = out.tell()
            self.process = subprocess.Popen(
                list(command), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                cwd=os.getcwd(), env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.paused = False
        return self.process

    def wait_listening(self, deadline: float) -> None:
        """Until this incarnation prints its ready line; its log in the error if it exits first."""
        process = self.process
        assert process is not None
        ready = f"{READY_LINE} id={self.node_id} "
        while time.monotonic() < deadline:
            with open(self.stdout_path, "rb") as out:
                out.seek(self._stdout_offset)  # an earlier incarnation's ready line must not count
                text = out.read().decode(errors="replace")
            if any(line.startswith(ready) for line in text.splitlines()):
                return
            if process.poll() is not None:
                raise RuntimeError(
                    f"node {self.node_id} exited with {process.returncode} before listening:\n" + self.log()
                )
            time.sleep(POLL_S)
        raise TimeoutError(f"node {self.node_id} did not listen within the deadline")

    def kill(self) -> None:
        """SIGKILL: no goodbye, like a crashed machine."""
        if self.process is not None and self.running:
            self.process.kill()
            self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: the process stays, its sockets stay open, it answers nothing."""
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.process is not None and self.running:
            self.process.send_signal(signal.SIGCONT)
            self.paused = False


def stop_processes(processes: list[subprocess.Popen[bytes]], grace_s: float = 3.0) -> None:
    """SIGCONT + SIGINT every live process, then SIGKILL what is left after the grace."""
    live = [p for p in processes if p.poll() is None]
    for process in live:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
            process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for process in live:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_strays(workdir: Path, grace_s: float = 3.0) -> list[int]:
    """Stop this process's children that run in `workdir` (their `--data-dir` is under it)
    and were never registered: a Ctrl-C or a kill that lands inside `Popen` leaves a child
    started and no handle on it, writing into a work directory about to be removed. The
    pids stopped (Linux: read from /proc)."""
    marker = os.fsencode(str(workdir) + os.sep)
    strays = [pid for pid in children_of(os.getpid()) if marker in cmdline_of(pid)]
    for pid in strays:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for pid in strays:
        while _running_child(pid) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        if _running_child(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return strays


def children_of(parent: int) -> list[int]:
    """The pids whose parent is `parent` (Linux: read from /proc)."""
    found: list[int] = []
    with contextlib.suppress(OSError), os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == parent:  # after "(comm)": state, ppid
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
    return found


def cmdline_of(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running_child(pid: int) -> bool:
    """Not yet ended; reaps it once it has."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False
