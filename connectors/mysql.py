"""MySQL / MariaDB: ConnectorX moves the rows; PyMySQL reflects and coordinates snapshots.

ConnectorX turns DECIMAL into decimal128(38,10) and panics on TIME values outside 00:00-24:00,
so the plan fixes both in SQL (DECIMAL beyond 28 digits or scale 10 travels as text; TIME as
microseconds) and the session runs in UTC so TIMESTAMP values are instants.

Partitions share one snapshot: a coordinator holds ``LOCK TABLES ... READ`` (writers wait) while
every partition connection starts ``START TRANSACTION WITH CONSISTENT SNAPSHOT``; it releases the
lock once all of them have a read view (seen in ``information_schema.innodb_trx``), or at the end
of the read if that view is not granted.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import connectorx as cx
import pyarrow as pa
import sqlalchemy as sa
from pymysql.constants import FIELD_TYPE, FLAG

from .base import ColumnPlan, Connector, ReadPlan
from .convert import convert_batch, target_schema
from .dialect import (
    STANDARD_UNAVAILABLE,
    CancelByTag,
    Dialect,
    ErrorCode,
    explained_rows,
    sqlstate_of,
)
from .fan_in import Interrupt

__all__ = ["MYSQL", "MySQLConnector"]



def _error_number(exc: BaseException) -> ErrorCode | None:
    """The MySQL/MariaDB error number of a PyMySQL (or MySQLdb) error."""
    module = type(exc).__module__.split(".")[0]
    if module in ("pymysql", "MySQLdb") and exc.args and isinstance(exc.args[0], int):
        return exc.args[0]
    return sqlstate_of(exc)


MYSQL = Dialect(
    "mysql",
    sqlglot="mysql",
    error_code=_error_number,
    unavailable_codes=STANDARD_UNAVAILABLE | {
        1040,  # ER_CON_COUNT_ERROR: too many connections
        1053,  # ER_SERVER_SHUTDOWN
        1927,  # ER_CONNECTION_KILLED (MariaDB)
        2002, 2003, 2005,  # CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR, CR_UNKNOWN_HOST
        2006, 2013, 2055,  # CR_SERVER_GONE_ERROR, CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED
        4031,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8)
    },
    timeout_codes=frozenset({1205, 1969, 3024}),  # lock wait, max_statement_time
    unavailable_words=("can't connect", "lost connection", "gone away"),
    timeout_words=("lock wait timeout exceeded", "max_statement_time exceeded"),
    cancel=CancelByTag("select id from information_schema.processlist "
                       "where info like :pattern and id <> connection_id()", "KILL QUERY {id}"),
    read_only="SET SESSION TRANSACTION READ ONLY",
    explain="EXPLAIN ",
    explain_rows=explained_rows,
)

_SESSION_SETUP = ["SET time_zone = '+00:00'", MYSQL.read_only]
_SNAPSHOT_START = "START TRANSACTION WITH CONSISTENT SNAPSHOT"

_INTEGERS = {
    FIELD_TYPE.TINY: (pa.int8(), pa.uint8(), "tinyint"),
    FIELD_TYPE.SHORT: (pa.int16(), pa.uint16(), "smallint"),
    FIELD_TYPE.INT24: (pa.int32(), pa.uint32(), "mediumint"),
    FIELD_TYPE.LONG: (pa.int32(), pa.uint32(), "int"),
    FIELD_TYPE.LONGLONG: (pa.int64(), pa.uint64(), "bigint"),
}
_BLOBS = {FIELD_TYPE.TINY_BLOB, FIELD_TYPE.MEDIUM_BLOB, FIELD_TYPE.LONG_BLOB, FIELD_TYPE.BLOB,
          FIELD_TYPE.VAR_STRING, FIELD_TYPE.STRING, FIELD_TYPE.VARCHAR}
_BINARY_CHARSET = 63


def _plan_field(field: Any) -> ColumnPlan:
    """Plan from a PyMySQL result field (type code, length, scale, flags, charset)."""
    name, code, unsigned = field.name, field.type_code, bool(field.flags & FLAG.UNSIGNED)
    if code in _INTEGERS:
        signed, unsigned_type, label = _INTEGERS[code]
        return ColumnPlan(name, label + (" unsigned" if unsigned else ""),
                          unsigned_type if unsigned else signed)
    if code in (FIELD_TYPE.NEWDECIMAL, FIELD_TYPE.DECIMAL):
        scale = field.scale
        precision = field.length - (1 if scale else 0) - (0 if unsigned else 1)
        decimal = pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(
            precision, scale)
        source = f"decimal({precision},{scale})"
        if precision <= 28 and scale <= 10:  # ConnectorX's decimal128(38,10) holds it exactly
            return ColumnPlan(name, source, decimal, convert="decimal_rescale")
        return ColumnPlan(name, source, decimal, rewrite="char", convert="decimal_from_text")
    if code == FIELD_TYPE.FLOAT:
        return ColumnPlan(name, "float", pa.float32())
    if code == FIELD_TYPE.DOUBLE:
        return ColumnPlan(name, "double", pa.float64())
    if code == FIELD_TYPE.YEAR:
        return ColumnPlan(name, "year", pa.int16())
    if code == FIELD_TYPE.BIT:
        return ColumnPlan(name, f"bit({field.length})", pa.binary(), convert="binary",
                          note="BIT as big-endian bytes")
    if code in (FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE):
        return ColumnPlan(name, "date", pa.date32())
    if code == FIELD_TYPE.TIME:
        return ColumnPlan(name, "time", pa.duration("us"), rewrite="time_us",
                          convert="duration_us",
                          note="TIME is a signed duration (-838h..838h): stored as duration[us]")
    if code == FIELD_TYPE.DATETIME:
        return ColumnPlan(name, "datetime", pa.timestamp("us"))
    if code == FIELD_TYPE.TIMESTAMP:
        return ColumnPlan(name, "timestamp", pa.timestamp("us", tz="UTC"), convert="utc")
    if code == FIELD_TYPE.JSON:
        return ColumnPlan(name, "json", pa.json_(pa.string()), convert="cast")
    if code in (FIELD_TYPE.ENUM, FIELD_TYPE.SET):
        return ColumnPlan(name, "enum" if code == FIELD_TYPE.ENUM else "set", pa.string())
    if code in _BLOBS or code == FIELD_TYPE.GEOMETRY:
        if field.charsetnr == _BINARY_CHARSET:
            return ColumnPlan(name, "blob" if code not in (FIELD_TYPE.STRING,
                              FIELD_TYPE.VAR_STRING) else "binary", pa.binary(), convert="binary")
        return ColumnPlan(name, "text" if code in _BLOBS - {FIELD_TYPE.STRING,
                          FIELD_TYPE.VAR_STRING, FIELD_TYPE.VARCHAR} else "varchar", pa.string())
    return ColumnPlan(name, f"type {code}", pa.string(), rewrite="char",
                      note=f"MySQL type code {code} kept as its text form")


class MySQLConnector(Connector):
    family: ClassVar[str] = "mysql"
    transport: ClassVar[str] = "connectorx"
    plans_by_query: ClassVar[bool] = True  # plan_columns prepares / runs LIMIT 0
    dialect: Dialect = MYSQL
    SQL_REWRITES: ClassVar[dict[str, Any]] = {
        "char": lambda column: sa.cast(column, sa.CHAR),
        "time_us": lambda column: sa.cast(sa.func.time_to_sec(column) * 1000000, sa.BigInteger),
    }

    def sqlalchemy_url(self) -> sa.URL:
        return self.url_with_password().set(drivername="mysql+pymysql")

    def _cx_url(self) -> str:
        url = self.url_with_password().set(drivername="mysql")
        return url.render_as_string(hide_password=False)

    def row_estimates(self, schema: str | None) -> dict[str, int | None]:
        """``table_rows``; None where the engine keeps none (NULL)."""
        query = sa.text("select table_name, table_rows from information_schema.tables "
                        "where table_schema = :schema")
        with self.engine.connect() as conn:
            return {name: None if n is None else int(n)
                    for name, n in conn.execute(query, {"schema": schema})}

    change_counters_method: ClassVar[str | None] = "information_schema.tables update_time"

    def change_counters(self, tables: Sequence[tuple[str | None, str, str | None]]
                        ) -> dict[str, Any] | None:
        """InnoDB's last commit time per table (second resolution; unknown after a server
        restart until the next write, then only the probe tells)."""
        query = sa.text("select update_time from information_schema.tables "
                        "where table_schema = coalesce(:schema, database()) "
                        "and table_name = :name")
        counters: dict[str, Any] = {}
        with self.guard("reading table statistics"), self.engine.connect() as conn:
            for schema, name, _alias in tables:
                value = conn.execute(query, {"schema": schema, "name": name}).scalar()
                if value is None:
                    return None
                counters[f"{schema or ''}.{name}"] = str(value)
        return counters

    def definition_marker(self, schema: str | None, table: str) -> str | None:
        """The table's columns with their types, from information_schema."""
        query = sa.text(
            "select group_concat(concat(column_name, ':', column_type, ':', is_nullable, ':', "
            "coalesce(collation_name, '')) order by ordinal_position separator ',') "
            "from information_schema.columns where table_schema = coalesce(:schema, database()) "
            "and table_name = :name")
        with self.engine.connect() as conn:
            return conn.execute(query, {"schema": schema, "name": table}).scalar()

    def plan_columns(self, statement: sa.Select) -> list[ColumnPlan]:
        sql = self.compile(statement.limit(0), literal=True).sql
        with self.guard("reading the result schema"), self.engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.execute(sql)
                fields = cursor._result.fields  # PyMySQL keeps flags and charset only here
            finally:
                cursor.close()
        return [_plan_field(field) for field in fields]

    # -- snapshot and reading -----------------------------------------------------------------
    def read_connections(self, partitions: int) -> tuple[int, int]:
        # the coordinator, and every query at once (they start their snapshots together)
        _, every = super().read_connections(partitions)
        return every, every

    @contextlib.contextmanager
    def snapshot(self, tables: list, *, partitioned: bool) -> Iterator[sa.Connection]:
        """Coordinator: consistent snapshot for boundaries, table read locks for partitions."""
        with self.guard("opening a snapshot"):
            conn = self.engine.connect()
        try:
            with self.guard("opening a snapshot"):
                raw = conn.connection.dbapi_connection
                cursor = raw.cursor()
                cursor.execute("SET time_zone = '+00:00'")
                if partitioned and tables:
                    # Writers wait while the lock is held; boundaries are computed under it and
                    # every partition starts its snapshot before it is released. (START
                    # TRANSACTION would release the lock, so the coordinator reads without one.)
                    cursor.execute(f"LOCK TABLES {self._lock_targets(tables)}")
                    conn.info["ldw_locked"] = True
                else:
                    cursor.execute(_SNAPSHOT_START)
                cursor.execute("SELECT CONNECTION_ID()")
                conn.info["ldw_connection_id"] = cursor.fetchone()[0]
                cursor.close()
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.exec_driver_sql("UNLOCK TABLES")
                conn.rollback()
            with contextlib.suppress(Exception):
                conn.close()

    def _lock_targets(self, tables: list) -> str:
        quote = self.engine.dialect.identifier_preparer
        targets = []
        for schema, name, alias in tables:
            table = quote.format_table(sa.table(name, schema=schema))
            targets.append(f"{table} READ")
            if alias:
                targets.append(f"{table} AS {quote.quote(alias)} READ")
        return ", ".join(targets)

    def _release_when_started(self, snapshot: sa.Connection, expected: int,
                              done: threading.Event) -> None:
        """Unlock once every partition has its read view; keep the lock if we cannot see that."""
        coordinator = snapshot.info["ldw_connection_id"]
        probe = sa.text("select count(*) from information_schema.innodb_trx t "
                        "join information_schema.processlist p on p.id = t.trx_mysql_thread_id "
                        "where p.id > :me and p.user = substring_index(current_user(), '@', 1)")
        try:
            # On the coordinator's own connection (idle while the partitions read; the
            # information_schema is readable under LOCK TABLES): no connection beyond the read's.
            deadline = time.monotonic() + 60
            while not done.is_set() and time.monotonic() < deadline:
                if snapshot.execute(probe, {"me": coordinator}).scalar_one() >= expected:
                    snapshot.exec_driver_sql("UNLOCK TABLES")
                    return
                time.sleep(0.005)
        except Exception:  # no PROCESS privilege: the lock stays until the read ends
            return

    def _timeout_setup(self) -> list[str]:
        """With a source ``timeout``, the same limit on waiting for table and row locks, so a
        locked table fails on the server."""
        if not self.source.timeout:
            return []
        seconds = max(1, math.ceil(self.source.timeout))
        return [f"SET SESSION lock_wait_timeout = {seconds}",
                f"SET SESSION innodb_lock_wait_timeout = {seconds}"]

    def configure_engine(self, engine: sa.Engine) -> None:
        setup = self._timeout_setup()
        if setup:
            def on_connect(dbapi_connection: Any, _record: Any) -> None:
                with contextlib.closing(dbapi_connection.cursor()) as cursor:
                    for statement in setup:
                        cursor.execute(statement)

            sa.event.listen(engine, "connect", on_connect)

    def stream(self, plan: ReadPlan, cancel: threading.Event,
               snapshot: sa.Connection | None = None) -> Iterator[pa.RecordBatch]:
        setup = [*_SESSION_SETUP, *self._timeout_setup()]  # UTC first, then the limits
        started = threading.Event()
        releaser = None
        if snapshot is not None and snapshot.info.get("ldw_locked"):
            setup.append(_SNAPSHOT_START)
            releaser = threading.Thread(target=self._release_when_started,
                                        args=(snapshot, len(plan.queries), started), daemon=True)
            releaser.start()
        try:
            # ConnectorX runs every partition itself: one producer, cancelled by KILL QUERY.
            yield from self.read_in_workers(
                [lambda interrupt: self._read(plan, setup, interrupt)], cancel, tag=plan.tag,
                connections=len(plan.queries))
        finally:
            started.set()
            if releaser is not None:
                # The releaser talks on the coordinator's connection; it must be done before
                # the snapshot's owner unlocks and closes it (a PyMySQL connection used by two
                # threads at once loses its socket).
                releaser.join()

    def _read(self, plan: ReadPlan, setup: list[str],
              interrupt: Interrupt) -> Iterator[pa.RecordBatch]:
        """Every query of ``plan`` through ConnectorX (a worker thread of ``fan_in``).

        ConnectorX holds the GIL while it waits for its next batch (connector-x issue 564), so
        no other thread runs until that batch arrives: once the read is cancelled the worker
        never asks it for another one.
        """
        schema = target_schema(plan.columns)
        queries = [q.sql for q in plan.queries]
        try:
            # ConnectorX opens one connection per query, all at once
            with self.connection_slots(len(queries)), self.guard("reading"):
                reader = cx.read_sql(self._cx_url(), queries if len(queries) > 1 else queries[0],
                                     return_type="arrow_stream", batch_size=self.batch_rows,
                                     pre_execution_query=setup)
                batches = iter(reader)
                while not interrupt.requested:
                    batch = next(batches, None)
                    if batch is None:
                        return
                    yield convert_batch(batch, plan.columns, schema, source=self.source.name)
        except Exception:
            # A failed partition leaves ConnectorX's other partition queries running.
            if plan.tag and len(queries) > 1 and not interrupt.requested:
                self.cancel_tagged(plan.tag)
            raise
