"""Export Arrow data to Parquet for production: atomic, streamed, with a verifiable manifest.

An export is a directory of Parquet files (optionally hive-partitioned, ``col=value/...``) with
``_ldw_manifest.json`` at its root. It is written batch by batch into a hidden sibling
``.<name>.ldw-tmp-<random>`` and published by one rename, so nothing appears at the target until
every file and the manifest are on disk (fsynced). The temp directory is ``flock``-ed by its
writer for its whole life: a later export to the same path removes temp directories whose writer
died (``kill -9``), and leaves alone the ones a live writer still holds. Readers of the parent
directory skip them anyway (names starting with ``.`` are ignored by pyarrow, polars, Spark).

The manifest holds what the caller passed under ``"provenance"`` and nothing else from outside;
export adds the schema, row count, one entry per file (relative path, rows, bytes, sha256) and a
checksum over those entries. :func:`verify_export` checks a directory against it::

    result = export_table(table, "prod/orders", partition_by=["o_orderdate"],
                          manifest={"source": "dwh", "sql": "SELECT ...", "who": "alice"})
    assert verify_export(result.path).ok

``string_view``/``binary_view`` columns are written as ordinary ``string``/``binary`` (also in
the Arrow schema embedded in the files, so every reader understands them); decimals stay decimals
and timestamps keep their time zone. Memory stays bounded whatever the size of the data: one row
group for an unpartitioned export, ``_PARTITION_BUFFER`` for a partitioned one.

Reading an export back: ``pyarrow.dataset.dataset(path, partitioning="hive")`` skips the
manifest; polars refuses a directory holding a non-Parquet file, so give it a glob:
``pl.scan_parquet(f"{path}/**/*.parquet", hive_partitioning=True)``.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import io
import itertools
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.ipc
import pyarrow.parquet as pq

from ldw.errors import (
    AccessDenied,
    ConfigError,
    ExportError,
    ExportVerificationError,
    LdwError,
    UnsupportedType,
)
from ldw.types import Progress

__all__ = [
    "MANIFEST_NAME",
    "ExportError",
    "ExportResult",
    "ExportVerificationError",
    "ExportedFile",
    "Problem",
    "VerifyResult",
    "export_owner",
    "export_table",
    "verify_export",
]

log = logging.getLogger("ldw.export")

MANIFEST_NAME = "_ldw_manifest.json"
FORMAT_VERSION = 1
_TMP_MARK = ".ldw-tmp-"
_COMPRESSIONS = frozenset({"zstd", "snappy", "gzip", "brotli", "lz4", "none"})
_SLICE_ROWS = 128 * 1024            # input batches are cut to at most this many rows
_SLICE_BYTES = 32 * 2**20           # ... and about this many bytes, before casting
_GROUP_BYTES = 128 * 2**20          # row group size (in Arrow bytes) to aim for
_PARTITION_BUFFER = 256 * 2**20     # memory all open partitions may use together
_FILE_BYTES = 2**30                 # Arrow bytes per file before a new part file starts
_MIN_GROUP_ROWS = 1024
_MAX_GROUP_ROWS = 1024 * 1024
_MAX_PARTITIONS = 65536
_MAX_OPEN_FILES = 512
_HASH_CHUNK = 4 * 2**20


@dataclass(frozen=True)
class ExportedFile:
    """One data file of an export, as recorded in the manifest."""

    path: str       # relative to the export root, '/'-separated
    rows: int
    bytes: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_table` wrote."""

    path: Path
    files: tuple[ExportedFile, ...]
    rows: int
    bytes: int
    seconds: float
    manifest_path: Path


@dataclass(frozen=True)
class Problem:
    """One thing :func:`verify_export` found wrong: ``kind`` is one of ``missing``,
    ``modified``, ``extra``, ``rows``, ``schema``, ``unreadable``, ``manifest``."""

    kind: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_export`; ``ok`` is true when ``problems`` is empty."""

    path: Path
    problems: tuple[Problem, ...]
    files_checked: int = 0
    rows: int = 0
    manifest: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems


# -- public API --------------------------------------------------------------------------------


def export_table(
    data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
    path: str | os.PathLike[str],
    *,
    manifest: Mapping[str, Any],
    schema: pa.Schema | None = None,
    partition_by: Sequence[str] | None = None,
    compression: str = "zstd",
    overwrite: bool = False,
    owner: str | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> ExportResult:
    """Write ``data`` as Parquet under ``path`` atomically, with ``_ldw_manifest.json``.

    ``data`` is a Table (memory-mapped tables are streamed, never copied whole), a
    RecordBatchReader, or an iterable of RecordBatches together with ``schema``. ``manifest``
    holds the caller's provenance fields (JSON types only); it is stored as given under
    ``"provenance"``. ``partition_by`` writes hive partitions (``col=value/part-0.parquet``).
    An existing ``path`` is refused unless ``overwrite=True`` and it is itself an ldw export;
    it is then swapped out only once the new export is complete. Ctrl-C cancels cleanly.
    ``owner`` (the ldw user exporting) is recorded in the manifest; an export recorded for
    another owner is never replaced. Files are written ``0600`` and folders ``0700``.
    """
    started = time.perf_counter()
    target = Path(os.path.abspath(os.fspath(path)))
    provenance = _json_copy(manifest)
    source_schema, batches = _open_input(data, schema)
    partition_by = _check_partitioning(source_schema, partition_by)
    compression = _check_compression(compression)
    out_schema = _plain_schema(source_schema)
    _check_parquet_types(out_schema)
    _check_target(target, overwrite=overwrite, owner=owner)
    try:
        _make_folders(target.parent)
    except OSError as exc:
        raise ExportError(f"cannot create the folder {target.parent}: {exc}") from exc
    _remove_stale_temps(target)

    temp, lock_fd = _make_temp_dir(target)
    try:
        cancel = threading.Event()
        stream = _Stream(batches, source_schema, out_schema, cancel)

        def tick() -> None:
            if progress:
                progress(Progress(target.name, stream.rows, stream.bytes,
                                  time.perf_counter() - started))

        files = _run_cancellable(
            lambda: _write_files(stream, target, temp, out_schema, partition_by, compression,
                                 cancel),
            cancel, tick)
        if sum(f.rows for f in files) != stream.rows:
            raise ExportError(f"the files for {target} hold {sum(f.rows for f in files)} rows, "
                              f"but {stream.rows} were given; nothing was published")
        body = {
            "ldw_export": FORMAT_VERSION,
            **({"export_owner": owner} if owner is not None else {}),
            "provenance": provenance,
            "format": "parquet",
            "compression": compression,
            "partitioning": {"flavor": "hive", "columns": partition_by} if partition_by else None,
            "schema": _describe_schema(out_schema),
            "arrow_schema": base64.b64encode(out_schema.serialize().to_pybytes()).decode(),
            "rows": sum(f.rows for f in files),
            "bytes": sum(f.bytes for f in files),
            "files": [f.as_json() for f in files],
            "checksum": _content_checksum(files),
        }
        _write_manifest(temp / MANIFEST_NAME, body)
        _seal_tree(temp)
        _publish(temp, target, overwrite=overwrite, owner=owner)
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if _out_of_space(exc):
            raise _disk_full(target) from exc
        raise
    finally:
        os.close(lock_fd)
    seconds = time.perf_counter() - started
    rows = sum(f.rows for f in files)
    nbytes = sum(f.bytes for f in files)
    if progress:
        progress(Progress(target.name, stream.rows, stream.bytes, seconds, done=True))
    log.info("exported %d rows in %d files (%d bytes) to %s in %.2fs",
             rows, len(files), nbytes, target, seconds)
    return ExportResult(target, files, rows, nbytes, seconds, target / MANIFEST_NAME)


def verify_export(path: str | os.PathLike[str], *, strict: bool = False) -> VerifyResult:
    """Check an export against its manifest: every file present with its size and sha256,
    row counts equal to the Parquet footers, no extra files, the checksum consistent.

    Returns the problems found; with ``strict=True`` raises :class:`ExportVerificationError`
    instead of returning a result that is not ok.
    """
    root = Path(os.path.abspath(os.fspath(path)))
    problems: list[Problem] = []
    body = _read_manifest(root, problems)
    checked = rows = 0
    if body is not None:
        entries = _manifest_entries(body, problems)
        listed = {e.path for e in entries}
        if _content_checksum(entries) != body.get("checksum"):
            problems.append(Problem("manifest", MANIFEST_NAME,
                                    "file list does not match the manifest's checksum"))
        file_schema = _file_schema(body, problems)
        for entry in entries:
            rows += _verify_file(root, entry, file_schema, problems)
            checked += 1
        if rows != body.get("rows"):
            problems.append(Problem("rows", MANIFEST_NAME,
                                    f"files hold {rows} rows, manifest says {body.get('rows')}"))
        for extra in sorted(set(_data_files(root)) - listed - {MANIFEST_NAME}):
            problems.append(Problem("extra", extra, "file not listed in the manifest"))
    result = VerifyResult(root, tuple(problems), checked, rows, body)
    if strict and problems:
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ExportVerificationError(
            f"export at {root} failed verification: {shown}{more}; re-export it", problems)
    return result


# -- input -------------------------------------------------------------------------------------


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


# -- writing -----------------------------------------------------------------------------------


def _group_rows(row_bytes: float, target_bytes: float) -> int:
    return int(min(max(target_bytes / row_bytes, _MIN_GROUP_ROWS), _MAX_GROUP_ROWS))


def _write_files(stream: _Stream, target: Path, temp: Path, schema: pa.Schema,
                 partition_by: list[str], compression: str, cancel: threading.Event
                 ) -> tuple[ExportedFile, ...]:
    """Stream the batches into Parquet files under ``temp``; hash and list them."""
    try:
        if partition_by:
            rows_by_file = _write_partitioned(stream, temp, schema, partition_by, compression)
        else:
            rows_by_file = _write_single(stream, temp, schema, compression)
    except BaseException as exc:
        if exc is stream.source_error or isinstance(exc, (LdwError, KeyboardInterrupt)):
            raise
        raise ExportError(f"writing the Parquet files for {target} failed: {exc}") from exc
    on_disk = set(_data_files(temp))
    if on_disk != set(rows_by_file):
        raise ExportError(f"the Parquet writer left unexpected files in {temp}: "
                          f"{sorted(on_disk ^ set(rows_by_file))}")
    return _hash_files(temp, rows_by_file, cancel)


def _write_single(stream: _Stream, temp: Path, schema: pa.Schema, compression: str
                  ) -> dict[str, int]:
    """Unpartitioned: ``part-<i>.parquet`` in input order, row groups of ~``_GROUP_BYTES``.

    Slices are buffered only up to one row group; a new file starts every ~``_FILE_BYTES``.
    An empty input still yields one file, which carries the schema.
    """
    first = stream.peek()
    row_bytes = first.nbytes / first.num_rows if first is not None else 1.0
    group = _group_rows(row_bytes, _GROUP_BYTES)
    per_file = max(int(_FILE_BYTES / row_bytes) // group, 1) * group
    rows_by_file: dict[str, int] = {}
    writer: pq.ParquetWriter | None = None
    pending: list[pa.RecordBatch] = []
    pending_rows = 0

    def open_next() -> pq.ParquetWriter:
        name = f"part-{len(rows_by_file)}.parquet"
        rows_by_file[name] = 0
        return pq.ParquetWriter(temp / name, schema, compression=compression)

    def flush() -> None:
        nonlocal writer, pending, pending_rows
        if writer is None or rows_by_file[f"part-{len(rows_by_file) - 1}.parquet"] >= per_file:
            if writer is not None:
                writer.close()
            writer = open_next()
        writer.write_table(pa.Table.from_batches(pending, schema), row_group_size=group)
        rows_by_file[f"part-{len(rows_by_file) - 1}.parquet"] += pending_rows
        pending, pending_rows = [], 0

    try:
        for batch in stream:
            while batch.num_rows:
                take = min(batch.num_rows, group - pending_rows)
                pending.append(batch.slice(0, take))
                pending_rows += take
                batch = batch.slice(take)
                if pending_rows == group:
                    flush()
        if pending_rows or writer is None:
            flush()
    finally:
        if writer is not None:
            writer.close()
    return rows_by_file


def _write_partitioned(stream: _Stream, temp: Path, schema: pa.Schema, partition_by: list[str],
                       compression: str) -> dict[str, int]:
    """Hive partitions ``col=value/part-<i>.parquet``, rows in input order within each.

    Each slice is split by partition key; rows wait per partition until they fill a row group
    (of at most ``_PARTITION_BUFFER / 8``). An open Parquet writer also keeps its last row group
    in memory, so when pending rows plus open row groups exceed ``_PARTITION_BUFFER``, the
    biggest partitions are written out and their files closed (more data for such a partition
    later starts its next ``part-<i>`` file). At most ``_MAX_OPEN_FILES`` files are open.
    """
    first = stream.peek()
    if first is None:
        return {}
    row_bytes = first.nbytes / first.num_rows
    writer = _PartitionWriter(temp, schema, partition_by, compression,
                              group=_group_rows(row_bytes, _PARTITION_BUFFER // 8),
                              file_bytes=_FILE_BYTES)
    try:
        for batch in stream:
            writer.write(batch)
        writer.flush_all()
    finally:
        writer.close_all()
    return writer.rows_by_file


@dataclass
class _Partition:
    folder: str                               # 'col=value/...', relative to the export root
    files: int = 0                            # files started so far in this folder
    writer: pq.ParquetWriter | None = None
    file: str = ""
    pending: list[pa.RecordBatch] = field(default_factory=list)
    pending_rows: int = 0
    pending_bytes: int = 0
    held: int = 0                             # estimated memory of the open row group


class _PartitionWriter:
    """One ParquetWriter per open partition folder, with bounded buffering (see above)."""

    def __init__(self, root: Path, schema: pa.Schema, keys: list[str], compression: str, *,
                 group: int, file_bytes: int) -> None:
        self.root = root
        self.keys = keys
        self.compression = compression
        self.group = group
        self.file_bytes = file_bytes
        self.key_schema = pa.schema([schema.field(k) for k in keys])
        self.data_schema = pa.schema([f for f in schema if f.name not in keys],
                                     metadata=schema.metadata)
        self.hive = pads.partitioning(self.key_schema, flavor="hive")
        self.partitions: dict[tuple[pa.Scalar, ...], _Partition] = {}
        self.open: dict[tuple[pa.Scalar, ...], None] = {}   # LRU order of open writers
        self.rows_by_file: dict[str, int] = {}
        self.file_written: dict[str, int] = {}             # Arrow bytes written per file
        self.pending_bytes = 0
        self.held_bytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        keys = pa.table([batch.column(k) for k in self.keys], schema=self.key_schema)
        keys = keys.append_column("__ldw_row", pa.array(range(batch.num_rows), pa.int64()))
        groups = keys.group_by(self.keys, use_threads=False).aggregate([("__ldw_row", "list")])
        if groups.num_rows > _MAX_PARTITIONS:
            raise ExportError(f"one batch holds {groups.num_rows} partitions (more than "
                              f"{_MAX_PARTITIONS}); partition by fewer or coarser columns")
        data = batch.select(self.data_schema.names)
        rows = groups.column("__ldw_row_list")
        for i in range(groups.num_rows):
            key = tuple(groups.column(k)[i] for k in self.keys)
            part = self.partitions.get(key) or self._new_partition(key)
            piece = data.take(rows[i].values)
            part.pending.append(piece)
            part.pending_rows += piece.num_rows
            part.pending_bytes += piece.nbytes
            self.pending_bytes += piece.nbytes
            if part.pending_rows >= self.group:
                self._flush(key, part)
        if self.pending_bytes + self.held_bytes > _PARTITION_BUFFER:
            biggest = sorted(self.partitions.items(),
                             key=lambda kv: -(kv[1].pending_bytes + kv[1].held))
            for key, part in biggest:
                if self.pending_bytes + self.held_bytes <= _PARTITION_BUFFER // 2:
                    break
                self._flush(key, part)
                self._close(key, part)

    def _new_partition(self, key: tuple[pa.Scalar, ...]) -> _Partition:
        condition = None
        for name, value in zip(self.keys, key, strict=True):
            term = (pads.field(name).is_null() if not value.is_valid
                    else pads.field(name) == value)
            condition = term if condition is None else condition & term
        folder, _ = self.hive.format(condition)
        part = self.partitions[key] = _Partition(folder)
        return part

    def _flush(self, key: tuple[pa.Scalar, ...], part: _Partition) -> None:
        if not part.pending:
            return
        if part.writer is not None and self.file_written[part.file] >= self.file_bytes:
            self._close(key, part)
        if part.writer is None:
            self._open(key, part)
        else:
            self.open.pop(key)
            self.open[key] = None
        table = pa.Table.from_batches(part.pending, self.data_schema)
        part.writer.write_table(table, row_group_size=self.group)
        self.rows_by_file[part.file] += part.pending_rows
        self.file_written[part.file] += part.pending_bytes
        self.pending_bytes -= part.pending_bytes
        # dictionary-encoded pages of the last row group stay buffered until the next one
        held = part.pending_bytes * 3 // 2
        self.held_bytes += held - part.held
        part.held = held
        part.pending, part.pending_rows, part.pending_bytes = [], 0, 0

    def _open(self, key: tuple[pa.Scalar, ...], part: _Partition) -> None:
        while len(self.open) >= _MAX_OPEN_FILES:
            oldest = next(iter(self.open))
            self._close(oldest, self.partitions[oldest])
        folder = self.root / part.folder
        folder.mkdir(parents=True, exist_ok=True)
        part.file = f"{part.folder}/part-{part.files}.parquet"
        part.files += 1
        part.writer = pq.ParquetWriter(self.root / part.file, self.data_schema,
                                       compression=self.compression)
        self.rows_by_file[part.file] = 0
        self.file_written[part.file] = 0
        self.open[key] = None

    def _close(self, key: tuple[pa.Scalar, ...], part: _Partition) -> None:
        if part.writer is not None:
            part.writer.close()
            part.writer = None
            self.open.pop(key, None)
            self.held_bytes -= part.held
            part.held = 0

    def flush_all(self) -> None:
        """Write what is pending, closing each file as soon as it is complete."""
        for key, part in self.partitions.items():
            self._flush(key, part)
            self._close(key, part)

    def close_all(self) -> None:
        for key, part in self.partitions.items():
            self._close(key, part)


def _hash_files(root: Path, rows_by_file: dict[str, int], cancel: threading.Event
                ) -> tuple[ExportedFile, ...]:
    def one(rel: str) -> ExportedFile:
        digest, size = _sha256(root / rel, cancel, fsync=True)
        return ExportedFile(rel, rows_by_file[rel], size, digest)

    names = sorted(rows_by_file)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return tuple(pool.map(one, names))


def _sha256(file: Path, cancel: threading.Event | None = None, *, fsync: bool = False
            ) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    fd = os.open(file, os.O_RDONLY)
    try:
        while chunk := os.read(fd, _HASH_CHUNK):
            if cancel is not None and cancel.is_set():
                raise KeyboardInterrupt("export cancelled")
            digest.update(chunk)
            size += len(chunk)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest(), size


def _content_checksum(files: Iterable[ExportedFile]) -> str:
    """sha256 over ``path\\trows\\tbytes\\tsha256\\n`` of every file, sorted by path."""
    digest = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        digest.update(f"{f.path}\t{f.rows}\t{f.bytes}\t{f.sha256}\n".encode())
    return "sha256:" + digest.hexdigest()


def _describe_schema(schema: pa.Schema) -> list[dict[str, Any]]:
    fields = []
    for f in schema:
        entry: dict[str, Any] = {"name": f.name, "type": str(f.type), "nullable": f.nullable}
        if f.metadata:
            entry["metadata"] = {k.decode("utf-8", "backslashreplace"):
                                 v.decode("utf-8", "backslashreplace")
                                 for k, v in f.metadata.items()}
        fields.append(entry)
    return fields


def _write_manifest(file: Path, body: dict[str, Any]) -> None:
    data = json.dumps(body, indent=2, ensure_ascii=False, allow_nan=False).encode() + b"\n"
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _seal_tree(root: Path) -> None:
    """Files 0600, folders 0700 (nobody else could enter the 0700 temp folder meanwhile);
    every folder fsynced."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600, follow_symlinks=False)
        os.chmod(folder, 0o700)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_folders(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each ``0700``."""
    missing = []
    while not os.path.isdir(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)


def _run_cancellable(work: Callable[[], tuple[ExportedFile, ...]], cancel: threading.Event,
                     tick: Callable[[], None]) -> tuple[ExportedFile, ...]:
    """Run ``work`` in a thread so that Ctrl-C reaches this one; on it, cancel and wait.

    ``tick`` (progress) runs here, in the caller's thread, a few times a second.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="ldw-export", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
            tick()
    except BaseException:
        cancel.set()
        worker.join()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# -- the target, temp directories and publishing -------------------------------------------------


def _out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or the OSError it wraps) is a full disk or an exhausted quota."""
    for error in (exc, exc.__cause__):
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    return False


def _disk_full(target: Path) -> ExportError:
    free = ""
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(target.parent)
        free = (f" ({usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB once "
                "the partial files were removed)")
    return ExportError(f"the disk holding {target.parent} is full{free}; nothing was "
                       f"published at {target} and the partial files were removed. Free space, "
                       "export fewer columns or rows, or choose a path on another disk")


def _check_target(target: Path, *, overwrite: bool, owner: str | None = None) -> None:
    if not target.name or target.name in {".", ".."}:
        raise ConfigError(f"{target} cannot be an export path; name a directory to create")
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise ExportError(f"{target} already exists; choose another path or pass overwrite=True "
                          "to replace an earlier export")
    if target.is_symlink() or not target.is_dir() or not (target / MANIFEST_NAME).is_file():
        raise ExportError(f"refusing to replace {target}: it is not an ldw export (no "
                          f"{MANIFEST_NAME}); remove it yourself or choose another path")
    if owner is not None:
        recorded = export_owner(target)
        if recorded != owner:
            whose = f"of {recorded!r}" if recorded else "with no recorded owner"
            raise AccessDenied(f"refusing to replace {target}: it holds an export {whose}, "
                               f"not one of {owner!r}; choose another path")


def export_owner(path: str | os.PathLike[str]) -> str | None:
    """The ldw user an export at ``path`` was written for (older exports: ``exported_by``)."""
    try:
        with open(Path(path) / MANIFEST_NAME, "rb") as handle:
            body = json.loads(handle.read(16 * 2**20))
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    owner = body.get("export_owner")
    if owner is None and isinstance(body.get("provenance"), dict):
        owner = body["provenance"].get("exported_by")
    return owner if isinstance(owner, str) else None


def _temp_prefix(target: Path) -> str:
    return f".{target.name}{_TMP_MARK}"


def _make_temp_dir(target: Path) -> tuple[Path, int]:
    """Create and lock ``.<name>.ldw-tmp-<random>`` next to ``target``; return it and the lock."""
    for _ in range(100):
        temp = target.parent / f"{_temp_prefix(target)}{secrets.token_hex(8)}"
        try:
            os.mkdir(temp, 0o700)  # private while written; published folders stay 0700
        except FileExistsError:
            continue
        except OSError as exc:
            raise ExportError(f"cannot create a directory next to {target}: {exc}") from exc
        try:
            fd = os.open(temp, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # a concurrent cleaner may have taken it between mkdir and flock: then it is gone
            if os.path.samestat(os.fstat(fd), os.stat(temp)):
                return temp, fd
        except OSError:
            pass
        os.close(fd)
    raise ExportError(f"cannot create a temporary directory next to {target}")


def _remove_stale_temps(target: Path) -> None:
    """Remove temp dirs of earlier exports to ``target`` whose writer is gone (lock free)."""
    prefix = _temp_prefix(target)
    try:
        names = [n for n in os.listdir(target.parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        stale = target.parent / name
        try:
            fd = os.open(stale, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live export is writing it
        try:
            log.info("removing %s, left by an interrupted export", stale)
            shutil.rmtree(stale, ignore_errors=True)
        finally:
            os.close(fd)


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2_fn = getattr(_libc, "renameat2", None)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False if the system or file system does not support ``flags``."""
    if _renameat2_fn is None:
        return False
    rc = _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                       ctypes.c_uint(flags))
    if rc == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(dst))


def _publish(temp: Path, target: Path, *, overwrite: bool, owner: str | None) -> None:
    """Move the finished ``temp`` to ``target`` in one step; swap out an old export last."""
    try:
        if overwrite and os.path.lexists(target):
            _check_target(target, overwrite=True, owner=owner)
            if not _renameat2(temp, target, _RENAME_EXCHANGE):
                trash = target.parent / f"{_temp_prefix(target)}{secrets.token_hex(8)}"
                os.rename(target, trash)
                try:
                    os.rename(temp, target)
                except OSError:
                    os.rename(trash, target)    # put the old export back
                    raise
                temp = trash
            # ``temp`` now holds the old export
            shutil.rmtree(temp, ignore_errors=True)
        elif not _renameat2(temp, target, _RENAME_NOREPLACE):
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, "exists", os.fspath(target))
            os.rename(temp, target)
    except FileExistsError as exc:
        raise ExportError(f"{target} appeared while exporting (another export?); choose another "
                          "path or pass overwrite=True") from exc
    except OSError as exc:
        if isinstance(exc, LdwError):
            raise
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise ExportError(f"{target} appeared while exporting (another export?); choose "
                              "another path or pass overwrite=True") from exc
        raise ExportError(f"cannot publish the export at {target}: {exc}") from exc
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- verification ------------------------------------------------------------------------------


def _data_files(root: Path) -> list[str]:
    """Every regular file or link under ``root``, relative and '/'-separated."""
    found = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            found.append((Path(folder) / name).relative_to(root).as_posix())
    return found


def _read_manifest(root: Path, problems: list[Problem]) -> dict[str, Any] | None:
    file = root / MANIFEST_NAME
    if not root.is_dir():
        problems.append(Problem("missing", str(root), "no export directory at this path"))
        return None
    try:
        body = json.loads(file.read_text("utf-8"))
    except FileNotFoundError:
        problems.append(Problem("manifest", MANIFEST_NAME,
                                "no manifest: not an ldw export, or an unfinished one"))
        return None
    except (OSError, ValueError) as exc:
        problems.append(Problem("manifest", MANIFEST_NAME, f"unreadable: {exc}"))
        return None
    if not isinstance(body, dict) or body.get("ldw_export") != FORMAT_VERSION:
        problems.append(Problem("manifest", MANIFEST_NAME,
                                f"not an ldw export manifest of format {FORMAT_VERSION}"))
        return None
    return body


def _manifest_entries(body: dict[str, Any], problems: list[Problem]) -> list[ExportedFile]:
    entries = []
    for raw in body.get("files") or []:
        try:
            entry = ExportedFile(str(raw["path"]), int(raw["rows"]), int(raw["bytes"]),
                                 str(raw["sha256"]))
        except (KeyError, TypeError, ValueError):
            problems.append(Problem("manifest", MANIFEST_NAME, f"bad file entry {raw!r}"))
            continue
        parts = Path(entry.path).parts
        if Path(entry.path).is_absolute() or ".." in parts or not parts:
            problems.append(Problem("manifest", entry.path, "path leaves the export directory"))
            continue
        entries.append(entry)
    return entries


def _file_schema(body: dict[str, Any], problems: list[Problem]) -> pa.Schema | None:
    """The Arrow schema every data file must have: the export's, less partition columns."""
    try:
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(body["arrow_schema"])))
        keys = (body.get("partitioning") or {}).get("columns") or []
        return pa.schema([f for f in schema if f.name not in keys])
    except (KeyError, TypeError, ValueError, pa.ArrowException) as exc:
        problems.append(Problem("manifest", MANIFEST_NAME, f"unreadable arrow_schema: {exc}"))
        return None


def _verify_file(root: Path, entry: ExportedFile, schema: pa.Schema | None,
                 problems: list[Problem]) -> int:
    """Check one listed file; return the rows its Parquet footer holds (0 if unreadable)."""
    file = root / entry.path
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        problems.append(Problem("missing", entry.path, "listed in the manifest, not on disk"))
        return 0
    if size != entry.bytes:
        problems.append(Problem("modified", entry.path,
                                f"{size} bytes on disk, manifest says {entry.bytes}"))
    else:
        digest, _ = _sha256(file)
        if digest != entry.sha256:
            problems.append(Problem("modified", entry.path, "sha256 differs from the manifest"))
    try:
        footer = pq.read_metadata(file)
        rows = footer.num_rows
        actual = footer.schema.to_arrow_schema()
    except (pa.ArrowException, OSError) as exc:
        problems.append(Problem("unreadable", entry.path, f"not a readable Parquet file: {exc}"))
        return 0
    if schema is not None and not actual.equals(schema, check_metadata=False):
        problems.append(Problem("schema", entry.path,
                                f"Parquet schema {actual} differs from the manifest's"))
    if rows != entry.rows:
        problems.append(Problem("rows", entry.path,
                                f"Parquet footer says {rows} rows, manifest says {entry.rows}"))
    return rows
