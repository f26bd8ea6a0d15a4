"""Automatic caching (``[server] caching = "auto"``): slices of source tables that SQL read,
kept in the memory tier by benefit and used to answer later reads without the source.

- Admission: a source read of a SQL query without ``LIMIT`` is kept, as
  the Arrow table already read (no second source read), once its shape (table, policy
  fingerprint, columns, pushed conditions; :mod:`ldw.engine.observe`) has been read
  :data:`ADMIT_AFTER` times (once, if that read took :data:`ADMIT_SECONDS` or more at the
  source: reading it again would cost as much), if it takes at most
  ``memory_limit / MAX_SHARE`` and fits in free memory or in the room of slices with less
  benefit. A slice never spills or drops a dataset.
  Reads under a ``max_rows`` policy are cut short by it (their rows depend on the read): never
  kept. A read narrowed to a join partner's keys (a dynamic filter) has that key set as one
  more condition, named by its digest (:func:`ldw.logical.dynamic.key_set`): its slice serves
  only reads of the same keys.
- Benefit: the source seconds its shape's reads took plus those its hits saved, aged (an hour
  counts half), per byte. When a dataset needs room, slices are dropped first, least benefit
  first (never spilled); a slice stored for a memory-only table stays in memory or is not kept.
- Answering: a read served by a slice (same table and fingerprint, every column, rows implied:
  :func:`ldw.logical.implies.implies`) reads the slice, nothing is sent to the source.
- Freshness follows the table's refresh policy (``[refresh]`` in ldw.toml): under ``on_access``
  a slice is checked before it is served if its last check is older than
  ``freshness_interval`` (the table's change counters where the source keeps them and no row
  filter applies, and a count of the slice's rows) and dropped if anything changed or the check
  fails; under ``every <duration>`` a slice older than the duration is dropped; under
  ``manual`` it is kept until room is needed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from ldw.config import Settings, every_seconds
from ldw.connectors.changes import probe
from ldw.engine.observe import HALF_LIFE, Observations, Shape
from ldw.engine.sources import Sources
from ldw.errors import LdwError
from ldw.logical.implies import Rows, implies
from ldw.planner import MappedQuery, narrow
from ldw.storage import Version, VersionLost, VersionStore

__all__ = ["ADMIT_AFTER", "ADMIT_SECONDS", "MAX_SHARE", "SLICE_KEY", "WIDEN_AFTER", "Slice",
           "Slices"]

log = logging.getLogger("ldw.slices")

ADMIT_AFTER = 2      # reads of one shape before it is kept (a one-off read is not)
WIDEN_AFTER = 3      # reads a whole-rows slice would have served before one is read
ADMIT_SECONDS = 0.25  # a read that cost this much at the source is kept the first time
MAX_SHARE = 4        # a slice takes at most memory_limit / MAX_SHARE
SLICE_KEY = "~slices/auto"  # where slices are stored ("~" is in no user name)


@dataclass
class Slice:
    """One automatically cached read of a source table."""

    id: str
    table: str                   # source.schema.table
    fingerprint: str             # the policies it was read under
    columns: frozenset[str]
    kept: Rows                   # the rows it holds (None: every row)
    conditions: tuple[str, ...]  # the same, as the queries wrote them
    version: Version
    source: str
    query: MappedQuery           # the governed plan it was read with (for change checks)
    predicate: sa.ColumnElement | None
    counters: dict[str, Any] | None  # the source's change counters before the read
    seconds: float               # what the read took at the source
    weight: float                # benefit in source seconds, aged to ``at``
    read_at: float = field(default_factory=time.time)
    checked_at: float = field(default_factory=time.time)
    at: float = field(default_factory=time.time)
    hits: int = 0
    saved: float = 0.0           # source seconds the hits did not spend

    @property
    def rows(self) -> int:
        return self.version.rows

    def density(self, now: float) -> float:
        """Aged source seconds per byte (what keeping it is worth)."""
        aged = self.weight * math.pow(0.5, max(0.0, now - self.at) / HALF_LIFE)
        return aged / max(self.version.bytes, 1)

    def serves(self, table: str, fingerprint: str, columns: frozenset[str], kept: Rows) -> bool:
        return (self.table, self.fingerprint) == (table, fingerprint) \
            and columns <= self.columns and implies(kept, self.kept)

    def row(self) -> dict[str, Any]:
        return {"slice": self.id, "table": self.table, "columns": sorted(self.columns),
                "conditions": list(self.conditions), "rows": self.rows,
                "bytes": self.version.bytes, "hits": self.hits,
                "saved_seconds": round(self.saved, 4), "read_seconds": round(self.seconds, 4),
                "read_at": self.read_at}


class Slices:
    """The automatically cached slices, thread-safe (see the module docstring)."""

    def __init__(self, settings: Settings, store: VersionStore, sources: Sources,
                 observations: Observations) -> None:
        self.settings = settings
        self.store = store
        self.sources = sources
        self.observations = observations
        self._lock = threading.Lock()
        self._slices: dict[str, Slice] = {}
        self._admitting: set[Shape] = set()

    @property
    def auto(self) -> bool:
        return self.settings.caching == "auto"

    # -- answering ----------------------------------------------------------------------------
    def find(self, table: str, fingerprint: str, columns: frozenset[str], kept: Rows
             ) -> Slice | None:
        """The smallest current slice that serves the read; stale ones are dropped."""
        with self._lock:
            found = sorted((s for s in self._slices.values()
                            if s.serves(table, fingerprint, columns, kept)),
                           key=lambda s: s.version.bytes)
        for candidate in found:
            if self._current(candidate):
                return candidate
        return None

    def open(self, chosen: Slice, columns: list[str]) -> pa.Table | None:
        """The slice's ``columns``, in that order, counted as a hit; None if it is gone."""
        try:
            table = self.store.open_table(chosen.version)
        except (VersionLost, FileNotFoundError, LdwError):
            self.drop(chosen, "its bytes are gone")
            return None
        now = time.time()
        with self._lock:
            chosen.weight = chosen.weight * math.pow(0.5, max(0.0, now - chosen.at) / HALF_LIFE) \
                + chosen.seconds
            chosen.at = now
            chosen.hits += 1
            chosen.saved += chosen.seconds
        return table.select(columns)

    def _current(self, candidate: Slice) -> bool:
        """Whether the slice may be served under its table's refresh policy."""
        policy = self.settings.refresh_for(candidate.table)
        now = time.time()
        period = every_seconds(policy)
        if period is not None and now - candidate.read_at >= period:
            self.drop(candidate, f"older than its refresh period ({policy})")
            return False
        if policy != "on_access" or now - candidate.checked_at < self.settings.freshness_interval:
            return True
        changed = self._changed(candidate)
        if changed is not False:
            self.drop(candidate, "the source changed" if changed else "no change check")
            return False
        candidate.checked_at = now
        return True

    def _changed(self, candidate: Slice) -> bool | None:
        """Whether the source changed since the slice was read (None: could not tell)."""
        try:
            connector = self.sources.connector(candidate.source)
            if candidate.counters is not None \
                    and connector.change_counters(candidate.query.tables) != candidate.counters:
                return True
            select = narrow(candidate.query, predicate=candidate.predicate).select
            return probe(connector, select).rows != candidate.rows
        except Exception:  # (a failed check never serves the slice)
            log.info("slice %s of %s: change check failed", candidate.id, candidate.table,
                     exc_info=True)
            return None

    # -- admission ----------------------------------------------------------------------------
    def counters(self, shape: Shape | None, query: MappedQuery, source: str
                 ) -> dict[str, Any] | None:
        """The change counters to take before a read that may be kept (under ``on_access``
        only, without row filters, whose hidden rows the counters count); never raises."""
        if not self.auto or shape is None or not self._may_keep(shape) \
                or self.settings.refresh_for(shape.table) != "on_access" \
                or any(p.row_filters or p.max_rows is not None for p in query.policies):
            return None
        try:
            return self.sources.connector(source).change_counters(query.tables)
        except Exception:  # (the probe still checks the slice's rows)
            return None

    def _may_keep(self, shape: Shape) -> bool:
        """Whether the next read of ``shape`` may be kept (see :meth:`_worth`)."""
        reads = self.observations.get(shape)
        return reads is None or reads.count + 1 >= ADMIT_AFTER \
            or reads.seconds / max(reads.count, 1) >= ADMIT_SECONDS

    def _worth(self, shape: Shape) -> float | None:
        """The aged source seconds a slice of ``shape`` would have saved, if it is worth
        keeping: read :data:`ADMIT_AFTER` times, or once at a cost of :data:`ADMIT_SECONDS`
        or more (reading it again would cost that again); else None."""
        reads = self.observations.get(shape)
        if reads is None or (reads.count < ADMIT_AFTER
                             and reads.weighted_seconds < ADMIT_SECONDS):
            return None
        return reads.weighted_seconds

    def widen(self, shape: Shape, schema: pa.Schema, whole_rows: Callable[[], int | None]
              ) -> tuple[Shape, float] | None:
        """A wider read worth making instead of ``shape``: every row of the table (no
        condition), with the columns of the reads of it seen so far (all of them, in
        the table's ``schema``), when such a slice would have served at least :data:`WIDEN_AFTER`
        reads of two or more shapes and its estimated size (``whole_rows`` x the widths
        observed) fits as :meth:`admit` needs; with the aged source seconds it would have
        saved. None: read ``shape`` as it is."""
        if not self.auto or shape.keyed:
            return None
        mine = [(s, r) for s, r in self.observations.shapes()
                if (s.table, s.fingerprint) == (shape.table, shape.fingerprint)]
        wanted = set().union(shape.columns, *(s.columns for s, _ in mine))
        wide = Shape(shape.table, shape.fingerprint,
                     frozenset(c for c in schema.names if c in wanted), frozenset())
        if wide.columns == shape.columns and not shape.conditions:
            return None  # (no wider than the read itself)
        served = [(s, r) for s, r in mine if wide.serves(s)]
        if len({s for s, _ in served} | {shape}) < 2 \
                or sum(r.count for _, r in served) + 1 < WIDEN_AFTER:
            return None
        widths = {f.name: _fixed_width(f.type) for f in schema}
        widths = {name: width for name, width in widths.items() if width is not None}
        for _, reads in mine:
            for column, width in reads.widths.items():
                widths[column] = max(width, widths.get(column, 0.0))
        if not wide.columns <= widths.keys():
            return None  # (a column never read yet: its size is unknown)
        rows = whole_rows()
        if rows is None:
            return None
        nbytes = int(rows * sum(widths[c] for c in wide.columns) * 1.1) + 1
        worth = sum(r.weighted_seconds for _, r in served)
        if nbytes > self.store.memory_limit // MAX_SHARE:
            return None
        with self._lock:
            if not self._fits(nbytes, worth / nbytes):
                return None
        return wide, worth

    def _fits(self, nbytes: int, density: float) -> bool:
        """Whether ``nbytes`` fit in free memory or in the room of slices worth less than
        ``density`` per byte (the caller holds the lock)."""
        lower = sum(s.version.bytes for s in self._slices.values()
                    if s.density(time.time()) < density)
        return nbytes <= self.store.memory_limit - self.store.used_bytes() + lower

    def admit(self, shape: Shape | None, kept: Rows, conditions: list[str], table: pa.Table,
              query: MappedQuery, source: str, predicate: sa.ColumnElement | None,
              counters: dict[str, Any] | None, seconds: float, worth: float | None = None
              ) -> Slice | None:
        """Keep a read as a slice if it is worth it and fits (see the module docstring);
        ``worth``: what a read widened by :meth:`widen` was judged worth."""
        if not self.auto or shape is None \
                or any(p.max_rows is not None for p in query.policies):
            return None  # (under max_rows a read is cut short: its rows depend on the read)
        worth = self._worth(shape) if worth is None else worth
        nbytes = max(table.nbytes, 1)
        if worth is None or nbytes > self.store.memory_limit // MAX_SHARE:
            return None
        with self._lock:
            if shape in self._admitting or any(
                    s.serves(shape.table, shape.fingerprint, shape.columns, kept)
                    for s in self._slices.values()):
                return None
            density = worth / nbytes
            if not self._fits(nbytes, density):
                return None
            self._admitting.add(shape)
        try:
            if any(p.memory_only for p in query.policies):
                self.store.check_memory_only(SLICE_KEY)  # a store that may spill refuses it
            version = self.store.write(SLICE_KEY, table.schema, table.to_batches(),
                                       make_room=lambda n: self._drop_below(n, density))
        except LdwError as exc:  # CapacityExceeded, PolicyViolation: not kept
            log.info("slice of %s not kept: %s", shape.table, exc)
            return None
        finally:
            with self._lock:
                self._admitting.discard(shape)
        kept_slice = Slice(uuid.uuid4().hex[:12], shape.table, shape.fingerprint,
                           shape.columns, kept, tuple(conditions), version, source, query,
                           predicate, counters, seconds, worth)
        with self._lock:
            self._slices[kept_slice.id] = kept_slice
        log.info("kept slice %s of %s: %d rows, %d bytes", kept_slice.id, shape.table,
                 version.rows, version.bytes)
        return kept_slice

    # -- room -----------------------------------------------------------------------------------
    def drop(self, gone: Slice, why: str) -> None:
        with self._lock:
            if self._slices.pop(gone.id, None) is None:
                return
        self.store.delete(gone.version)  # readers keep what they opened
        log.info("dropped slice %s of %s: %s", gone.id, gone.table, why)

    def _drop_below(self, needed: int, density: float) -> int:
        """Drop slices worth less than ``density`` per byte, least first, to free ``needed``."""
        return self.make_room(needed, below=density)

    def make_room(self, needed: int, below: float = math.inf) -> int:
        """Free ``needed`` bytes by dropping slices, least benefit per byte first (the cache
        asks this before it spills any dataset); returns the bytes freed."""
        now = time.time()
        with self._lock:
            ranked = sorted(self._slices.values(), key=lambda s: s.density(now))
        freed = 0
        for candidate in ranked:
            if freed >= needed or candidate.density(now) >= below:
                break
            self.drop(candidate, "room was needed")
            freed += candidate.version.bytes
        return freed

    def clear(self) -> None:
        with self._lock:
            everything = list(self._slices.values())
        for gone in everything:
            self.drop(gone, "cleared")

    def status(self, visible: Any = None) -> list[dict[str, Any]]:
        """The slices (those ``visible(table, fingerprint)`` allows), most hits first."""
        with self._lock:
            current = list(self._slices.values())
        rows = [s.row() for s in current if visible is None or visible(s.table, s.fingerprint)]
        return sorted(rows, key=lambda r: (-r["hits"], r["table"], r["slice"]))


def _fixed_width(arrow_type: pa.DataType) -> float | None:
    """Bytes per row of a fixed-width type (validity bit included); None if it varies."""
    try:
        return arrow_type.bit_width / 8 + 1 / 8
    except ValueError:
        return None
