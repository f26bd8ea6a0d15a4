"""Incremental refresh: read only what changed and publish old version + increment.

The increment is the dataset's planned, governed query (masks, row filters, ``where``) with one
more predicate (:func:`ldw.planner.narrow`): ``key > cached max`` for ``append``, ``watermark >=
last seen`` for ``upsert``. It is read in one snapshot of the source together with a probe that
proves the cached rows are still what the source holds (row count and, for an integer key, the
sum of the keys); anything the mode cannot express (deleted rows, keys rewritten, duplicate keys
in the increment, a cached version without rows) returns a reason instead of a version, and the
caller reads the whole dataset: never a silently wrong version. The old rows come from the store
(:meth:`VersionStore.extend`), never from the source again.

The probe reads every cached key and so costs what the table costs (on PostgreSQL an index-only
scan of the key's index); everything else grows with the change. The new rows are handed to the
caller (``ready``) as soon as they are read, so the new version is written while the probe
finishes; the caller drops it if the probe finds the mode cannot express what changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from ldw.connectors import Connector
from ldw.connectors.changes import Probe, probe
from ldw.errors import SourceUnavailable
from ldw.lifecycle import DatasetRecord
from ldw.planner import MappedQuery, narrow, read_plan

__all__ = ["Increment", "read_increment"]


@dataclass
class Increment:
    """What an incremental read found: the new rows, or why a full read is needed."""

    batches: list[pa.RecordBatch]
    replace_key: str | None = None  # upsert: old rows with these keys are replaced
    replaced: pa.Array | None = None  # upsert: positions of those rows in the old table
    key_sum: int | None = None  # upsert, integer key: sum of the keys old kept + new make
    maxima: dict[str, Any] | None = None  # the new version's max of key (and watermark)
    fallback: str | None = None  # set: the mode cannot express the change; read everything
    rows: int = 0
    bytes: int = 0
    sql: tuple[str, ...] = ()


def _literal(column: sa.ColumnElement, value: Any) -> sa.ColumnElement:
    typed = not isinstance(column.type, sa.types.NullType)
    return sa.literal(value, type_=column.type if typed else None)


def _not_null(column: sa.ColumnElement) -> bool:
    """Whether the source declares the column NOT NULL (a reflected table's column)."""
    return isinstance(column, sa.Column) and column.nullable is False


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
                   old: pa.Table, masked: Any,
                   ready: Callable[[Increment], None] | None = None) -> Increment:
    """Read the increment of ``record`` over its cached table ``old`` in one snapshot;
    ``masked`` applies the query's Arrow-side masks to a batch stream. ``ready(increment)``
    is called with the new rows once they are read, before the probe's verdict (which may
    still set the returned increment's ``fallback``)."""
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
        at_most = column <= _literal(column, top)
        # a NOT NULL key needs no "or key is null": PostgreSQL then reads only the index
        settled = narrow(query, predicate=at_most if _not_null(column)
                         else sa.or_(at_most, column.is_(None)))
        newer = narrow(query, predicate=column > _literal(column, top))
        expected_rows = old.num_rows
    else:
        watermark = mapping.watermark or ""
        mark = query.lookup[watermark]
        last = _max(old, watermark, record.schema.field(watermark).type)
        if last is None:
            return Increment([], fallback=f"the cached {watermark} values are all NULL")
        settled = query
        newer = narrow(query, predicate=mark >= _literal(mark, last))
        expected_rows = None  # known once the increment is read
    sums = [key] if integer else []
    with connector.read_slots(1), \
            connector.snapshot(query.tables, partitioned=True) as snapshot, \
            ThreadPoolExecutor(1, thread_name_prefix="ldw-probe") as pool:
        probing = None
        if connector.snapshot_idle_while_streaming:  # probe and read at once
            probing = pool.submit(probe, connector, settled.select, sums=sums,
                                  conn=snapshot)
        # the cached rows' sum while the probe runs
        expected_sum = _integer_sum(old.column(key)) if expected_rows is not None else None
        if probing is None:
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
        found = Increment(batches, rows=sum(b.num_rows for b in batches),
                          bytes=sum(b.nbytes for b in batches),
                          sql=tuple(q.sql for q in plan.queries))
        known = {key: top} if mapping.incremental == "append" else {mapping.watermark: last}
        found.maxima = _maxima(record, old, batches, known)
        if mapping.incremental == "upsert":
            _find_replaced(found, old, key, integer)
        if ready is not None and found.fallback is None and found.batches:
            ready(found)
        if probing is not None:
            probed = probing.result()
            if _moved(probed, key, expected_rows, expected_sum):
                found.fallback = _moved(probed, key, expected_rows, expected_sum)
                return found
    if mapping.incremental == "upsert" and found.fallback is None:
        _check_upsert(found, old, probed.rows, probed.sums.get(key))
    return found


def _maxima(record: DatasetRecord, old: pa.Table, batches: list[pa.RecordBatch],
            known: dict[str | None, Any]) -> dict[str, Any]:
    """The max of the key (and watermark) over the old rows and the new ones: the new
    version's, since a replaced row's key and watermark come again at least as high (the
    freshness baseline then need not scan the new version)."""
    new = pa.Table.from_batches(batches) if batches else None
    maxima = {}
    for name in dict.fromkeys(c for c in (record.mapping.key, record.mapping.watermark) if c):
        arrow_type = record.schema.field(name).type
        values = [known[name] if name in known else _max(old, name, arrow_type)]
        if new is not None:
            values.append(_max(new, name, arrow_type))
        present = [v for v in values if v is not None]
        maxima[name] = max(present) if present else None
    return maxima


def _moved(probe: Probe, key: str, rows: int | None, total: int | None) -> str | None:
    """Why the cached rows of an append dataset are no longer the source's, if they are not."""
    if rows is None or (probe.rows == rows and probe.sums.get(key) == total):
        return None
    return (f"rows at or below the cached max({key}) changed in the source (deleted or "
            f"rewritten: {probe.rows} rows there, {rows} cached)")


def _find_replaced(found: Increment, old: pa.Table, key: str, integer: bool) -> None:
    """The increment of an upsert replaces rows by key: it must name each key once; the
    positions of the old rows it replaces go to ``found.replaced`` and, for an integer key,
    the sum of the keys old rows kept plus the new ones make to ``found.key_sum`` (all the
    work that grows with the table, done while the probe still runs)."""
    found.replace_key = key
    if not found.batches:
        keys = pa.chunked_array([], type=old.schema.field(key).type)
    else:
        keys = pa.chunked_array([b.column(key) for b in found.batches])
    if keys.null_count or pc.count_distinct(keys).as_py() != len(keys):
        found.fallback = f"the new rows name a {key} twice or not at all"
        return
    column = old.column(key)
    wanted = keys.combine_chunks().cast(column.type)
    found_dense = _dense_lookup(column, wanted) if len(keys) else None
    if found_dense is not None:  # a lookup table over the keys' range: no hashing
        found.replaced, replaced_sum = found_dense
    else:
        found.replaced = pc.indices_nonzero(pc.is_in(column, value_set=wanted).combine_chunks()) \
            if len(keys) else pa.array([], pa.uint64())
        replaced_sum = _integer_sum(column.take(found.replaced)) if integer else None
    if integer:
        found.key_sum = ((_integer_sum(column) or 0) - (replaced_sum or 0)
                         + (_integer_sum(keys) or 0))


_SAFE = 1 << 62  # keys within +-2**62: their differences fit an int64


def _dense_lookup(column: pa.ChunkedArray, wanted: pa.Array) -> tuple[pa.Array, int] | None:
    """Positions of ``column``'s values among ``wanted`` and the sum of those values, through
    a table over ``wanted``'s range (one pass over the column, no hashing); None unless the
    column is integers without NULLs and the range is at most a few bytes per row."""
    if not pa.types.is_integer(column.type) or column.null_count or not len(wanted):
        return None
    low, high = (v.as_py() for v in pc.min_max(wanted).values())
    least, most = (v.as_py() for v in pc.min_max(column).values())
    if high - low > 8 * len(column) + (1 << 16) or min(low, least or 0) <= -_SAFE \
            or max(high, most or 0) >= _SAFE:
        return None
    table = np.zeros(high - low + 3, dtype=bool)  # [0] and [-1]: every value out of range
    table[wanted.to_numpy().astype(np.int64) - low + 1] = True
    positions, total, at = [], 0, 0
    for chunk in column.chunks:
        values = chunk.to_numpy().astype(np.int64, copy=False)
        index = values - (low - 1)
        np.clip(index, 0, high - low + 2, out=index)
        hits = np.flatnonzero(table[index])
        positions.append(hits + at)
        total += sum(values[hits].tolist())
        at += len(values)
    return pa.array(np.concatenate(positions) if positions else [], pa.int64()), total


def _check_upsert(found: Increment, old: pa.Table, source_rows: int,
                  source_sum: int | None) -> None:
    """Old rows kept plus the increment must be exactly what the source holds (else rows
    were deleted or keys changed): else ``found.fallback`` says so."""
    replaced = len(found.replaced) if found.replaced is not None else 0
    rows = old.num_rows - replaced + found.rows
    if rows != source_rows:
        found.fallback = (f"the source holds {source_rows} rows, old rows kept plus new ones "
                          f"make {rows} (rows were deleted or keys changed)")
    elif found.key_sum is not None and found.key_sum != source_sum:
        found.fallback = f"the {found.replace_key} values differ from the source's (rows deleted)"
