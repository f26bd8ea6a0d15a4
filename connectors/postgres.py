"""PostgreSQL: ADBC (binary COPY) moves the rows; psycopg holds the snapshot and reflects.

Partitions import one exported snapshot (``REPEATABLE READ`` + ``SET TRANSACTION SNAPSHOT``), so
a parallel read sees exactly what a single query would have seen.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import adbc_driver_postgresql.dbapi as adbc_pg
import pyarrow as pa
import sqlalchemy as sa

from .base import ColumnPlan, Connector, ReadPlan
from .convert import convert_batch, target_schema
from .fan_in import fan_in

__all__ = ["PostgresConnector"]

_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f]+-[0-9A-Fa-f]+(-[0-9]+)?$")

# PostgreSQL type name -> (SQL rewrite, conversion, stored Arrow type or None = as delivered, note)
PG_TYPES: dict[str, tuple[str | None, str | None, pa.DataType | None, str | None]] = {
    "bpchar": (None, "rtrim", pa.string(),
               "char(n): trailing blanks trimmed, as PostgreSQL compares them"),
    "interval": (None, None, None,
                 "interval as month_day_nano; polars reads it as a struct(months, days, ns)"),
    "money": ("numeric", "decimal_from_text", pa.decimal128(38, 2),
              "money as decimal(38,2), currency symbol dropped"),
}


def _decimal_type(typmod: int) -> pa.DataType | None:
    if typmod < 0:
        return None
    precision, scale = (typmod - 4) >> 16, (typmod - 4) & 0xFFFF
    return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)


class PostgresConnector(Connector):
    family: ClassVar[str] = "postgresql"
    transport: ClassVar[str] = "adbc"
    SQL_REWRITES: ClassVar[dict[str, Any]] = {
        "text": lambda column: sa.cast(column, sa.Text),
        "numeric": lambda column: sa.cast(column, sa.Numeric),
        **{f"scaled_{scale}": (lambda column, s=scale: sa.cast(
            column * sa.literal_column(str(10**s)), sa.BigInteger)) for scale in range(19)},
    }

    def sqlalchemy_url(self) -> sa.URL:
        return self.url_with_password().set(drivername="postgresql+psycopg")

    def _libpq_uri(self) -> str:
        url = self.url_with_password().set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def row_estimates(self, schema: str | None) -> dict[str, int]:
        query = sa.text(
            "select c.relname, c.reltuples::bigint from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = :schema and c.relkind in ('r', 'p', 'm')"
        )
        with self.engine.connect() as conn:
            return {name: max(int(n), 0) for name, n in conn.execute(query, {"schema": schema})}

    def plan_columns(self, statement: sa.Select) -> list[ColumnPlan]:
        sql = self.compile(statement, literal=True).sql
        with self.guard("reading the result schema"), contextlib.closing(
            adbc_pg.connect(self._libpq_uri())
        ) as conn, conn.cursor() as cursor:
            schema = cursor.adbc_execute_schema(sql)
        return [self._plan(field) for field in schema]

    def _plan(self, field: pa.Field) -> ColumnPlan:
        meta = field.metadata or {}
        pg_type = meta.get(b"POSTGRESQL:type", b"?").decode()
        typmod = int(meta.get(b"POSTGRESQL:typmod", b"-1"))
        if pg_type == "numeric":
            decimal = _decimal_type(typmod)
            if decimal is None:
                return ColumnPlan(field.name, "numeric", pa.string(), convert="text",
                                  note="unbounded NUMERIC kept as exact decimal text; "
                                  "cast it to numeric(p,s) in sql= for a decimal column")
            source = f"numeric({decimal.precision},{decimal.scale})"
            if decimal.precision <= 18:  # value * 10^scale fits int8: binary, no text parsing
                return ColumnPlan(field.name, source, decimal, rewrite=f"scaled_{decimal.scale}",
                                  convert="decimal_from_scaled_int")
            return ColumnPlan(field.name, source, decimal, convert="decimal_from_text")
        if pg_type in PG_TYPES:
            rewrite, convert, arrow_type, note = PG_TYPES[pg_type]
            return ColumnPlan(field.name, pg_type, arrow_type or field.type, rewrite=rewrite,
                              convert=convert, note=note)
        arrow_type = field.type
        if isinstance(arrow_type, pa.OpaqueType):
            return ColumnPlan(field.name, pg_type, pa.string(), convert="text",
                              note=f"PostgreSQL {pg_type} kept as its text form")
        if pa.types.is_list(arrow_type) and isinstance(arrow_type.value_type, pa.OpaqueType):
            return ColumnPlan(field.name, pg_type, pa.list_(pa.string()), convert="cast",
                              note=f"{pg_type} elements kept as text")
        return ColumnPlan(field.name, pg_type, arrow_type)

    # -- snapshot and reading -----------------------------------------------------------------
    @contextlib.contextmanager
    def snapshot(self, tables: list, *, partitioned: bool) -> Iterator[sa.Connection]:
        """A REPEATABLE READ transaction whose snapshot the partition readers import."""
        with self.guard("opening a snapshot"):
            conn = self.engine.connect().execution_options(isolation_level="REPEATABLE READ")
        try:
            with self.guard("opening a snapshot"):
                conn.begin()
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                token = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar_one()
            conn.info["ldw_snapshot"] = token
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()

    def _read_one(self, sql: str, snapshot_id: str | None, plan: ReadPlan,
                  cancel: threading.Event) -> Iterator[pa.RecordBatch]:
        schema = target_schema(plan.columns)
        with self.guard("reading"), contextlib.closing(
            adbc_pg.connect(self._libpq_uri(), autocommit=snapshot_id is None)
        ) as conn, conn.cursor() as cursor:
            if snapshot_id is not None:
                if not _SNAPSHOT_ID.match(snapshot_id):
                    raise ValueError("unexpected snapshot id from the server")
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
            cursor.adbc_statement.set_options(
                **{"adbc.postgresql.batch_size_hint_bytes": str(16 << 20)})
            cursor.execute(sql)
            reader = cursor.fetch_record_batch()
            try:
                for batch in reader:
                    if cancel.is_set():
                        cursor.adbc_cancel()
                        return
                    yield convert_batch(batch, plan.columns, schema)
            except BaseException:
                with contextlib.suppress(Exception):
                    cursor.adbc_cancel()
                raise

    def stream(self, plan: ReadPlan, cancel: threading.Event,
               snapshot: sa.Connection | None = None) -> Iterator[pa.RecordBatch]:
        token = snapshot.info.get("ldw_snapshot") if snapshot is not None else None
        producers = [
            (lambda q=query: self._read_one(q.sql, token, plan, cancel)) for query in plan.queries
        ]
        yield from fan_in(producers, cancel)
