"""Apache Iceberg exports through ``pyiceberg`` and a SQL catalog kept in the export's folder.

``path/_ldw_catalog.db`` (SQLite, pyiceberg's ``SqlCatalog``, the same tables as Iceberg's JDBC
catalog) holds one table, ``ldw.<name>``, stored in ``path/<name>``; see
:mod:`ldw.export.lake`. Each export commits one transaction: a new table with its first
snapshot, an append snapshot, or for an overwrite a delete and an append snapshot, each
carrying the lineage. The stream is written one data file at a time (:func:`_append`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.table import Table, Transaction

from ldw.errors import ConfigError, ExportError
from ldw.export.atomic import _seal_tree
from ldw.export.lake import LINEAGE_KEY, TableCommit, TableJob
from ldw.export.manifest import TABLE_MARKER, _write_manifest

CATALOG_FILE = "_ldw_catalog.db"
CATALOG_NAME = "ldw"     # pyiceberg keeps the catalog's name in every row: read it as "ldw"
NAMESPACE = "ldw"
_FILE_BYTES = 128 * 2**20  # Arrow bytes per data file: what a streamed append buffers
_DEFAULT_FILE_BYTES = 512 * 2**20  # pyiceberg's default write.target-file-size-bytes
_FILE_PROPERTY = "write.target-file-size-bytes"
_CODECS = {"none": "uncompressed"}


def catalog_uri(folder: Path) -> str:
    return f"sqlite:///{folder / CATALOG_FILE}"


def check_options(partition_by: list[str]) -> None:
    if partition_by:
        raise ConfigError("Iceberg exports are not partitioned (pyiceberg streams only into "
                          "unpartitioned tables); leave out partition_by, or export as Delta "
                          "or Parquet")


def write(job: TableJob) -> TableCommit:
    """Create the catalog and table with the data as its first snapshot, or commit to it."""
    if job.existing is None:
        return _create(job)
    name = job.existing.get("table")
    if not isinstance(name, str) or not (job.target / CATALOG_FILE).is_file():
        raise ExportError(f"{job.target} has no Iceberg catalog of ldw's ({CATALOG_FILE}); "
                          "choose another path")
    catalog = _catalog(job.target)
    try:
        table = catalog.load_table(name)
        properties = {LINEAGE_KEY: job.lineage}
        with table.transaction() as tx:
            if job.mode == "overwrite":
                _evolve(tx, table, job.reader.schema)
                tx.delete(AlwaysTrue(), snapshot_properties=properties)
            _append(tx, job.reader, properties)
        commit = _commit(job, table, name, job.mode)
    finally:
        catalog.engine.dispose()
    _seal_tree(job.target)
    return commit


def _create(job: TableJob) -> TableCommit:
    name = re.sub(r"[^A-Za-z0-9_]", "_", job.target.name)
    try:
        os.mkdir(job.target, 0o700)
    except FileExistsError as exc:
        raise ExportError(f"{job.target} appeared while exporting (another export?); choose "
                          "another path or pass mode='append'") from exc
    try:
        catalog = _catalog(job.target)
        try:
            catalog.create_namespace_if_not_exists(NAMESPACE)
            properties = {"write.parquet.compression-codec":
                          _CODECS.get(job.compression, job.compression),
                          _FILE_PROPERTY: str(_FILE_BYTES)}
            with catalog.create_table_transaction(
                    (NAMESPACE, name), schema=job.reader.schema,
                    location=(job.target / name).as_uri(), properties=properties) as tx:
                _append(tx, job.reader, {LINEAGE_KEY: job.lineage})
            table = catalog.load_table((NAMESPACE, name))
            commit = _commit(job, table, f"{NAMESPACE}.{name}", "create")
        finally:
            catalog.engine.dispose()
        _write_manifest(job.target / TABLE_MARKER,
                        job.new_marker("iceberg", catalog=CATALOG_FILE, table=commit.table))
        _seal_tree(job.target)
    except BaseException:
        shutil.rmtree(job.target, ignore_errors=True)
        raise
    return commit


def _catalog(folder: Path) -> SqlCatalog:
    return SqlCatalog(CATALOG_NAME, uri=catalog_uri(folder), warehouse=folder.as_uri())


def _commit(job: TableJob, table: Table, name: str, mode: str) -> TableCommit:
    snapshot = table.current_snapshot()
    return TableCommit(mode, snapshot.snapshot_id if snapshot else 0, name,
                       catalog_uri(job.target), table.metadata_location)


def _evolve(tx: Any, table: Table, schema: pa.Schema) -> None:
    """An overwrite with other columns replaces the table's schema (Iceberg keeps the old
    one for time travel): columns gone are dropped, new ones added."""
    current = table.schema().as_arrow()
    if current.remove_metadata().equals(schema.remove_metadata()):
        return
    with tx.update_schema(allow_incompatible_changes=True) as update:
        for column in current.names:
            if column not in schema.names:
                update.delete_column(column)
        update.union_by_name(schema)



def _append(tx: Transaction, reader: pa.RecordBatchReader, properties: dict[str, str]
            ) -> None:
    """Append ``reader`` in ``tx`` as one snapshot, one data file at a time.

    ``Transaction.append`` hands the files of a stream to pyiceberg's thread pool with
    ``ThreadPoolExecutor.map``, which takes the whole iterator at once: a source faster than
    the writer (a cached table whose strings are converted, say) would be queued whole in
    memory (measured: 860 MiB for an 844 MiB table of strings). Here the stream is cut into
    pieces of one data file (``write.target-file-size-bytes`` of Arrow data), each written
    before the next is read, into the same fast-append snapshot. That needs pyiceberg's
    ``_dataframe_to_data_files``; a pyiceberg without it gets ``Transaction.append``.
    """
    try:
        from pyiceberg.io.pyarrow import (
            _check_pyarrow_schema_compatible,
            _dataframe_to_data_files,
        )
    except ImportError:  # another pyiceberg version
        tx.append(reader, snapshot_properties=properties)
        return
    metadata = tx.table_metadata
    _check_pyarrow_schema_compatible(metadata.schema(), provided_schema=reader.schema)
    try:
        file_bytes = max(int(metadata.properties.get(_FILE_PROPERTY, _DEFAULT_FILE_BYTES)), 1)
    except ValueError:
        file_bytes = _DEFAULT_FILE_BYTES
    io = tx._table.io  # as Transaction.append does
    with tx.update_snapshot(snapshot_properties=properties).fast_append() as files:
        for piece in _pieces(reader, file_bytes):
            for data_file in _dataframe_to_data_files(table_metadata=metadata, df=piece,
                                                      io=io, write_uuid=files.commit_uuid):
                files.append_data_file(data_file)


def _pieces(reader: pa.RecordBatchReader, size: int) -> Iterator[pa.RecordBatchReader]:
    """``reader`` as consecutive readers of about ``size`` bytes each, read lazily."""
    batches = iter(reader)
    upcoming = [next(batches, None)]

    def piece() -> Iterator[pa.RecordBatch]:
        taken = 0
        while upcoming[0] is not None and taken < size:
            batch = upcoming[0]
            upcoming[0] = None
            taken += batch.nbytes
            yield batch
            if taken < size:
                upcoming[0] = next(batches, None)
        if upcoming[0] is None and taken >= size:
            upcoming[0] = next(batches, None)

    while upcoming[0] is not None:
        yield pa.RecordBatchReader.from_batches(reader.schema, piece())
