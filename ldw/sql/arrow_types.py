"""Arrow types between datasets and DuckDB: what DuckDB reads (no decimal256, float16) and
what comes back (HUGEINT narrowed where the values fit)."""

from __future__ import annotations

import pyarrow as pa

__all__ = ["STREAM_BATCH_ROWS"]

def _duckdb_type(arrow_type: pa.DataType) -> pa.DataType:
    """The nearest type DuckDB reads from Arrow (it rejects decimal256 and float16)."""
    if pa.types.is_decimal256(arrow_type):
        # DuckDB decimals stop at 38 digits; wider values become DOUBLE, as DuckDB's own
        # PostgreSQL scanner does for wide NUMERIC.
        if arrow_type.precision <= 38:
            return pa.decimal128(arrow_type.precision, arrow_type.scale)
        return pa.float64()
    if pa.types.is_float16(arrow_type):
        return pa.float32()
    if pa.types.is_dictionary(arrow_type):
        value = _duckdb_type(arrow_type.value_type)
        return value if value != arrow_type.value_type else arrow_type
    if isinstance(arrow_type, pa.ExtensionType):
        return arrow_type
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or \
            pa.types.is_list_view(arrow_type) or pa.types.is_large_list_view(arrow_type):
        field = arrow_type.value_field
        value = _duckdb_type(field.type)
        if value == field.type:
            return arrow_type
        return pa.list_(field.with_type(value))
    if pa.types.is_fixed_size_list(arrow_type):
        field = arrow_type.value_field
        value = _duckdb_type(field.type)
        if value == field.type:
            return arrow_type
        return pa.list_(field.with_type(value), arrow_type.list_size)
    if pa.types.is_map(arrow_type):
        key, item = _duckdb_type(arrow_type.key_type), _duckdb_type(arrow_type.item_type)
        if key == arrow_type.key_type and item == arrow_type.item_type:
            return arrow_type
        return pa.map_(arrow_type.key_field.with_type(key), arrow_type.item_field.with_type(item))
    if pa.types.is_struct(arrow_type):
        fields = [arrow_type.field(i) for i in range(arrow_type.num_fields)]
        converted = [f.with_type(_duckdb_type(f.type)) for f in fields]
        return arrow_type if converted == fields else pa.struct(converted)
    return arrow_type


def _duckdb_ready(table: pa.Table) -> pa.Table:
    """``table`` as is (zero-copy) unless a column has a type DuckDB rejects; only those are cast.

    ``string_view``/``binary_view``, decimal32/64/128, dictionaries, dates, timestamps (with
    zones), intervals, lists and structs are read by DuckDB directly.
    """
    for index, field in enumerate(table.schema):
        target = _duckdb_type(field.type)
        if target != field.type:
            table = table.set_column(index, field.with_type(target),
                                     table.column(index).cast(target))
    return table


STREAM_BATCH_ROWS = 16384  # rows per batch of a streamed SQL result: a stalled reader holds few
_WIDE_INTEGERS = {"HUGEINT": pa.int64(), "UHUGEINT": pa.uint64()}


def _narrow_integers(result: pa.Table, duckdb_types: list[str]) -> pa.Table:
    """128-bit integers (e.g. SUM of integers) as 64-bit ones when every value fits.

    DuckDB hands HUGEINT to Arrow as decimal128(38, 0), which would turn ``sum(quantity)`` into a
    decimal column; a real DECIMAL(38, 0) column is left alone.
    """
    for index, duckdb_type in enumerate(duckdb_types):
        target = _WIDE_INTEGERS.get(duckdb_type)
        if target is None or index >= result.num_columns:
            continue
        try:
            column = result.column(index).cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue  # beyond 64 bits: keep the exact decimal
        result = result.set_column(index, result.field(index).with_type(target), column)
    return result

