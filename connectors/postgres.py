"""PostgreSQL: ADBC (binary COPY) moves the rows; psycopg holds the snapshot and reflects.

Partitions import one exported snapshot (``REPEATABLE READ`` + ``SET TRANSACTION SNAPSHOT``), so
a parallel read sees exactly what a single query would have seen.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import adbc_driver_manager
import adbc_driver_manager.dbapi
import adbc_driver_postgresql
import pyarrow as pa
import sqlalchemy as sa

from .base import ColumnPlan, Connector, ReadPlan
from .convert import NAN_SENTINEL, convert_batch, target_schema
from .dialect import STANDARD_UNAVAILABLE, CancelByTag, Dialect, explained_rows
from .fan_in import Interrupt

__all__ = ["POSTGRES", "PostgresConnector"]

_DEFINITION = sa.text(
    "select c.oid::text || '/' || c.xmin::text || '/' || coalesce((select string_agg("
    "a.attname || ':' || a.atttypid::text || ':' || a.atttypmod::text || ':' || a.xmin::text, "
    "',' order by a.attnum) from pg_catalog.pg_attribute a where a.attrelid = c.oid "
    "and a.attnum > 0 and not a.attisdropped), '') "
    "from pg_catalog.pg_class c where c.oid = pg_catalog.to_regclass(:name)")
MIN_PAGES_PER_RANGE = 4096  # 32 MiB: below that one reader is as fast


class _TID(sa.types.UserDefinedType):
    """PostgreSQL's tuple identifier type, for ``ctid`` ranges."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "tid"


POSTGRES = Dialect(
    "postgresql",
    sqlglot="postgres",
    # SQLSTATE: class 08, admin/crash/cannot-connect-now shutdowns, too many connections
    unavailable_codes=STANDARD_UNAVAILABLE | {"57P01", "57P02", "57P03", "53300"},
    timeout_codes=frozenset({"55P03"}),  # lock_not_available (lock_timeout)
    unavailable_words=("could not connect", "server closed", "terminating connection",
                       "timeout expired"),
    timeout_words=("canceling statement due to lock timeout",),
    cancel=CancelByTag("select pid from pg_stat_activity "
                       "where query like :pattern and pid <> pg_backend_pid()",
                       "select pg_cancel_backend({id})"),
    read_only="SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    explain="EXPLAIN (FORMAT JSON) ",
    explain_rows=explained_rows,
)

_SNAPSHOT_ID = re.compile(r"^[0-9A-Fa-f]+-[0-9A-Fa-f]+(-[0-9]+)?$")

# PostgreSQL type name -> (SQL rewrite, conversion, stored Arrow type or None = as delivered, note)
# (array types are named with a leading underscore, as in pg_type)
PG_TYPES: dict[str, tuple[str | None, str | None, pa.DataType | None, str | None]] = {
    "bpchar": (None, "rtrim", pa.string(),
               "char(n): trailing blanks trimmed, as PostgreSQL compares them"),
    "interval": (None, None, None,
                 "interval as month_day_nano; polars reads it as a struct(months, days, ns)"),
    "money": ("numeric", "decimal_from_text", pa.decimal128(38, 2),
              "money as decimal(38,2), currency symbol dropped"),
    # Values PostgreSQL has and Arrow does not ('24:00:00', 'infinity') raise UnsupportedType:
    # a vectorized range check per batch, the values themselves pass untouched.
    "time": (None, "pg_time", None, None),
    "_time": (None, "pg_time", None, None),
    "timestamp": (None, "pg_timestamp", None, None),
    "_timestamp": (None, "pg_timestamp", None, None),
    "timestamptz": (None, "pg_timestamp", None, None),
    "_timestamptz": (None, "pg_timestamp", None, None),
    "date": (None, "pg_date", None, None),
    "_date": (None, "pg_date", None, None),
}


def _scaled(column: sa.ColumnElement, scale: int) -> sa.ColumnElement:
    """numeric(p<=18, s) as the int8 value * 10^s; NaN (which int8 cannot hold) as a sentinel."""
    return sa.case(
        (column == sa.cast(sa.literal("NaN"), sa.Numeric),
         sa.cast(sa.literal(NAN_SENTINEL), sa.BigInteger)),
        else_=sa.cast(column * sa.literal_column(str(10**scale)), sa.BigInteger))


def _adbc_reader(cursor: Any) -> Any:
    """The result stream of an executed ADBC cursor, raising ADBC's own errors.

    ``fetch_record_batch()`` returns the bare pyarrow reader, whose errors are plain
    ``OSError``s with the message only; the driver manager's wrapping reader re-raises them as
    ADBC errors carrying ``sqlstate`` and ``status_code`` (arrow-adbc issue 1523).
    """
    results = getattr(cursor, "_results", None)
    reader = getattr(results, "reader", None)
    return reader if reader is not None else cursor.fetch_record_batch()


def _decimal_type(typmod: int) -> pa.DataType | None:
    if typmod < 0:
        return None
    precision, scale = (typmod - 4) >> 16, (typmod - 4) & 0xFFFF
    return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)


class _Counted:
    """An ADBC connection whose close also frees its slot of the source's connection limit."""

    def __init__(self, connection: Any, release: Callable[[], None],
                 handles: threading.Lock) -> None:
        self._connection = connection
        self._release = release
        self._handles = handles

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def close(self) -> None:
        try:
            with self._handles:  # (see _TypeCatalog.handles)
                self._connection.close()
        finally:
            self._release()


class _TypeCatalog:
    """An ADBC database its connector's connections share. The driver reads the source's
    type catalog (``pg_type``, ``pg_attribute``: as many rows as the source has tables and
    columns) once per database, ~75 ms here and minutes on a large catalog (arrow-adbc issue
    1755); a connection opened from it is one libpq connect. The database closes once the
    connector has let go of it and its last connection has closed."""

    def __init__(self, uri: str) -> None:
        self.database = adbc_driver_postgresql.connect(uri)
        self._holders = 1  # the connector
        self._lock = threading.Lock()
        # the driver counts a database's open connections in a plain integer, so connections
        # opened and closed at once from several threads corrupt it ("Open connection count
        # underflowed"): opening and closing them is serialized (each a libpq connect or close)
        self.handles = threading.Lock()

    def hold(self) -> None:
        with self._lock:
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self.database.close()

    def connect(self, *, autocommit: bool) -> Any:
        """A DB-API connection from the shared database (uses up one :meth:`hold`)."""
        handle = None
        try:
            with self.handles:
                handle = adbc_driver_manager.AdbcConnection(self.database)
            return adbc_driver_manager.dbapi.Connection(_Held(self), handle,
                                                        autocommit=autocommit)
        except BaseException:
            if handle is not None:
                with self.handles:
                    handle.close()
            self.release()
            raise


class _Held:
    """What a DB-API connection closes when it closes: its hold on a :class:`_TypeCatalog`."""

    def __init__(self, catalog: _TypeCatalog) -> None:
        self._catalog: _TypeCatalog | None = catalog

    def close(self) -> None:
        catalog, self._catalog = self._catalog, None
        if catalog is not None:
            catalog.release()


class PostgresConnector(Connector):
    family: ClassVar[str] = "postgresql"
    transport: ClassVar[str] = "adbc"
    plans_by_query: ClassVar[bool] = True  # plan_columns prepares / runs LIMIT 0
    dialect: Dialect = POSTGRES
    supports_distributed_reads: ClassVar[bool] = True  # partitions import an exported snapshot
    snapshot_idle_while_streaming: ClassVar[bool] = True
    SQL_REWRITES: ClassVar[dict[str, Any]] = {
        "text": lambda column: sa.cast(column, sa.Text),
        "text_array": lambda column: sa.cast(column, sa.ARRAY(sa.Text)),
        "numeric": lambda column: sa.cast(column, sa.Numeric),
        **{f"scaled_{scale}": (lambda column, s=scale: _scaled(column, s))
           for scale in range(19)},
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._type_catalog: _TypeCatalog | None = None  # see _types
        self._types_lock = threading.Lock()

    def _with_session_options(self, url: sa.URL, application_name: str) -> sa.URL:
        """libpq parameters for every connection: an ``application_name`` (a DBA, and ldw,
        can tell its reads, ``ldw``, from its control connections, ``ldw-control``), read-only
        transactions, and, with
        a source ``timeout``, the same limit on connecting and on waiting for a lock
        (``lock_timeout``), so a locked table fails on the server's side."""
        query: dict[str, str] = {}
        if "application_name" not in url.query:
            query["application_name"] = application_name
        options = [str(url.query["options"])] if "options" in url.query else []
        options.append("-cdefault_transaction_read_only=on")  # every transaction READ ONLY
        timeout = self.source.timeout
        if timeout:
            if "connect_timeout" not in url.query:
                query["connect_timeout"] = str(max(2, math.ceil(timeout)))
            options.append(f"-clock_timeout={math.ceil(timeout * 1000)}")
        query["options"] = " ".join(options)
        return url.update_query_dict(query)

    def sqlalchemy_url(self) -> sa.URL:
        url = self.url_with_password().set(drivername="postgresql+psycopg")
        return self._with_session_options(url, "ldw-control")

    def _libpq_uri(self) -> str:
        """The URI ADBC connects with. Its query is percent-encoded here: SQLAlchemy writes a
        space as '+', which libpq keeps, so ``options`` holding several ``-c`` settings would
        reach the server as one garbled setting."""
        url = self._with_session_options(
            self.url_with_password().set(drivername="postgresql"), "ldw")
        base = url.set(query={}).render_as_string(hide_password=False)
        return f"{base}?{urlencode(dict(url.query), doseq=True, quote_via=quote)}"

    def row_estimates(self, schema: str | None) -> dict[str, int | None]:
        """``reltuples``; None where it is -1: never vacuumed or analyzed, no estimate yet."""
        query = sa.text(
            "select c.relname, c.reltuples::bigint from pg_class c "
            "join pg_namespace n on n.oid = c.relnamespace "
            "where n.nspname = :schema and c.relkind in ('r', 'p', 'm')"
        )
        with self.engine.connect() as conn:
            return {name: int(n) if n is not None and n >= 0 else None
                    for name, n in conn.execute(query, {"schema": schema})}

    change_counters_method: ClassVar[str | None] = (
        "pg_stat_user_tables n_tup_ins + n_tup_upd + n_tup_del")

    def change_counters(self, tables: Sequence[tuple[str | None, str, str | None]]
                        ) -> dict[str, Any] | None:
        """Rows inserted, updated and deleted per table since statistics began (PostgreSQL
        publishes a session's counts within about a second of its commit)."""
        query = sa.text(
            "select n_tup_ins + n_tup_upd + n_tup_del from pg_stat_user_tables "
            "where schemaname = coalesce(:schema, current_schema()) and relname = :name")
        counters: dict[str, Any] = {}
        with self.guard("reading table statistics"), self.engine.connect() as conn:
            for schema, name, _alias in tables:
                value = conn.execute(query, {"schema": schema, "name": name}).scalar()
                if value is None:  # a view, or no statistics: the probe decides
                    return None
                counters[f"{schema or ''}.{name}"] = int(value)
        return counters

    def definition_marker(self, schema: str | None, table: str) -> str | None:
        """The table's catalog rows' versions and its columns' names and types: any ALTER
        TABLE changes it (one catalog query, about a millisecond)."""
        name = ".".join(f'"{p}"' for p in (schema, table) if p is not None)
        with self.engine.connect() as conn:
            return conn.execute(_DEFINITION, {"name": name}).scalar()

    def row_ranges(self, statement: sa.Select, parts: int) -> list[sa.ColumnElement] | None:
        """Page ranges of the table (``ctid`` between pages, a TID range scan since
        PostgreSQL 14), as DuckDB's scanner splits a table; the last range is open, so pages
        added since the last ANALYZE are read too."""
        froms = statement.get_final_froms()
        if parts < 2 or len(froms) != 1 or not isinstance(froms[0], sa.Table):
            return None
        table = froms[0]
        name = ".".join(f'"{p}"' for p in (table.schema, table.name) if p is not None)
        query = sa.text("select current_setting('server_version_num')::int, "
                        "(select relpages from pg_class where oid = to_regclass(:name))")
        with self.guard("sizing the table"), self.engine.connect() as conn:
            version, pages = conn.execute(query, {"name": name}).one()
        if version < 140000 or not pages or pages < MIN_PAGES_PER_RANGE * parts:
            return None
        ctid = sa.literal_column("ctid", type_=sa.types.NullType())
        bounds = [pages * i // parts for i in range(1, parts)]

        def tid(page: int) -> sa.ColumnElement:
            return sa.cast(sa.literal(f"({page},0)"), _TID)

        ranges = [ctid < tid(bounds[0])]
        ranges += [sa.and_(ctid >= tid(a), ctid < tid(b)) for a, b in zip(bounds, bounds[1:],
                                                                             strict=False)]
        return ranges + [ctid >= tid(bounds[-1])]

    def _types(self, *, fresh: bool) -> _TypeCatalog:
        """The connections' shared type catalog, held for one connection; ``fresh``: read
        anew (planning a query sees every type the source defines now, and so do the reads
        after it)."""
        with self._types_lock:
            current = self._type_catalog
            if current is not None and not fresh:
                current.hold()
                return current
        catalog = _TypeCatalog(self._libpq_uri())
        catalog.hold()
        with self._types_lock:
            old, self._type_catalog = self._type_catalog, catalog
        if old is not None:
            old.release()
        return catalog

    def _connect(self, *, autocommit: bool, fresh_types: bool = False) -> Any:
        """An ADBC connection, once a slot of the source's limit is free (closing it frees
        the slot); failing to open one means the source is unavailable."""
        release = self.slots.one()
        try:
            with self.guard("connecting", connecting=True):
                catalog = self._types(fresh=fresh_types)
                return _Counted(catalog.connect(autocommit=autocommit), release,
                                catalog.handles)
        except BaseException:
            release()
            raise

    def close(self) -> None:
        super().close()
        with self._types_lock:
            catalog, self._type_catalog = self._type_catalog, None
        if catalog is not None:
            catalog.release()

    def plan_columns(self, statement: sa.Select) -> list[ColumnPlan]:
        sql = self.compile(statement, literal=True).sql
        with self.guard("reading the result schema"), contextlib.closing(
            self._connect(autocommit=False, fresh_types=True)
        ) as conn, conn.cursor() as cursor:
            schema = cursor.adbc_execute_schema(sql)
        return [self._plan(field) for field in schema]

    def _plan(self, field: pa.Field) -> ColumnPlan:
        meta = field.metadata or {}
        pg_type = meta.get(b"POSTGRESQL:type", b"?").decode()
        typmod = int(meta.get(b"POSTGRESQL:typmod", b"-1"))
        if pg_type == "numeric":
            decimal = _decimal_type(typmod)
            if decimal is None:  # PostgreSQL's own text: 'NaN' and 'Infinity' as it prints them
                return ColumnPlan(field.name, "numeric", pa.string(), rewrite="text",
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
        # ADBC delivers types it does not know as their binary COPY bytes ("opaque"): the
        # server's text output function gives the exact, readable form instead.
        if isinstance(arrow_type, pa.OpaqueType):
            return ColumnPlan(field.name, pg_type, pa.string(), rewrite="text",
                              note=f"PostgreSQL {pg_type} kept as its text form")
        if pa.types.is_list(arrow_type) and isinstance(arrow_type.value_type, pa.OpaqueType):
            return ColumnPlan(field.name, pg_type, pa.list_(pa.string()), rewrite="text_array",
                              note=f"{pg_type.removeprefix('_')}[] elements kept as their "
                              "text form")
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
                  interrupt: Interrupt) -> Iterator[pa.RecordBatch]:
        """One partition on its own ADBC connection (a worker thread of ``fan_in``)."""
        schema = target_schema(plan.columns)
        with self.guard("reading"), contextlib.closing(
            self._connect(autocommit=snapshot_id is None)
        ) as conn, conn.cursor() as cursor, interrupt.hook(cursor.adbc_cancel):
            if snapshot_id is not None:
                if not _SNAPSHOT_ID.match(snapshot_id):
                    raise ValueError("unexpected snapshot id from the server")
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")
            cursor.adbc_statement.set_options(
                **{"adbc.postgresql.batch_size_hint_bytes": str(16 << 20)})
            if interrupt.requested:
                return
            cursor.execute(sql)
            reader = _adbc_reader(cursor)
            finished = False
            try:
                for batch in reader:
                    if interrupt.requested:
                        return
                    yield convert_batch(batch, plan.columns, schema, source=self.source.name)
                finished = True
            finally:
                if not finished:
                    # Stopped early (cancelled, closed, a conversion failed): closing the
                    # cursor of an unfinished COPY would wait for the query to end.
                    with contextlib.suppress(Exception):
                        cursor.adbc_cancel()

    def stream(self, plan: ReadPlan, cancel: threading.Event,
               snapshot: sa.Connection | None = None) -> Iterator[pa.RecordBatch]:
        token = snapshot.info.get("ldw_snapshot") if snapshot is not None else None
        producers = [
            (lambda interrupt, q=query: self._read_one(q.sql, token, plan, interrupt))
            for query in plan.queries
        ]
        yield from self.read_in_workers(producers, cancel, tag=plan.tag)
