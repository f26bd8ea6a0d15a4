"""Notebook integration (IPython magics, rich display, widgets) on top of the public ldw API.

``%load_ext ldw.extension`` (or ``%load_ext ldw``) registers the ``%ldw`` line magic and the
``%%ldw`` cell magic, the rich display of :class:`ldw.Dataset`, and shows an ``ldw.LdwError``
raised in a cell in a short form (:mod:`.short_errors`). ``%ldw --help`` lists the verbs.
"""

from __future__ import annotations

from typing import Any

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


def __getattr__(name: str) -> Any:
    if name == "Browser":  # imported on first use: ipywidgets is only needed for the browser
        from .browser import Browser

        return Browser
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _registered(shell: Any) -> LdwMagics | None:
    magics = shell.magics_manager.registry.get(LdwMagics.__name__)
    return magics if isinstance(magics, LdwMagics) else None


def load_ipython_extension(shell: Any) -> None:
    """Register ``%ldw``/``%%ldw``, the Dataset formatters and the short display of
    ``ldw.LdwError`` raised in a cell on ``shell`` (idempotent)."""
    from .display import register

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
