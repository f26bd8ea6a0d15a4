"""ldw: map RDBMS tables into Arrow datasets without ingestion; cache them; query them lazily."""

from ldw.client import Dataset, Warehouse, connect
from ldw.errors import (
    AccessDenied,
    AuditUnavailable,
    Cancelled,
    CapacityExceeded,
    ConfigError,
    DatasetLost,
    ExportError,
    ExportVerificationError,
    InvalidMapping,
    LdwError,
    PolicyViolation,
    ServerUnavailable,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
    UnknownDataset,
    UnknownSource,
    UnknownTable,
    UnsupportedType,
)
from ldw.types import Progress


def verify_export(path: object, *, strict: bool = False) -> object:
    """Check an export against its manifest (see :func:`ldw.export.verify_export`)."""
    from ldw.export import verify_export as verify  # keeps import light

    return verify(path, strict=strict)

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "AuditUnavailable",
    "Cancelled",
    "CapacityExceeded",
    "ConfigError",
    "Dataset",
    "DatasetLost",
    "ExportError",
    "ExportVerificationError",
    "InvalidMapping",
    "LdwError",
    "PolicyViolation",
    "Progress",
    "ServerUnavailable",
    "SourceError",
    "SourceTimeout",
    "SourceUnavailable",
    "UnknownDataset",
    "UnknownSource",
    "UnknownTable",
    "UnsupportedType",
    "Warehouse",
    "connect",
    "verify_export",
]


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext ldw``: the magics live in ldw.extension (the core never imports IPython)."""
    from ldw.extension import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    from ldw.extension import unload_ipython_extension as unload

    unload(ipython)
