"""The operations a client may ask of an engine, as one table of JSON-in, JSON-out functions.

The in-process client, the local Unix-socket server and the Flight server all dispatch through
:class:`Service`, so they cannot drift apart. Arguments are checked by name (unknown ones are
rejected); results are JSON-able except for ``attach`` (a cached version) and ``scan`` (record
batches), which each transport delivers its own way.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from typing import Any

import polars as pl
import pyarrow as pa

from ldw.engine import DatasetRecord, Engine
from ldw.errors import InvalidMapping, LdwError
from ldw.lazy import polars_predicate_to_sql
from ldw.store import Version
from ldw.wire import encode_schema

__all__ = ["OPS", "STREAM_OPS", "Service"]

log = logging.getLogger("ldw.service")


def _arg(args: dict[str, Any], name: str, kind: type | tuple, *, required: bool = False) -> Any:
    value = args.get(name)
    if value is None:
        if required:
            raise InvalidMapping(f"missing argument {name!r}")
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise InvalidMapping(f"argument {name!r} has the wrong type ({type(value).__name__})")
    return value


class Service:
    """Runs one request of one user against an engine."""

    def __init__(self, engine: Engine, *,
                 describe_server: Callable[[], dict[str, Any]] | None = None) -> None:
        self.engine = engine
        self.describe_server = describe_server or (lambda: {"mode": "in-process"})

    def info(self, record: DatasetRecord) -> dict[str, Any]:
        version = record.version
        try:
            columns = [p.as_row() for p in self.engine.query(record).columns]
        except LdwError:  # source down after a restart: the stored schema still answers
            columns = [{"name": f.name, "source_type": "", "arrow_type": str(f.type),
                        "nullable": f.nullable, "note": ""} for f in record.schema]
        return {
            "name": record.name,
            "owner": record.owner,
            "state": record.state,
            "stale": record.stale,
            "source": record.mapping.source,
            "mapping": record.mapping.ref,
            "schema": encode_schema(record.schema),
            "columns": columns,
            "rows": version.rows if version else None,
            "bytes": version.bytes if version else None,
            "version": version.version_id if version else None,
            "tier": version.tier if version else None,
            "load_seconds": version.seconds if version else None,
            "source_sql": list(record.source_sql),
            "lossy": record.notes,
            "ttl": record.ttl,
            "pinned": record.pin,
            "memory_only": record.memory_only,
            "hits": record.hits,
            "bytes_served": record.bytes_served,
            "last_access": record.last_access,
            "error": record.error,
        }

    def listing(self, record: DatasetRecord) -> dict[str, Any]:
        version = record.version
        return {"name": record.name, "owner": record.owner, "mapping": record.mapping.ref,
                "state": record.state, "rows": version.rows if version else None,
                "bytes": version.bytes if version else None,
                "version": version.version_id if version else None,
                "last_access": record.last_access, "hits": record.hits,
                "pinned": record.pin, "memory_only": record.memory_only}

    # -- operations: (user, args, progress) -> JSON ------------------------------------------
    def op_sources(self, user: str, args: dict, progress: Callable | None) -> Any:
        return self.engine.sources()

    def op_tables(self, user: str, args: dict, progress: Callable | None) -> Any:
        return self.engine.tables(_arg(args, "source", str, required=True),
                                  _arg(args, "schema", str))

    def op_describe(self, user: str, args: dict, progress: Callable | None) -> Any:
        return self.engine.describe(_arg(args, "table", str, required=True))

    def op_map(self, user: str, args: dict, progress: Callable | None) -> Any:
        unknown = set(args) - {"name", "table", "sql", "source", "columns", "where", "limit",
                               "partition_on", "partitions", "ttl", "pin", "memory_only"}
        if unknown:
            raise InvalidMapping(f"map() got unknown argument(s) {sorted(unknown)}")
        record = self.engine.map(user, **args)
        return self.info(record)

    def op_info(self, user: str, args: dict, progress: Callable | None) -> Any:
        return self.info(self.engine.dataset(user, _arg(args, "name", str, required=True)))

    def op_cache(self, user: str, args: dict, progress: Callable | None) -> Any:
        name = _arg(args, "name", str, required=True)
        self.engine.materialize(user, name, progress=progress,
                                refresh=bool(args.get("refresh")))
        return self.info(self.engine.dataset(user, name))

    def op_evict(self, user: str, args: dict, progress: Callable | None) -> Any:
        name = _arg(args, "name", str, required=True)
        self.engine.evict(user, name)
        return self.info(self.engine.dataset(user, name))

    def op_set_options(self, user: str, args: dict, progress: Callable | None) -> Any:
        name = _arg(args, "name", str, required=True)
        record = self.engine.set_options(user, name, pin=args.get("pin"),
                                         ttl=_arg(args, "ttl", (str, int, float)))
        return self.info(record)

    def op_datasets(self, user: str, args: dict, progress: Callable | None) -> Any:
        return [self.listing(r) for r in self.engine.datasets(user)]

    def op_status(self, user: str, args: dict, progress: Callable | None) -> Any:
        return {**self.describe_server(), "user": user, **self.engine.status()}

    # -- data operations ----------------------------------------------------------------------
    def attach(self, user: str, args: dict, progress: Callable | None) -> tuple[dict, Version]:
        """Make sure a version is cached; return its info and the version to hand over."""
        name = _arg(args, "name", str, required=True)
        version = self.engine.attach(user, name, progress=progress)
        return self.info(self.engine.dataset(user, name)), version

    def stream(self, user: str, op: str, args: dict) -> pa.RecordBatchReader:
        """A data operation whose result is record batches: ``scan`` or ``sql``."""
        if op == "scan":
            return self._scan(user, args)
        if op == "sql":
            return self._sql(user, args)
        raise InvalidMapping(f"unknown data operation {op!r}; known: {sorted(STREAM_OPS)}")

    def _scan(self, user: str, args: dict) -> pa.RecordBatchReader:
        """Stream an uncached dataset from its source, pushing down what translates exactly."""
        name = _arg(args, "name", str, required=True)
        columns = _arg(args, "columns", list)
        limit = _arg(args, "limit", int)
        record = self.engine.dataset(user, name)
        sql_predicate, complete = None, True
        text = _arg(args, "predicate", str)
        if text is not None:
            try:
                predicate = pl.Expr.deserialize(io.StringIO(text), format="json")
            except Exception:  # another polars version: no pushdown, the client filters
                sql_predicate, complete = None, False
            else:
                sql_predicate, complete = polars_predicate_to_sql(
                    predicate, self.engine.query(record).lookup)
        batches = self.engine.scan(user, name, columns=columns, predicate=sql_predicate,
                                   limit=limit if complete else None)
        first = next(batches, None)
        if first is None:
            fields = [f for f in record.schema if columns is None or f.name in columns]
            return pa.RecordBatchReader.from_batches(pa.schema(fields), iter(()))
        return pa.RecordBatchReader.from_batches(first.schema, _chain(first, batches))

    def _sql(self, user: str, args: dict) -> pa.RecordBatchReader:
        """SQL over the caller's datasets, each read zero-copy from its cached version."""
        from ldw.sql import referenced_datasets  # noqa: PLC0415 - DuckDB loads on first use

        query = _arg(args, "query", str, required=True)
        names = referenced_datasets(query)  # validated before any dataset is touched
        tables = {name: self.engine.open(user, name) for name in names}
        return self.engine.sql_engine().run(query, tables).to_reader()


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest


STREAM_OPS = frozenset({"scan", "sql"})
OPS: dict[str, Callable[[Service, str, dict, Callable | None], Any]] = {
    name.removeprefix("op_"): getattr(Service, name)
    for name in dir(Service) if name.startswith("op_")
}
