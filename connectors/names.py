"""How each backend resolves a table name, and which relations are its own system catalog.

A query names a relation; the source decides which one it reads (search_path, case folding,
the current database). ldw asks the source the same question before a ``sql=`` query runs, so
policies are looked up for what the source will really read. Kept per SQLAlchemy backend, so a
source read through the generic connector resolves exactly as through its native one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa

__all__ = ["NAME_RULES", "NameRules", "Relation", "inspector_resolve"]


@dataclass(frozen=True)
class Relation:
    """A relation as the source itself resolves a name: its exact schema and name."""

    schema: str | None
    name: str
    kind: str  # "table", "view", ...


# (connection, schema or None, name) -> Relation, or None when nothing readable has that name
Resolver = Callable[[sa.Connection, str | None, str], Relation | None]


@dataclass(frozen=True)
class NameRules:
    """One backend's rules: how a name resolves, and what is its system catalog."""

    resolve: Resolver
    is_system: Callable[[str | None, str], bool]


def _pg_ident(name: str) -> str:
    """An exact identifier for to_regclass's parser (its argument travels as a bound value)."""
    return '"' + name.replace('"', '""') + '"'


# pg_class.relkind of what a query may read: table, partitioned table, view, materialized view,
# foreign table (sequences, indexes, composite types and TOAST tables are not data to map)
_PG_READABLE = {"r": "table", "p": "table", "v": "view", "m": "materialized view",
                "f": "foreign table"}
_PG_RESOLVE = sa.text(
    "select n.nspname, c.relname, c.relkind from pg_catalog.pg_class c "
    "join pg_catalog.pg_namespace n on n.oid = c.relnamespace "
    "where c.oid = pg_catalog.to_regclass(:name)")


def _pg_resolve(conn: sa.Connection, schema: str | None, name: str) -> Relation | None:
    """PostgreSQL itself resolves: ``to_regclass`` with the connection's search_path (where
    pg_catalog and pg_temp come first for unqualified names)."""
    qualified = ".".join(_pg_ident(p) for p in (schema, name) if p is not None)
    row = conn.execute(_PG_RESOLVE, {"name": qualified}).first()
    if row is None or row[2] not in _PG_READABLE:
        return None
    return Relation(row[0], row[1], _PG_READABLE[row[2]])


def _pg_system(schema: str | None, name: str) -> bool:
    """pg_catalog, information_schema and every pg_* schema (TOAST, temporary tables)."""
    return schema is not None and (schema == "information_schema" or schema.startswith("pg_"))


_MYSQL_RESOLVE = sa.text(
    "select table_schema, table_name, table_type, @@lower_case_table_names, database() "
    "from information_schema.tables "
    "where table_schema = coalesce(:schema, database()) and table_name = :name")


def _mysql_resolve(conn: sa.Connection, schema: str | None, name: str) -> Relation | None:
    """As the server resolves: an unqualified name is in the connection's database, and names
    compare by ``lower_case_table_names`` (information_schema compares without regard to
    case, so its candidates are filtered exactly here)."""
    for db, table, kind, fold, _ in conn.execute(_MYSQL_RESOLVE,
                                                 {"schema": schema, "name": name}):
        def same(a: str, b: str, fold: object = fold) -> bool:
            return a.casefold() == b.casefold() if fold else a == b

        if same(table, name) and (schema is None or same(db, schema)):
            return Relation(db, table, "view" if kind == "VIEW" else "table")
    return None


_MYSQL_SYSTEM = frozenset({"information_schema", "mysql", "performance_schema", "sys"})


def _mysql_system(schema: str | None, name: str) -> bool:
    return schema is not None and schema.lower() in _MYSQL_SYSTEM


def inspector_resolve(conn: sa.Connection, schema: str | None, name: str, *,
                      fold: bool = False) -> Relation | None:
    """Any SQLAlchemy dialect: the inspector's tables and views of the schema, by exact name
    (``fold``: the dialect compares names without regard to case, as SQLite does)."""
    inspector = sa.inspect(conn)
    target = schema if schema is not None else inspector.default_schema_name
    try:
        found = [(n, "table") for n in inspector.get_table_names(schema=target)]
        found += [(n, "view") for n in inspector.get_view_names(schema=target)]
    except (sa.exc.NoSuchTableError, sa.exc.OperationalError, sa.exc.ProgrammingError):
        return None
    matches = [f for f in found if f[0] == name]
    if not matches and fold:
        matches = [f for f in found if f[0].casefold() == name.casefold()]
    return Relation(target, *matches[0]) if len(matches) == 1 else None


def _sqlite_resolve(conn: sa.Connection, schema: str | None, name: str) -> Relation | None:
    return inspector_resolve(conn, schema, name, fold=True)


def _sqlite_system(schema: str | None, name: str) -> bool:
    """SQLite reserves every name starting with ``sqlite_`` for its own tables."""
    return name.lower().startswith("sqlite_")


def _generic_system(schema: str | None, name: str) -> bool:
    return schema is not None and schema.lower() == "information_schema"


NAME_RULES: dict[str, NameRules] = {
    "postgresql": NameRules(_pg_resolve, _pg_system),
    "mysql": NameRules(_mysql_resolve, _mysql_system),
    "mariadb": NameRules(_mysql_resolve, _mysql_system),
    "sqlite": NameRules(_sqlite_resolve, _sqlite_system),
}
GENERIC_RULES = NameRules(inspector_resolve, _generic_system)
