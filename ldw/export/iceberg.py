"""Apache Iceberg exports through ``pyiceberg`` and a SQL catalog kept in the export's folder.

``path/_ldw_catalog.db`` (SQLite, pyiceberg's ``SqlCatalog``, the same tables as Iceberg's JDBC
catalog) holds one table, ``ldw.<name>``, stored in ``path/<name>``; see
:mod:`ldw.export.lake`. ``append`` and ``overwrite`` commit one transaction (an overwrite
commits a delete and an append snapshot together, both carrying the lineage).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.table import Table

from ldw.errors import ConfigError, ExportError
from ldw.export.atomic import _seal_tree
from ldw.export.lake import LINEAGE_KEY, TableCommit, TableJob
from ldw.export.manifest import TABLE_MARKER, _write_manifest

CATALOG_FILE = "_ldw_catalog.db"
CATALOG_NAME = "ldw"     # pyiceberg keeps the catalog's name in every row: read it as "ldw"
NAMESPACE = "ldw"
_FILE_BYTES = 128 * 2**20  # Arrow bytes per data file: what a streamed append buffers
_DEFAULT_FILE_BYTES = 512 * 2**20  # pyiceberg's default write.target-file-size-bytes
_SLICE_BYTES = 64 * 2**20  # more than one input slice (ldw.export.stream) may hold
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
        reader = _bounded(job.reader, table.properties)
        with table.transaction() as tx:
            if job.mode == "overwrite":
                _evolve(tx, table, job.reader.schema)
                tx.overwrite(reader, snapshot_properties=properties)
            else:
                tx.append(reader, snapshot_properties=properties)
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
                          "write.target-file-size-bytes": str(_FILE_BYTES)}
            with catalog.create_table_transaction(
                    (NAMESPACE, name), schema=job.reader.schema,
                    location=(job.target / name).as_uri(), properties=properties) as tx:
                tx.append(_bounded(job.reader, properties),
                          snapshot_properties={LINEAGE_KEY: job.lineage})
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


def _bounded(reader: pa.RecordBatchReader, properties: dict[str, str]) -> pa.RecordBatchReader:
    """``reader``, holding back while pyiceberg keeps more than about one data file's worth of
    its batches unwritten.

    pyiceberg cuts the stream into files of ``write.target-file-size-bytes`` and hands each to
    its thread pool at once (``ThreadPoolExecutor.map`` takes the whole iterator eagerly), so a
    fast source would otherwise queue the whole table in memory (measured: 860 MiB held for an
    844 MiB table of strings, 545 MiB with this). A batch counts until pyiceberg drops it, once
    its file is written. The limit is above one file, so a file always fills and the stream
    always moves on; the next file starts filling while one is written.
    """
    try:
        file_bytes = int(properties.get("write.target-file-size-bytes", _DEFAULT_FILE_BYTES))
    except ValueError:
        file_bytes = _DEFAULT_FILE_BYTES
    limit = max(file_bytes, 1) + _SLICE_BYTES
    held = [0]
    released = threading.Condition()

    def release(nbytes: int) -> None:
        with released:
            held[0] -= nbytes
            released.notify_all()

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in reader:
            with released:
                released.wait_for(lambda: held[0] <= limit)
                held[0] += batch.nbytes
            weakref.finalize(batch, release, batch.nbytes)
            yield batch

    return pa.RecordBatchReader.from_batches(reader.schema, batches())
