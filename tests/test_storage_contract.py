"""The cache backend contract (issue 13): both stores implement every call the rest of ldw makes
on a store, and only the storage package knows Ray exists.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from ldw.storage import DirectReader, Store, VersionStore
from ldw.storage.ray_reader import RayReader
from ldw.storage.ray_store import RayStore  # imports Ray if installed, never starts it

ROOT = Path(__file__).resolve().parents[1]
STORAGE = ROOT / "ldw" / "storage"
ENGINE = ["ldw/engine/facade.py", "ldw/engine/cache.py", "ldw/engine/datasets.py",
          "ldw/lifecycle.py"]
CALLERS = [*ENGINE, "ldw/service.py", "ldw/unix.py", "ldw/flight.py", "ldw/server.py"]


def _modules() -> list[Path]:
    """Every module of ldw, connectors and extension outside the storage package."""
    return [path for folder in ("ldw", "connectors", "extension")
            for path in (ROOT / folder).rglob("*.py") if STORAGE not in path.parents]


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at its top or lazily inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("store", [Store, RayStore])
def test_both_stores_implement_the_contract(store: type) -> None:
    assert issubclass(store, VersionStore)
    assert not inspect.isabstract(store), store.__abstractmethods__
    for name in VersionStore.__abstractmethods__:
        assert getattr(store, name) is not getattr(VersionStore, name), name


def test_the_contract_is_abstract() -> None:
    assert inspect.isabstract(VersionStore)
    assert {"write", "spill", "adopt", "delete", "forget", "files", "remove_orphan", "close",
            "open_table", "open_readonly", "check_memory_only"} <= VersionStore.__abstractmethods__
    assert issubclass(RayReader, DirectReader) and not inspect.isabstract(RayReader)


def test_ray_store_has_the_optional_capabilities() -> None:
    assert RayStore.distributed and not Store.distributed
    for name in ("write_partitions", "ticket"):
        assert getattr(RayStore, name) is not getattr(VersionStore, name), name


@pytest.mark.parametrize("caller", CALLERS)
def test_callers_use_only_the_contract(caller: str) -> None:
    """Every ``store.X`` the engine, service and transports use is named by VersionStore."""
    source = (ROOT / caller).read_text()
    used = set(re.findall(r"\bstore\.([a-z_]+)", source))
    named = set(dir(VersionStore)) | set(inspect.get_annotations(VersionStore))
    missing = used - named
    assert not missing, f"{caller} calls {missing} outside the VersionStore contract"


def test_no_module_outside_storage_knows_ray() -> None:
    offenders = {}
    for path in _modules():
        imports = {m for m in _imported(path)
                   if m == "ray" or m.startswith("ray.") or "ray_" in m.rpartition(".")[2]}
        text = path.read_text()
        if "RayStore" in text:
            imports.add("RayStore")
        if re.search(r"""modules\.get\(\s*["']ray""", text):
            imports.add("sys.modules['ray']")
        if imports:
            offenders[str(path.relative_to(ROOT))] = sorted(imports)
    assert not offenders
    for caller in (*ENGINE, "ldw/service.py", "ldw/unix.py"):
        assert (ROOT / caller) in _modules()
