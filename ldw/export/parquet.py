"""Parquet writing for an export: the stream into part files, plain or hive-partitioned, hashed.

Memory stays bounded whatever the size of the data: one row group for an unpartitioned
export, ``_PARTITION_BUFFER`` for a partitioned one. Files land in the export's temp
directory; :mod:`ldw.export.atomic` publishes it.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ldw.errors import ExportError, LdwError
from ldw.export.atomic import _data_files
from ldw.export.manifest import ExportedFile, _sha256
from ldw.export.stream import _Stream

_GROUP_BYTES = 128 * 2**20          # row group size (in Arrow bytes) to aim for
_PARTITION_BUFFER = 256 * 2**20     # memory all open partitions may use together
_FILE_BYTES = 2**30                 # Arrow bytes per file before a new part file starts
_MIN_GROUP_ROWS = 1024
_MAX_GROUP_ROWS = 1024 * 1024
_MAX_PARTITIONS = 65536
_MAX_OPEN_FILES = 512


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
