"""The input side of an export: argument checks and the stream of bounded, cast record batches.

Turns what the caller passed (Table, RecordBatchReader, batches with ``schema=``) into slices of
at most ``_SLICE_ROWS`` rows / ~``_SLICE_BYTES`` bytes, cast to the plain output schema (views
become ordinary strings/binaries), and checks the options before anything touches the disk.
"""

from __future__ import annotations

import io
import itertools
import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ldw.errors import ConfigError, ExportError, UnsupportedType

_COMPRESSIONS = frozenset({"zstd", "snappy", "gzip", "brotli", "lz4", "none"})
FORMATS = ("parquet", "delta", "iceberg")
MODES = ("error", "append", "overwrite")
_SLICE_ROWS = 128 * 1024            # input batches are cut to at most this many rows
_SLICE_BYTES = 32 * 2**20           # ... and about this many bytes, before casting


def _open_input(data: Any, schema: pa.Schema | None
                ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    if isinstance(data, pa.Table):
        if schema is not None and not schema.equals(data.schema, check_metadata=False):
            raise ConfigError("schema= differs from the table's schema; leave it out for tables")
        return data.schema, iter(data.to_batches(max_chunksize=_SLICE_ROWS))
    if isinstance(data, pa.RecordBatchReader):
        return data.schema, iter(data)
    if isinstance(data, pa.RecordBatch):
        return data.schema, iter([data])
    if schema is None:
        raise ConfigError("exporting an iterable of record batches needs schema=")
    if not isinstance(data, Iterable):
        raise ConfigError(f"cannot export a {type(data).__name__}; pass a pyarrow Table, "
                          "a RecordBatchReader or record batches with schema=")
    return schema, iter(data)


def _json_copy(manifest: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(manifest, Mapping):
        raise ConfigError("manifest= must be a dict of JSON values (str, int, float, bool, None, "
                          "lists and dicts of those)")
    try:
        return json.loads(json.dumps(dict(manifest), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"manifest= must hold JSON values only (format datetimes as ISO "
                          f"strings): {exc}") from exc


def _check_compression(compression: str) -> str:
    name = str(compression).lower()
    if name not in _COMPRESSIONS:
        raise ConfigError(f"unknown compression {compression!r}; use one of "
                          f"{', '.join(sorted(_COMPRESSIONS))}")
    if name != "none" and not pa.Codec.is_available(name):
        raise ConfigError(f"compression {name!r} is not available in this pyarrow build")
    return name


def check_format(format: str) -> str:
    """``format`` if it names an export format (lower-cased), else ConfigError."""
    name = str(format).lower()
    if name not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    return name


def _check_mode(format: str, mode: str | None, overwrite: bool) -> str:
    """The write mode: ``error`` (the default: refuse an existing target), ``append`` (tables
    only) or ``overwrite``; ``overwrite=True`` is short for ``mode="overwrite"``."""
    if mode is None:
        return "overwrite" if overwrite else "error"
    name = str(mode).lower()
    if name not in MODES:
        raise ConfigError(f"unknown export mode {mode!r}; use one of {', '.join(MODES)}")
    if overwrite and name != "overwrite":
        raise ConfigError(f"overwrite=True contradicts mode={mode!r}; pass one of them")
    if name == "append" and format == "parquet":
        raise ConfigError("a Parquet export cannot be appended to; export with "
                          "format='delta' or 'iceberg' to add commits to a table, or "
                          "replace the export with mode='overwrite'")
    return name


def _partition_type_ok(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_date(t)
            or pa.types.is_timestamp(t) or pa.types.is_string(t)
            or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def _check_partitioning(schema: pa.Schema, partition_by: Sequence[str] | None) -> list[str]:
    if not partition_by:
        return []
    if isinstance(partition_by, str):
        partition_by = [partition_by]
    columns = list(partition_by)
    if len(set(columns)) != len(columns):
        raise ConfigError(f"partition_by lists a column twice: {columns}")
    for name in columns:
        if schema.get_field_index(name) < 0:
            raise ConfigError(f"partition_by column {name!r} is not in the data; columns are "
                              f"{', '.join(schema.names)}")
        if "/" in name or "=" in name or name.startswith((".", "_")):
            raise ConfigError(f"cannot partition by {name!r}: a hive directory name must not "
                              "contain '/' or '=' nor start with '.' or '_' (readers skip those)")
        ftype = schema.field(name).type
        if not _partition_type_ok(ftype):
            raise ConfigError(f"cannot partition by {name!r} of type {ftype}: use an integer, "
                              "string, boolean, date or timestamp column")
    if len(columns) >= len(schema):
        raise ConfigError("partition_by cannot use every column; the files need at least one")
    return columns


def _plain_type(t: pa.DataType) -> pa.DataType:
    """The type written to Parquet: views become the ordinary layouts, recursively."""
    if pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_plain_type(t.value_type)), t.list_size)
    if pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.large_list(t.value_field.with_type(_plain_type(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([f.with_type(_plain_type(f.type)) for f in t])
    if pa.types.is_map(t):
        return pa.map_(t.key_field.with_type(_plain_type(t.key_type)),
                       t.item_field.with_type(_plain_type(t.item_type)), t.keys_sorted)
    if pa.types.is_dictionary(t):
        return pa.dictionary(t.index_type, _plain_type(t.value_type), t.ordered)
    return t


def _plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_type(_plain_type(f.type)) for f in schema],
                     metadata=schema.metadata)


def _check_parquet_types(schema: pa.Schema) -> None:
    """Fail before touching disk if a column has a type Parquet cannot store."""
    for f in schema:
        try:
            pq.write_table(pa.schema([f]).empty_table(), io.BytesIO())
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise UnsupportedType(
                f"column {f.name!r} has type {f.type}, which Parquet cannot store ({exc}); "
                "cast it or leave it out of the export") from exc


class _Stream:
    """The input batches, cut to bounded slices, cast to the output schema, cancellable.

    It is pulled from pyarrow's writer threads; an error raised by the caller's iterator is
    remembered so that it reaches the caller unchanged.
    """

    def __init__(self, batches: Iterator[pa.RecordBatch], schema: pa.Schema,
                 out_schema: pa.Schema, cancel: threading.Event) -> None:
        self._batches = batches
        self._schema = schema
        self._out = out_schema
        self._cast = not out_schema.equals(schema)
        self._cancel = cancel
        self._peeked: list[pa.RecordBatch] = []
        self._gen = self._iter()
        self.source_error: BaseException | None = None
        self.rows = 0
        self.bytes = 0

    def _next_input(self) -> pa.RecordBatch | None:
        try:
            batch = next(self._batches)
        except StopIteration:
            return None
        except BaseException as exc:
            self.source_error = exc
            raise
        if not isinstance(batch, pa.RecordBatch):
            raise ExportError(f"expected pyarrow RecordBatches, got {type(batch).__name__}")
        if not batch.schema.equals(self._schema, check_metadata=False):
            raise ExportError(f"a batch has schema {batch.schema}, expected {self._schema}")
        return batch

    def _slices(self) -> Iterator[pa.RecordBatch]:
        while (batch := self._next_input()) is not None:
            if not batch.num_rows:
                continue
            row_bytes = max(batch.nbytes / batch.num_rows, 1.0)
            rows = int(min(max(_SLICE_BYTES / row_bytes, 1), _SLICE_ROWS))
            for offset in range(0, batch.num_rows, rows):
                yield batch.slice(offset, rows)

    def _convert(self, batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
        if not self._cast:
            yield batch.replace_schema_metadata(self._out.metadata)
            return
        try:
            yield batch.cast(self._out)
        except pa.ArrowCapacityError:
            # over 2 GiB of string data in one slice: int32 offsets overflow; halve it
            if batch.num_rows <= 1:
                raise
            half = batch.num_rows // 2
            yield from self._convert(batch.slice(0, half))
            yield from self._convert(batch.slice(half))

    def _iter(self) -> Iterator[pa.RecordBatch]:
        for piece in self._slices():
            yield from self._convert(piece)

    @property
    def schema(self) -> pa.Schema:
        """The schema of the batches this stream yields."""
        return self._out

    def peek(self) -> pa.RecordBatch | None:
        """The first non-empty slice, or None for an empty input (kept; it is written first)."""
        for batch in self._gen:
            self._peeked.append(batch)
            if batch.num_rows:
                return batch
        return None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        pending, self._peeked = self._peeked, []
        for batch in itertools.chain(pending, self._gen):
            if self._cancel.is_set():
                raise KeyboardInterrupt("export cancelled")
            self.rows += batch.num_rows
            self.bytes += batch.nbytes
            yield batch
