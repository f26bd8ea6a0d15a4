"""Source connectors: one module per source family, chosen by the URL's dialect.

The registry is data: dialect name -> connector class. A source may force the generic DBAPI path
with ``transport = "dbapi"`` in its ``[sources.NAME]`` table.
"""

from __future__ import annotations

from ldw.config import SourceConfig

from .base import ColumnPlan, Connector, ReadPlan, SourceQuery
from .generic import GenericConnector
from .mysql import MySQLConnector
from .postgres import PostgresConnector
from .sqlite import SQLiteConnector

__all__ = ["ColumnPlan", "Connector", "ReadPlan", "SourceQuery", "connector_for", "REGISTRY"]

REGISTRY: dict[str, type[Connector]] = {
    "postgresql": PostgresConnector,
    "mysql": MySQLConnector,
    "mariadb": MySQLConnector,
    "sqlite": SQLiteConnector,
}


def connector_for(source: SourceConfig, *, batch_rows: int = 131072) -> Connector:
    """The connector for a source: the fastest one for its dialect, or the generic path."""
    if source.options.get("transport") == "dbapi":
        return GenericConnector(source, batch_rows=batch_rows)
    cls = REGISTRY.get(source.dialect, GenericConnector)
    return cls(source, batch_rows=batch_rows)
