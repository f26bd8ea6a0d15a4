"""Driver failures as ldw errors: wrapped once, at the connector boundary, naming the source by
its alias, without a password, keeping the source's own words apart (``SourceError.reason``)."""

from __future__ import annotations

import contextlib
import threading

from ldw.config import SourceConfig
from ldw.errors import SourceError, SourceTimeout, SourceUnavailable
from ldw.secrets import redact

from .dialect import GENERIC_DIALECT, Dialect

__all__ = ["interrupted_in_driver", "timeout_error", "wrap_driver_error"]


def timeout_error(source: SourceConfig, action: str, detail: str = "") -> SourceTimeout:
    """The error for a source that made no progress within its ``timeout``."""
    limit = f" within its timeout ({source.timeout:g} s)" if source.timeout else ""
    return SourceTimeout(
        f"source {source.name!r}: {action} made no progress{limit}{detail}; the table may be "
        f"locked by another session or the server is stalled. Nothing was published and the "
        f"source query was cancelled; retry later or raise [sources.{source.name}] timeout")


def interrupted_in_driver(exc: BaseException) -> bool:
    """Whether ``exc`` is a driver's answer to a SIGINT it caught itself.

    ADBC installs its own SIGINT handler around blocking calls made on the main thread; it cancels
    the statement, which then fails with status CANCELLED instead of raising KeyboardInterrupt.
    On worker threads ADBC leaves SIGINT alone: a CANCELLED there is someone's cancel request.
    (The main thread's ADBC calls are schema probes, which a statement timeout, also CANCELLED
    on PostgreSQL, does not end; reads run on workers.)
    """
    status = getattr(exc, "status_code", None)
    return (getattr(status, "name", None) == "CANCELLED"
            and threading.current_thread() is threading.main_thread())


def wrap_driver_error(source: SourceConfig, exc: BaseException, action: str, *,
                      dialect: Dialect = GENERIC_DIALECT, connecting: bool = False) -> SourceError:
    """Turn a driver failure into a SourceError naming the source alias, password removed.

    ``SourceTimeout`` when the source gave up waiting, ``SourceUnavailable`` when it cannot be
    reached or dropped the connection (both judged by ``dialect``; ``connecting`` says the
    failure happened while opening a connection), ``SourceError`` for a query the source
    rejected or failed.
    """
    secret = None
    with contextlib.suppress(Exception):
        secret = source.password()
    message = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                     [secret])
    if dialect.timed_out(exc):
        return timeout_error(source, action, f" ({message})")
    cls = SourceUnavailable if connecting or dialect.unreachable(exc) else SourceError
    error = cls(f"source {source.name!r}: {action} failed: {message}")
    primary = _primary_message(exc)
    error.reason = redact(primary, [secret]) if primary else None
    return error


def _primary_message(exc: BaseException) -> str | None:
    """The source's own words, from the fields drivers keep them in (ADBC's PostgreSQL
    diagnostics, psycopg's ``diag``, PyMySQL's ``(code, message)``), never parsed from text."""
    original = getattr(exc, "orig", None) or exc  # SQLAlchemy wraps the DBAPI error once
    for key, value in getattr(original, "details", None) or ():
        if key in (b"PG_DIAG_MESSAGE_PRIMARY", "PG_DIAG_MESSAGE_PRIMARY"):
            return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    primary = getattr(getattr(original, "diag", None), "message_primary", None)
    if isinstance(primary, str) and primary:
        return primary
    args = getattr(original, "args", ())
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str):
        return args[1]
    if original is not exc and str(original).strip():  # e.g. sqlite3: the message itself
        return str(original).strip().splitlines()[0]
    return None
