"""A daemon raises its open-files limit (node/server/fdlimit.py): cached maps hold a descriptor each."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: In a child whose soft limit starts low: prints "soft hard returned" after the call.
CHILD = """
import resource, sys
sys.path.insert(0, sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), hard))
from node.server.fdlimit import raise_open_files_limit
returned = raise_open_files_limit()
print(*resource.getrlimit(resource.RLIMIT_NOFILE), returned)
"""


def run_child(start_soft: int) -> tuple[int, int, int]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(start_soft)],
                          check=True, capture_output=True, text=True)
    soft, hard, returned = (int(word) for word in done.stdout.split())
    return soft, hard, returned


def test_a_low_soft_limit_is_raised_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    start = min(256, hard)
    soft, child_hard, returned = run_child(start)
    assert child_hard == hard
    assert soft == returned == hard
    assert soft >= start


def test_a_soft_limit_at_the_hard_one_is_left_alone() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, child_hard, returned = run_child(hard)
    assert (soft, child_hard, returned) == (hard, hard, hard)
