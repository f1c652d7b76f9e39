"""The committed stubs in node/_proto/ must be what scripts/gen_proto.py makes now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    # In a process of its own: protoc waits on its plugins with select(), which aborts
    # the whole process if a pipe's descriptor is numbered past 1,023.
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
                   check=True, cwd=ROOT)
    committed = ROOT / "node" / "_proto"
    generated = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert generated == sorted(p.name for p in committed.iterdir() if p.is_file() and p.suffix != ".pyc")
    stale = [
        name for name in generated if (tmp_path / name).read_bytes() != (committed / name).read_bytes()
    ]
    assert not stale, f"stale generated files {stale}: run `python scripts/gen_proto.py`"
