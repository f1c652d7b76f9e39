"""The rooms of `node/` stay what docs/design.md says they are.

- The core is pure: importing any node/core/ module, in a fresh interpreter,
  brings in no asyncio, grpc or socket, and no module of ours imports time
  on the way (time is loaded by every interpreter at start, so that one is
  caught at the import statement).
- Rooms only import downwards: core < (formats | wire) < (server | client) <
  testing, with errors, addresses, security and channels shared below the
  last three; the core never imports the formats (they are handed to it).
- No import cycle among our modules, counting every import statement (also
  those inside functions and under TYPE_CHECKING).
- No module of node/ grows past MAX_LINES.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_IN_CORE = ("asyncio", "grpc", "socket", "time")
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    files = [*ROOT.joinpath("node").rglob("*.py"), *ROOT.joinpath("cli").rglob("*.py")]
    return {module_name(p): p for p in files if "_proto" not in p.parts}


MODULES = our_modules()
CORE = sorted(name for name in MODULES if name.startswith("node.core."))


def imports_of(path: Path) -> set[str]:
    """Every module of ours that `path` names in an import statement, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from node.server import beacons` imports the module node.server.beacons.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name not in ("node", "cli"):  # the packages' own __init__ is no edge
                found.add(name)
    found.discard(module_name(path))
    return found


GRAPH = {name: imports_of(path) for name, path in MODULES.items()}

_PROBE = """
import builtins, json, sys
before = set(sys.modules)
seen = []
real_import = builtins.__import__
def spy(name, globals=None, locals=None, fromlist=(), level=0):
    importer = (globals or {}).get("__name__", "")
    if importer.startswith("node"):
        seen.append([importer, name])
    return real_import(name, globals, locals, fromlist, level)
builtins.__import__ = spy
import importlib
importlib.import_module(sys.argv[1])
print(json.dumps({"new": sorted(set(sys.modules) - before), "statements": seen}))
"""


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_imports_no_io_and_no_clock(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE, module], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, check=True)
    loaded = json.loads(done.stdout)
    new_top = {name.partition(".")[0] for name in loaded["new"]}
    assert not new_top & set(FORBIDDEN_IN_CORE), f"{module} brings in {new_top & set(FORBIDDEN_IN_CORE)}"
    named = {(importer, name.partition(".")[0]) for importer, name in loaded["statements"]}
    assert not {pair for pair in named if pair[1] in FORBIDDEN_IN_CORE}, named


def test_the_probe_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The purity check above can fail: a module that imports time is caught."""
    (tmp_path / "node").mkdir()
    (tmp_path / "node" / "__init__.py").write_text("")
    (tmp_path / "node" / "impure.py").write_text("import time\n")
    done = subprocess.run([sys.executable, "-c", _PROBE, "node.impure"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60, check=True)
    assert ["node.impure", "time"] in json.loads(done.stdout)["statements"]


#: What each room may import from our code (besides itself).
ALLOWED = {
    "node.core": {"node.core", "node.errors"},
    "node.errors": set(),
    "node.addresses": {"node.errors"},
    "node.wire": {"node.core", "node.errors", "node.wire"},
    "node.security": {"node.errors"},
    "node.channels": {"node.core", "node.errors", "node.security", "node.wire"},
    # The file-format readers sit on the core: they are sources, opened through core.sources.Opener.
    "node.formats": {"node.core", "node.errors", "node.formats"},
    "node.server": {"node.core", "node.errors", "node.addresses", "node.security", "node.channels",
                    "node.wire", "node.formats", "node.server"},
    "node.client": {"node.core", "node.errors", "node.addresses", "node.security", "node.channels",
                    "node.wire", "node.client"},
    "node.testing": {"node.core", "node.errors", "node.addresses", "node.security", "node.channels",
                     "node.wire", "node.client", "node.testing"},
}


def room_of(module: str) -> str:
    for room in sorted(ALLOWED, key=len, reverse=True):
        if module == room or module.startswith(room + "."):
            return room
    return module


# node/__init__.py names the public API from every room (lazily): it is above them all.
@pytest.mark.parametrize("module", sorted(name for name in MODULES if room_of(name) in ALLOWED))
def test_rooms_import_only_downwards(module: str) -> None:
    room = room_of(module)
    wrong = {target for target in GRAPH[module] if room_of(target) not in ALLOWED[room] | {room}}
    assert not wrong, f"{module} ({room}) imports {sorted(wrong)}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH) or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", sorted(name for name in MODULES if name.startswith("node")))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}: {lines} lines; split it by what its parts are for"
