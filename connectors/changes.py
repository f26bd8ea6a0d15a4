"""Change probes any SQLAlchemy dialect answers: ``count(*)``, ``max`` and ``sum`` of a planned
select. With a dialect's own change counters (:meth:`Connector.change_counters`) they tell
whether a source moved on since a cached version (:mod:`ldw.engine.freshness`) and prove that an
incremental refresh continues from rows the source still holds (:mod:`ldw.engine.incremental`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa

from .base import Connector

__all__ = ["Probe", "probe"]


class Probe(NamedTuple):
    """What :func:`probe` found: rows, and max / sum per column."""

    rows: int
    maxima: dict[str, Any]
    sums: dict[str, int | None]


def probe(connector: Connector, select: sa.Select, *, maxima: Sequence[str] = (),
          sums: Sequence[str] = (), conn: sa.Connection | None = None) -> Probe:
    """``count(*)`` of a planned select, ``max`` of ``maxima`` and ``sum`` of ``sums``, on
    ``conn`` (e.g. a read's snapshot) or a control connection of the connector's own."""
    sub = select.subquery("ldw_probe")
    statement = sa.select(sa.func.count(), *[sa.func.max(sub.c[c]) for c in maxima],
                          *[sa.func.sum(sub.c[c]) for c in sums]).select_from(sub)
    with connector.guard("checking the source for changes"):
        if conn is not None:
            row = conn.execute(statement).one()
        else:
            with connector.engine.connect() as own:
                row = own.execute(statement).one()
    values = list(row)
    rows, top, total = values[0], values[1:1 + len(maxima)], values[1 + len(maxima):]
    return Probe(int(rows), dict(zip(maxima, top, strict=True)),
                 {c: int(v) if v is not None else None for c, v in zip(sums, total, strict=True)})
