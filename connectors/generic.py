"""Any SQLAlchemy dialect: a batched DBAPI cursor, typed by the reflected SQLAlchemy types.

Slower than the Arrow-native drivers (values pass through Python objects) but exact for every
type SQLAlchemy reflects; result columns SQLAlchemy cannot type are read as text.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import types as sat

from .base import ColumnPlan, Connector, ReadPlan
from .convert import convert_batch, target_schema
from .fan_in import fan_in

__all__ = ["GenericConnector", "arrow_type_for"]

# SQLAlchemy generic type -> Arrow type; the first matching class wins (subclasses first).
SQLALCHEMY_TYPES: list[tuple[type, pa.DataType]] = [
    (sat.Boolean, pa.bool_()),
    (sat.SmallInteger, pa.int16()),
    (sat.BigInteger, pa.int64()),
    (sat.Integer, pa.int32()),
    (sat.Double, pa.float64()),
    (sat.Float, pa.float64()),
    (sat.DateTime, pa.timestamp("us")),
    (sat.Date, pa.date32()),
    (sat.Time, pa.time64("us")),
    (sat.Interval, pa.duration("us")),
    (sat.LargeBinary, pa.binary()),
    (sat._Binary, pa.binary()),
    (sat.Uuid, pa.string()),
    (sat.JSON, pa.string()),
    (sat.String, pa.string()),
]


def arrow_type_for(sa_type: sat.TypeEngine) -> tuple[pa.DataType | None, str | None]:
    """The exact Arrow type for a SQLAlchemy type, or (None, reason) if there is none."""
    if isinstance(sa_type, sat.Numeric) and not isinstance(sa_type, sat.Float):
        precision, scale = sa_type.precision, sa_type.scale
        if precision is None:
            return None, "unbounded NUMERIC"
        scale = scale or 0
        return (pa.decimal128(precision, scale) if precision <= 38
                else pa.decimal256(precision, scale)), None
    if isinstance(sa_type, sat.Integer) and getattr(sa_type, "unsigned", False):
        width = 64 if isinstance(sa_type, sat.BigInteger) else 16 if isinstance(
            sa_type, sat.SmallInteger) else 32
        return pa.from_numpy_dtype(f"uint{width}"), None
    if isinstance(sa_type, sat.DateTime) and getattr(sa_type, "timezone", False):
        return pa.timestamp("us", tz="UTC"), None
    for cls, arrow in SQLALCHEMY_TYPES:
        if isinstance(sa_type, cls):
            return arrow, None
    return None, f"no Arrow type for {sa_type!r}"


# The DBAPI driver used when a URL names only the dialect (ldw installs these).
DEFAULT_DRIVERS = {"postgresql": "psycopg", "mysql": "pymysql", "mariadb": "pymysql"}


class GenericConnector(Connector):
    family: ClassVar[str] = "generic"
    transport: ClassVar[str] = "dbapi"

    def sqlalchemy_url(self) -> sa.URL:
        url = self.url_with_password()
        driver = DEFAULT_DRIVERS.get(url.drivername)
        return url.set(drivername=f"{url.drivername}+{driver}") if driver else url
    SQL_REWRITES: ClassVar[dict[str, Any]] = {
        "text": lambda column: sa.cast(column, sa.Text),
    }

    def plan_columns(self, statement: sa.Select) -> list[ColumnPlan]:
        return [self._plan(column) for column in statement.selected_columns]

    def _plan(self, column: sa.ColumnElement) -> ColumnPlan:
        sa_type = column.type
        source = str(sa_type) if not isinstance(sa_type, sat.NullType) else "untyped"
        arrow, reason = arrow_type_for(sa_type)
        if arrow is None:
            return ColumnPlan(column.name, source, pa.string(), rewrite="text",
                              note=f"{reason}: kept as its text form")
        if isinstance(sa_type, sat.CHAR) and not isinstance(sa_type, sat.NCHAR | sat.VARCHAR):
            return ColumnPlan(column.name, source, arrow, convert="rtrim",
                              note="char(n): trailing blanks trimmed, as the source compares them")
        return ColumnPlan(column.name, source, arrow)

    @contextlib.contextmanager
    def snapshot(self, tables: list, *, partitioned: bool) -> Iterator[sa.Connection]:
        """One transaction; partitions of the generic path run on this one connection in turn."""
        with self.guard("opening a snapshot"):
            conn = self.engine.connect()
            with contextlib.suppress(Exception):
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            conn.begin()
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()

    def _read_one(self, query, plan: ReadPlan, conn: sa.Connection,
                  cancel: threading.Event) -> Iterator[pa.RecordBatch]:
        schema = target_schema(plan.columns)
        with self.guard("reading"):
            # Through SQLAlchemy, so its result processors turn driver values into Python ones.
            result = conn.execute(query.statement) if query.statement is not None \
                else conn.exec_driver_sql(query.sql, query.params)
            try:
                while rows := result.fetchmany(self.batch_rows):
                    if cancel.is_set():
                        return
                    columns = list(zip(*rows, strict=True))
                    batch = pa.RecordBatch.from_arrays(
                        [pa.array(values, type=field.type) for values, field in
                         zip(columns, schema, strict=True)], schema=schema)
                    yield convert_batch(batch, plan.columns, schema)
            finally:
                result.close()

    def stream(self, plan: ReadPlan, cancel: threading.Event,
               snapshot: sa.Connection | None = None) -> Iterator[pa.RecordBatch]:
        if snapshot is not None:  # one connection: partitions in turn, all in its snapshot
            for query in plan.queries:
                yield from self._read_one(query, plan, snapshot, cancel)
            return
        def produce(query):
            with self.engine.connect() as conn:
                yield from self._read_one(query, plan, conn, cancel)
        yield from fan_in([lambda q=q: produce(q) for q in plan.queries], cancel)
