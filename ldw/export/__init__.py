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

``format="delta"`` or ``"iceberg"`` writes a table instead, one commit per export, with the
provenance as each commit's lineage (:mod:`~ldw.export.lake`).

The package, one job per module: :mod:`~ldw.export.stream` (the input stream and argument
checks), :mod:`~ldw.export.parquet` (Parquet writing), :mod:`~ldw.export.atomic` (temp
directories, locks, atomic publish), :mod:`~ldw.export.manifest` (the manifest format),
:mod:`~ldw.export.verify` (verification), :mod:`~ldw.export.table` (``export_table``, tying them
together), :mod:`~ldw.export.roots` (where a server may write a remote user's export),
:mod:`~ldw.export.lake` (Delta and Iceberg tables: :mod:`~ldw.export.delta`,
:mod:`~ldw.export.iceberg`) and :mod:`~ldw.export.table_types` (the types those store).
"""

from ldw.errors import ExportError, ExportVerificationError
from ldw.export.lake import TableExportResult
from ldw.export.manifest import MANIFEST_NAME, ExportedFile, export_owner
from ldw.export.stream import FORMATS, MODES, check_format
from ldw.export.table import ExportResult, export_table
from ldw.export.verify import Problem, VerifyResult, verify_export

__all__ = [
    "FORMATS",
    "MANIFEST_NAME",
    "MODES",
    "ExportError",
    "ExportResult",
    "ExportVerificationError",
    "ExportedFile",
    "Problem",
    "TableExportResult",
    "VerifyResult",
    "check_format",
    "export_owner",
    "export_table",
    "verify_export",
]
