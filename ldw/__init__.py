"""ldw: map RDBMS tables into Arrow datasets without ingestion; cache them; query them lazily."""

from ldw.client import Dataset, Warehouse, connect
from ldw.errors import (
    AccessDenied,
    Cancelled,
    CapacityExceeded,
    ConfigError,
    InvalidMapping,
    LdwError,
    PolicyViolation,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
    UnknownDataset,
    UnknownSource,
    UnknownTable,
    UnsupportedType,
)
from ldw.store import Progress

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "Cancelled",
    "CapacityExceeded",
    "ConfigError",
    "Dataset",
    "InvalidMapping",
    "LdwError",
    "PolicyViolation",
    "Progress",
    "SourceError",
    "SourceTimeout",
    "SourceUnavailable",
    "UnknownDataset",
    "UnknownSource",
    "UnknownTable",
    "UnsupportedType",
    "Warehouse",
    "connect",
]
