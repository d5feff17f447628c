"""No import loop between the packages of ``pipeline/``.

Every module is parsed (``ast``), so an import inside a function counts as much as one at the top:
a lazy import can hide a loop from Python, not from this test. An import under
``if TYPE_CHECKING:`` is left out (it never runs). A package here is the first name under
``pipeline`` (``pipeline.backends.tensorrt`` is ``backends``; ``pipeline.stages`` is ``stages``).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipeline"

# Layers that must stay apart even where no loop would close today.
FORBIDDEN = [
    ("backends", "precision", "a backend runs models; preparing them is precision's (shared: onnx_tools)"),
    ("precision", "runtime", "the gate is handed the run's backend factory (precision.Backends)"),
    ("precision", "cluster", "the gate runs one model, in this process"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return inside


def _imports(path: Path) -> list[tuple[str, int]]:
    """``(imported pipeline module, line)`` for every import in ``path`` that runs."""
    module = _module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, up level - 1
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
            if names == ["pipeline"]:  # from pipeline import precision: the package named
                names = [f"pipeline.{a.name}" for a in node.names]
        else:
            continue
        found += [(name, node.lineno) for name in names if name == "pipeline" or name.startswith("pipeline.")]
    return found


def package_graph() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> the import sites (``module:line``)."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PIPELINE.rglob("*.py")):
        src = _package(_module_name(path))
        for target, line in _imports(path):
            dst = _package(target)
            if dst != src:
                graph[src][dst].append(f"{_module_name(path)}:{line}")
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected groups of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return groups


def test_no_import_loop_between_packages():
    graph = package_graph()
    assert graph["runtime"]["backends"], "the graph is read: the runtime imports the backends"
    loops = cycles(graph)
    detail = [f"{a} -> {b}: {', '.join(graph[a][b][:3])}" for group in loops for a in group for b in group
              if b in graph.get(a, {})]
    assert not loops, "import loop between packages: " + "; ".join(detail)


@pytest.mark.parametrize("low, high, why", FORBIDDEN)
def test_layers_stay_apart(low, high, why):
    sites = package_graph()[low].get(high, [])
    assert not sites, f"{low} imports {high} ({', '.join(sites)}): {why}"


def test_a_loop_is_found_even_through_a_lazy_import(tmp_path, monkeypatch):
    """The checker itself: a loop closed by an import inside a function is reported."""
    pkg = tmp_path / "pipeline"
    for name, text in {
        "__init__.py": "",
        "a/__init__.py": "from pipeline.b import thing\n",
        "b/__init__.py": "def thing():\n    from pipeline.a import other  # lazy\n",
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.a import x\n",
        "d.py": "from pipeline import c\n",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PIPELINE", pkg)
    graph = package_graph()
    assert cycles(graph) == [["a", "b"]]
    assert graph["b"]["a"] == ["pipeline.b:2"] and "a" not in graph["c"] and graph["d"]["c"] == ["pipeline.d:1"]
