"""Structure facts the architecture promises (docs/architecture.md), checked on the code itself:
no import circle among ldw's modules (imports inside functions included), small modules, a
small engine facade. (Ray named only inside the storage package: tests/test_storage_contract.py.)"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# the product's top-level folders and the package each one is installed as
PACKAGES = {"ldw": "ldw", "connectors": "ldw.connectors", "extension": "ldw.extension"}
MAX_LINES = 600
FACADE = "ldw.engine.facade"
FACADE_MAX_LINES = 300


def _in_package(path: Path, top: Path) -> bool:
    """Whether every folder from ``top`` down to ``path`` is a Python package (not, e.g., the
    JupyterLab frontend's extension/labextension/ with its build script and node_modules)."""
    return all((folder / "__init__.py").is_file()
               for folder in [path.parent, *path.parent.parents] if folder.is_relative_to(top))


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if not _in_package(path, ROOT / folder):
                continue
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:``: never executed, so no edge."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skipped


def _imports(module: str) -> Iterator[str]:
    """Every module of ours that ``module`` imports, at the top or inside a function."""
    tree = ast.parse(MODULES[module].read_text())
    skipped = _type_checking_only(tree)
    here = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            if name in MODULES and name != module:
                yield name
                break  # `from pkg import sub` names the submodule, not also the package


def _graph() -> dict[str, set[str]]:
    return {module: set(_imports(module)) for module in MODULES}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return circles


def test_the_walk_sees_the_modules_and_their_imports() -> None:
    graph = _graph()
    assert {"ldw.engine.facade", "ldw.lifecycle", "ldw.connectors.base",
            "ldw.extension.magics"} <= set(graph)
    assert "ldw.lifecycle" in graph["ldw.engine.facade"]
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle_among_the_modules() -> None:
    assert _circles(_graph()) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_600_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines: split it by job"


def test_the_engine_facade_is_small() -> None:
    assert len(MODULES[FACADE].read_text().splitlines()) < FACADE_MAX_LINES
