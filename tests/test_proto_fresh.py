"""The committed stubs in node/_proto/ must be what scripts/gen_proto.py makes now."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    _load_generator().generate(tmp_path)
    committed = ROOT / "node" / "_proto"
    generated = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert generated == sorted(p.name for p in committed.iterdir() if p.is_file() and p.suffix != ".pyc")
    stale = [
        name for name in generated if (tmp_path / name).read_bytes() != (committed / name).read_bytes()
    ]
    assert not stale, f"stale generated files {stale}: run `python scripts/gen_proto.py`"
