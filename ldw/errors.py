"""The one error tree of ldw.

Every failure a user can cause raises a subclass of :class:`LdwError` whose message says what
was wrong and what to do. Each class also subclasses the fitting builtin, so ``except KeyError``
keeps working for code that does not know ldw::

    LdwError(Exception)
     +-- ConfigError(ValueError)            bad ldw.toml, env var or argument
     +-- UnknownSource(KeyError)            no source by that alias
     +-- UnknownTable(KeyError)             no such schema/table in the source
     +-- UnknownDataset(KeyError)           no dataset by that name
     +-- InvalidMapping(ValueError)         bad columns / where / sql / partitioning
     |    +-- BadRequest                    a malformed request: unknown op, argument or frame
     |    +-- WhereRejected(SourceError)    the source refuses the mapping's where
     +-- UnsupportedType(TypeError)         a source type that cannot be moved exactly
     +-- AccessDenied(PermissionError)      not allowed to see this
     |    +-- AccessRevoked(UnknownDataset) a share ended while a ticket or stream was open
     +-- PolicyViolation(PermissionError)   a governance policy forbids the operation
     +-- SourceError(RuntimeError)          the source rejected a query
     |    +-- SourceUnavailable(ConnectionError)   cannot reach / lost the source
     |    +-- SourceTimeout(TimeoutError)          the source did not answer in time
     +-- QueryTimeout(TimeoutError)         a query ran longer than its time limit
     +-- ExportError(OSError)               an export could not be written or published
     |    +-- ExportVerificationError           ldw.verify_export found a damaged export
     +-- AuditUnavailable(OSError)          the audit log cannot be written: data calls refused
     +-- CapacityExceeded(MemoryError)      the cache cannot hold the data
     +-- DatasetLost(LookupError)           a memory-only version was lost; refresh() to reload
     +-- ServerUnavailable(ConnectionError) the ldw server cannot be reached or started
     +-- Cancelled(RuntimeError)            the user interrupted a read

Driver errors are wrapped once, at the connector boundary, keeping ``__cause__`` and with any
password removed from the message (see :func:`ldw.secrets.redact`).
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "AccessRevoked",
    "CapacityExceeded",
    "Cancelled",
    "ConfigError",
    "AuditUnavailable",
    "BadRequest",
    "DatasetLost",
    "ExportError",
    "ExportVerificationError",
    "InvalidMapping",
    "LdwError",
    "PolicyViolation",
    "QueryTimeout",
    "ServerUnavailable",
    "SourceError",
    "SourceTimeout",
    "SourceUnavailable",
    "UnknownDataset",
    "UnknownSource",
    "UnknownTable",
    "UnsupportedType",
    "WhereRejected",
]


class LdwError(Exception):
    """Base of every error ldw raises on purpose."""

    def __str__(self) -> str:
        # KeyError's str() adds quotes around the message; keep messages readable.
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(LdwError, ValueError):
    """The configuration (ldw.toml, LDW_* variables or arguments) is invalid."""


class UnknownSource(LdwError, KeyError):
    """No source is configured under that alias."""


class UnknownTable(LdwError, KeyError):
    """The source has no such schema, table or column."""


class UnknownDataset(LdwError, KeyError):
    """No dataset by that name is visible to the caller."""


class InvalidMapping(LdwError, ValueError):
    """A mapping's columns, predicate, SQL or partitioning is invalid."""


class BadRequest(InvalidMapping):
    """A request that is malformed as a request: an unknown operation or argument, a wrong
    argument type, a frame that is not JSON. Its own class so a caller can tell it from a
    mapping that is wrong; an ``InvalidMapping`` so code catching that keeps working."""


class UnsupportedType(LdwError, TypeError):
    """A source column type cannot be moved into Arrow exactly."""


class AccessDenied(LdwError, PermissionError):
    """The caller is not allowed to see this."""


class AccessRevoked(AccessDenied, UnknownDataset):
    """A dataset shared with the caller is no longer: a ticket or open stream ended. Also an
    ``UnknownDataset``, as a dataset that is not shared with you is everywhere else."""


class PolicyViolation(LdwError, PermissionError):
    """A governance policy forbids the operation."""


class SourceError(LdwError, RuntimeError):
    """The source rejected or failed a query. ``reason``: the source's own message, without
    the driver's wrapping (None where the driver does not give it apart)."""

    reason: str | None = None


class SourceUnavailable(SourceError, ConnectionError):
    """The source cannot be reached or the connection was lost."""


class SourceTimeout(SourceError, TimeoutError):
    """The source did not answer within the configured limit."""


class WhereRejected(InvalidMapping, SourceError):
    """The source refuses the mapping's ``where`` (a literal it cannot read as the column's
    type, an operator it does not have for those types), found when mapping, before any rows
    are read: the mapping is invalid, and the source said so (also a ``SourceError``).
    ``where`` is the text as given, ``reason`` the source's own words."""

    def __init__(self, message: str, where: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.where, self.reason = where, reason


class QueryTimeout(LdwError, TimeoutError):
    """A query (``wh.sql``) ran longer than its configured time limit and was stopped."""


class CapacityExceeded(LdwError, MemoryError):
    """The cache cannot hold the data within its memory limit."""


class Cancelled(LdwError, RuntimeError):
    """The read was interrupted by the user; the source query was cancelled."""


class DatasetLost(LdwError, LookupError):
    """A memory-only dataset's cached version was lost; it is never reloaded silently."""


class ServerUnavailable(LdwError, ConnectionError):
    """The ldw server cannot be reached (or could not be started)."""


class ExportError(LdwError, OSError):
    """An export could not be written or published, or its target is not acceptable."""


class ExportVerificationError(ExportError):
    """:func:`ldw.verify_export` with ``strict=True`` found the export damaged."""

    def __init__(self, message: str, problems: tuple = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


class AuditUnavailable(LdwError, OSError):
    """The audit record could not be written; the data-serving call was refused."""
