"""Arrow-side conversions from what a driver delivers to the exact type ldw stores.

Each conversion is a pure function ``(array, plan) -> array`` registered by name, so connector
type maps stay data. Conversions build fresh arrays; they never reinterpret a buffer unsafely.

A conversion that meets a value the stored Arrow type cannot hold (NaN in a decimal, PostgreSQL's
``24:00:00`` or ``infinity``) raises :class:`Unrepresentable`; :func:`convert_batch` turns it into
:class:`ldw.UnsupportedType` naming the source, the column and the value. The checks are vectorized
(one min/max or comparison kernel per batch), never a Python loop over rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ldw.errors import UnsupportedType

from .base import ColumnPlan

__all__ = ["CONVERSIONS", "Unrepresentable", "convert_batch", "target_schema",
           "unsupported_value"]

# The int64 a scaled NUMERIC(p<=18, s) column carries for NaN (see the PostgreSQL connector's
# ``scaled_*`` rewrites): |value * 10^s| < 10^18 for every real value, so it is never a value.
NAN_SENTINEL = -(2**63)

# PostgreSQL's first timestamp (4714-11-24 BC, Julian day 0) in Unix microseconds and days. ADBC
# moves timestamps to the Unix epoch with wrapping int64 arithmetic, so 'infinity', '-infinity'
# and instants after Arrow's int64 range (year 294247) land far below it.
PG_MIN_TIMESTAMP_US = -210_866_803_200_000_000
PG_MIN_DATE_DAYS = -2_440_588
DAY_US = 86_400_000_000


class Unrepresentable(Exception):  # internal signal, turned into UnsupportedType
    """A conversion found a value its Arrow type cannot hold; ``problem`` says which."""

    def __init__(self, problem: str, advice: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.advice = advice


def unsupported_value(source: str, plan: ColumnPlan, problem: str, advice: str) -> UnsupportedType:
    """The error for a value of ``plan``'s column that cannot be stored exactly.

    ``problem`` says what the value is and why it does not fit; ``advice`` what to do.
    """
    return UnsupportedType(
        f"source {source!r}: column {plan.name!r} ({plan.source_type}) {problem}; {advice}")


def _beyond(plan: ColumnPlan, what: str) -> str:
    return f"holds {what}, which Arrow's {plan.arrow_type} cannot represent"


def _storage(array: pa.Array) -> pa.Array:
    return array.storage if isinstance(array.type, pa.BaseExtensionType) else array


def _leaves(array: pa.Array) -> pa.Array:
    """The values of a (nested) list array, or the array itself."""
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        array = array.flatten()
    return array


_CAST_HINT = "map it with sql= and a cast (e.g. CAST(v AS text))"


def _decimal_from_text(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    text = _storage(array)
    try:
        return pc.cast(text, plan.arrow_type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        special = pc.filter(text, pc.is_in(text, pa.array(
            ["NaN", "Infinity", "-Infinity", "nan", "inf", "-inf"])))
        if len(special):
            value = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(
                special[0].as_py(), special[0].as_py())
            raise Unrepresentable(_beyond(plan, value),
                                  f"filter those rows out in where= or {_CAST_HINT}") from None
        raise Unrepresentable(_beyond(plan, "a value that does not fit"), _CAST_HINT) from None


def _decimal_from_scaled_int(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    """int64 holding value * 10**scale (exact, computed by the source) -> decimal128(p, s)."""
    if array.null_count < len(array) and pc.min(array).as_py() == NAN_SENTINEL:
        raise Unrepresentable(_beyond(plan, "NaN"),
                              f"filter those rows out in where= or {_CAST_HINT}")
    end = array.offset + len(array)
    raw = np.frombuffer(array.buffers()[1], dtype=np.int64, count=end)
    wide = np.empty((end, 2), dtype=np.int64)  # little-endian 128-bit: low word, sign word
    wide[:, 0] = raw
    np.right_shift(raw, 63, out=wide[:, 1])
    return pa.Array.from_buffers(plan.arrow_type, len(array),
                                 [array.buffers()[0], pa.py_buffer(wide)],
                                 null_count=array.null_count, offset=array.offset)


def _decimal_rescale(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    return pc.cast(array, plan.arrow_type, safe=True)  # raises rather than lose digits


def _pg_time(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    """PostgreSQL ``time`` allows 24:00:00; Arrow's time64 stops at 23:59:59.999999."""
    values = _leaves(array)
    if values.null_count < len(values) and pc.max(values.view(pa.int64())).as_py() >= DAY_US:
        raise Unrepresentable(_beyond(plan, "24:00:00"),
                              "map it with sql= and a cast (e.g. CAST(v AS interval), which "
                              "keeps 24 hours exactly, or CAST(v AS text))")
    return array


def _pg_timestamp(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    values = _leaves(array)
    if values.null_count < len(values) and \
            pc.min(values.view(pa.int64())).as_py() < PG_MIN_TIMESTAMP_US:
        raise Unrepresentable(_beyond(plan, "'infinity', '-infinity' or an instant after year "
                                      "294247"),
                              "filter those rows out in where= (e.g. isfinite(v)) or "
                              f"{_CAST_HINT}")
    return array


def _pg_date(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    values = _leaves(array)
    if values.null_count < len(values) and \
            pc.min(values.view(pa.int32())).as_py() < PG_MIN_DATE_DAYS:
        raise Unrepresentable(_beyond(plan, "'infinity' or '-infinity'"),
                              f"filter those rows out in where= (e.g. isfinite(v)) or "
                              f"{_CAST_HINT}")
    return array


def _text(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    return pc.cast(_storage(array), pa.string())


def _rtrim(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    return pc.utf8_rtrim(array, characters=" ")


def _utc(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    # The session ran in UTC, so the naive values already are UTC instants.
    return pc.cast(array, plan.arrow_type)


def _duration_us(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    return pc.cast(pc.cast(array, pa.int64()), pa.duration("us"))


def _binary(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    return pc.cast(array, pa.binary())


def _plain_cast(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    return pc.cast(array, plan.arrow_type)


CONVERSIONS: dict[str, Callable[[pa.Array, ColumnPlan], pa.Array]] = {
    "decimal_from_text": _decimal_from_text,
    "decimal_rescale": _decimal_rescale,
    "decimal_from_scaled_int": _decimal_from_scaled_int,
    "pg_time": _pg_time,
    "pg_timestamp": _pg_timestamp,
    "pg_date": _pg_date,
    "text": _text,
    "utc": _utc,
    "rtrim": _rtrim,
    "duration_us": _duration_us,
    "binary": _binary,
    "cast": _plain_cast,
}


def target_schema(plans: Sequence[ColumnPlan]) -> pa.Schema:
    """The Arrow schema a dataset has once its batches are converted."""
    return pa.schema([pa.field(p.name, p.arrow_type, nullable=p.nullable) for p in plans])


def convert_batch(batch: pa.RecordBatch, plans: Sequence[ColumnPlan], schema: pa.Schema, *,
                  source: str) -> pa.RecordBatch:
    """Apply each column's conversion; columns without one are relabelled, not copied.

    Raises :class:`ldw.UnsupportedType` (naming ``source``, the column and the value) when a
    value cannot be stored exactly.
    """
    columns = []
    for array, plan in zip(batch.columns, plans, strict=True):
        if plan.convert:
            try:
                array = CONVERSIONS[plan.convert](array, plan)
            except Unrepresentable as exc:
                raise unsupported_value(source, plan, exc.problem, exc.advice) from None
        elif array.type != plan.arrow_type:
            array = array.cast(plan.arrow_type) if not isinstance(
                array.type, pa.ExtensionType) or array.type.storage_type != plan.arrow_type \
                else array.storage
        columns.append(array)
    return pa.RecordBatch.from_arrays(columns, schema=schema)
