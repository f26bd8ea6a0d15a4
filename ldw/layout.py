"""Arrow layouts at the API's edge.

The cache keeps strings and binaries as ``string_view``/``binary_view``: the layout polars uses
itself, so ``to_polars()`` maps the cached buffers without a copy. Many Arrow consumers
(pyarrow's own ``sort_by``, ``take``, ``filter``, joins and comparisons in pyarrow 26, older
engines, Flight SQL clients) do not handle the view types, so ``to_arrow()`` hands out
``string``/``binary`` instead (what ``pa.array``, pandas, DuckDB and the ADBC drivers produce,
so joins with the user's own tables match key types), or ``large_string``/``large_binary`` for
a column whose batch holds more than 2 GiB of text. Every other column stays the cached
buffers (no copy); only the view columns are rewritten, one thread per column. README ("Arrow
layouts") has the numbers behind the choice.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

__all__ = ["standard_batch", "standard_schema", "standard_table", "standard_type"]

_PLAIN = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}
_LARGE = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}


def standard_type(arrow_type: pa.DataType, *, large: bool = False) -> pa.DataType:
    """``arrow_type`` with every view type (also inside lists, structs, maps) replaced by
    ``string``/``binary`` (``large=True``: ``large_string``/``large_binary``)."""
    plain = (_LARGE if large else _PLAIN).get(arrow_type)
    if plain is not None:
        return plain

    def inner(t: pa.DataType) -> pa.DataType:
        return standard_type(t, large=large)

    if pa.types.is_map(arrow_type):
        return pa.map_(inner(arrow_type.key_type), inner(arrow_type.item_type),
                       keys_sorted=arrow_type.keys_sorted)
    if pa.types.is_large_list(arrow_type):
        return pa.large_list(arrow_type.value_field.with_type(inner(arrow_type.value_type)))
    if pa.types.is_list(arrow_type) or pa.types.is_list_view(arrow_type) or \
            pa.types.is_large_list_view(arrow_type):
        return pa.list_(arrow_type.value_field.with_type(inner(arrow_type.value_type)))
    if pa.types.is_fixed_size_list(arrow_type):
        return pa.list_(arrow_type.value_field.with_type(inner(arrow_type.value_type)),
                        arrow_type.list_size)
    if pa.types.is_struct(arrow_type):
        return pa.struct([f.with_type(inner(f.type)) for f in arrow_type])
    if pa.types.is_dictionary(arrow_type):
        return pa.dictionary(arrow_type.index_type, inner(arrow_type.value_type),
                             arrow_type.ordered)
    return arrow_type


def standard_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` in the layouts every Arrow consumer handles (see :func:`standard_type`)."""
    return pa.schema([f.with_type(standard_type(f.type)) for f in schema],
                     metadata=schema.metadata)


OFFSET_LIMIT = 2**31 - 1  # bytes of text one ``string``/``binary`` array can hold


def _text_bytes(chunk: pa.Array) -> int:
    """An upper bound of the text bytes of a view array (exact when the bound is too big)."""
    inline = 12 * len(chunk)  # views of up to 12 bytes keep their text inline
    bound = inline + sum(b.size for b in chunk.buffers()[2:] if b is not None)
    if bound <= OFFSET_LIMIT:
        return bound
    views = np.frombuffer(chunk.buffers()[1], np.int32, 4 * len(chunk), 16 * chunk.offset)
    return int(views[::4].astype(np.int64).sum())  # each view starts with its length


def _cast(column: pa.ChunkedArray, field: pa.Field) -> pa.ChunkedArray:
    """A view column as ``string``/``binary``, or ``large_*`` where a chunk's text would
    overflow 32-bit offsets (pyarrow's cast would not say so); nested views always ``large_*``."""
    top = field.type in _PLAIN
    large = not top or any(_text_bytes(chunk) > OFFSET_LIMIT for chunk in column.chunks)
    return column.cast(standard_type(field.type, large=large))


def standard_table(table: pa.Table) -> pa.Table:
    """``table`` with its view columns rewritten as ``string``/``binary`` (see the module
    docstring); every other column keeps its buffers (no copy)."""
    schema = standard_schema(table.schema)
    changed = [i for i, (a, b) in enumerate(zip(table.schema, schema, strict=True))
               if a.type != b.type]
    if not changed:
        return table
    columns = list(table.columns)
    if len(changed) == 1:
        columns[changed[0]] = _cast(columns[changed[0]], table.schema.field(changed[0]))
    else:  # pyarrow's cast releases the GIL: the columns convert side by side
        with ThreadPoolExecutor(min(len(changed), 8)) as pool:
            done = pool.map(lambda i: _cast(columns[i], table.schema.field(i)), changed)
            for i, column in zip(changed, done, strict=True):
                columns[i] = column
    fields = [f.with_type(c.type) for f, c in zip(schema, columns, strict=True)]
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=schema.metadata))


def standard_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` cast to ``schema`` (from :func:`standard_schema`); CapacityExceeded if a
    view column holds more text than a ``string`` column can."""
    for column, field in zip(batch.columns, batch.schema, strict=True):
        if field.type in _PLAIN and _text_bytes(column) > OFFSET_LIMIT:
            from ldw.errors import CapacityExceeded

            raise CapacityExceeded(f"column {field.name!r} holds more than 2 GiB of text in "
                                   "one batch; select fewer rows or columns")
    return batch.cast(schema)
