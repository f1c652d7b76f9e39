"""Mapped sources ask for 2 MiB pages (node/core/sources.py, `in_huge_pages`).

A file read for the first time through such a map comes into the page cache
in 2 MiB folios and is mapped whole where the kernel allows it; where
transparent huge pages are "madvise", only an advised map gets them. What
the node controls, and what these tests hold it to, is the advice itself:
the kernel shows it as the `hg` flag of the mapping in /proc/self/smaps.
Both kinds of map are checked: a `.npy` file and an uncompressed chunk file
(Zarr, HDF5), and a map the kernel cannot advise still reads.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from node.core import sources
from node.core.sources import in_huge_pages, open_source
from node.formats.mapped import file_bytes

#: Larger than one 2 MiB page, so that the map could hold one.
ELEMS = 1 << 19


def vm_flags(path: Path) -> set[str]:
    """The VmFlags of this process's maps of `path` (empty if it is not mapped)."""
    flags: set[str] = set()
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            words = line.split()
            if len(words) >= 5 and "-" in words[0] and len(words[1]) == 4:  # a mapping's header
                # Anonymous maps have no path: they end the file's block too (numpy advises its
                # large arrays itself, and one right after the file's map must not lend its flags).
                inside = len(words) >= 6 and words[-1] == str(path.resolve())
            elif inside and words[0] == "VmFlags:":
                flags.update(words[1:])
    return flags


def test_a_npy_map_asks_for_huge_pages(tmp_path: Path) -> None:
    path = tmp_path / "big.npy"
    np.save(path, np.arange(ELEMS, dtype=np.float64))
    source = open_source(f"npy:{path}", data_root=tmp_path)
    assert source.rows == ELEMS
    assert "hg" in vm_flags(path)
    assert float(source.read(0, ELEMS).sum()) == float(np.arange(ELEMS, dtype=np.float64).sum())


def test_a_chunk_file_map_asks_for_huge_pages(tmp_path: Path) -> None:
    path = tmp_path / "chunk"
    path.write_bytes(np.arange(ELEMS, dtype=np.float64).tobytes())
    mapped = file_bytes(path)
    assert mapped.size == ELEMS * 8
    assert "hg" in vm_flags(path)


def test_a_map_the_kernel_refuses_to_advise_still_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """madvise may fail (a kernel without transparent huge pages): the map is used as it is."""
    path = tmp_path / "plain.npy"
    np.save(path, np.arange(10.0))
    array = np.load(path, mmap_mode="r")

    class Refusing(mmap.mmap):
        def madvise(self, *args: int) -> None:
            raise OSError(22, "Invalid argument")

    with path.open("rb") as handle:
        refusing = Refusing(handle.fileno(), 0, prot=mmap.PROT_READ)
    monkeypatch.setattr(array, "_mmap", refusing)
    assert in_huge_pages(array) is array
    assert float(array.sum()) == 45.0
    refusing.close()


def test_without_the_advice_the_flag_is_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flag is the advice's, not the kernel's default: a map not advised lacks it."""
    monkeypatch.setattr(sources, "in_huge_pages", lambda array: array)
    sources._load_memmap.cache_clear()
    path = tmp_path / "unadvised.npy"
    np.save(path, np.arange(ELEMS, dtype=np.float64))
    open_source(f"npy:{path}", data_root=tmp_path)
    assert vm_flags(path) and "hg" not in vm_flags(path)
