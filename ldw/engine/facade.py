"""The engine: one owner object for sources, datasets, materialization and capacity.

``ldw.connect(in_process=True)`` runs it inside the caller; the shared server hosts the same
engine. It holds source credentials (through the connectors) and never hands them out.
Datasets belong to an owner (the OS or token user) and are keyed ``owner/name``.

The work is done by three parts, each in its own module: :class:`~ldw.engine.sources.Sources`
(browsing), :class:`~ldw.engine.datasets.Datasets` (definition and access) and
:class:`~ldw.engine.cache.Cache` (materialization and capacity); records and their states are
owned by :class:`~ldw.lifecycle.Lifecycle`. This class builds them and is the one door callers use.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from ldw.audit import AuditSeal
from ldw.catalog import Catalog, VersionRow
from ldw.config import Settings
from ldw.connectors import Connector
from ldw.engine.admin import Admin
from ldw.engine.cache import Cache
from ldw.engine.datasets import Datasets
from ldw.engine.federation import Federation
from ldw.engine.freshness import INFO_WAIT, Freshness
from ldw.engine.sources import Sources
from ldw.governance.policies import Governance
from ldw.lifecycle import DatasetRecord, Lifecycle
from ldw.planner import MappedQuery, PolicyLookup
from ldw.query_log import QueryLog
from ldw.storage import Descriptors, Version, VersionStore, make_store, with_layout
from ldw.types import Progress

__all__ = ["Engine"]

ProgressFn = Callable[[Progress], None] | None


class Engine:
    """Owns the connectors, the catalog, the dataset registry and the store.

    ``ephemeral=True`` (in-process use) keeps the catalog in memory and the store in private
    folders removed on close; otherwise the engine owns its folders and recovers them.
    """

    def __init__(self, settings: Settings, *, ephemeral: bool = False) -> None:
        self.settings = settings
        self.ephemeral = ephemeral
        memory_root, disk_root = settings.shm_dir, settings.spill_dir
        if ephemeral:
            private = f"inproc-{uuid.uuid4().hex[:10]}"
            memory_root, disk_root = memory_root / private, disk_root / private
        self.store: VersionStore = make_store(settings, memory_root, disk_root,
                                              ephemeral=ephemeral)
        self.catalog = Catalog("sqlite://" if ephemeral else settings.catalog,
                               seal=AuditSeal.ephemeral() if ephemeral else AuditSeal.open(
                                   settings.audit_key_file, settings.audit_anchor_file))
        self.governance = Governance(settings.policies, settings.users,
                                     mask_key_path=settings.mask_key_file)
        self.governance.extra_roles = self.catalog.user_roles
        self.query_log = QueryLog()  # (source alias, SQL sent), newest last
        self.lifecycle = Lifecycle(self.catalog, self.store)
        self._lock = threading.Lock()
        self._sql_engine: Any = None
        self.sources_ = Sources(settings, self.governance, self.query_log, self._masked)
        self.datasets_ = Datasets(settings, self.lifecycle, self.governance, self.catalog,
                                  self.sources_, self.sql_engine)
        self.admin = Admin(settings, self.catalog)  # users, tokens, the audit log
        self.freshness = Freshness(settings, self.lifecycle, self.store, self.sources_,
                                   self.datasets_)
        self.cache = Cache(settings, self.lifecycle, self.store, self.governance, self.sources_,
                           self.datasets_, self.sql_engine, self.query_log, self.freshness)
        self.freshness.refresh = lambda owner, name: self.cache.materialize(owner, name,
                                                                            refresh=True)
        self.federation = Federation(settings, self.datasets_, self.sources_, self.cache,
                                     self.sql_engine, self.query_log)  # SQL, read lazily
        self.cache.reclaim = self.federation.slices.make_room  # slices go before datasets
        if not ephemeral:
            self.recover()

    def _masked(self, batches: Iterator[pa.RecordBatch], query: MappedQuery
                ) -> Iterator[pa.RecordBatch]:
        return self.cache.masked(batches, query)

    def recover(self) -> dict[str, list[str]]:
        """Rebuild the registry from the catalog (see :meth:`Lifecycle.recover`)."""
        def version_of(key: str, row: VersionRow) -> Version:
            return with_layout(Version(key, row.version_id, row.path, row.rows, row.bytes,
                                       row.created, row.seconds, row.tier), row.layout)
        report = self.lifecycle.recover(version_of)
        for record in self.lifecycle.records():
            self.freshness.watch(record)
            self.cache.compact_later(record, record.version)
        return report

    # -- sources ----------------------------------------------------------------------------------
    def connector(self, source: str) -> Connector:
        return self.sources_.connector(source)

    def sources(self) -> list[dict[str, Any]]:
        return self.sources_.sources()

    def policy_lookup(self, user: str, source: str) -> PolicyLookup:
        return self.sources_.policy_lookup(user, source)

    def tables(self, user: str, source: str, schema: str | None) -> list[dict[str, Any]]:
        return self.sources_.tables(user, source, schema)

    def schemas(self, user: str, source: str) -> list[str]:
        return self.sources_.schemas(user, source)

    def preview(self, user: str, ref: str, limit: int) -> tuple[list[str], Iterator]:
        return self.sources_.preview(user, ref, limit)

    def describe(self, user: str, ref: str) -> list[dict[str, Any]]:
        return self.sources_.describe(user, ref)

    # -- definition and access --------------------------------------------------------------------
    def map(self, owner: str, name: str, table: str | None = None, *, sql: str | None = None,
            source: str | None = None, columns: Sequence[str] | None = None,
            where: str | None = None, limit: int | None = None, partition_on: str | None = None,
            partitions: int | None = None, ttl: str | float | None = None, pin: bool = False,
            memory_only: bool = False, params: dict[str, Any] | None = None,
            **freshness: str | None) -> DatasetRecord:
        """Define a dataset; the same definition again keeps its version and shares.
        ``freshness``: incremental, key, watermark and refresh (see Datasets.map)."""
        record = self.datasets_.map(owner, name, table, sql=sql, source=source,
                                    columns=columns, where=where, limit=limit,
                                    partition_on=partition_on, partitions=partitions, ttl=ttl,
                                    pin=pin, memory_only=memory_only, params=params, **freshness)
        self.freshness.watch(record)
        return record

    def map_derived(self, owner: str, name: str, query: str, *,
                    ttl: str | float | None = None, pin: bool = False) -> DatasetRecord:
        return self.datasets_.map_derived(owner, name, query, ttl=ttl, pin=pin)

    def dataset(self, owner: str, name: str) -> DatasetRecord:
        return self.datasets_.dataset(owner, name)

    def datasets(self, owner: str | None = None) -> list[DatasetRecord]:
        return self.lifecycle.records(owner)

    def query(self, record: DatasetRecord) -> MappedQuery | None:
        return self.datasets_.query(record)

    def set_options(self, owner: str, name: str, *, pin: bool | None = None,
                    ttl: str | float | None = None) -> DatasetRecord:
        return self.datasets_.set_options(owner, name, pin=pin, ttl=ttl)

    def current_policy(self, user: str, record: DatasetRecord) -> str:
        return self.datasets_.current_policy(user, record)

    def readable(self, user: str, owner: str, name: str) -> DatasetRecord:
        return self.datasets_.readable(user, owner, name)

    def visible(self, user: str, *, everything: bool = False) -> list[DatasetRecord]:
        return self.datasets_.visible(user, everything=everything)

    def known_users(self) -> set[str]:
        return self.datasets_.known_users()

    def known_roles(self) -> set[str]:
        return self.datasets_.known_roles()

    def check_user(self, user: str) -> None:
        self.datasets_.check_user(user)

    def check_stream(self, user: str, owner: str, name: str, policy: str) -> None:
        self.datasets_.check_stream(user, owner, name, policy)

    @property
    def governed(self) -> bool:
        """Whether any governance policy is configured (and so enforced)."""
        return self.governance.enforced

    def roles(self, user: str) -> set[str]:
        return set(self.governance.roles(user))

    def grants(self, owner: str, name: str) -> list[tuple[str, str]]:
        return self.catalog.grants(owner, name)

    def share(self, owner: str, name: str, *, user: str | None = None,
              role: str | None = None, revoke: bool = False) -> list[tuple[str, str]]:
        return self.datasets_.share(owner, name, user=user, role=role, revoke=revoke)

    # -- materialization and capacity -------------------------------------------------------------
    def materialize(self, owner: str, name: str, *, progress: ProgressFn = None,
                    refresh: bool = False, full: bool = False) -> Version:
        return self.cache.materialize(owner, name, progress=progress, refresh=refresh,
                                      full=full)

    def look(self, record: DatasetRecord, wait: float = INFO_WAIT) -> None:
        """Check the record's source for changes if due, waiting at most ``wait`` seconds."""
        self.freshness.look(record, wait)

    def make_room(self, needed: int, writing: DatasetRecord | None = None) -> int:
        return self.cache.make_room(needed, writing)

    def attach(self, owner: str, name: str, *, progress: ProgressFn = None) -> Version:
        return self.cache.attach(owner, name, progress=progress)

    def open_current(self, owner: str, name: str, *, progress: ProgressFn = None
                     ) -> tuple[Version, Descriptors]:
        """The current version and read-only descriptors of its files; once open, the
        descriptors keep the bytes whatever happens to the files."""
        return self.cache.open_with(self.store.open_readonly, owner, name, progress)

    def open_table(self, owner: str, name: str, *, progress: ProgressFn = None
                   ) -> tuple[Version, pa.Table]:
        """The current version and its table (memory-mapped locally, zero-copy from the node's
        object store on Ray); materialized first if needed, recomputed if its bytes were lost."""
        return self.cache.open_with(self.store.open_table, owner, name, progress)

    def open_with(self, opener: Callable[[Version], Any], owner: str, name: str,
                  progress: ProgressFn) -> tuple[Version, Any]:
        return self.cache.open_with(opener, owner, name, progress)

    def attach_ticket(self, owner: str, name: str, progress: ProgressFn
                      ) -> tuple[Version, str | None]:
        return self.cache.attach_ticket(owner, name, progress)

    def open(self, owner: str, name: str) -> pa.Table:
        return self.cache.open(owner, name)

    def peek(self, owner: str, name: str, limit: int) -> tuple[Version, pa.Table] | None:
        return self.cache.peek(owner, name, limit)

    def version_lost(self, owner: str, name: str, version: Version) -> None:
        self.cache.version_lost(owner, name, version)

    def evict(self, owner: str, name: str, *, reason: str = "evicted") -> None:
        self.cache.evict(owner, name, reason=reason)

    def expire(self) -> int:
        return self.cache.expire()

    def drop_cache(self) -> dict[str, Any]:
        """Drop every cached version (the mappings stay); what was dropped, per tier."""
        return self.cache.drop_all()

    def reload(self, settings: Settings) -> dict[str, Any]:
        """Take the sources, policies, users and [refresh] rules of ``settings``; the cache
        stays (see :mod:`ldw.engine.reload`)."""
        from ldw.engine.reload import reload_engine

        return reload_engine(self, settings)

    def scan(self, owner: str, name: str, *, columns: Sequence[str] | None = None,
             predicate: sa.ColumnElement | None = None, limit: int | None = None
             ) -> tuple[list[str], Iterator[pa.RecordBatch]]:
        return self.cache.scan(owner, name, columns=columns, predicate=predicate, limit=limit)

    def status(self, records: Sequence[DatasetRecord] | None = None) -> dict[str, Any]:
        """The server's capacity and use; dataset counts, hits and bytes served only of
        ``records`` (default: all), so a caller is told only of datasets they may know of."""
        return self.cache.status(self.datasets() if records is None else list(records))

    # -- SQL over datasets, and the end -----------------------------------------------------------
    def sql_engine(self) -> Any:
        """The sandboxed DuckDB engine for SQL over datasets, created on first use."""
        with self._lock:
            if self._sql_engine is None:
                from ldw.sql import SqlEngine

                self._sql_engine = SqlEngine(
                    memory_limit=self.settings.sql_memory_limit,
                    time_limit=self.settings.sql_timeout,
                    memory_setting="[server] sql_memory_limit",
                    time_setting="[server] sql_timeout")
            return self._sql_engine

    def stop_queries(self) -> None:
        """Interrupt the SQL queries still running and refuse new ones (the server stops)."""
        with self._lock:
            sql = self._sql_engine
        if sql is not None:
            sql.close()

    def close(self) -> None:
        self.freshness.close()
        self.federation.slices.clear()
        self.cache.close()
        self.sources_.close()
        with self._lock:
            if self._sql_engine is not None:
                self._sql_engine.close()
        self.catalog.close()
        self.store.close()
        if self.ephemeral:
            for root in self.store.roots.values():
                shutil.rmtree(root, ignore_errors=True)
