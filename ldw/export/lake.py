"""Delta Lake and Apache Iceberg exports: a table other engines read, one commit per export.

``export_table(..., format="delta" | "iceberg")`` lands here after the argument checks it shares
with Parquet. The data streams batch by batch (as for Parquet) into the library's writer:
``deltalake`` (delta-rs) or ``pyiceberg``, both taking a RecordBatchReader.

- **Delta**: ``path`` is the table (``_delta_log/`` and Parquet files). A new table is written
  into a locked hidden sibling and published by one rename (its log holds relative paths).
- **Iceberg**: ``path`` is a folder holding a SQL catalog (``_ldw_catalog.db``, SQLite) with one
  table, ``ldw.<name>`` (``name`` is the folder's name, other characters as ``_``), stored in
  ``path/<name>``. Iceberg records absolute paths, so a new table is written in place and the
  folder removed if that fails. Read it with
  ``SqlCatalog("ldw", uri="sqlite:///PATH/_ldw_catalog.db").load_table("ldw.NAME")``, or any
  engine from ``metadata_location``. Iceberg exports are not partitioned.

Both hold ``_ldw_table.json`` (format and owner: an export recorded for another owner is
never written to). Modes: ``error`` (default) refuses an existing path; ``append`` adds the
rows in a new commit; ``overwrite`` replaces them (and, if the columns changed, the schema) in
a new commit, so readers can still time-travel to the earlier versions. ``append`` or
``overwrite`` to a path that does not exist yet creates the table. Every commit carries the
lineage under ``ldw.lineage`` (JSON: source, SQL sent, version, policy fingerprint, who,
when) in Delta's ``commitInfo`` / Iceberg's snapshot summary. A failed commit to an existing
table leaves the table as it was (the libraries commit atomically), possibly with unreferenced
data files that ``vacuum``/orphan-file clean-up removes. Files are ``0600``, folders ``0700``.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from ldw.errors import AccessDenied, ConfigError, ExportError, LdwError
from ldw.export import present
from ldw.export.atomic import _disk_full, _make_folders, _out_of_space
from ldw.export.manifest import MANIFEST_NAME, TABLE_MARKER, read_marker
from ldw.export.stream import _Stream
from ldw.export.table_types import LABELS
from ldw.types import Progress

log = logging.getLogger("ldw.export")

LINEAGE_KEY = "ldw.lineage"
MARKER_VERSION = 1
_BACKTRACE = re.compile(r"^\s+0: ", re.MULTILINE)


@dataclass(frozen=True)
class TableExportResult:
    """What a Delta or Iceberg export committed."""

    path: Path
    format: str            # "delta" | "iceberg"
    mode: str              # what this export did: "create", "append" or "overwrite"
    version: int           # Delta: the table version; Iceberg: the snapshot id
    rows: int
    bytes: int             # Arrow bytes streamed into the table
    seconds: float
    table: str | None = None              # Iceberg: the table's name in the catalog
    catalog: str | None = None            # Iceberg: the SQL catalog's URI
    metadata_location: str | None = None  # Iceberg: the table's current metadata file

    def __repr__(self) -> str:
        return present.result_text(self)

    def _repr_html_(self) -> str:
        return present.result_html(self)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> TableExportResult:
        return cls(**{**body, "path": Path(body["path"])})


@dataclass(frozen=True)
class TableJob:
    """One write, as a format's writer receives it."""

    target: Path
    reader: pa.RecordBatchReader
    mode: str                         # "error" | "append" | "overwrite"
    existing: dict[str, Any] | None   # the table marker when the table exists, else None
    partition_by: list[str]
    compression: str
    lineage: str                      # the JSON stored under LINEAGE_KEY
    owner: str | None

    def new_marker(self, fmt: str, **extra: Any) -> dict[str, Any]:
        return {"ldw_table": MARKER_VERSION, "format": fmt,
                **({"export_owner": self.owner} if self.owner is not None else {}), **extra}


@dataclass(frozen=True)
class TableCommit:
    """What a writer committed."""

    mode: str
    version: int
    table: str | None = None
    catalog: str | None = None
    metadata_location: str | None = None


class _Writer(Protocol):
    def check_options(self, partition_by: list[str]) -> None: ...
    def write(self, job: TableJob) -> TableCommit: ...


_LIBRARIES = {"delta": ("deltalake", "ldw.export.delta"),
              "iceberg": ("pyiceberg", "ldw.export.iceberg")}


def table_writer(fmt: str) -> _Writer:
    """The writer module of ``fmt``; ConfigError naming the extra when its library is missing."""
    library, module = _LIBRARIES[fmt]
    try:
        importlib.import_module(library)
    except ImportError as exc:
        raise ConfigError(f"{LABELS[fmt]} exports need the {library!r} package, which is not "
                          "installed here; pip install 'ldw[export]'") from exc
    return importlib.import_module(module)  # type: ignore[return-value]


def check_table_target(target: Path, fmt: str, mode: str, owner: str | None
                       ) -> dict[str, Any] | None:
    """The marker of the ldw table at ``target`` that ``mode`` may write to, None if there is
    nothing there yet; ExportError or AccessDenied for anything else."""
    if not target.name or target.name in {".", ".."}:
        raise ConfigError(f"{target} cannot be an export path; name a directory to create")
    if not os.path.lexists(target):
        return None
    if mode == "error":
        raise ExportError(f"{target} already exists; pass mode='append' or mode='overwrite' to "
                          "add a commit to the table there, or choose another path")
    marker = (read_marker(target, TABLE_MARKER)
              if target.is_dir() and not target.is_symlink() else None)
    if marker is None:
        what = ("a Parquet export" if (target / MANIFEST_NAME).is_file()
                else f"not a table exported by ldw (no {TABLE_MARKER})")
        raise ExportError(f"refusing to write into {target}: it is {what}; remove it yourself "
                          "or choose another path")
    if marker.get("format") != fmt:
        other = marker.get("format")
        raise ExportError(f"refusing to write {LABELS[fmt]} into {target}: it is an ldw export "
                          f"in the {LABELS.get(other, '?')} table format; export with "
                          f"format={other!r}, or choose another path")
    recorded = marker.get("export_owner")
    if owner is not None and recorded != owner:
        whose = f"of {recorded!r}" if isinstance(recorded, str) else "with no recorded owner"
        raise AccessDenied(f"refusing to write into {target}: it holds an export {whose}, not "
                           f"one of {owner!r}; choose another path")
    return marker


def export_lake_table(stream: _Stream, target: Path, *, fmt: str, mode: str,
                      lineage: dict[str, Any], partition_by: list[str], compression: str,
                      owner: str | None, cancel: threading.Event,
                      progress: Callable[[Progress], None] | None,
                      run: Callable[[Callable[[], TableCommit], threading.Event,
                                     Callable[[], None]], TableCommit]
                      ) -> TableExportResult:
    """Stream ``stream`` into the ``fmt`` table at ``target`` as one commit (see the module)."""
    started = time.perf_counter()
    writer = table_writer(fmt)
    writer.check_options(partition_by)
    existing = check_table_target(target, fmt, mode, owner)
    try:
        _make_folders(target.parent)
    except OSError as exc:
        raise ExportError(f"cannot create the folder {target.parent}: {exc}") from exc
    job = TableJob(target, pa.RecordBatchReader.from_batches(stream.schema, stream), mode,
                   existing, partition_by, compression,
                   json.dumps(lineage, sort_keys=True, ensure_ascii=False), owner)

    def work() -> TableCommit:
        try:
            return writer.write(job)
        except BaseException as exc:
            if stream.source_error is not None:
                raise stream.source_error from None
            if cancel.is_set():
                raise KeyboardInterrupt("export cancelled") from None
            if isinstance(exc, (LdwError, KeyboardInterrupt)):
                raise
            if _out_of_space(exc):
                raise _disk_full(target) from exc
            raise ExportError(f"writing the {LABELS[fmt]} table at {target} failed: "
                              f"{library_message(exc)}") from exc

    def tick() -> None:
        if progress:
            progress(Progress(target.name, stream.rows, stream.bytes,
                              time.perf_counter() - started))

    commit = run(work, cancel, tick)
    seconds = time.perf_counter() - started
    if progress:
        progress(Progress(target.name, stream.rows, stream.bytes, seconds, done=True))
    log.info("exported %d rows to the %s table %s (%s, version %d) in %.2fs",
             stream.rows, fmt, target, commit.mode, commit.version, seconds)
    return TableExportResult(target, fmt, commit.mode, commit.version, stream.rows,
                             stream.bytes, seconds, commit.table, commit.catalog,
                             commit.metadata_location)


def library_message(exc: BaseException) -> str:
    """A library's error text without the Rust backtrace delta-rs appends."""
    text = str(exc) or type(exc).__name__
    cut = _BACKTRACE.search(text)
    return text[:cut.start()].rstrip() if cut else text
