"""Verification of an export: every file present, unchanged and consistent with the manifest."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq

from ldw.errors import ExportVerificationError
from ldw.export.atomic import _data_files
from ldw.export.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    TABLE_MARKER,
    ExportedFile,
    _content_checksum,
    _sha256,
    read_marker,
)
from ldw.export.table_types import LABELS


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


def _read_manifest(root: Path, problems: list[Problem]) -> dict[str, Any] | None:
    file = root / MANIFEST_NAME
    if not root.is_dir():
        problems.append(Problem("missing", str(root), "no export directory at this path"))
        return None
    try:
        body = json.loads(file.read_text("utf-8"))
    except FileNotFoundError:
        table = read_marker(root, TABLE_MARKER)
        problems.append(Problem("manifest", MANIFEST_NAME, (
            f"an ldw export in the {LABELS.get(table.get('format'), '?')} table format, not "
            "Parquet files: its own log lists its files; read it with its library") if table else
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
