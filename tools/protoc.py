"""Regenerate the protobuf/gRPC Python code under paramserver/proto/ from protos/.

Generated code is committed and never edited by hand; `make protos` runs this script and
tests/unit/test_generated_code.py fails when the committed files are stale.

    python tools/protoc.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
GENERATED_PACKAGE = Path("paramserver") / "proto"
INIT_TEXT = '"""Generated protobuf and gRPC code (make protos). Do not edit by hand."""\n'


def proto_files() -> list[Path]:
    """Every .proto under protos/, relative to it, in a stable order."""
    return sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto into `out_dir`; return the generated files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    package = out_dir / GENERATED_PACKAGE
    (package / "__init__.py").write_text(INIT_TEXT)
    return sorted(package.glob("*.py*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO, help="output root (default: repo)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
