"""Not part of ldw: this file guards a checkout of ldw that sits in a folder named ``ldw``.

Python reads it only when it looks for the package ``ldw`` in the folder that holds the
checkout (a notebook or shell started there: the current folder comes first on ``sys.path``).
Without it, the checkout's folder would become an empty namespace package ``ldw`` that hides
the real one (an editable install is found after the current folder), and ``import ldw`` or
``%load_ext ldw`` would fail. Instead, the real package is loaded in its place: the installed
one if there is one, else the ``ldw`` package inside this checkout.
"""

import importlib.machinery
import importlib.util
import sys
from pathlib import Path


def _real_ldw() -> importlib.machinery.ModuleSpec:
    here = Path(__file__).resolve().parent
    for finder in sys.meta_path:  # an editable install's finder, or a site-packages copy
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        path = None if finder is not importlib.machinery.PathFinder else [
            p for p in sys.path if Path(p or ".").resolve() != here.parent]
        spec = find("ldw", path)
        if spec is not None and spec.origin not in (None, "namespace") \
                and Path(spec.origin).resolve() != Path(__file__).resolve():
            return spec
    inside = here / "ldw" / "__init__.py"
    spec = importlib.util.spec_from_file_location("ldw", inside,
                                                  submodule_search_locations=[str(inside.parent)])
    assert spec is not None
    return spec


if __name__ == "ldw":
    _spec = _real_ldw()
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["ldw"] = _module  # the import system hands out what sys.modules holds
    _spec.loader.exec_module(_module)  # type: ignore[union-attr]
