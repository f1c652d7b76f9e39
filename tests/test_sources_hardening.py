"""npy: paths come from the network: confinement to the data root and file checks."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from node.core.sourcechecks import lstat_beneath
from node.core.sources import NpySource, open_source
from node.errors import InvalidField, SourceForbidden, SourceNotFound


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "root"
    data.mkdir()
    np.save(data / "ok.npy", np.arange(4.0))
    (tmp_path / "secret.npy").write_bytes((data / "ok.npy").read_bytes())
    return data


def test_relative_and_absolute_paths_inside_the_root_open(root: Path) -> None:
    assert open_source("npy:ok.npy", data_root=root).rows == 4
    assert open_source(f"npy:{root / 'ok.npy'}", data_root=root).rows == 4


@pytest.mark.parametrize("spec", ["npy:../secret.npy", "npy:sub/../../secret.npy", "npy:/etc/passwd"])
def test_paths_leaving_the_root_are_forbidden(root: Path, spec: str) -> None:
    with pytest.raises(SourceForbidden, match="outside the data root") as info:
        open_source(spec, data_root=root)
    assert info.value.field == "source"


def test_symlink_leaving_the_root_is_forbidden(root: Path) -> None:
    (root / "link.npy").symlink_to(root.parent / "secret.npy")
    with pytest.raises(SourceForbidden):
        open_source("npy:link.npy", data_root=root)


def test_symlink_inside_the_root_is_fine(root: Path) -> None:
    (root / "alias.npy").symlink_to(root / "ok.npy")
    assert open_source("npy:alias.npy", data_root=root).rows == 4


def test_a_directory_on_the_path_that_links_out_of_the_root_is_forbidden(root: Path) -> None:
    (root / "sub").symlink_to(root.parent)
    with pytest.raises(SourceForbidden, match="outside the data root"):
        open_source("npy:sub/secret.npy", data_root=root)
    with pytest.raises(SourceForbidden, match="outside the data root"):
        open_source(f"npy:{root / 'sub' / 'secret.npy'}", data_root=root)


def test_a_directory_on_the_path_that_links_inside_the_root_is_fine(root: Path) -> None:
    (root / "real").mkdir()
    np.save(root / "real" / "x.npy", np.arange(3.0))
    (root / "sub").symlink_to(root / "real")
    source = open_source("npy:sub/x.npy", data_root=root)
    assert isinstance(source, NpySource) and source.path == root / "real" / "x.npy"


def test_a_data_root_given_through_a_symlink_is_resolved_first(root: Path) -> None:
    (root.parent / "alias").symlink_to(root)
    source = open_source("npy:ok.npy", data_root=root.parent / "alias")
    assert isinstance(source, NpySource) and source.path == root / "ok.npy"
    with pytest.raises(SourceForbidden):
        open_source("npy:../secret.npy", data_root=root.parent / "alias")


def test_fifo_and_directory_are_rejected_without_blocking(root: Path) -> None:
    os.mkfifo(root / "pipe.npy")
    (root / "dir.npy").mkdir()
    for name in ("pipe.npy", "dir.npy"):
        with pytest.raises(InvalidField, match="not a regular file"):
            open_source(f"npy:{name}", data_root=root)


def test_device_file_is_rejected() -> None:
    with pytest.raises(InvalidField, match="not a regular file"):
        open_source("npy:/dev/zero", data_root=Path("/dev"))


def test_huge_header_is_rejected(root: Path) -> None:
    header = b"\x93NUMPY" + bytes([2, 0]) + struct.pack("<I", 10_000_000)
    (root / "huge.npy").write_bytes(header + b" " * 64)
    with pytest.raises(InvalidField, match="header"):
        open_source("npy:huge.npy", data_root=root)


def test_missing_file_inside_the_root_is_not_found(root: Path) -> None:
    with pytest.raises(SourceNotFound, match="no such file"):
        open_source("npy:nope.npy", data_root=root)


def test_pickled_object_arrays_are_never_unpickled(root: Path) -> None:
    np.save(root / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidField, match="source:"):
        open_source("npy:obj.npy", data_root=root)


def test_lstat_beneath_answers_only_for_a_plain_path_inside_the_root(root: Path) -> None:
    """The shortcut past resolving: a path as written, no symlink or `..` in it; else None,
    and the caller resolves."""
    (root / "sub").mkdir()
    np.save(root / "sub" / "x.npy", np.arange(2.0))
    (root / "alias.npy").symlink_to(root / "ok.npy")
    found = lstat_beneath(str(root), "sub/./x.npy")
    assert found is not None and found[0] == str(root / "sub" / "x.npy") and found[1].st_size > 0
    for relative in ("alias.npy", "sub/../ok.npy", "missing.npy", "", None):
        assert lstat_beneath(str(root), relative) is None, relative
