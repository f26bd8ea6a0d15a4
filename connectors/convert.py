"""Arrow-side conversions from what a driver delivers to the exact type ldw stores.

Each conversion is a pure function ``(array, plan) -> array`` registered by name, so connector
type maps stay data. Conversions build fresh arrays; they never reinterpret a buffer unsafely.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ldw.errors import UnsupportedType

from .base import ColumnPlan

__all__ = ["CONVERSIONS", "convert_batch", "target_schema"]


def _storage(array: pa.Array) -> pa.Array:
    return array.storage if isinstance(array.type, pa.ExtensionType) else array


def _decimal_from_text(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    text = _storage(array)
    try:
        return pc.cast(text, plan.arrow_type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = pc.filter(text, pc.invert(pc.match_substring_regex(text, r"^-?[0-9]+(\.[0-9]+)?$")))
        hint = ("it holds NaN or Infinity" if len(bad) and bad[0].as_py() in
                {"NaN", "Infinity", "-Infinity"} else "a value does not fit")
        raise UnsupportedType(
            f"column {plan.name!r} ({plan.source_type}) cannot become {plan.arrow_type}: {hint}; "
            "filter those rows out or map it with sql= and a cast"
        ) from None


def _decimal_from_scaled_int(array: pa.Array, plan: ColumnPlan) -> pa.Array:
    """int64 holding value * 10**scale (exact, computed by the source) -> decimal128(p, s)."""
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


def convert_batch(batch: pa.RecordBatch, plans: Sequence[ColumnPlan],
                  schema: pa.Schema) -> pa.RecordBatch:
    """Apply each column's conversion; columns without one are relabelled, not copied."""
    columns = []
    for array, plan in zip(batch.columns, plans, strict=True):
        if plan.convert:
            array = CONVERSIONS[plan.convert](array, plan)
        elif array.type != plan.arrow_type:
            array = array.cast(plan.arrow_type) if not isinstance(
                array.type, pa.ExtensionType) or array.type.storage_type != plan.arrow_type \
                else array.storage
        columns.append(array)
    return pa.RecordBatch.from_arrays(columns, schema=schema)
