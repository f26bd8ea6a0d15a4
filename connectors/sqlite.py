"""SQLite: ADBC moves the rows; declared column types decide the Arrow type.

SQLite has no DATE or exact DECIMAL storage: a DATE column holds text and a NUMERIC column holds
REAL or INTEGER values, so those are declared as such in the plan's notes. Untyped result columns
are read as text so a batch never changes type half-way.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import adbc_driver_sqlite.dbapi as adbc_sqlite
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import types as sat

from .base import ColumnPlan, ReadPlan
from .convert import convert_batch, target_schema
from .dialect import STANDARD_UNAVAILABLE, Dialect, ErrorCode, sqlstate_of
from .fan_in import Interrupt
from .generic import GenericConnector

__all__ = ["SQLITE", "SQLiteConnector"]


def _result_code(exc: BaseException) -> ErrorCode | None:
    """The primary SQLite result code of a sqlite3 error (or a SQLSTATE, from ADBC)."""
    sqlstate = sqlstate_of(exc)
    if sqlstate is not None:
        return sqlstate
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


SQLITE = Dialect(
    "sqlite",
    sqlglot="sqlite",
    error_code=_result_code,
    unavailable_codes=STANDARD_UNAVAILABLE | {10, 14},  # SQLITE_IOERR, SQLITE_CANTOPEN
    read_only="PRAGMA query_only = ON",
    # SQLite has no char_length, right or concat
    text_length=sa.func.length,
    text_right=lambda text, keep: sa.func.substr(text, -keep),
    concat=lambda *parts: _concat(parts),
)


def _concat(parts: tuple) -> sa.ColumnElement:
    joined = sa.literal(parts[0]) if isinstance(parts[0], str) else parts[0]
    for part in parts[1:]:
        joined = joined + part
    return joined


class SQLiteConnector(GenericConnector):
    family: ClassVar[str] = "sqlite"
    transport: ClassVar[str] = "adbc"
    dialect: Dialect = SQLITE
    counts_connections: ClassVar[bool] = False  # a file: no server whose connections to spare
    SQL_REWRITES: ClassVar[dict[str, Any]] = {
        "text": lambda column: sa.cast(column, sa.Text),
        "real": lambda column: sa.cast(column, sa.Float),
        "integer": lambda column: sa.cast(column, sa.Integer),
    }

    def _plan(self, column: sa.ColumnElement) -> ColumnPlan:
        sa_type, name = column.type, column.name
        if isinstance(sa_type, sat.Boolean | sat.Integer):
            return ColumnPlan(name, str(sa_type), pa.int64(), rewrite="integer",
                              note="SQLite INTEGER as int64" if isinstance(sa_type, sat.Boolean)
                              else None)
        if isinstance(sa_type, sat.Float | sat.Numeric):  # REAL, FLOAT, NUMERIC, DECIMAL
            note = None if isinstance(sa_type, sat.Float) else \
                "SQLite stores NUMERIC/DECIMAL as REAL: not exact in the source"
            return ColumnPlan(name, str(sa_type), pa.float64(), rewrite="real", note=note)
        if isinstance(sa_type, sat._Binary):
            return ColumnPlan(name, str(sa_type), pa.binary())
        if isinstance(sa_type, sat.Date | sat.DateTime | sat.Time):
            return ColumnPlan(name, str(sa_type), pa.string(), rewrite="text",
                              note="SQLite keeps dates and times as text")
        source = "untyped" if isinstance(sa_type, sat.NullType) else str(sa_type)
        return ColumnPlan(name, source, pa.string(), rewrite="text")

    def _path(self) -> str:
        return self.source.url.database or ":memory:"

    def compile(self, statement: sa.Select, *, literal: bool):
        return super().compile(statement, literal=True)

    def stream(self, plan: ReadPlan, cancel: threading.Event,
               snapshot: sa.Connection | None = None) -> Iterator[pa.RecordBatch]:
        """Partitions in turn inside one read transaction: one consistent state of the file.

        ADBC's SQLite driver cannot cancel a statement (NOT_IMPLEMENTED): an interrupted read
        returns at once and its worker stops at the next batch, closing its own connection.
        """
        yield from self.read_in_workers([lambda interrupt: self._read(plan, interrupt)], cancel)

    def _read(self, plan: ReadPlan, interrupt: Interrupt) -> Iterator[pa.RecordBatch]:
        schema = target_schema(plan.columns)
        with self.guard("reading"), contextlib.closing(
            adbc_sqlite.connect(self._path(), autocommit=False)
        ) as conn, conn.cursor() as cursor, interrupt.hook(cursor.adbc_cancel):
            # ADBC's default of 1024 rows would leave a cached version in ~1000 tiny chunks
            cursor.adbc_statement.set_options(
                **{"adbc.sqlite.query.batch_rows": str(self.batch_rows)})
            if self.dialect.read_only:
                cursor.execute(self.dialect.read_only)
            for query in plan.queries:
                if interrupt.requested:
                    return
                cursor.execute(query.sql)
                for batch in cursor.fetch_record_batch():
                    if interrupt.requested:
                        return
                    yield convert_batch(batch, plan.columns, schema, source=self.source.name)
            conn.rollback()
