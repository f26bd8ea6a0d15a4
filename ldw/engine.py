"""The engine: sources, mappings, materialization and the store, in one owner object.

``ldw.connect(in_process=True)`` runs it inside the caller; the shared server hosts the same
engine. It holds source credentials (through the connectors) and never hands them out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from ldw.config import Settings, parse_duration
from ldw.connectors import Connector, connector_for
from ldw.connectors.convert import target_schema
from ldw.errors import InvalidMapping, UnknownDataset
from ldw.planner import (
    MappedQuery,
    Mapping,
    narrow,
    parse_table_ref,
    plan_mapping,
    read_plan,
    single_plan,
)
from ldw.store import Progress, Store, Version

__all__ = ["DatasetRecord", "Engine"]

log = logging.getLogger("ldw.engine")

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


@dataclass
class DatasetRecord:
    """Everything the engine knows about one dataset."""

    mapping: Mapping
    query: MappedQuery
    schema: pa.Schema
    ttl: float | None = None
    pin: bool = False
    memory_only: bool = False
    state: str = "mapped"
    version: Version | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    last_access: float | None = None
    hits: int = 0
    source_sql: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def notes(self) -> dict[str, str]:
        return {p.name: p.note for p in self.query.columns if p.note}

    def expired(self) -> bool:
        return (self.version is not None and self.ttl is not None
                and time.time() - self.version.created > self.ttl)


class Engine:
    """Owns the connectors, the dataset registry and the store for one settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = Store(settings.shm_dir, memory_limit=settings.memory_limit)
        self._connectors: dict[str, Connector] = {}
        self._datasets: dict[str, DatasetRecord] = {}
        self._lock = threading.RLock()
        self.query_log: list[tuple[str, str]] = []  # (source alias, SQL sent), newest last

    # -- sources ------------------------------------------------------------------------------
    def connector(self, source: str) -> Connector:
        with self._lock:
            if source not in self._connectors:
                config = self.settings.source(source)
                self._connectors[source] = connector_for(config,
                                                         batch_rows=self.settings.batch_rows)
            return self._connectors[source]

    def sources(self) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "dialect": s.dialect, "host": s.url.host, "port": s.url.port,
             "database": s.url.database, "user": s.url.username,
             "transport": connector_for(s).transport}
            for s in self.settings.sources.values()
        ]

    def tables(self, source: str, schema: str | None) -> list[dict[str, Any]]:
        return self.connector(source).tables(schema)

    def describe(self, ref: str) -> list[dict[str, Any]]:
        source, schema, table = parse_table_ref(ref)
        connector = self.connector(source)
        query = plan_mapping(connector, Mapping("describe", source, schema, table))
        reflected = {c.name: c for c in connector.reflect(schema, table).columns}
        rows = []
        for plan in query.columns:
            row = plan.as_row()
            column = reflected.get(plan.name)
            if column is not None:
                if not isinstance(column.type, sa.types.NullType):
                    row["source_type"] = str(column.type.compile(
                        dialect=connector.engine.dialect))
                row["nullable"] = bool(column.nullable)
            row["policy_tags"] = []
            rows.append(row)
        return rows

    # -- datasets ------------------------------------------------------------------------------
    def map(self, name: str, table: str | None = None, *, sql: str | None = None,
            source: str | None = None, columns: Sequence[str] | None = None,
            where: str | None = None, limit: int | None = None, partition_on: str | None = None,
            partitions: int | None = None, ttl: str | float | None = None, pin: bool = False,
            memory_only: bool = False, replace: bool = True) -> DatasetRecord:
        if not isinstance(name, str) or not name or not set(name) <= _NAME_OK:
            raise InvalidMapping(f"dataset name {name!r} must be letters, digits, '_' or '-'")
        if (table is None) == (sql is None):
            raise InvalidMapping("map needs either a table (\"src.schema.table\") or sql=... ")
        if sql is not None:
            if source is None:
                raise InvalidMapping("map(sql=...) needs source= naming the configured source")
            mapping = Mapping(name, source, sql=sql)
        else:
            if source is not None:
                raise InvalidMapping("source= goes with sql=; a table reference names its source")
            src, schema, tbl = parse_table_ref(table)
            mapping = Mapping(name, src, schema, tbl)
        mapping = Mapping(
            **{**mapping.__dict__, "columns": tuple(columns) if columns is not None else None,
               "where": where, "limit": limit, "partition_on": partition_on,
               "partitions": partitions if partitions is not None else (
                   2 if partition_on else 1)})
        query = plan_mapping(self.connector(mapping.source), mapping)
        record = DatasetRecord(mapping, query, target_schema(query.columns),
                               ttl=parse_duration(ttl), pin=pin, memory_only=memory_only)
        with self._lock:
            old = self._datasets.get(name)
            if old is not None and not replace:
                raise InvalidMapping(f"dataset {name!r} exists; evict it or pick another name")
            self._datasets[name] = record
        if old is not None and old.version is not None:
            self.store.delete(old.version)
        return record

    def dataset(self, name: str) -> DatasetRecord:
        with self._lock:
            record = self._datasets.get(name)
        if record is None:
            known = ", ".join(sorted(self._datasets)) or "none"
            raise UnknownDataset(f"no dataset named {name!r} (yours: {known}); map it first")
        if record.expired():
            self.evict(name)
        return record

    def datasets(self) -> list[DatasetRecord]:
        with self._lock:
            return list(self._datasets.values())

    def _run(self, record: DatasetRecord, progress: Callable[[Progress], None] | None) -> Version:
        connector = self.connector(record.mapping.source)
        query = record.query
        partitioned = record.mapping.partition_on is not None and record.mapping.partitions > 1
        with connector.snapshot(query.tables, partitioned=partitioned) as snapshot:
            plan = read_plan(connector, query, snapshot)
            record.source_sql = [q.sql for q in plan.queries]
            self.query_log.extend((record.mapping.source, q.sql) for q in plan.queries)
            cancel = threading.Event()
            batches = connector.stream(plan, cancel, snapshot)
            try:
                return self.store.write(record.mapping.name, record.schema, batches,
                                        progress=progress)
            except BaseException:
                cancel.set()
                batches.close()
                connector.cancel_tagged(plan.tag)
                raise

    def materialize(self, name: str, *, progress: Callable[[Progress], None] | None = None,
                    refresh: bool = False) -> Version:
        """Cache a dataset (single flight: concurrent callers wait for one source read)."""
        record = self.dataset(name)
        with record.lock:
            if record.version is not None and not refresh:
                return record.version
            previous, record.state, record.error = record.version, "materializing", None
            try:
                version = self._run(record, progress)
            except BaseException as exc:
                record.state = "cached" if previous is not None else "failed"
                record.error = str(exc) if isinstance(exc, Exception) else "interrupted"
                raise
            record.version, record.state = version, "cached"
            log.info("materialized %s: %d rows, %d bytes in %.2fs", name, version.rows,
                     version.bytes, version.seconds)
        if previous is not None:
            self.store.delete(previous)
        return version

    def open(self, name: str) -> pa.Table:
        """The cached table, memory-mapped; materialized first if needed."""
        record = self.dataset(name)
        version = record.version or self.materialize(name)
        record.hits += 1
        record.last_access = time.time()
        return self.store.open(version)

    def evict(self, name: str) -> None:
        record = self.dataset(name) if name in self._datasets else None
        if record is None:
            raise UnknownDataset(f"no dataset named {name!r}")
        with record.lock:
            if record.version is not None:
                self.store.delete(record.version)
            record.version, record.state = None, "evicted"

    def scan(self, name: str, *, columns: Sequence[str] | None = None,
             predicate: sa.ColumnElement | None = None, limit: int | None = None
             ) -> Iterator[pa.RecordBatch]:
        """Stream from the source with pushdown (a lazy read of an uncached dataset)."""
        record = self.dataset(name)
        connector = self.connector(record.mapping.source)
        query = narrow(record.query, columns=columns, predicate=predicate, limit=limit)
        plan = single_plan(connector, query)
        self.query_log.extend((record.mapping.source, q.sql) for q in plan.queries)
        cancel = threading.Event()
        stream = connector.stream(plan, cancel)
        try:
            yield from stream
        finally:
            if not cancel.is_set():
                cancel.set()
            stream.close()

    def status(self) -> dict[str, Any]:
        records = self.datasets()
        return {
            "mode": "in-process",
            "shm_dir": str(self.settings.shm_dir),
            "memory_limit": self.settings.memory_limit,
            "used_bytes": self.store.used_bytes(),
            "datasets": len(records),
            "cached": sum(r.version is not None for r in records),
            "hits": {r.mapping.name: r.hits for r in records},
        }

    def close(self) -> None:
        with self._lock:
            for connector in self._connectors.values():
                connector.close()
            self._connectors.clear()
