"""Running validated SQL over Arrow tables in a sandboxed DuckDB: the connection, limits,
the watchdog and :class:`SqlEngine` (the second and third layers of defence, see
:mod:`ldw.sql`)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa

from ldw.errors import (
    Cancelled,
    CapacityExceeded,
    ConfigError,
    InvalidMapping,
    LdwError,
    QueryTimeout,
    ServerUnavailable,
    UnknownDataset,
)
from ldw.sql.arrow_types import (
    _WIDE_INTEGERS,
    STREAM_BATCH_ROWS,
    _duckdb_ready,
    _narrow_integers,
)
from ldw.sql.validate import _validate

__all__ = ["SqlEngine", "run_sql"]

def _threads(threads: int | None) -> int:
    available = os.cpu_count() or 1
    if threads is None:
        return available
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, not {threads!r}")
    return min(threads, available)


def _connect(*, threads: int, memory_limit: str | None):
    import duckdb

    config: dict[str, object] = {
        "enable_external_access": False,      # no files, network, ATTACH or extension installs
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
        "python_enable_replacements": False,  # never resolve a name to a Python variable
        "temp_directory": "",                 # never spill: memory-only data stays in memory
        "threads": threads,
    }
    if memory_limit is not None:
        config["memory_limit"] = memory_limit
    config["lock_configuration"] = True       # last: SET cannot undo any of the above
    return duckdb.connect(":memory:", config=config)


def _wrap(exc: Exception, memory_setting: str = "the memory limit") -> Exception:
    """A DuckDB error as the ldw error the user can act on (the original kept as __cause__)."""
    import duckdb

    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, duckdb.OutOfMemoryException):
        return CapacityExceeded(f"sql: the query needs more memory than allowed ({message}); "
                                f"select fewer columns or rows, or raise {memory_setting}")
    if isinstance(exc, duckdb.InterruptException):
        return Cancelled("sql: the query was interrupted")
    return InvalidMapping(f"sql: the query failed: {message}")


WATCH_INTERVAL = 0.1  # seconds between the watchdog's checks of running queries


class _Running:
    """One query on its own DuckDB connection, with what may stop it."""

    def __init__(self, con: Any, time_limit: float | None, time_setting: str,
                 cancelled: Callable[[], bool] | None) -> None:
        self.con = con
        self.time_limit = time_limit
        self.time_setting = time_setting
        self.deadline = None if time_limit is None else time.monotonic() + time_limit
        self.cancelled = cancelled
        self.reason: str | None = None  # "timeout" | "client" | "closing", once interrupted

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            try:
                self.con.interrupt()
            except Exception:  # the connection may have just closed
                pass

    def check(self, now: float) -> None:
        if self.reason is not None:
            return
        if self.deadline is not None and now >= self.deadline:
            self.stop("timeout")
            return
        if self.cancelled is not None:
            try:
                gone = self.cancelled()
            except Exception:
                gone = True
            if gone:
                self.stop("client")

    def error(self, exc: Exception, memory_setting: str) -> Exception:
        """The ldw error for ``exc``, raised while this query ran (or was interrupted)."""
        if self.reason == "timeout":
            return QueryTimeout(
                f"sql: the query ran longer than its time limit ({self.time_limit:g} s) and was "
                f"stopped; make it cheaper (filter or aggregate earlier, bound recursive CTEs) "
                f"or raise {self.time_setting}")
        if self.reason == "client":
            return Cancelled("sql: the client went away; the query was stopped")
        if self.reason == "closing":
            return ServerUnavailable("sql: the ldw server is stopping; the query was stopped. "
                                     "Run it again once the server is back")
        import duckdb

        if isinstance(exc, duckdb.Error):
            return _wrap(exc, memory_setting)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return InvalidMapping(f"sql: the query failed: {message}")


def _resolve(names: Iterable[str], tables: Mapping[str, pa.Table]) -> dict[str, pa.Table]:
    chosen: dict[str, pa.Table] = {}
    folded: dict[str, str] = {}
    for name in names:
        if name not in tables:
            known = ", ".join(sorted(tables)) or "none"
            raise UnknownDataset(f"sql reads {name!r}, which is not among the datasets given "
                                 f"({known}); map it first or check the spelling")
        table = tables[name]
        if not isinstance(table, pa.Table):
            raise TypeError(f"tables[{name!r}] must be a pyarrow.Table, "
                            f"not {type(table).__name__}")
        other = folded.setdefault(name.lower(), name)
        if other != name:
            raise InvalidMapping(f"sql reads both {other!r} and {name!r}; SQL names are "
                                 "case-insensitive, so they cannot be told apart")
        chosen[name] = table
    return chosen


def _statement_is_one_select(con, query: str) -> None:
    import duckdb

    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise _wrap(exc) from exc
    if len(statements) == 1 and statements[0].type == duckdb.StatementType.MULTI:
        raise InvalidMapping("sql: PIVOT needs the values it turns into columns: write "
                             "PIVOT t ON col IN ('a', 'b') USING sum(x)")
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise InvalidMapping("sql must be a single read-only query")


def _relation(con: Any, query: str, chosen: Mapping[str, pa.Table]) -> tuple[Any, list[str]]:
    """``query`` as a DuckDB relation over ``chosen`` on ``con``, and its DuckDB column types."""
    _statement_is_one_select(con, query)
    for name, table in chosen.items():
        con.register(name, _duckdb_ready(table))
    relation = con.sql(query)
    if relation is None:  # pragma: no cover - extract_statements said SELECT
        raise InvalidMapping("sql must be a single read-only query")
    return relation, [str(t) for t in relation.types]


class SqlEngine:
    """A sandboxed in-memory DuckDB database that runs validated queries over Arrow tables.

    Every :meth:`run` opens its own connection to the database (about 2 ms), registers there only
    the tables the query reads, as temporary views no other connection sees, and closes it
    afterwards. Holding one engine (e.g. on the server) saves creating a database per query
    (20-150 ms here); concurrent runs from several threads are fine. ``threads`` is capped at
    ``os.cpu_count()``; ``memory_limit`` (e.g. ``"4GiB"`` or ``"25%"``, shared by concurrent
    queries) defaults to DuckDB's own (80% of RAM); nothing is ever spilled to disk.
    ``time_limit`` (seconds, None for none) bounds each query from its start until its result
    has been handed over; a query over its time raises :class:`ldw.errors.QueryTimeout`.
    ``memory_setting`` and ``time_setting`` name the settings an error tells the user to raise.

    >>> import pyarrow as pa
    >>> with SqlEngine(threads=1) as engine:
    ...     engine.run("SELECT count(*) AS n FROM t", {"t": pa.table({"x": [1, 2]})}).to_pydict()
    {'n': [2]}
    """

    def __init__(self, *, threads: int | None = None, memory_limit: str | None = None,
                 time_limit: float | None = None, memory_setting: str = "memory_limit",
                 time_setting: str = "time_limit") -> None:
        import duckdb

        self.threads = _threads(threads)
        self.memory_limit = memory_limit
        self.time_limit = _time_limit(time_limit)
        self.memory_setting = memory_setting
        self.time_setting = time_setting
        try:
            self._database = _connect(threads=self.threads, memory_limit=memory_limit)
        except duckdb.Error as exc:
            raise ConfigError(f"sql: invalid engine settings: {exc}") from exc
        self._lock = threading.Lock()
        self._closed = False
        self._running: set[_Running] = set()
        self._watchdog: threading.Thread | None = None
        self._wake = threading.Condition(self._lock)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<SqlEngine duckdb threads={self.threads} memory_limit={self.memory_limit} {state}>"

    def __enter__(self) -> SqlEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Interrupt the queries still running, then release the database."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            running = list(self._running)
            self._wake.notify_all()
        for query in running:
            query.stop("closing")
        deadline = time.monotonic() + 1.0  # interrupted queries end within milliseconds
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    break
            time.sleep(0.01)
        self._database.close()

    @property
    def running(self) -> int:
        """How many queries run (or hold an unread result) right now."""
        with self._lock:
            return len(self._running)

    def _cursor(self) -> Any:
        """A new connection to the database (unwatched)."""
        with self._lock:
            if self._closed:
                raise InvalidMapping("sql: this SqlEngine is closed")
            return self._database.cursor()

    def _start(self, time_limit: float | None, time_setting: str | None,
               cancelled: Callable[[], bool] | None) -> _Running:
        """A connection for one query, watched until :meth:`_finish`."""
        with self._lock:
            if self._closed:
                raise InvalidMapping("sql: this SqlEngine is closed")
            limit = self.time_limit if time_limit is None else _time_limit(time_limit)
            query = _Running(self._database.cursor(), limit, time_setting or self.time_setting,
                             cancelled)
            self._running.add(query)
            if (query.deadline is not None or cancelled is not None) and (
                    self._watchdog is None or not self._watchdog.is_alive()):
                self._watchdog = threading.Thread(target=self._watch, name="ldw-sql-watchdog",
                                                  daemon=True)
                self._watchdog.start()
            self._wake.notify_all()
            return query

    def _finish(self, query: _Running) -> None:
        with self._lock:
            self._running.discard(query)
        query.con.close()

    def _watch(self) -> None:
        """Stop queries over their time or whose client has gone; ends with the engine."""
        with self._lock:
            while not self._closed:
                running = list(self._running)
                if not running:
                    self._wake.wait()
                    continue
                self._lock.release()
                try:
                    now = time.monotonic()
                    for query in running:
                        query.check(now)
                finally:
                    self._lock.acquire()
                self._wake.wait(WATCH_INTERVAL)

    def run(self, query: str, tables: Mapping[str, pa.Table], *,
            time_limit: float | None = None, time_setting: str | None = None,
            cancelled: Callable[[], bool] | None = None) -> pa.Table:
        """Run ``query`` over ``tables`` (name -> Arrow table); see :func:`run_sql`.

        ``time_limit`` overrides the engine's for this query (``time_setting`` names where it
        comes from); ``cancelled()`` returning True (the client went away) stops the query.
        """
        return self._execute(query, _resolve(_validate(query), tables), time_limit=time_limit,
                             time_setting=time_setting, cancelled=cancelled)

    def stream(self, query: str, tables: Mapping[str, pa.Table], *,
               time_limit: float | None = None, time_setting: str | None = None,
               cancelled: Callable[[], bool] | None = None) -> pa.RecordBatchReader:
        """Run ``query`` like :meth:`run`, but hand the result over in batches as it is read,
        so a large result is never held whole and a slow or stalled reader holds a few batches.

        A result with 128-bit integer columns (``SUM`` of integers) is materialized first:
        whether they fit 64 bits is known only once every value is. The time limit runs until
        the last batch has been read.
        """
        chosen = _resolve(_validate(query), tables)
        running = self._start(time_limit, time_setting, cancelled)
        try:
            relation, types = _relation(running.con, query, chosen)
            whole = None
            if any(t in _WIDE_INTEGERS for t in types):
                whole = _narrow_integers(relation.to_arrow_table(), types)
            else:
                reader = relation.to_arrow_reader(STREAM_BATCH_ROWS)
        except LdwError:
            self._finish(running)
            raise
        except Exception as exc:
            self._finish(running)
            raise running.error(exc, self.memory_setting) from exc
        except BaseException:
            self._finish(running)
            raise
        if whole is not None:
            self._finish(running)
            return whole.to_reader()

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                while True:
                    try:
                        batch = reader.read_next_batch()
                    except StopIteration:
                        return
                    except Exception as exc:  # DuckDB's errors, or OSError once interrupted
                        raise running.error(exc, self.memory_setting) from exc
                    yield batch
            finally:
                self._finish(running)

        return pa.RecordBatchReader.from_batches(reader.schema, batches())

    def _execute(self, query: str, chosen: Mapping[str, pa.Table], *,
                 time_limit: float | None = None, time_setting: str | None = None,
                 cancelled: Callable[[], bool] | None = None) -> pa.Table:
        running = self._start(time_limit, time_setting, cancelled)
        try:
            relation, types = _relation(running.con, query, chosen)
            return _narrow_integers(relation.to_arrow_table(), types)
        except LdwError:
            raise
        except Exception as exc:
            raise running.error(exc, self.memory_setting) from exc
        finally:
            self._finish(running)


def _time_limit(value: float | None) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigError(f"sql time limit must be a positive number of seconds, not {value!r}")
    return float(value)


def run_sql(query: str, tables: Mapping[str, pa.Table], *, threads: int | None = None,
            memory_limit: str | None = None, time_limit: float | None = None) -> pa.Table:
    """Run ``query`` with DuckDB over ``tables`` (name -> Arrow table) and return an Arrow table.

    The query is validated as in :func:`referenced_datasets` before anything runs; every dataset
    it reads must be in ``tables`` (:class:`ldw.UnknownDataset` otherwise) and only those are
    visible to it. Tables are registered zero-copy; only columns of a type DuckDB cannot read
    (decimal256, float16) are cast. Sums of integers come back as int64 when they fit. Runs in a
    fresh sandboxed database; to run many queries, hold a :class:`SqlEngine` instead.
    Errors are :class:`ldw.InvalidMapping` (bad query), :class:`ldw.CapacityExceeded` (out of
    memory), :class:`ldw.errors.QueryTimeout` (over ``time_limit`` seconds) or
    :class:`ldw.Cancelled` (interrupted).

    >>> import pyarrow as pa
    >>> t = pa.table({"k": ["a", "b", "a"], "v": [1, 2, 3]})
    >>> run_sql("SELECT k, sum(v) AS s FROM t GROUP BY k ORDER BY k", {"t": t}).to_pydict()
    {'k': ['a', 'b'], 's': [4, 2]}
    """
    chosen = _resolve(_validate(query), tables)  # reject before creating a database
    with SqlEngine(threads=threads, memory_limit=memory_limit, time_limit=time_limit) as engine:
        return engine._execute(query, chosen)
