"""The daemon's malloc settings: applied on glibc, skipped when asked."""

from __future__ import annotations

import ctypes.util
import platform

import pytest

from node.server.memory import tune_malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or ctypes.util.find_library("c") is None,
                    reason="mallopt is glibc's")
def test_glibc_takes_every_setting_and_no_program_is_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every daemon tunes malloc as it starts: `ctypes.util.find_library` ran `ldconfig -p`
    in a subprocess for it (~2 ms of CPU, sixteen times on a 16-node start)."""
    import subprocess

    def no_program(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a program was run: {args}")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_program)
    monkeypatch.delenv("DISTNODE_MALLOC", raising=False)
    assert tune_malloc() is True


def test_default_leaves_malloc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISTNODE_MALLOC", "default")
    assert tune_malloc() is False
