"""Any SQLAlchemy dialect: a batched DBAPI cursor, typed by the reflected SQLAlchemy types.

Slower than the Arrow-native drivers (values pass through Python objects) but exact for every
type SQLAlchemy reflects; result columns SQLAlchemy cannot type are read as text. Where
SQLAlchemy's result processing would change a value (MySQL TIME folded into a time of day, BIT
turned into an int, DOUBLE into a rounded Decimal, SET into a Python set, JSON parsed), the plan
reads the driver's own value or the source's text form instead.

A value that cannot become its column's Arrow type (NaN in a decimal column, PostgreSQL
'24:00:00' or 'infinity', which psycopg cannot load) raises ``UnsupportedType`` naming the
column and the value; finding it is only done once building the column's array has failed.
"""

from __future__ import annotations

import contextlib
import decimal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import types as sat
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine

from ldw.config import SourceConfig

from .base import ColumnPlan, Connector, ReadPlan
from .convert import convert_batch, target_schema, unsupported_value
from .dialect import GENERIC_DIALECT, Dialect
from .fan_in import Interrupt

__all__ = ["FAMILY_DIALECTS", "GenericConnector", "Unloadable", "arrow_type_for"]

# Dialects only the generic connector reads (no connector of their own), by SQLAlchemy backend
# name. A family with its own connector lends that connector's ``dialect`` (connector_for).
FAMILY_DIALECTS: dict[str, Dialect] = {
    "mssql": Dialect("mssql", sqlglot="tsql"),
    "oracle": Dialect("oracle", sqlglot="oracle"),
    "duckdb": Dialect("duckdb", sqlglot="duckdb"),
}

# Types whose SQLAlchemy result processing would change the value, checked before the generic
# table: (type, Arrow type, rewrite, note). "driver_value" keeps the DBAPI driver's own value
# (PyMySQL: bytes for BIT, a signed timedelta for TIME), "text" asks the source for its text form.
EXACT_TYPES: list[tuple[type, pa.DataType, str, str | None]] = [
    (mysql.BIT, pa.binary(), "driver_value", "BIT as big-endian bytes"),
    (mysql.TIME, pa.duration("us"), "driver_value",
     "TIME is a signed duration (-838h..838h): stored as duration[us]"),
    (mysql.SET, pa.string(), "text", None),  # members comma-joined, as the server prints them
    (sat.Uuid, pa.string(), "text", None),  # the canonical text form
    (sat.JSON, pa.json_(), "text", None),  # the document text (jsonb: as the server normalizes)
]

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
    (sat.JSON, pa.json_()),
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


@dataclass(frozen=True)
class Unloadable:
    """A source value the DBAPI driver has no Python value for, kept as the source's text."""

    text: str


def _lenient_loader(base: type) -> type:
    """A psycopg loader that returns ``Unloadable`` where ``base`` fails (e.g. '24:00:00')."""
    import psycopg  # only for PostgreSQL sources
    from psycopg.adapt import Loader

    class Lenient(Loader):
        def __init__(self, oid: int, context: Any = None) -> None:
            super().__init__(oid, context)
            self._inner = base(oid, context)

        def load(self, data: Any) -> Any:
            try:
                return self._inner.load(data)
            except psycopg.DataError:
                return Unloadable(bytes(data).decode(errors="replace"))

    Lenient.__name__ = f"Lenient{base.__name__}"
    return Lenient


def _psycopg_setup(dbapi_connection: Any, _record: Any) -> None:
    """PostgreSQL has dates and times Python has not ('infinity', '24:00:00', year 10000)."""
    from psycopg.pq import Format

    adapters = dbapi_connection.adapters
    for name in ("date", "time", "timetz", "timestamp", "timestamptz"):
        info = adapters.types.get(name)
        if info is not None:
            base = adapters.get_loader(info.oid, Format.TEXT)
            adapters.register_loader(info.oid, _lenient_loader(base))


# DBAPI driver name -> set-up run on each new connection.
DRIVER_SETUP = {"psycopg": _psycopg_setup}


def _psycopg_cancel(connection: Any) -> None:
    connection.cancel_safe(timeout=5.0)


def _no_cancel() -> None:
    raise NotImplementedError("the DBAPI driver cannot cancel a query from another thread")


# DBAPI driver name -> its thread-safe cancel of a connection's running query. Drivers without
# one (PyMySQL) are cancelled by the read's tag (Connector.cancel_tagged: KILL QUERY).
DRIVER_CANCEL: dict[str, Callable[[Any], None]] = {"psycopg": _psycopg_cancel}

_ARRAY_ERRORS = (pa.ArrowException, TypeError, ValueError, OverflowError)


def _value_problem(values: Sequence[Any], arrow_type: pa.DataType) -> str:
    """Say which value of a column failed to become ``arrow_type`` (the error path only)."""
    for value in values:
        if value is None:
            continue
        try:
            pa.array([value], type=arrow_type)
        except _ARRAY_ERRORS:
            if isinstance(value, Unloadable):
                return (f"holds {value.text[:60]!r}, which the DBAPI driver cannot turn into a "
                        f"Python value for {arrow_type}")
            if isinstance(value, decimal.Decimal) and not value.is_finite():
                text = "NaN" if value.is_nan() else "Infinity" if value > 0 else "-Infinity"
                return f"holds {text}, which Arrow's {arrow_type} cannot represent"
            shown = repr(value)
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            return (f"holds {shown} ({type(value).__name__}), which cannot become Arrow's "
                    f"{arrow_type}")
    return f"holds a value that cannot become Arrow's {arrow_type}"


def _source_type(sa_type: sat.TypeEngine) -> str:
    if isinstance(sa_type, sat.NullType):
        return "untyped"
    if isinstance(sa_type, sat.Numeric) and not isinstance(sa_type, sat.Float):
        return str(sa_type).lower().replace(", ", ",")  # numeric(10,2), as the other paths say
    return str(sa_type)


class GenericConnector(Connector):
    """Any SQLAlchemy dialect over its DBAPI driver; ``dialect``: the facts of the source's
    dialect (default: the family's entry in ``FAMILY_DIALECTS``, or generic ones)."""

    family: ClassVar[str] = "generic"
    transport: ClassVar[str] = "dbapi"

    def __init__(self, source: SourceConfig, *, batch_rows: int = 131072,
                 dialect: Dialect | None = None) -> None:
        super().__init__(source, batch_rows=batch_rows)
        if dialect is None and type(self).dialect is GENERIC_DIALECT:
            dialect = FAMILY_DIALECTS.get(source.dialect)
        if dialect is not None:
            self.dialect = dialect  # this instance's, over the class's


    def sqlalchemy_url(self) -> sa.URL:
        url = self.url_with_password()
        driver = DEFAULT_DRIVERS.get(url.drivername)
        return url.set(drivername=f"{url.drivername}+{driver}") if driver else url
    SQL_REWRITES: ClassVar[dict[str, Any]] = {
        "text": lambda column: sa.cast(column, sa.Text),
        # same SQL, no SQLAlchemy result processing: the DBAPI driver's value as it is
        "driver_value": lambda column: sa.type_coerce(column, sat.NullType()),
    }

    def configure_engine(self, engine: Engine) -> None:
        setup = DRIVER_SETUP.get(engine.dialect.driver)
        if setup is not None:
            sa.event.listen(engine, "connect", setup)

    def plan_columns(self, statement: sa.Select) -> list[ColumnPlan]:
        return [self._plan(column) for column in statement.selected_columns]

    def _plan(self, column: sa.ColumnElement) -> ColumnPlan:
        sa_type = column.type
        source = _source_type(sa_type)
        for cls, arrow, rewrite, note in EXACT_TYPES:
            if isinstance(sa_type, cls):
                return ColumnPlan(column.name, source, arrow, rewrite=rewrite, note=note)
        if isinstance(sa_type, sat.Time) and sa_type.timezone:  # time64 has no offset
            return ColumnPlan(column.name, source, pa.string(), rewrite="text",
                              note="time with time zone kept as its text form")
        if isinstance(sa_type, sat.Float) and sa_type.asdecimal:
            # e.g. MySQL DOUBLE: SQLAlchemy would round the driver's float to a Decimal
            return ColumnPlan(column.name, source, pa.float64(), rewrite="driver_value")
        arrow, reason = arrow_type_for(sa_type)
        if arrow is None:
            return ColumnPlan(column.name, source, pa.string(), rewrite="text",
                              note=f"{reason}: kept as its text form")
        if isinstance(sa_type, sat.CHAR) and not isinstance(sa_type, sat.NCHAR | sat.VARCHAR):
            return ColumnPlan(column.name, source, arrow, convert="rtrim",
                              note="char(n): trailing blanks trimmed, as the source compares them")
        return ColumnPlan(column.name, source, arrow)

    def read_connections(self, partitions: int) -> tuple[int, int]:
        return 1, 1  # partitions run in turn on the snapshot's connection

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
                  interrupt: Interrupt) -> Iterator[pa.RecordBatch]:
        schema = target_schema(plan.columns)
        source = self.source.name
        if interrupt.requested:
            return
        with self.guard("reading"):
            # Through SQLAlchemy, so its result processors turn driver values into Python ones.
            result = conn.execute(query.statement) if query.statement is not None \
                else conn.exec_driver_sql(query.sql, query.params)
            try:
                while not interrupt.requested and (rows := result.fetchmany(self.batch_rows)):
                    columns = list(zip(*rows, strict=True))
                    batch = pa.RecordBatch.from_arrays(
                        [self._array(values, column, field) for values, column, field in
                         zip(columns, plan.columns, schema, strict=True)], schema=schema)
                    yield convert_batch(batch, plan.columns, schema, source=source)
            finally:
                result.close()

    def _array(self, values: Sequence[Any], plan: ColumnPlan, field: pa.Field) -> pa.Array:
        """One column of a batch; a value Arrow cannot take raises UnsupportedType."""
        try:
            return pa.array(values, type=field.type)
        except _ARRAY_ERRORS:
            raise unsupported_value(
                self.source.name, plan, _value_problem(values, field.type),
                "filter those rows out in where= or map it with sql= and a cast "
                "(e.g. CAST(v AS text))") from None

    def _cancel_hook(self, conn: sa.Connection) -> Callable[[], object]:
        """The DBAPI driver's own thread-safe cancel of ``conn``'s running query, if it has one;
        otherwise the read's tag (cancel_tagged) is the way."""
        cancel = DRIVER_CANCEL.get(self.engine.dialect.driver)
        raw = conn.connection.dbapi_connection
        return (lambda: cancel(raw)) if cancel is not None else _no_cancel

    def _produce(self, plan: ReadPlan, snapshot: sa.Connection | None, queries: list,
                 interrupt: Interrupt) -> Iterator[pa.RecordBatch]:
        """``queries`` in turn on one connection (a worker thread of ``fan_in``)."""
        with contextlib.ExitStack() as stack:
            conn = snapshot
            if conn is None:
                with self.guard("connecting", connecting=True):
                    conn = stack.enter_context(self.engine.connect())
            stack.enter_context(interrupt.hook(self._cancel_hook(conn)))
            for query in queries:
                yield from self._read_one(query, plan, conn, interrupt)

    def stream(self, plan: ReadPlan, cancel: threading.Event,
               snapshot: sa.Connection | None = None) -> Iterator[pa.RecordBatch]:
        if snapshot is not None:  # one connection: partitions in turn, all in its snapshot
            groups = [plan.queries]
        else:
            groups = [[query] for query in plan.queries]
        producers = [(lambda interrupt, g=group: self._produce(plan, snapshot, g, interrupt))
                     for group in groups]
        yield from self.read_in_workers(producers, cancel, tag=plan.tag)
