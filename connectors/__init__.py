"""Source connectors: one module per source family, chosen by the URL's dialect.

The registry is data: dialect name -> connector class. Each connector class owns its dialect's
facts (``Connector.dialect``: error codes, cancel statement, sqlglot name, mask SQL) and
capabilities (``supports_distributed_reads``); a new dialect is one module plus its line here.
A source may force the generic DBAPI path with ``transport = "dbapi"`` in its
``[sources.NAME]`` table; that path borrows the registered connector's dialect facts.
"""

from __future__ import annotations

from sqlglot.dialects.dialect import Dialect as SqlglotDialect

from ldw.config import SourceConfig

from .base import ColumnPlan, Connector, ReadPlan, SourceQuery
from .dialect import Dialect
from .generic import FAMILY_DIALECTS, GenericConnector
from .mysql import MySQLConnector
from .postgres import PostgresConnector
from .sqlite import SQLiteConnector

__all__ = ["REGISTRY", "ColumnPlan", "Connector", "Dialect", "ReadPlan", "SourceQuery",
           "connector_for", "dialect_for", "sqlglot_name"]

REGISTRY: dict[str, type[Connector]] = {
    "postgresql": PostgresConnector,
    "mysql": MySQLConnector,
    "mariadb": MySQLConnector,
    "sqlite": SQLiteConnector,
}


def connector_for(source: SourceConfig, *, batch_rows: int = 131072) -> Connector:
    """The connector for a source: the fastest one for its dialect, or the generic path."""
    cls = REGISTRY.get(source.dialect)
    if cls is None or source.options.get("transport") == "dbapi":
        return GenericConnector(source, batch_rows=batch_rows, dialect=dialect_for(source.dialect))
    return cls(source, batch_rows=batch_rows)


def dialect_for(name: str) -> Dialect | None:
    """The facts of a SQLAlchemy dialect (by backend name), from the connector that owns them."""
    cls = REGISTRY.get(name)
    return cls.dialect if cls is not None else FAMILY_DIALECTS.get(name)


def sqlglot_name(name: str | None) -> str | None:
    """The sqlglot dialect for a SQLAlchemy dialect name (a sqlglot name is returned as is;
    None for a name neither knows: sqlglot's default dialect)."""
    dialect = dialect_for(name or "")
    if dialect is not None:
        return dialect.sqlglot
    return name if name in SqlglotDialect.classes else None
