"""Generate node/_proto/ from protos/distnode.proto.

    python scripts/gen_proto.py [--out DIR]

The generated files are committed; tests/test_proto_fresh.py regenerates them
into a temporary directory and fails when they differ, so edit the .proto and
rerun this script, never the generated code. grpcio-tools and mypy-protobuf
are pinned exactly in pyproject.toml because their output changes between
releases. mypy-protobuf writes the type stubs (`.pyi`) of both the messages
and the service, so mypy checks the servicer's handlers and every stub call.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PROTO = "distnode.proto"
DEFAULT_OUT = ROOT / "node" / "_proto"

INIT = '"""Generated from protos/distnode.proto by scripts/gen_proto.py; do not edit."""\n'


def _plugin(name: str) -> str:
    """mypy-protobuf's protoc plugin, installed beside this interpreter (a venv's bin/)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install -e '.[dev]' (it comes with mypy-protobuf)")
    return found


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={out_dir}",
            f"--mypy_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            f"--mypy_grpc_out={out_dir}",
            str(PROTO_DIR / PROTO),
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    # protoc writes absolute imports; inside a package they must be relative.
    for name, old in (("distnode_pb2_grpc.py", "import distnode_pb2 as"),
                      ("distnode_pb2_grpc.pyi", "import distnode_pb2 as")):
        path = out_dir / name
        path.write_text(path.read_text().replace(old, "from . " + old, 1))
    (out_dir / "__init__.py").write_text(INIT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
