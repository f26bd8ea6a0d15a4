"""The narrow protocol every connector implements, and what they share.

A connector reflects a source (SQLAlchemy), plans how each result column travels into Arrow
exactly (``ColumnPlan``: an optional SQL rewrite, the stored Arrow type, a conversion and a note),
and streams Arrow record batches for a list of compiled queries (one per partition) that all read
one consistent snapshot of the source.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
import sqlalchemy as sa
import sqlglot
from sqlalchemy.engine import Engine

from ldw.config import SourceConfig
from ldw.errors import (
    AccessDenied,
    LdwError,
    SourceError,
    UnknownTable,
)

from .dialect import GENERIC_DIALECT, Dialect
from .driver_errors import interrupted_in_driver, timeout_error, wrap_driver_error
from .fan_in import Producer, fan_in
from .names import GENERIC_RULES, NAME_RULES, NameRules, Relation
from .slots import ConnectionSlots, Lease, current_lease, uncounted

__all__ = ["ColumnPlan", "Connector", "ReadPlan", "Relation", "SourceQuery",
           "timeout_error", "wrap_driver_error"]


@dataclass(frozen=True)
class ColumnPlan:
    """How one result column travels: SQL rewrite -> driver Arrow type -> stored Arrow type."""

    name: str
    source_type: str
    arrow_type: pa.DataType
    nullable: bool = True
    rewrite: str | None = None  # a key of the connector's SQL_REWRITES
    convert: str | None = None  # a key of ldw.connectors.convert.CONVERSIONS
    note: str | None = None  # how the value differs from the source's, shown by describe/info

    def as_row(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source_type": self.source_type,
            "arrow_type": str(self.arrow_type),
            "nullable": self.nullable,
            "note": self.note or "",
        }


@dataclass(frozen=True)
class SourceQuery:
    """One query to run on the source: SQL text for the dialect, and bound values if any."""

    sql: str
    params: dict[str, Any] | tuple = field(default_factory=dict)
    statement: sa.Select | None = field(default=None, compare=False, repr=False)


@dataclass
class ReadPlan:
    """What a read needs: the queries (one per partition) and how the columns convert."""

    queries: list[SourceQuery]
    columns: list[ColumnPlan]
    # (schema, name, alias) of the tables read, for snapshot locks
    tables: list[tuple[str | None, str, str | None]] = field(default_factory=list)
    tag: str = ""  # marks the queries on the source so they can be found and cancelled


def _read_only_session(statement: str) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        dbapi_connection.commit()

    return on_connect


class _CountedPool(sa.pool.NullPool):
    """No idle connections (each one holds a slot of the source's limit while open); every
    physical close hands its slot back."""

    def _close_connection(self, connection: Any, *, terminate: bool = False) -> None:
        try:
            super()._close_connection(connection, terminate=terminate)
        finally:
            self._ldw_release(connection)

    @staticmethod
    def _ldw_release(connection: Any) -> None:  # bound per connector (see Connector.engine)
        """Hand back the slot ``connection`` held."""


class Connector(abc.ABC):
    """Base class: SQLAlchemy engine, reflection and browsing shared by every dialect.

    A connector for a new dialect subclasses this (or ``GenericConnector``), sets its
    ``dialect`` facts and capabilities, implements the abstract methods and registers itself in
    ``connectors.REGISTRY``.
    """

    family: ClassVar[str] = "generic"
    dialect: Dialect = GENERIC_DIALECT  # error codes, cancel, sqlglot name, mask SQL
    # whether partition queries may run as cluster tasks that import this read's exported
    # snapshot (the connector's snapshot() exports one and stream() imports it)
    supports_distributed_reads: ClassVar[bool] = False
    transport: ClassVar[str] = "dbapi"
    # plan_columns has the source prepare or run the statement (a where it refuses fails there)
    plans_by_query: ClassVar[bool] = False
    # whether a read's snapshot connection is free for other queries (a probe) while stream()
    # reads (PostgreSQL: the readers import an exported snapshot on connections of their own)
    snapshot_idle_while_streaming: ClassVar[bool] = False
    # whether this source's connections count against [sources.NAME] max_connections (a
    # file-based source has no server whose connections to spare)
    counts_connections: ClassVar[bool] = True

    def __init__(self, source: SourceConfig, *, batch_rows: int = 131072) -> None:
        self.source = source
        self.batch_rows = batch_rows
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        # table definitions and column plans, each kept with its definition marker
        self._definitions: dict[tuple[str | None, str], tuple[str, sa.Table]] = {}
        self._column_plans: dict[tuple, list[ColumnPlan]] = {}
        self.slots = ConnectionSlots(source)
        self._held: dict[int, Callable[[], None]] = {}  # id(DBAPI connection) -> its release

    def __repr__(self) -> str:
        return f"{type(self).__name__}(source={self.source.name!r})"

    # -- connection ---------------------------------------------------------------------------
    def url_with_password(self) -> sa.URL:
        secret = self.source.password()
        url = self.source.url
        return url.set(password=secret.reveal()) if secret is not None else url

    def sqlalchemy_url(self) -> sa.URL:
        """The URL SQLAlchemy connects with (a connector may choose the DBAPI driver)."""
        return self.url_with_password()

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                options: dict[str, Any] = {}
                if self.counts_connections:
                    options["poolclass"] = type("CountedPool", (_CountedPool,), {
                        "_ldw_release": staticmethod(self._release_dbapi)})
                self._engine = sa.create_engine(
                    self.sqlalchemy_url(), pool_pre_ping=True, hide_parameters=True, **options
                )
                if self.counts_connections:
                    sa.event.listen(self._engine, "do_connect", self._counted_connect)
                self.configure_engine(self._engine)
                statement = self.dialect.read_only
                if statement is not None:
                    sa.event.listen(self._engine, "connect", _read_only_session(statement))
            return self._engine

    def _counted_connect(self, dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        """Open a DBAPI connection once a slot of the source's limit is free."""
        release = self.slots.one()
        try:
            connection = dialect.connect(*cargs, **cparams)
        except BaseException:
            release()
            raise
        with self._lock:
            self._held[id(connection)] = release
        return connection

    def _release_dbapi(self, connection: Any) -> None:
        with self._lock:
            release = self._held.pop(id(connection), None)
        if release is not None:
            release()

    # -- connection limit ---------------------------------------------------------------------
    @property
    def max_partitions(self) -> int:
        """The most partitions a read may have: a partitioned read holds a connection for its
        snapshot, one per partition and one for the rows whose key is NULL, all within
        ``[sources.NAME] max_connections``."""
        return max(1, self.source.max_connections - 2)

    def read_connections(self, partitions: int) -> tuple[int, int]:
        """(need, want): connections a cached read of ``partitions`` holds at once at least
        (its snapshot and one reader; further partition queries wait their turn) and at most
        (every query of the read at once)."""
        return 2, _queries(partitions) + 1

    @contextlib.contextmanager
    def connection_slots(self, count: int) -> Iterator[None]:
        """Hold ``count`` slots while a driver opens that many connections itself (from the
        current read's lease, or the source's queue outside one)."""
        if not self.counts_connections:
            yield
            return
        lease = current_lease()
        if lease is not None and lease.slots is self.slots:
            release = lease.take(count)
        else:
            own = self.slots.new_lease(count, count)
            release = own.close
        try:
            yield
        finally:
            release()

    @contextlib.contextmanager
    def read_slots(self, partitions: int, *, all_at_once: bool = False) -> Iterator[None]:
        """Hold the connections of one cached read (snapshot and partitions) for its duration;
        ``all_at_once``: every partition runs at the same time (e.g. as cluster tasks)."""
        if not self.counts_connections:
            yield
            return
        need, want = self.read_connections(partitions)
        with self.slots.lease(want if all_at_once else need, want):
            yield

    def configure_engine(self, engine: Engine) -> None:  # noqa: B027 (optional hook)
        """Driver set-up for every new connection of ``engine`` (e.g. type loaders)."""

    @contextlib.contextmanager
    def guard(self, action: str, *, connecting: bool = False) -> Iterator[None]:
        """Wrap any driver failure once, naming the source by alias and without secrets.

        ldw's own errors (e.g. ``UnsupportedType`` from a conversion) pass through unchanged.
        """
        try:
            yield
        except LdwError:
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # drivers raise Rust panics (BaseException) too
            if isinstance(exc, SystemExit | GeneratorExit):
                raise
            if interrupted_in_driver(exc):
                raise KeyboardInterrupt from exc
            raise wrap_driver_error(self.source, exc, action, dialect=self.dialect,
                                    connecting=connecting) from None

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    # -- browsing ----------------------------------------------------------------------------
    def default_schema(self) -> str | None:
        with self.guard("reading the default schema"):
            return sa.inspect(self.engine).default_schema_name

    def schemas(self) -> list[str]:
        with self.guard("listing schemas"):
            return sa.inspect(self.engine).get_schema_names()

    def tables(self, schema: str | None) -> list[dict[str, Any]]:
        with self.guard("listing tables"):
            inspector = sa.inspect(self.engine)
            if schema is not None and schema not in inspector.get_schema_names():
                raise UnknownTable(
                    f"source {self.source.name!r} has no schema {schema!r}; "
                    f"see wh.tables({self.source.name!r}) for the schemas"
                )
            schema = schema or inspector.default_schema_name
            estimates = self.row_estimates(schema)
            rows = [
                {"schema": schema, "table": name, "kind": "table", "rows": estimates.get(name)}
                for name in inspector.get_table_names(schema=schema)
            ]
            rows += [
                {"schema": schema, "table": name, "kind": "view", "rows": None}
                for name in inspector.get_view_names(schema=schema)
            ]
            return rows

    def row_estimates(self, schema: str | None) -> dict[str, int | None]:
        """Cheap row estimates from the catalog; exact counts would read the tables. None (or
        no entry) where the source has no estimate: never 0 for "unknown"."""
        return {}

    def definition_marker(self, schema: str | None, table: str) -> str | None:
        """A value read cheaply from the source's catalog that changes whenever the table's
        definition does (columns, types); None where the dialect has none (then nothing
        about the table is cached)."""
        return None

    def _marker(self, schema: str | None, table: str) -> str | None:
        try:
            return self.definition_marker(schema, table)
        except sa.exc.SQLAlchemyError:
            return None

    def reflect(self, schema: str | None, table: str) -> sa.Table:
        """The table's columns and types, as SQLAlchemy reflects them; kept while the source's
        catalog says its definition has not changed."""
        marker = self._marker(schema, table)
        cached = self._definitions.get((schema, table)) if marker is not None else None
        if cached is not None and cached[0] == marker:
            return cached[1]
        reflected = self._reflect(schema, table)
        if marker is not None:
            self._definitions[(schema, table)] = (marker, reflected)
        return reflected

    def planned_columns(self, statement: sa.Select) -> list[ColumnPlan]:
        """:meth:`plan_columns`, kept per statement while the definitions of the tables it
        reads are unchanged (planning asks the source, e.g. a schema-only query)."""
        tables = [t for t in sa.sql.util.find_tables(statement) if isinstance(t, sa.Table)]
        markers = tuple(self._marker(t.schema, t.name) for t in tables)
        if not tables or None in markers:
            return self.plan_columns(statement)
        key = (self.compile(statement, literal=True).sql, markers)
        plans = self._column_plans.get(key)
        if plans is None:
            plans = self.plan_columns(statement)
            if len(self._column_plans) >= 1024:
                self._column_plans.clear()
            self._column_plans[key] = plans
        return list(plans)

    def _reflect(self, schema: str | None, table: str) -> sa.Table:
        with self.guard(f"reflecting {table!r}"):
            inspector = sa.inspect(self.engine)
            if not inspector.has_table(table, schema=schema) and table not in (
                inspector.get_view_names(schema=schema)
            ):
                where = f"{schema}.{table}" if schema else table
                raise UnknownTable(
                    f"source {self.source.name!r} has no table {where!r}; "
                    f"list them with wh.tables({self.source.name!r}, schema={schema!r})"
                )
            return sa.Table(table, sa.MetaData(), schema=schema, autoload_with=self.engine)

    # -- name resolution ---------------------------------------------------------------------
    @property
    def sqlglot_dialect(self) -> str | None:
        """The sqlglot dialect that parses and writes this source's SQL."""
        return self.dialect.sqlglot

    @property
    def name_rules(self) -> NameRules:
        """How this source resolves names and what its system catalog is (per backend)."""
        return NAME_RULES.get(self.source.url.get_backend_name(), GENERIC_RULES)

    def is_system(self, schema: str | None, name: str) -> bool:
        """Whether ``schema.name`` belongs to the source's own catalog (always denied)."""
        return self.name_rules.is_system(schema, name)

    def system_denied(self, schema: str | None, name: str) -> AccessDenied:
        where = f"{schema}.{name}" if schema else name
        return AccessDenied(f"source {self.source.name!r}: {where} is part of the source's own "
                            "catalog, which ldw never reads for users; map a user table instead")

    def resolve_relation(self, schema: str | None, name: str) -> Relation:
        """The relation a query on this source reads for ``schema.name`` (``schema`` None: the
        connection's default), resolved by the source's own rules. SourceError if there is
        none (as the query would fail), AccessDenied for the source's system catalog."""
        rules = self.name_rules
        if rules.is_system(schema, name):
            raise self.system_denied(schema, name)
        with self.guard(f"resolving {name!r}"), self.engine.connect() as conn:
            relation = rules.resolve(conn, schema, name)
        if relation is None:
            where = f"{schema}.{name}" if schema else name
            raise SourceError(f"source {self.source.name!r} has no table or view {where!r} that "
                              f"a query can read; list them with wh.tables({self.source.name!r})")
        if rules.is_system(relation.schema, relation.name):
            raise self.system_denied(relation.schema, relation.name)
        return relation

    # -- planning ----------------------------------------------------------------------------
    SQL_REWRITES: ClassVar[dict[str, Callable[[sa.ColumnElement], sa.ColumnElement]]] = {}

    def compile(self, statement: sa.Select, *, literal: bool) -> SourceQuery:
        """Compile for this dialect: literal values (for COPY-style drivers) or bound params."""
        dialect = self.engine.dialect
        if literal:
            # A "named" paramstyle keeps '%' as it is (pyformat dialects would double it).
            plain = type(dialect)(paramstyle="named")
            text = str(statement.compile(dialect=plain, compile_kwargs={"literal_binds": True}))
            return SourceQuery(text)
        compiled = statement.compile(dialect=dialect)
        params = compiled.params
        if dialect.positional:
            params = tuple(params[k] for k in compiled.positiontup)
        return SourceQuery(str(compiled), params, statement)

    def row_ranges(self, statement: sa.Select, parts: int) -> list[sa.ColumnElement] | None:
        """Conditions that split a read of one plain table into ``parts`` disjoint ranges of
        its physical storage, which together hold every row (None: this dialect cannot, or
        the table is too small to be worth it)."""
        return None

    def estimate_rows(self, query: SourceQuery) -> int | None:
        """The source planner's estimate of the rows ``query`` returns (no rows move); None
        where the dialect has no way to ask or the source would not say."""
        if self.dialect.explain is None or self.dialect.explain_rows is None:
            return None
        try:
            with self.guard("estimating rows"), self.engine.connect() as conn:
                cursor = conn.connection.dbapi_connection.cursor()
                try:  # the raw cursor, as in result_names; the prefix is the dialect's constant
                    if query.params:
                        cursor.execute(self.dialect.explain + query.sql, query.params)
                    else:
                        cursor.execute(self.dialect.explain + query.sql)
                    names = [d[0] for d in cursor.description or ()]
                    rows = cursor.fetchall()
                finally:
                    cursor.close()
            return self.dialect.explain_rows(names, rows)
        except (LdwError, LookupError, ValueError, TypeError):
            return None

    def check_statement(self, statement: sa.Select) -> None:
        """Prove the source accepts ``statement`` as a read sends it (literal SQL or bound
        values, as this connector reads), without a row: it runs with ``LIMIT 0``. Skipped
        where :meth:`plan_columns` already had the source prepare or run the statement
        (``plans_by_query``). A rejection is a SourceError (``reason``: the source's words)."""
        if self.plans_by_query:
            return
        query = self.compile(statement.limit(0), literal=self.transport != "dbapi")
        with self.guard("checking the query"), self.engine.connect() as conn:
            if query.statement is not None:
                conn.execute(query.statement).close()
                return
            cursor = conn.connection.dbapi_connection.cursor()
            try:  # the raw cursor: no parameter parsing of a literal '%'
                cursor.execute(query.sql)
            finally:
                cursor.close()

    def result_names(self, sql: str) -> list[str]:
        """Column names of a validated query, from a ``LIMIT 0`` probe (no rows move)."""
        dialect = self.sqlglot_dialect
        probe = sqlglot.exp.select("*").from_(
            sqlglot.parse_one(sql, read=dialect).subquery("ldw_src")).limit(0)
        with self.guard("reading the query's columns"), self.engine.connect() as conn:
            cursor = conn.connection.dbapi_connection.cursor()
            try:  # the raw cursor: no parameter parsing of the query's own '%' signs
                cursor.execute(probe.sql(dialect=dialect))
                return [d[0] for d in cursor.description]
            finally:
                cursor.close()

    @abc.abstractmethod
    def plan_columns(self, statement: sa.Select) -> list[ColumnPlan]:
        """Plan every result column of ``statement`` without moving rows."""

    def apply_rewrites(self, statement: sa.Select, plans: Sequence[ColumnPlan]) -> sa.Select:
        """Rewrite the select list where a column's plan needs SQL help (e.g. char(n) -> text)."""
        if not any(p.rewrite for p in plans):
            return statement
        columns = [
            self.SQL_REWRITES[p.rewrite](column).label(p.name) if p.rewrite else column
            for p, column in zip(plans, statement.selected_columns, strict=True)
        ]
        return statement.with_only_columns(*columns, maintain_column_froms=True)

    @abc.abstractmethod
    def snapshot(self, tables: list, *, partitioned: bool
                 ) -> contextlib.AbstractContextManager[sa.Connection]:
        """A connection whose view of the source every partition of one read shares (a
        context manager; implement it with ``@contextlib.contextmanager``)."""

    # -- change detection --------------------------------------------------------------------
    change_counters_method: ClassVar[str | None] = None  # what change_counters reads, if any

    def change_counters(self, tables: Sequence[tuple[str | None, str, str | None]]
                        ) -> dict[str, Any] | None:
        """What the source's own statistics say about writes to ``tables`` ((schema, name,
        alias) as a plan lists them), per table, as JSON values that change whenever the
        table is written to; None where the dialect keeps no such statistics (then only
        :func:`connectors.changes.probe` tells). Cheap: it never reads the tables."""
        return None

    # -- reading -----------------------------------------------------------------------------
    @abc.abstractmethod
    def stream(self, plan: ReadPlan, cancel: threading.Event,
               snapshot: sa.Connection | None = None) -> Iterator[pa.RecordBatch]:
        """Yield driver record batches for every query of ``plan`` from one snapshot.

        The driver runs on worker threads (``fan_in``), so the caller waits interruptibly: a
        KeyboardInterrupt while waiting, or closing the generator early, cancels the source
        queries before it returns (the KeyboardInterrupt is re-raised as it is); ``cancel`` set
        by another thread while the caller waits raises ``Cancelled``.
        """

    def read_in_workers(self, producers: list[Producer], cancel: threading.Event, *,
                        tag: str = "", connections: int = 1) -> Iterator[pa.RecordBatch]:
        """``fan_in`` with this source's ``timeout`` and, given the read's ``tag``, a cancel by
        tag on a connection of its own when the driver's cancel does not stop a producer.

        The producers open their connections within the current read's lease (see
        :meth:`read_slots`) or, outside one, within a lease of their own: at least
        ``connections`` (what one producer opens at once), up to one per producer.
        """
        lease = current_lease() if self.counts_connections else None
        own = None
        if self.counts_connections and (lease is None or lease.slots is not self.slots):
            own = lease = self.slots.new_lease(connections,
                                               max(connections, len(producers)), cancel=cancel)
        try:
            if lease is not None:
                producers = [_in_lease(producer, lease) for producer in producers]
            yield from fan_in(producers, cancel,
                              fallback=(lambda: self.cancel_tagged(tag)) if tag else None,
                              timeout=self.source.timeout,
                              on_timeout=lambda: timeout_error(self.source, "reading"))
        finally:
            if own is not None:
                own.close()

    def cancel_tagged(self, tag: str) -> None:
        """Cancel queries on the source that carry ``tag`` (best effort, own connection).

        Every query of a read carries its ``/* ldw:... */`` tag, so the source's own list of
        running queries finds them; how to find and cancel one is per-dialect data
        (``dialect.cancel``). Dialects without one cancel nothing.
        """
        statements = self.dialect.cancel
        if statements is None or not tag:
            return
        find, kill = statements
        # Uncounted: the reads being cancelled may hold every slot of the source.
        with contextlib.suppress(Exception), uncounted(), self.engine.connect() as conn:
            for (query_id,) in conn.execute(sa.text(find), {"pattern": f"%{tag}%"}).all():
                conn.exec_driver_sql(kill.format(id=int(query_id)))


def _queries(partitions: int) -> int:
    """Source queries of a read of ``partitions``: one per partition, one for NULL keys."""
    return partitions + 1 if partitions > 1 else 1


def _in_lease(producer: Producer, lease: Lease) -> Producer:
    """``producer`` with ``lease`` current in its worker thread."""
    def produce(interrupt: Any) -> Iterator[pa.RecordBatch]:
        lease.enter()
        yield from producer(interrupt)
    return produce
