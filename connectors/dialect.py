"""What a connector knows about its SQL dialect, as data: ``Dialect``.

Each connector class carries one (``PostgresConnector.dialect``, ``MySQLConnector.dialect``,
...): which driver error codes mean the source is unreachable or gave up waiting, how to cancel
a tagged query from another connection, the statement that makes a session read-only, the
sqlglot dialect that parses its SQL and the few SQL functions whose names differ between
dialects (used by column masks). The generic SQLAlchemy connector borrows the ``Dialect`` of the
family's own connector, or one of its own table (``connectors.generic.FAMILY_DIALECTS``).

How an error is judged is the same for every dialect: a structured code first (``error_code``:
SQLSTATE, MySQL error number, SQLite result code), then driver-level facts shared by all (ADBC
status, OS errno, PEP 249 class names), and only for an error carrying none of them its message
(ConnectorX raises plain RuntimeErrors; libpq reports a lost socket without a SQLSTATE).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import sqlalchemy as sa

__all__ = ["GENERIC_DIALECT", "CancelByTag", "Dialect", "ErrorCode", "explained_rows",
           "sqlstate_of"]

ErrorCode = str | int


class CancelByTag(NamedTuple):
    """How to cancel a running query from another connection: ``find`` lists the ids of the
    queries whose text matches the bound ``pattern`` (never our own connection); ``kill``
    cancels one, with its id (an int) formatted in as ``{id}``."""

    find: str
    kill: str


def explained_rows(names: list[str], rows: list[tuple]) -> int | None:
    """Rows estimated by an EXPLAIN: PostgreSQL's JSON plan, or a MySQL/MariaDB table whose
    ``rows`` column is multiplied over the tables it joins."""
    import json

    if names and names[0].upper() == "QUERY PLAN" and rows:
        plan = rows[0][0]
        plan = json.loads(plan) if isinstance(plan, str) else plan
        return int(plan[0]["Plan"]["Plan Rows"])
    if "rows" in names:
        total = 1
        for row in rows:
            value = row[names.index("rows")]
            total *= int(value) if value is not None else 1
        return total if rows else None
    return None


def sqlstate_of(exc: BaseException) -> ErrorCode | None:
    """The SQLSTATE a driver error carries (psycopg, ADBC), if any."""
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate if isinstance(sqlstate, str) and sqlstate else None


# SQLSTATE class 08 (connection exception) means unreachable in every SQL dialect.
STANDARD_UNAVAILABLE: frozenset[ErrorCode] = frozenset({"08"})

# Driver- and OS-level facts that hold whatever the dialect.
_UNREACHABLE_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH,
    errno.ENETUNREACH, errno.ENETDOWN, errno.ETIMEDOUT, errno.EPIPE, errno.ENOTCONN,
})
_UNREACHABLE_WORDS = ("connection refused", "connection reset", "failed to connect",
                      "name or service not known", "broken pipe")


@dataclass(frozen=True)
class Dialect:
    """One SQL dialect's facts; see the module docstring. Codes in ``unavailable_codes`` and
    ``timeout_codes`` match exactly or, for a 2-character string, as a SQLSTATE class."""

    name: str
    sqlglot: str | None = None
    error_code: Callable[[BaseException], ErrorCode | None] = sqlstate_of
    unavailable_codes: frozenset[ErrorCode] = STANDARD_UNAVAILABLE
    timeout_codes: frozenset[ErrorCode] = frozenset()
    unavailable_words: tuple[str, ...] = ()  # in messages without a code (ConnectorX, libpq)
    timeout_words: tuple[str, ...] = ()
    cancel: CancelByTag | None = None
    read_only: str | None = None  # run on every new connection: the source refuses writes
    # the planner's estimate of a query's rows: the prefix that asks for it (a constant) and
    # how to read the answer (column names, rows) -> rows
    explain: str | None = None
    explain_rows: Callable[[list[str], list[tuple]], int | None] | None = None
    # SQL functions column masks use, where dialects name them differently
    text_length: Callable[[Any], Any] = sa.func.char_length
    text_right: Callable[[Any, int], Any] = sa.func.right
    concat: Callable[..., Any] = sa.func.concat

    @staticmethod
    def _matches(code: ErrorCode, codes: frozenset[ErrorCode]) -> bool:
        return code in codes or (isinstance(code, str) and code[:2] in codes)

    def timed_out(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the source giving up on a wait (a lock, a statement limit)."""
        if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
            exc = exc.orig
        code = self.error_code(exc)
        if code is not None:
            return self._matches(code, self.timeout_codes)
        return any(word in str(exc).lower() for word in self.timeout_words)

    def unreachable(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the source cannot be reached or dropped the connection."""
        decided = self._unreachable(exc)
        if decided is not None:
            return decided
        text = str(exc).lower()
        return any(word in text for word in (*_UNREACHABLE_WORDS, *self.unavailable_words))

    def _unreachable(self, exc: BaseException) -> bool | None:
        """True/False when a structured field of ``exc`` decides, None when nothing does."""
        if isinstance(exc, sa.exc.DBAPIError):
            if exc.connection_invalidated:
                return True
            return self._unreachable(exc.orig) if exc.orig is not None else None
        code = self.error_code(exc)
        if code is not None:
            return self._matches(code, self.unavailable_codes)
        status = getattr(exc, "status_code", None)  # ADBC
        if status is not None:
            # An ADBC I/O status without a SQLSTATE is a lost socket or a failed value
            # conversion alike; any other status (invalid data, ...) is the query's own failure.
            return None if getattr(status, "name", None) == "IO" else False
        if isinstance(exc, ConnectionError | TimeoutError | socket.gaierror):
            return True
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc.errno in _UNREACHABLE_ERRNOS
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "DatabaseError" in names or "InterfaceError" in names:
            # A PEP 249 error without a code comes from the client side: failing to connect,
            # or losing the connection, is what OperationalError means there.
            return "OperationalError" in names or "InterfaceError" in names
        return None


# A dialect ldw knows nothing particular about: SQLSTATE class 08 and driver-level facts only.
GENERIC_DIALECT = Dialect("generic")
