"""The committed generated code must be exactly what `make protos` produces from protos/."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _load_protoc_tool():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("protoc_tool", REPO / "tools" / "protoc.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    tool = _load_protoc_tool()
    fresh = {p.name: p.read_bytes() for p in tool.generate(tmp_path)}
    committed_dir = REPO / "paramserver" / "proto"
    committed = {p.name: p.read_bytes() for p in committed_dir.glob("*.py*")}
    assert set(fresh) == set(committed), "generated file set differs: run `make protos`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code {stale}: run `make protos` and commit"


# Who may import the generated code is checked on the AST in tests/unit/test_imports.py.
