"""Incremental refresh: read only what changed and publish old version + increment.

The increment is the dataset's planned, governed query (masks, row filters, ``where``) with one
more predicate (:func:`ldw.planner.narrow`): ``key > cached max`` for ``append``, ``watermark >=
last seen`` for ``upsert``. It is read in one snapshot of the source together with a probe that
proves the cached rows are still what the source holds (row count and, for an integer key, the
sum of the keys); anything the mode cannot express (deleted rows, keys rewritten, duplicate keys
in the increment, a cached version without rows) returns a reason instead of a version, and the
caller reads the whole dataset: never a silently wrong version. The old rows come from the store
(:meth:`VersionStore.extend`), never from the source again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from ldw.connectors import Connector
from ldw.connectors.changes import Probe, probe
from ldw.errors import SourceUnavailable
from ldw.lifecycle import DatasetRecord
from ldw.planner import MappedQuery, narrow, read_plan

__all__ = ["Abandoned", "Increment", "Pending", "read_increment"]


@dataclass
class Increment:
    """What an incremental read found: the new rows, or why a full read is needed."""

    batches: list[pa.RecordBatch]
    replace_key: str | None = None  # upsert: old rows with these keys are replaced
    fallback: str | None = None  # set: the mode cannot express the change; read everything
    rows: int = 0
    bytes: int = 0
    sql: tuple[str, ...] = ()


class Abandoned(Exception):  # internal: the increment will not come, drop what was written
    """Raised into a store write whose increment was abandoned (a full read is needed)."""


class Pending:
    """The increment's batches, delivered later: a store write iterating over them copies the
    old rows meanwhile and waits here for the new ones (or for :meth:`abandon`)."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._batches: list[pa.RecordBatch] | None = None

    def deliver(self, batches: list[pa.RecordBatch]) -> None:
        self._batches = batches
        self._ready.set()

    def abandon(self) -> None:
        self._ready.set()

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        self._ready.wait()
        if self._batches is None:
            raise Abandoned
        return iter(self._batches)


def _literal(column: sa.ColumnElement, value: Any) -> sa.ColumnElement:
    typed = not isinstance(column.type, sa.types.NullType)
    return sa.literal(value, type_=column.type if typed else None)


def _integer_sum(column: pa.ChunkedArray | pa.Array) -> int | None:
    """The exact sum of an integer column (None for other types)."""
    if not pa.types.is_integer(column.type):
        return None
    low, high = pc.min_max(column).values()
    bound = max(abs(low.as_py() or 0), abs(high.as_py() or 0)) * len(column)
    if bound < 2**63 and not pa.types.is_uint64(column.type):  # int64 cannot overflow
        total = pc.sum(column.cast(pa.int64())).as_py()
    else:
        total = pc.sum(column.cast(pa.decimal128(38, 0))).as_py()
    return int(total) if total is not None else 0


def _max(table: pa.Table, name: str, arrow_type: pa.DataType) -> Any:
    column = table.column(name)
    if column.type != arrow_type:
        column = column.cast(arrow_type)
    return pc.max(column).as_py()


def read_increment(connector: Connector, record: DatasetRecord, query: MappedQuery,
                   old: pa.Table, masked: Any) -> Increment:
    """Read the increment of ``record`` over its cached table ``old`` in one snapshot;
    ``masked`` applies the query's Arrow-side masks to a batch stream."""
    mapping = record.mapping
    key = mapping.key or ""
    key_type = record.schema.field(key).type
    column = query.lookup[key]
    integer = pa.types.is_integer(key_type)
    if old.num_rows == 0:
        return Increment([], fallback="the cached version has no rows to continue from")
    if mapping.incremental == "append":
        top = _max(old, key, key_type)
        if top is None:
            return Increment([], fallback=f"the cached {key} values are all NULL")
        settled = narrow(query, predicate=sa.or_(column <= _literal(column, top),
                                                 column.is_(None)))
        newer = narrow(query, predicate=column > _literal(column, top))
        expected_rows, expected_sum = old.num_rows, _integer_sum(old.column(key))
    else:
        watermark = mapping.watermark or ""
        mark = query.lookup[watermark]
        last = _max(old, watermark, record.schema.field(watermark).type)
        if last is None:
            return Increment([], fallback=f"the cached {watermark} values are all NULL")
        settled = query
        newer = narrow(query, predicate=mark >= _literal(mark, last))
        expected_rows = expected_sum = None  # known once the increment is read
    sums = [key] if integer else []
    with connector.read_slots(1), \
            connector.snapshot(query.tables, partitioned=True) as snapshot, \
            ThreadPoolExecutor(1, thread_name_prefix="ldw-probe") as pool:
        probing = None
        if connector.snapshot_idle_while_streaming:  # probe and read at once
            probing = pool.submit(probe, connector, settled.select, sums=sums,
                                  conn=snapshot)
        else:
            probed = probe(connector, settled.select, sums=sums, conn=snapshot)
            if _moved(probed, key, expected_rows, expected_sum):
                return Increment([], fallback=_moved(probed, key, expected_rows, expected_sum))
        single = replace(newer, mapping=replace(mapping, partitions=1, partition_on=None))
        plan = read_plan(connector, single, snapshot)
        cancel = threading.Event()
        stream = connector.stream(plan, cancel, snapshot)
        try:
            batches = [b for b in masked(stream, single) if b.num_rows]
        except BaseException as exc:
            cancel.set()
            stream.close()
            if not isinstance(exc, SourceUnavailable):
                connector.cancel_tagged(plan.tag)
            raise
        if probing is not None:
            probed = probing.result()
            if _moved(probed, key, expected_rows, expected_sum):
                return Increment([], fallback=_moved(probed, key, expected_rows, expected_sum))
    found = Increment(batches, rows=sum(b.num_rows for b in batches),
                      bytes=sum(b.nbytes for b in batches),
                      sql=tuple(q.sql for q in plan.queries))
    if mapping.incremental == "upsert":
        return _check_upsert(found, old, key, probed.rows, probed.sums.get(key), integer)
    return found


def _moved(probe: Probe, key: str, rows: int | None, total: int | None) -> str | None:
    """Why the cached rows of an append dataset are no longer the source's, if they are not."""
    if rows is None or (probe.rows == rows and probe.sums.get(key) == total):
        return None
    return (f"rows at or below the cached max({key}) changed in the source (deleted or "
            f"rewritten: {probe.rows} rows there, {rows} cached)")


def _check_upsert(found: Increment, old: pa.Table, key: str, source_rows: int,
                  source_sum: int | None, integer: bool) -> Increment:
    """The increment replaces rows by key: it must name each key once, and old rows kept plus
    the increment must be exactly what the source holds (else rows were deleted)."""
    found.replace_key = key
    if not found.batches:
        keys = pa.chunked_array([], type=old.schema.field(key).type)
    else:
        keys = pa.chunked_array([b.column(key) for b in found.batches])
    if keys.null_count or pc.count_distinct(keys).as_py() != len(keys):
        found.fallback = f"the new rows name a {key} twice or not at all"
        return found
    replaced = pc.is_in(old.column(key), value_set=keys.combine_chunks().cast(
        old.schema.field(key).type)) if len(keys) else None
    replaced_rows = (pc.sum(replaced).as_py() or 0) if replaced is not None else 0
    rows = old.num_rows - replaced_rows + len(keys)
    if rows != source_rows:
        found.fallback = (f"the source holds {source_rows} rows, old rows kept plus new ones "
                          f"make {rows} (rows were deleted or keys changed)")
        return found
    if integer:
        kept = pc.filter(old.column(key), pc.invert(replaced)) if replaced is not None \
            else old.column(key)
        if (_integer_sum(kept) or 0) + (_integer_sum(keys) or 0) != source_sum:
            found.fallback = f"the {key} values differ from the source's (rows deleted)"
    return found

