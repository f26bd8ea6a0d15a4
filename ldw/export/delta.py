"""Delta Lake exports through ``deltalake`` (delta-rs); see :mod:`ldw.export.lake`.

A new table is written into a locked hidden sibling and published by one rename, like a
Parquet export (a Delta log holds paths relative to the table). Later exports add a commit:
``append`` adds files, ``overwrite`` replaces them and, if the columns changed, the schema.
"""

from __future__ import annotations

import os
import shutil

from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake

from ldw.export.atomic import _make_temp_dir, _publish, _remove_stale_temps, _seal_tree
from ldw.export.lake import LINEAGE_KEY, TableCommit, TableJob
from ldw.export.manifest import TABLE_MARKER, _write_manifest

_CODECS = {"zstd": "ZSTD", "snappy": "SNAPPY", "gzip": "GZIP", "brotli": "BROTLI",
           "lz4": "LZ4_RAW", "none": "UNCOMPRESSED"}


def check_options(partition_by: list[str]) -> None:
    """Delta tables take every option export_table checked."""


def write(job: TableJob) -> TableCommit:
    """Write ``job`` as one commit: version 0 of a new table, or the next one."""
    options = {
        "partition_by": job.partition_by or None,
        "writer_properties": WriterProperties(compression=_CODECS[job.compression]),
        "commit_properties": CommitProperties(custom_metadata={LINEAGE_KEY: job.lineage}),
    }
    if job.existing is None:
        return _create(job, options)
    table = DeltaTable(os.fspath(job.target))
    write_deltalake(table, job.reader, mode="overwrite" if job.mode == "overwrite" else "append",
                    schema_mode="overwrite" if job.mode == "overwrite" else None, **options)
    _seal_tree(job.target)
    return TableCommit(job.mode, table.version())


def _create(job: TableJob, options: dict) -> TableCommit:
    _remove_stale_temps(job.target)
    temp, lock_fd = _make_temp_dir(job.target)
    try:
        write_deltalake(os.fspath(temp), job.reader, mode="error", name=job.target.name,
                        description="exported by ldw", **options)
        _write_manifest(temp / TABLE_MARKER, job.new_marker("delta"))
        _seal_tree(temp)
        _publish(temp, job.target, overwrite=False, owner=job.owner)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    finally:
        os.close(lock_fd)
    return TableCommit("create", 0)
