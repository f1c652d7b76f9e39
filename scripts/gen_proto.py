"""Generate node/_proto/ from protos/distnode.proto.

    python scripts/gen_proto.py [--out DIR]

The generated files are committed; tests/test_proto_fresh.py regenerates them
into a temporary directory and fails when they differ, so edit the .proto and
rerun this script, never the generated code. grpcio-tools is pinned exactly in
pyproject.toml because its output changes between releases.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
PROTO = "distnode.proto"
DEFAULT_OUT = ROOT / "node" / "_proto"

INIT = '"""Generated from protos/distnode.proto by scripts/gen_proto.py; do not edit."""\n'


def generate(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO_DIR / PROTO),
        ]
    )
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    # protoc writes an absolute import; inside a package it must be relative.
    grpc_file = out_dir / "distnode_pb2_grpc.py"
    text = grpc_file.read_text()
    text = text.replace("import distnode_pb2 as", "from . import distnode_pb2 as")
    grpc_file.write_text(text)
    (out_dir / "__init__.py").write_text(INIT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    generate(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
