"""What SQL reads from the sources, and what caching it would have saved (automatic caching,
first step: observe and advise).

Every source table a query reads through :class:`~ldw.engine.federation.Federation` is recorded
as a *shape*: the table, the policy fingerprint it was read under, the columns and the
conditions pushed to the source. Per shape: how often it was read and what the reads cost
(source seconds, rows, Arrow bytes). Weights age with a half-life, so an old workload fades.

A cached *slice* (a shape's rows and columns) serves a later read of the same table under the
same fingerprint when it holds every column the read needs and its conditions are a subset of
the read's (fewer conditions: more rows, never fewer). :meth:`Observations.advice` ranks the
observed shapes by source seconds saved per byte kept and fills ``budget`` bytes greedily: the
benefit rule of the automatic-caching issue (frequency x fetch cost / size, aged).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ldw.errors import LdwError
from ldw.governance.policies import Governance, combine_fingerprints

__all__ = ["HALF_LIFE", "MAX_SHAPES", "Observations", "Shape", "shape_conditions", "visible_to"]

HALF_LIFE = 3600.0  # seconds after which a read counts half
MAX_SHAPES = 4096   # shapes kept; the least recently read go first


@dataclass(frozen=True)
class Shape:
    """One way a source table is read: under a policy fingerprint, these columns, these
    pushed conditions (as the queries wrote them, AND-ed; a read that ORs several branches
    has that whole OR as its one condition)."""

    table: str                     # source.schema.table
    fingerprint: str               # the reader's policies on it
    columns: frozenset[str]
    conditions: frozenset[str]
    keyed: bool = False            # narrowed to a join partner's keys (a key set's digest)

    def serves(self, other: Shape) -> bool:
        """A slice of this shape answers a read of ``other`` (same table and policies, every
        column, no condition the read does not also have)."""
        return (self.table, self.fingerprint) == (other.table, other.fingerprint) \
            and other.columns <= self.columns and self.conditions <= other.conditions


@dataclass
class Reads:
    """What reads of one shape cost, and their aged weight."""

    count: int = 0
    seconds: float = 0.0           # source time of every read
    rows: int = 0                  # of the last read
    bytes: int = 0                 # Arrow size of the last read
    weight: float = 0.0            # reads, aged to ``at``
    weighted_seconds: float = 0.0  # source seconds, aged to ``at``
    at: float = field(default_factory=time.time)
    widths: dict[str, float] = field(default_factory=dict)  # Arrow bytes per row, per column

    def age(self, now: float) -> None:
        factor = math.pow(0.5, max(0.0, now - self.at) / HALF_LIFE)
        self.weight *= factor
        self.weighted_seconds *= factor
        self.at = now


class Observations:
    """The shapes SQL read from sources, thread-safe, bounded to :data:`MAX_SHAPES`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._shapes: dict[Shape, Reads] = {}
        self._spent = {"reads": 0, "seconds": 0.0, "rows": 0, "bytes": 0}

    def spend(self, *, seconds: float, rows: int, nbytes: int) -> None:
        """Count one read of a source table by SQL, whatever its shape."""
        with self._lock:
            self._spent["reads"] += 1
            self._spent["seconds"] += seconds
            self._spent["rows"] += rows
            self._spent["bytes"] += nbytes

    def spent(self) -> dict[str, Any]:
        """What SQL's source reads cost since the server started (reads, seconds, rows,
        Arrow bytes): the time automatic caching tries to save."""
        with self._lock:
            return {**self._spent, "seconds": round(self._spent["seconds"], 4)}

    def record(self, shape: Shape, *, seconds: float, rows: int, nbytes: int,
               widths: dict[str, float] | None = None) -> None:
        now = self._clock()
        with self._lock:
            reads = self._shapes.pop(shape, None) or Reads(at=now)  # re-inserted: most recent
            reads.widths = {**reads.widths, **(widths or {})}
            reads.age(now)
            reads.count += 1
            reads.seconds += seconds
            reads.rows, reads.bytes = rows, nbytes
            reads.weight += 1.0
            reads.weighted_seconds += seconds
            self._shapes[shape] = reads
            while len(self._shapes) > MAX_SHAPES:
                del self._shapes[next(iter(self._shapes))]

    def get(self, shape: Shape) -> Reads | None:
        """What reads of ``shape`` cost so far (a copy, aged to now), or None."""
        now = self._clock()
        with self._lock:
            reads = self._shapes.get(shape)
            if reads is None:
                return None
            reads.age(now)
            return Reads(**{**vars(reads), "widths": dict(reads.widths)})

    def shapes(self, visible: Callable[[Shape], bool] = lambda _s: True
               ) -> list[tuple[Shape, Reads]]:
        now = self._clock()
        with self._lock:
            for reads in self._shapes.values():
                reads.age(now)
            return [(s, Reads(**{**vars(r), "widths": dict(r.widths)}))
                    for s, r in self._shapes.items() if visible(s)]

    def advice(self, budget: int, visible: Callable[[Shape], bool] = lambda _s: True
               ) -> list[dict[str, Any]]:
        """The slices worth caching within ``budget`` bytes, best first: for each, the reads
        it would have served and the source seconds they took (aged)."""
        observed = self.shapes(visible)
        candidates = []
        for shape, reads in observed:
            if shape.keyed:
                continue  # (no one caches a key set by hand; automatic caching keeps them)
            served = [(s, r) for s, r in observed if shape.serves(s)]
            saved = sum(r.weighted_seconds for _, r in served)
            if reads.bytes <= 0 or saved <= 0:
                continue
            candidates.append((saved / reads.bytes, saved, shape, reads, served))
        candidates.sort(key=lambda c: (-c[0], -c[1], sorted(c[2].columns)))
        chosen: list[dict[str, Any]] = []
        taken: list[Shape] = []
        left = budget
        for _density, saved, shape, reads, served in candidates:
            if reads.bytes > left or any(t.serves(shape) for t in taken):
                continue  # too big, or a slice already chosen answers it
            taken.append(shape)
            left -= reads.bytes
            chosen.append(_row(shape, reads, served, saved))
        return chosen


def _row(shape: Shape, reads: Reads, served: Iterable[tuple[Shape, Reads]],
         saved: float) -> dict[str, Any]:
    served = list(served)
    return {"table": shape.table, "columns": sorted(shape.columns),
            "conditions": sorted(shape.conditions), "bytes": reads.bytes, "rows": reads.rows,
            "reads_served": sum(r.count for _, r in served),
            "source_seconds": round(sum(r.seconds for _, r in served), 4),
            "saved_seconds_aged": round(saved, 4),
            "seconds_saved_per_mib": round(saved / (reads.bytes / (1 << 20)), 4)}


def visible_to(governance: Governance, user: str) -> Callable[[str, str], bool]:
    """Whether ``user`` reads ``table`` under ``fingerprint`` (their own policies now): what
    they may see of the observations and slices."""
    mine: dict[str, str | None] = {}

    def visible(table: str, fingerprint: str) -> bool:
        if table not in mine:
            try:
                mine[table] = combine_fingerprints([governance.effective(user, table)])
            except LdwError:
                mine[table] = None
        return mine[table] == fingerprint

    return visible


def shape_conditions(parts: list | None) -> tuple[str, ...]:
    """A read's pushed conditions as a :class:`Shape` holds them: the conjuncts of one
    occurrence (a slice with a subset of them holds more rows), or, for an OR over several
    occurrences, that OR as one condition (a subset of the branches would hold fewer rows)."""
    if not parts:
        return ()
    if len(parts) == 1:
        return tuple(parts[0][1])
    return (" OR ".join(f"({' AND '.join(texts)})" for _, texts, _ in parts),)
