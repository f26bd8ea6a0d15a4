"""``%ldw`` / ``%%ldw``: one magic that routes ``VERB args`` to the verb table in ``verbs``.

The magics hold one :class:`ldw.Warehouse`. Every :class:`ldw.LdwError` and every bad input
becomes a one-line IPython ``UsageError`` (IPython shows it without a traceback). The line is
never expanded against the user's variables (``$x``/``{x}``): Python values reach a query only
as bound ``:name`` parameters.
"""

from __future__ import annotations

import shlex
from typing import Any

from IPython.core.error import UsageError  # the extension may import IPython
from IPython.core.magic import (
    Magics,
    line_cell_magic,
    magics_class,
    no_var_expand,
)

from ldw.client import Dataset, Warehouse
from ldw.errors import LdwError
from ldw.hints import spoken

from .display import one_line
from .progress import ProgressReporter
from .short_errors import ShortErrors
from .verbs import VERBS, HelpShown, overview, split_line, unknown_verb

__all__ = ["LdwMagics"]


@magics_class
class LdwMagics(Magics):
    """The ``%ldw`` line magic and ``%%ldw`` cell magic, holding one ``ldw.Warehouse``."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.progress = ProgressReporter()
        self.short_errors = ShortErrors(shell)
        self._warehouse: Warehouse | None = None
        self._owned = False

    # -- the session the verbs work with -------------------------------------------------------
    @property
    def namespace(self) -> dict[str, Any]:
        return self.shell.user_ns

    @property
    def warehouse(self) -> Warehouse:
        if self._warehouse is None:
            raise UsageError("%ldw: not connected; run %ldw connect first (e.g. "
                             "%ldw connect --in-process --config ldw.toml)")
        return self._warehouse

    def set_warehouse(self, warehouse: Warehouse, *, owned: bool) -> None:
        """Use ``warehouse`` from now on; close the previous one if these magics opened it."""
        if self._warehouse is not None and self._owned and self._warehouse is not warehouse:
            self._warehouse.close()
        self._warehouse, self._owned = warehouse, owned

    def close(self) -> None:
        if self._warehouse is not None and self._owned:
            self._warehouse.close()
        self._warehouse = None

    def bind(self, name: str, value: Any) -> None:
        self.shell.push({name: value})

    def materialize(self, dataset: Dataset, how: str, **options: Any) -> Dataset:
        """``cache`` or ``refresh`` with the progress display."""
        with self.progress.watching(dataset.name):
            getattr(dataset, how)(progress=self.progress, **options)
        return dataset

    # -- the magic -----------------------------------------------------------------------------
    @no_var_expand
    @line_cell_magic
    def ldw(self, line: str, cell: str | None = None) -> Any:
        return self.run(line, cell)

    def run(self, line: str, cell: str | None = None) -> Any:
        """Parse ``VERB args`` and run the verb; every failure is a one-line ``UsageError``."""
        try:
            return self._run(line, cell)
        except UsageError as exc:
            raise UsageError(one_line(str(exc))) from None

    def _run(self, line: str, cell: str | None) -> Any:
        try:
            tokens = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%ldw: cannot split the line ({exc}); check the quotes") from None
        if not tokens or tokens[0] in {"-h", "--help", "help"}:
            if len(tokens) == 2 and tokens[0] == "help":
                tokens = [tokens[1], "--help"]
            else:
                print(overview())
                return None
        name, rest = tokens[0], tokens[1:]
        verb = VERBS.get(name)
        if verb is None:
            raise unknown_verb(name)
        wants_help = "-h" in rest or "--help" in rest
        if verb.cell == "required" and cell is None and not wants_help:
            raise UsageError(f"%ldw {name} needs a cell: write %%ldw {name} on the first line "
                             "and the query below it")
        try:
            args = verb.parser().parse_args(split_line(rest) if name == "map" else rest)
        except HelpShown:
            return None
        if verb.cell == "no" and cell is not None and cell.strip():
            raise UsageError(f"%%ldw {name} takes no cell body; write %ldw {name} on a line")
        if cell is not None:
            cell = cell.strip()
        try:
            return verb.run(self, args, cell if verb.cell != "no" else None)
        except LdwError as exc:
            raise UsageError(f"%ldw {name}: {type(exc).__name__}: "
                             f"{spoken(str(exc), 'magic')}") from None
        except KeyboardInterrupt:
            detail = ("; the source query was cancelled and no partial version was kept"
                      if verb.materializes else "")
            raise UsageError(f"%ldw {name}: interrupted{detail}") from None


LdwMagics.ldw.__doc__ = overview()
