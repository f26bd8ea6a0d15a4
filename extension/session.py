"""What a ``%ldw`` verb may ask of the session that runs it (the magics).

The verbs (:mod:`.verbs`) are written against this protocol, not the magics class, so the
magics import the verbs and nothing imports back: a verb can be tested with any object that
offers these few members.
"""

from __future__ import annotations

from typing import Any, Protocol

from ldw.client import Dataset, Warehouse

from .progress import ProgressReporter

__all__ = ["Session"]


class Session(Protocol):
    """The state a verb works with: the warehouse, the user's namespace, the progress display."""

    progress: ProgressReporter

    @property
    def namespace(self) -> dict[str, Any]:
        """The user's variables (``%ldw map x = ...`` binds ``x`` there)."""
        ...

    @property
    def warehouse(self) -> Warehouse:
        """The connected warehouse; a ``UsageError`` if there is none yet."""
        ...

    def set_warehouse(self, warehouse: Warehouse, *, owned: bool) -> None: ...

    def bind(self, name: str, value: Any) -> None: ...

    def materialize(self, dataset: Dataset, how: str, **options: Any) -> Dataset: ...
