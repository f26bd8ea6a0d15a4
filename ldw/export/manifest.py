"""The export manifest: its name, format, file entries and checksums, shared by writer and verifier.

``_ldw_manifest.json`` sits at an export's root; :mod:`ldw.export.table` writes it and
:mod:`ldw.export.verify` checks a directory against it. A Delta or Iceberg export holds
``_ldw_table.json`` instead (:mod:`ldw.export.lake`): its format and owner, as the lineage of
each commit lives in the table's own commit metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

MANIFEST_NAME = "_ldw_manifest.json"
TABLE_MARKER = "_ldw_table.json"
EXPORT_MARKERS = (MANIFEST_NAME, TABLE_MARKER)   # a folder holding one of these is an export
FORMAT_VERSION = 1
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

    def __repr__(self) -> str:
        from ldw.export.present import file_text

        return f"<ExportedFile {file_text(self)}>"


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


def read_marker(path: str | os.PathLike[str], name: str) -> dict[str, Any] | None:
    """The JSON object in ``path/name`` (a manifest or table marker), None if unreadable."""
    try:
        with open(Path(path) / name, "rb") as handle:
            body = json.loads(handle.read(16 * 2**20))
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def export_owner(path: str | os.PathLike[str]) -> str | None:
    """The ldw user an export at ``path`` was written for (older exports: ``exported_by``)."""
    body = read_marker(path, MANIFEST_NAME) or read_marker(path, TABLE_MARKER)
    if body is None:
        return None
    owner = body.get("export_owner")
    if owner is None and isinstance(body.get("provenance"), dict):
        owner = body["provenance"].get("exported_by")
    return owner if isinstance(owner, str) else None
