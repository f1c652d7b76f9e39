"""Large answers through a shared-memory file when the client shares the leader's machine.

gRPC takes about 7 ms to move an 8 MB answer over loopback (docs/timeline.md),
as long as MPI's whole `Reduce` of it. A file in shared memory takes one
copy on the leader and a mapping on the client. MPI moves data between ranks
on one machine the same way (its shared-memory transport), and so does
Ray's object store.

The client owns the file:
- It creates it, empty, with mode 0600 and a random name, in SHM_DIR.
- It names the file in `SubmitRequest.answer_file`, with its host key.
- It removes the file once it has mapped the answer, or when it gives up.

So a crash of the leader leaves nothing behind, and a crash of the client
leaves what a crashed client's own temporary files would.

The leader writes there only if all of these hold:
- the answer is at least ANSWER_FILE_MIN_BYTES (smaller ones cost less inline);
- the host key is its own: the same boot, the same directory (device and
  inode, so not another container's) and the same user;
- the name has the client's form, and it names a regular, empty file of the
  leader's user with one link, opened without following a symbolic link and
  without waiting (so a FIFO in its place cannot block the leader).

Otherwise, or if the write fails (a small /dev/shm, full), the answer comes
in the reply as before. A follower that relays the job passes the file's
name on to the leader, which decides as above. The file is a shortcut,
never a requirement, and nodes or clients that predate it ignore the field.

The client's answer is a read-only view of the mapped file. Its memory is
shared memory (`Shmem` in /proc/meminfo) until the array is freed, like any
other answer's memory.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import mmap
import os
import re
import secrets
import stat
from pathlib import Path

from node._proto import distnode_pb2 as pb
from node.wire.answers import SubmitAnswer

log = logging.getLogger("distnode.answerfile")

#: Where both ends look: a tmpfs on Linux. Without it the shortcut is off.
SHM_DIR = Path("/dev/shm")
NAME_PREFIX = "distnode-answer-"
_NAME = re.compile(re.escape(NAME_PREFIX) + "[0-9a-f]{32}")
#: Below this an answer comes inline: gRPC moves 256 KiB in about 0.2 ms, and
#: the file costs a few system calls at each end.
ANSWER_FILE_MIN_BYTES = 256 << 10
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def host_key(shm_dir: Path = SHM_DIR) -> str | None:
    """This process's machine, shared-memory directory and user; None if there is no such directory."""
    try:
        boot = _BOOT_ID.read_text().strip()
        info = os.stat(shm_dir)
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        return None
    return f"{boot}/{info.st_dev}/{info.st_ino}/{os.getuid()}"


def check_name(spec: pb.AnswerFile) -> str | None:
    """Why `spec` is malformed (for INVALID_ARGUMENT), or None."""
    if spec.name and not _NAME.fullmatch(spec.name):
        return f"must be {NAME_PREFIX!r} and 32 lowercase hex digits, got {spec.name[:80]!r}"
    return None


class AnswerFile:
    """The client's end: `with AnswerFile.create() as target:` then `target.spec` in the
    request and `target.answer(reply)` for the reply; the file is removed on leaving."""

    def __init__(self, path: Path, host: str) -> None:
        self.path = path
        self.spec = pb.AnswerFile(name=path.name, host=host)

    @classmethod
    def create(cls, shm_dir: Path = SHM_DIR) -> AnswerFile | None:
        """A new empty file, or None where the shortcut cannot work (no such directory, or full)."""
        host = host_key(shm_dir)
        if host is None:
            return None
        path = shm_dir / f"{NAME_PREFIX}{secrets.token_hex(16)}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        except OSError:
            return None
        return cls(path, host)

    def read(self) -> memoryview:
        """The bytes the leader wrote, mapped read-only (OSError if the file is gone)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if not size:
                return memoryview(b"")
            # Populated at once: the caller reads all of it, and one call faults it in faster.
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            return memoryview(mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ))
        finally:
            os.close(fd)

    def answer(self, reply: SubmitAnswer) -> SubmitAnswer:
        """`reply` with its data from this file if the leader put it here."""
        if not reply.head.result.in_answer_file:
            return reply
        return SubmitAnswer(reply.head, self.read())

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __enter__(self) -> AnswerFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def deliver(answer: SubmitAnswer, spec: pb.AnswerFile, shm_dir: Path = SHM_DIR) -> SubmitAnswer:
    """The leader's end: `answer` with its data moved to the client's file, where that can be done."""
    if len(answer.data) < ANSWER_FILE_MIN_BYTES or not spec.name or spec.host != host_key(shm_dir):
        return answer
    if not _write(shm_dir / spec.name, answer.data):
        return answer
    answer.head.result.in_answer_file = True
    return SubmitAnswer(answer.head, memoryview(b""))


def _write(path: Path, data: memoryview) -> bool:
    if not _NAME.fullmatch(path.name):
        return False
    try:
        # O_NONBLOCK: a FIFO put in the client's place would otherwise block this open, and
        # the event loop with it, until someone read it; non-blocking, it fails (ENXIO).
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # the client gave up and removed it, or it was never a file of ours
        log.debug("answer file %s: %s; answering inline", path.name, exc)
        return False
    try:
        info = os.fstat(fd)
        if not (stat.S_ISREG(info.st_mode) and info.st_uid == os.getuid()
                and info.st_size == 0 and info.st_nlink == 1):
            log.debug("answer file %s: not an empty regular file of ours; answering inline", path.name)
            return False
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
        return True
    except OSError as exc:  # ENOSPC: containers give /dev/shm 64 MB
        log.debug("answer file %s: %s; answering inline", path.name, exc)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        return False
    finally:
        os.close(fd)
