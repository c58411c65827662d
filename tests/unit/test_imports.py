"""The layering, enforced on the source (AST, no imports run):

- `paramserver` is the server side and the shared core; `workers`, the client side, builds on
  it. Only `paramserver/cli/` (the composition root) may import `workers`.
- Nothing in `paramserver` or `workers` imports `benchmarks` (it runs from a checkout).
- Only `paramserver/serde/` touches the generated protobuf code (`paramserver/proto/`, any
  `*_pb2` module), and nobody reaches protobuf message classes through serde.
- The top-level packages of `paramserver` (and `workers`) import each other without cycles.

Every import counts: module level, inside functions, and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("paramserver", "workers")
SERDE = "paramserver/serde/"  # the package that alone converts to and from protobuf
GENERATED = "paramserver/proto/"
# Third-party generated code of a standard gRPC service (health checking): no messages of ours.
ALLOWED_GENERATED = ("grpc_health",)
# Cycles that exist today and are being removed in the same change (issue #12).
KNOWN_CYCLES = (frozenset({"paramserver.server", "paramserver.federated"}),
                frozenset({"paramserver.types", "paramserver.sharding"}))


@dataclass(frozen=True)
class Import:
    path: str  # file, relative to the repository
    line: int
    target: str  # the imported module, or module.name for `from module import name`

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[Import]:
    rel = path.relative_to(REPO).as_posix()
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), rel)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(rel, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                yield Import(rel, node.lineno, f"{base}.{alias.name}")


ALL_IMPORTS = [imp for path in _source_files() for imp in _imports(path)]


def _top(target: str) -> str:
    return target.split(".")[0]


def _report(rule: str, bad: list[Import]) -> str:
    return f"{rule}:\n" + "\n".join(f"  {imp.where()}: imports {imp.target}" for imp in bad)


def test_the_scan_sees_the_packages() -> None:
    assert len(_source_files()) > 30
    assert any(imp.target.startswith("workers") for imp in ALL_IMPORTS)


def test_only_the_cli_imports_workers() -> None:
    bad = [imp for imp in ALL_IMPORTS if imp.path.startswith("paramserver/")
           and not imp.path.startswith("paramserver/cli/") and _top(imp.target) == "workers"]
    assert not bad, _report("paramserver outside paramserver/cli/ imports workers "
                            "(the client side builds on the server side, not the reverse)", bad)


def test_nothing_imports_benchmarks() -> None:
    bad = [imp for imp in ALL_IMPORTS if _top(imp.target) == "benchmarks"]
    assert not bad, _report("paramserver/workers import benchmarks (a checkout-only suite)",
                            bad)


def _is_generated(target: str) -> bool:
    if _top(target) in ALLOWED_GENERATED:
        return False
    parts = target.split(".")
    return (target == "paramserver.proto" or target.startswith("paramserver.proto.")
            or any(p.endswith(("_pb2", "_pb2_grpc")) for p in parts))


def test_only_serde_imports_generated_code() -> None:
    bad = [imp for imp in ALL_IMPORTS if _is_generated(imp.target)
           and not imp.path.startswith((SERDE, GENERATED))]
    assert not bad, _report(f"only {SERDE} may import the generated protobuf code", bad)


def _serde_own_names() -> set[str]:
    return {n.name for path in (REPO / SERDE).glob("*.py")
            for n in ast.parse(path.read_text()).body
            if isinstance(n, ast.ClassDef | ast.FunctionDef)}


def _serde_aliases(tree: ast.AST) -> set[str]:
    """The names this module binds to paramserver.serde."""
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "paramserver":
            aliases |= {a.asname or a.name for a in node.names if a.name == "serde"}
        elif isinstance(node, ast.Import):
            aliases |= {a.asname for a in node.names if a.name == "paramserver.serde"
                        and a.asname}
    return aliases


def _message_classes_through_serde(path: Path, own: set[str]) -> Iterator[Import]:
    """`serde.SomeMessage` or `from paramserver.serde import SomeMessage`, where SomeMessage
    is CamelCase and not a class serde defines itself (so: a protobuf message class)."""
    rel = path.relative_to(REPO).as_posix()
    tree = ast.parse(path.read_text(), rel)
    aliases = _serde_aliases(tree)

    def message(name: str) -> bool:
        return name[:1].isupper() and not name.isupper() and name not in own

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "paramserver.serde":
            yield from (Import(rel, node.lineno, f"paramserver.serde.{a.name}")
                        for a in node.names if message(a.name))
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in aliases and message(node.attr)):
            yield Import(rel, node.lineno, f"paramserver.serde.{node.attr}")


def test_no_message_classes_through_serde() -> None:
    own = _serde_own_names()
    bad = [imp for path in _source_files()
           if not path.relative_to(REPO).as_posix().startswith(SERDE)
           for imp in _message_classes_through_serde(path, own)]
    assert not bad, _report("protobuf message classes used through serde's re-exports "
                            "(serde converts; callers get our records)", bad)


def _node(target: str) -> str | None:
    """The package-graph node of a module: paramserver.<top-level package or module>, or
    workers; None for anything else (paramserver's own __init__, third parties)."""
    parts = target.split(".")
    if parts[0] == "workers":
        return "workers"
    if parts[0] == "paramserver" and len(parts) > 1:
        name = parts[1]
        if (REPO / "paramserver" / name).is_dir() or (REPO / "paramserver" / f"{name}.py").exists():
            return f"paramserver.{name}"
    return None


def _package_graph() -> dict[tuple[str, str], Import]:
    """(from, to) -> the first import that makes the edge."""
    edges: dict[tuple[str, str], Import] = {}
    for path in _source_files():
        source = _node(_module_of(path))
        for imp in _imports(path):
            target = _node(imp.target)
            if source and target and target != source:
                edges.setdefault((source, target), imp)
    return edges


def _cycles(edges: dict[tuple[str, str], Import]) -> list[frozenset[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _describe(cycle: frozenset[str], edges: dict[tuple[str, str], Import]) -> str:
    inside = [(a, b, imp) for (a, b), imp in sorted(edges.items()) if a in cycle and b in cycle]
    return f"cycle {sorted(cycle)}:\n" + "\n".join(
        f"  {a} -> {b}  ({imp.where()}: imports {imp.target})" for a, b, imp in inside)


def test_the_cycle_finder_finds_cycles() -> None:
    fake = Import("x.py", 1, "t")
    edges = {("a", "b"): fake, ("b", "c"): fake, ("c", "a"): fake, ("c", "d"): fake}
    assert _cycles(edges) == [frozenset({"a", "b", "c"})]


def test_no_new_package_cycles() -> None:
    edges = _package_graph()
    new = [c for c in _cycles(edges) if not any(c <= known for known in KNOWN_CYCLES)]
    assert not new, "package-level import cycle:\n" + "\n".join(_describe(c, edges) for c in new)


def test_no_package_cycles() -> None:
    edges = _package_graph()
    cycles = _cycles(edges)
    assert not cycles, "package-level import cycle:\n" + "\n".join(
        _describe(c, edges) for c in cycles)
