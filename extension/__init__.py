"""Notebook integration (IPython magics, rich display, widgets) on top of the public ldw API.

``%load_ext ldw.extension`` (or ``%load_ext ldw``) registers the ``%ldw`` line magic and the
``%%ldw`` cell magic, the rich display of :class:`ldw.Dataset`, and shows an ``ldw.LdwError``
raised in a cell in a short form (:mod:`.short_errors`). ``%ldw --help`` lists the verbs.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .browser import Browser
    from .display import Details, Listing
    from .magics import LdwMagics
    from .progress import ProgressReporter

__all__ = [
    "Browser",
    "Details",
    "LdwMagics",
    "Listing",
    "ProgressReporter",
    "load_ipython_extension",
    "unload_ipython_extension",
]

# imported on first use: the JupyterLab server extension (ldw.extension.lab) needs neither
# IPython nor ipywidgets, and a Jupyter server should not load them at start-up
_LAZY = {"Browser": ".browser", "Details": ".display", "Listing": ".display",
         "LdwMagics": ".magics", "ProgressReporter": ".progress"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _registered(shell: Any) -> LdwMagics | None:
    from .magics import LdwMagics

    magics = shell.magics_manager.registry.get(LdwMagics.__name__)
    return magics if isinstance(magics, LdwMagics) else None


def load_ipython_extension(shell: Any) -> None:
    """Register ``%ldw``/``%%ldw``, the Dataset formatters and the short display of
    ``ldw.LdwError`` raised in a cell on ``shell`` (idempotent)."""
    from .display import register
    from .magics import LdwMagics

    magics = _registered(shell)
    if magics is None:
        magics = LdwMagics(shell)
        shell.register_magics(magics)
    register(shell)
    magics.short_errors.install()


def unload_ipython_extension(shell: Any) -> None:
    """Close the warehouse the magics opened and remove the Dataset formatters."""
    from .display import unregister

    magics = _registered(shell)
    if magics is not None:
        magics.close()
        magics.short_errors.uninstall()
    unregister(shell)
