"""What every source must be, whoever reads it: a path inside the data root, a 1-D or
2-D numeric array, chunks small enough to decode whole; and the errors that say so.

Shared by `npy:` (sources.py) and the file-format readers (node/formats/).
Errors are `InvalidField("source", ...)` naming the file and the problem
(`SourceForbidden` outside the root, `SourceNotFound` for a missing file,
`LimitExceeded` for an oversized chunk).
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from node.errors import InvalidField, LimitExceeded, SourceForbidden, SourceNotFound

#: Kinds of numpy dtype a source may hold: bool, signed, unsigned, float.
NUMERIC_KINDS = "biuf"
#: The largest chunk or row group a node decodes at once (1 GiB of float64):
#: a file may declare chunks as large as it likes, and each is read whole.
MAX_CHUNK_ELEMS = 1 << 27
#: What Linux takes of a path (PATH_MAX) and of each of its components (NAME_MAX).
PATH_MAX_BYTES = 4096
NAME_MAX_BYTES = 255


def confined_path(kind: str, text: str, data_root: Path | None) -> tuple[Path, os.stat_result]:
    """The file or directory `text` names, if it lies inside the data root, with its stat.

    The path comes from the network, so: relative paths resolve under the
    root (default: the daemon's working directory), and after resolving `..`
    and symlinks the target must still lie inside the root. Whether a regular
    file or a directory will do is the caller's to check; FIFOs and devices
    (which would block, or never end) never do.
    """
    if not text:
        raise InvalidField("source", f"{kind}: needs a path ({kind}:PATH)")
    check_path_text(text)
    root = Path(os.path.realpath(data_root if data_root is not None else Path.cwd()))
    path = Path(text) if Path(text).is_absolute() else root / text
    plain = plain_path(root, path)
    if plain is not None:  # the path as written: no symlink, no `..`
        resolved, info = plain
    else:
        try:
            resolved = path.resolve()
        except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError on 3.11)
            raise InvalidField("source", f"cannot resolve {text!r}: {exc}") from None
        if not resolved.is_relative_to(root):
            raise SourceForbidden("source", f"{text!r} is outside the data root {str(root)!r}")
        try:
            info = os.stat(resolved)
        except FileNotFoundError:
            raise SourceNotFound("source", f"no such file: {text!r} under {str(root)!r}") from None
        except OSError as exc:
            raise InvalidField("source", f"cannot read {text!r}: {exc.strerror}") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise InvalidField("source", f"{text!r} is not a regular file or a directory (a FIFO or device?)")
    return resolved, info


def check_path_text(text: str) -> None:
    """A path the file system could take, before it is asked anything: resolving a path of
    a million components took 27 s on the event loop (Python's realpath is quadratic)."""
    if "\0" in text:
        raise InvalidField("source", "the path holds a NUL byte")
    size = len(text.encode(errors="surrogateescape"))
    if size > PATH_MAX_BYTES or any(len(part.encode(errors="surrogateescape")) > NAME_MAX_BYTES
                                    for part in text.split("/")):
        raise InvalidField("source", f"the path is {size} bytes; at most {PATH_MAX_BYTES}, "
                                     f"{NAME_MAX_BYTES} a component")


def lstat_beneath(root: str, relative: str | None) -> tuple[str, os.stat_result] | None:
    """`root/relative` and its stat, if that path as written names something inside `root`.

    That is so when no component of `relative` is `..` and an lstat of each
    finds no symlink: a few lstat calls, where resolving the path in Python
    (`Path.resolve`) cost a Zarr job about a fifth of its time, each chunk
    file being checked as it is read (docs/timeline.md). None when it cannot
    tell that way (a symlink, `..`, a missing component, `relative` None or
    empty): the caller resolves the path and checks it against the root.
    `root` must be resolved already.
    """
    current, info = root, None
    for part in (relative or "").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            return None
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except (OSError, ValueError):  # ValueError: a NUL byte (a chunk key, say)
            return None
        if stat.S_ISLNK(info.st_mode):
            return None
    return None if info is None else (current, info)


def plain_path(root: str | Path, path: str | Path) -> tuple[Path, os.stat_result] | None:
    """`path` and its lstat, if `path` as written names something inside the resolved `root`
    (`lstat_beneath`); None if that takes resolving."""
    found = lstat_beneath(os.fspath(root), _below(os.fspath(root), os.fspath(path)))
    return None if found is None else (Path(found[0]), found[1])


def _below(root: str, path: str) -> str | None:
    """`path` relative to `root` if it starts with it, as written; else None."""
    prefix = root if root.endswith("/") else root + "/"
    return path[len(prefix):] if path.startswith(prefix) else None


def check_array(what: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    """The shapes and dtypes a source may have: 1-D or 2-D, numeric, not empty."""
    if dtype.kind not in NUMERIC_KINDS:
        raise InvalidField("source", f"{what} has dtype {dtype}; need bool, integer or float data")
    if dtype.kind == "f" and dtype.itemsize > 8:  # x87's 80 bits here, IEEE's 128 on another machine
        raise InvalidField("source", f"{what} has dtype {dtype}, whose bytes mean another number on"
                                     " another kind of machine; save it as float64")
    if len(shape) not in (1, 2):
        raise InvalidField("source", f"{what} is {len(shape)}-D; need 1-D or 2-D data")
    if math.prod(shape) == 0:
        raise InvalidField("source", f"{what} holds no elements (shape {shape})")


def split_inner(kind: str, text: str, inner: str) -> tuple[str, str]:
    """`PATH#INNER` -> (PATH, INNER); `inner` names the part ("/DATASET", "COLUMN") for the error."""
    path, sep, name = text.rpartition("#")
    if not sep or not path or not name:
        raise InvalidField("source", f"{kind}: expected {kind}:PATH#{inner}, got {kind}:{text}")
    return path, name


def one_line(exc: BaseException) -> str:
    """A library's error message on one line (some end theirs in newlines, or span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@contextlib.contextmanager
def rows_read(label: str, start: int, stop: int) -> Iterator[None]:
    """A format library's error reading rows [start, stop) (a truncated or corrupt chunk,
    whatever the library calls it) as InvalidField naming them; one that is InvalidField
    already (a store's own check) as it is."""
    try:
        yield
    except InvalidField:
        raise
    except Exception as exc:
        problem = f"cannot read rows [{start}, {stop}): {one_line(exc)}"
        raise InvalidField("source", f"{label}: {problem}") from None


def check_chunk(what: str, elements: int) -> None:
    """A stored unit (chunk, row group) small enough to decode in one piece."""
    if elements < 1:
        raise InvalidField("source", f"{what} stores chunks of {elements} elements")
    if elements > MAX_CHUNK_ELEMS:
        raise LimitExceeded(
            f"source: {what} stores chunks of {elements} elements; a node decodes at most "
            f"{MAX_CHUNK_ELEMS} at once"
        )
