"""The search package's modules import each other without a cycle, at module level only."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import ada_mk.search as package

PACKAGE = Path(__file__).resolve().parents[1] / "ada_mk" / "search"
LAZY_OK = {"matplotlib", "matplotlib.pyplot", "matplotlib.patches"}  # explain.py's optional plotting


def _imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """The ada_mk.search modules `path` imports (anywhere in it), and its imports inside functions."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    nested: list[tuple[int, str]] = []
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from .x import y / from . import x
                names = [node.module] if node.module else [a.name for a in node.names]
            elif node.module and node.module.startswith("ada_mk.search."):
                names = [node.module.removeprefix("ada_mk.search.")]
            elif node.module == "ada_mk.search":
                names = [a.name for a in node.names]
            other = node.module or ""
        elif isinstance(node, ast.Import):
            names = [a.name.removeprefix("ada_mk.search.") for a in node.names if a.name.startswith("ada_mk.search.")]
            other = node.names[0].name
        else:
            continue
        found |= {n.split(".")[0] for n in names}
        if id(node) not in top and other not in LAZY_OK:
            nested.append((node.lineno, other or ", ".join(names)))
    return found, nested


def _graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = {p.stem: p for p in package.glob("*.py") if p.stem != "__init__"}
    return {name: _imports(path)[0] & set(modules) for name, path in modules.items()}


def test_search_package_has_no_import_cycle():
    graph = _graph()
    assert {"plan", "kernel_rules", "scheduling", "search", "planner", "validate"} <= set(graph)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        path.append(mod)
        for dep in sorted(graph[mod]):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)


def test_search_package_imports_at_module_level():
    """No import inside a function (one would hide a cycle), matplotlib aside."""
    nested = {p.name: _imports(p)[1] for p in PACKAGE.glob("*.py")}
    assert {k: v for k, v in nested.items() if v} == {}


def test_the_graph_sees_a_cycle(tmp_path):
    """The check itself: an import hidden in a function still counts, and is reported."""
    (tmp_path / "a.py").write_text("from .b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from .a import y\n")
    assert _graph(tmp_path) == {"a": {"b"}, "b": {"a"}}
    assert _imports(tmp_path / "b.py")[1] == [(2, "a")]


def test_package_docstring_lists_the_modules_in_import_order():
    """ada_mk/search/__init__.py's module map names every module, each after the ones it imports."""
    order = []
    for line in (package.__doc__ or "").splitlines():
        m = re.match(r"  ([a-z_]+(?:, [a-z_]+)*)\s{2,}\S", line)
        if m:
            order += m.group(1).split(", ")
    graph = _graph()
    assert sorted(order) == sorted(graph)
    for mod, deps in graph.items():
        assert all(order.index(d) < order.index(mod) for d in deps), (mod, deps)
