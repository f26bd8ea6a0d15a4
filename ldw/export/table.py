"""``export_table``: one export from input to published directory, cancellable, with progress.

Ties the jobs together: check the input (:mod:`~ldw.export.stream`), write Parquet into a
locked temp directory (:mod:`~ldw.export.parquet`), add the manifest
(:mod:`~ldw.export.manifest`) and publish it in one step (:mod:`~ldw.export.atomic`). Delta
and Iceberg tables take the same checks and stream, then :mod:`~ldw.export.lake`.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa

from ldw.errors import ExportError
from ldw.export import present
from ldw.export.atomic import (
    _check_target,
    _disk_full,
    _make_folders,
    _make_temp_dir,
    _out_of_space,
    _publish,
    _remove_stale_temps,
    _seal_tree,
)
from ldw.export.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    ExportedFile,
    _content_checksum,
    _describe_schema,
    _write_manifest,
)
from ldw.export.parquet import _write_files
from ldw.export.stream import (
    _check_compression,
    _check_mode,
    _check_parquet_types,
    _check_partitioning,
    _json_copy,
    _open_input,
    _plain_schema,
    _Stream,
    check_format,
)
from ldw.types import Progress

log = logging.getLogger("ldw.export")
_T = TypeVar("_T")


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_table` wrote."""

    path: Path
    files: tuple[ExportedFile, ...]
    rows: int
    bytes: int
    seconds: float
    manifest_path: Path

    def __repr__(self) -> str:
        return present.result_text(self)

    def _repr_html_(self) -> str:
        return present.result_html(self)

    def as_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "files": [f.as_json() for f in self.files],
                "rows": self.rows, "bytes": self.bytes, "seconds": self.seconds,
                "manifest_path": str(self.manifest_path)}


def export_table(
    data: pa.Table | pa.RecordBatchReader | Iterable[pa.RecordBatch],
    path: str | os.PathLike[str],
    *,
    manifest: Mapping[str, Any],
    schema: pa.Schema | None = None,
    format: str = "parquet",
    mode: str | None = None,
    partition_by: Sequence[str] | None = None,
    compression: str = "zstd",
    overwrite: bool = False,
    owner: str | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Any:
    """Write ``data`` as Parquet under ``path`` atomically, with ``_ldw_manifest.json``
    (an :class:`ExportResult`), or as a Delta or Iceberg table (``format="delta"`` or
    ``"iceberg"``, a :class:`~ldw.export.lake.TableExportResult`; see :mod:`ldw.export.lake`).

    ``data`` is a Table (memory-mapped tables are streamed, never copied whole), a
    RecordBatchReader, or an iterable of RecordBatches together with ``schema``. ``manifest``
    holds the caller's provenance fields (JSON types only); it is stored as given under
    ``"provenance"``. ``partition_by`` writes hive partitions (``col=value/part-0.parquet``).
    An existing ``path`` is refused unless ``overwrite=True`` and it is itself an ldw export;
    it is then swapped out only once the new export is complete. Ctrl-C cancels cleanly.
    ``owner`` (the ldw user exporting) is recorded in the manifest; an export recorded for
    another owner is never replaced. Files are written ``0600`` and folders ``0700``.
    ``mode`` is ``"error"`` (the default: refuse an existing path), ``"overwrite"`` (what
    ``overwrite=True`` says) or, for tables only, ``"append"``; a table export adds a commit.
    """
    started = time.perf_counter()
    target = Path(os.path.abspath(os.fspath(path)))
    fmt = check_format(format)
    mode = _check_mode(fmt, mode, overwrite)
    provenance = _json_copy(manifest)
    source_schema, batches = _open_input(data, schema)
    partition_by = _check_partitioning(source_schema, partition_by)
    compression = _check_compression(compression)
    if fmt != "parquet":
        from ldw.export.lake import export_lake_table
        from ldw.export.table_types import table_schema

        stream_cancel = threading.Event()
        stream = _Stream(batches, source_schema,
                         table_schema(_plain_schema(source_schema), fmt), stream_cancel)
        return export_lake_table(stream, target, fmt=fmt, mode=mode, lineage=provenance,
                                 partition_by=partition_by, compression=compression,
                                 owner=owner, cancel=stream_cancel, progress=progress,
                                 run=_run_cancellable)
    overwrite = mode == "overwrite"
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


def _run_cancellable(work: Callable[[], _T], cancel: threading.Event,
                     tick: Callable[[], None]) -> _T:
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
