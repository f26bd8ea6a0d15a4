"""Arrow types as Delta Lake and Apache Iceberg store them: kept, widened exactly, or refused.

Both formats know fewer types than Arrow. Each column is given the nearest type the format
stores without losing a value, and a column with no such type is refused before anything is
written, naming it and what to do:

=========================  ====================================  ==============================
Arrow                      Delta Lake                            Iceberg
=========================  ====================================  ==============================
uint8 / uint16 / uint32    int16 / int32 / int64                 int32 / int32 / int64
uint64                     decimal(20, 0)                        decimal(20, 0)
int8, int16                kept                                  int32
float16                    float32                               float32
decimal32/64, decimal256   decimal128 (precision <= 38)          decimal128 (precision <= 38)
date64                     date32                                date32
timestamp (s, ms, us, ns)  microseconds; any time zone as UTC    the same
time32/time64              refused (no time-of-day type)         time64 (microseconds)
fixed_size_binary          binary                                kept (fixed)
dictionary, extension      the value / storage type (arrow.uuid stays uuid in Iceberg)
duration, interval, null   refused                               refused
=========================  ====================================  ==============================

Casting to microseconds refuses (while writing) a value with nanoseconds rather than dropping
them; a time zone changes no instant (Arrow stores UTC).
"""

from __future__ import annotations

import pyarrow as pa

from ldw.errors import UnsupportedType

__all__ = ["table_schema"]

LABELS = {"delta": "Delta Lake", "iceberg": "Iceberg"}
_MAX_DECIMAL = 38


class _Refused(Exception):
    """The reason a type has no counterpart in the format."""


def table_schema(schema: pa.Schema, fmt: str) -> pa.Schema:
    """``schema`` with every column's type as ``fmt`` (``delta`` or ``iceberg``) stores it;
    UnsupportedType for a column it cannot store."""
    fields = []
    for f in schema:
        try:
            fields.append(f.with_type(_table_type(f.type, fmt)))
        except _Refused as why:
            raise UnsupportedType(
                f"column {f.name!r} has type {f.type}, which {LABELS[fmt]} cannot store ({why}); "
                "cast it in the mapping's SQL, leave it out (columns=...), or export it as "
                "Parquet") from None
    return pa.schema(fields, metadata=schema.metadata)


def _table_type(t: pa.DataType, fmt: str) -> pa.DataType:
    if pa.types.is_dictionary(t):
        return _table_type(t.value_type, fmt)
    if isinstance(t, pa.BaseExtensionType):
        if fmt == "iceberg" and isinstance(t, pa.UuidType):
            return t
        return _table_type(t.storage_type, fmt)
    if pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_unsigned_integer(t):
        return _unsigned(t, fmt)
    if pa.types.is_int8(t) or pa.types.is_int16(t):
        return pa.int32() if fmt == "iceberg" else t
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_decimal(t):
        if t.precision > _MAX_DECIMAL:
            raise _Refused(f"decimals hold at most {_MAX_DECIMAL} digits")
        return pa.decimal128(t.precision, t.scale)
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_timestamp(t):
        return pa.timestamp("us", "UTC" if t.tz is not None else None)
    if pa.types.is_time(t):
        if fmt == "delta":
            raise _Refused("it has no time-of-day type")
        return pa.time64("us")
    if pa.types.is_fixed_size_binary(t):
        return pa.binary() if fmt == "delta" else t
    if pa.types.is_duration(t) or pa.types.is_interval(t):
        raise _Refused("it has no duration or interval type")
    if pa.types.is_null(t):
        raise _Refused("a column of type null has no values to type it by")
    if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
            or pa.types.is_list_view(t) or pa.types.is_large_list_view(t)):
        item = t.value_field.with_type(_table_type(t.value_type, fmt))
        return pa.large_list(item) if pa.types.is_large_list(t) else pa.list_(item)
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_table_type(f.type, fmt)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(_table_type(t.key_type, fmt)),
                       t.item_field.with_type(_table_type(t.item_type, fmt)), t.keys_sorted)
    if (pa.types.is_boolean(t) or pa.types.is_int32(t) or pa.types.is_int64(t)
            or pa.types.is_float32(t) or pa.types.is_float64(t) or pa.types.is_date32(t)
            or pa.types.is_string(t) or pa.types.is_large_string(t)
            or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        return t
    raise _Refused("no counterpart")


def _unsigned(t: pa.DataType, fmt: str) -> pa.DataType:
    if t.bit_width == 64:
        return pa.decimal128(20, 0)
    if t.bit_width == 32:
        return pa.int64()
    if t.bit_width == 16 or fmt == "iceberg":
        return pa.int32()
    return pa.int16()
