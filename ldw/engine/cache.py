"""Materialization and capacity: reading a dataset's source into a new version, serving the
current version, and making room in the memory tier (spill, drop, evict, expire)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pyarrow as pa
import sqlalchemy as sa

from ldw.config import Settings
from ldw.connectors import Connector
from ldw.engine.datasets import Datasets
from ldw.engine.freshness import Freshness
from ldw.engine.sources import Sources
from ldw.errors import (
    BadRequest,
    Cancelled,
    CapacityExceeded,
    DatasetLost,
    LdwError,
    SourceUnavailable,
    UnknownDataset,
)
from ldw.governance.policies import Governance
from ldw.layout import standard_table
from ldw.lifecycle import DatasetRecord, Lifecycle
from ldw.planner import MappedQuery, narrow, read_plan, single_plan
from ldw.query_log import QueryLog
from ldw.storage import DISK, MEMORY, Version, VersionLost, VersionStore
from ldw.types import DatasetState, Progress

__all__ = ["Cache"]

log = logging.getLogger("ldw.engine")

T = TypeVar("T")
COMPACTION_YIELD = 10.0  # seconds a write waits for a cancelled compaction to stop writing
ProgressFn = Callable[[Progress], None] | None


def _tracked(record: DatasetRecord, progress: ProgressFn) -> ProgressFn:
    """``progress``, also keeping the last report on the record: ``info()`` shows how far a
    materialization got to anyone who looks (a panel, another notebook), not only its caller."""
    def report(p: Progress) -> None:
        record.progress = p
        if progress is not None:
            progress(p)
    return report


class Cache:
    """Puts dataset versions into the store and serves them."""

    def __init__(self, settings: Settings, lifecycle: Lifecycle, store: VersionStore,
                 governance: Governance, sources: Sources, datasets: Datasets,
                 sql_engine: Callable[[], Any], query_log: QueryLog,
                 freshness: Freshness | None = None) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.store = store
        self.governance = governance
        self.sources = sources
        self.datasets = datasets
        self.sql_engine = sql_engine
        self.query_log = query_log
        self.freshness = freshness
        # frees memory held by automatically cached slices first (set by the engine)
        self.reclaim: Callable[[int], int] | None = None
        self._stop = threading.Event()
        self._compactor = ThreadPoolExecutor(1, thread_name_prefix="ldw-compact")
        self._compacting_lock = threading.Lock()
        # the running compaction's (cancel, written): set cancel and it stops writing, giving
        # its bytes of the memory tier back; written is set once it no longer writes
        self._compacting: tuple[threading.Event, threading.Event] | None = None

    # -- reading a source -------------------------------------------------------------------------
    def _log(self, record: DatasetRecord, sql: Sequence[str]) -> None:
        self.query_log.extend((record.mapping.source, q) for q in sql)
        record.source_queries += len(sql)

    def _run_derived(self, record: DatasetRecord, progress: ProgressFn) -> Version:
        from ldw.sql import referenced_datasets

        query = record.mapping.sql or ""
        tables = {}
        for ref in referenced_datasets(query):
            other, _, name = ref.rpartition("/")
            source = self.datasets.readable(record.owner, other or record.owner, name)
            tables[ref] = self.open(source.owner, source.name)  # access is checked again, now
        limit, setting = self.settings.sql_timeout_for(record.owner)
        result = self.sql_engine().run(query, tables, time_limit=limit, time_setting=setting)
        record.source_sql = [query]
        return self.store.write(record.key, record.schema, result.to_batches(),
                                progress=progress, make_room=lambda n: self.make_room(n, record))

    def _run(self, record: DatasetRecord, progress: ProgressFn) -> Version:
        if record.derived:
            return self._run_derived(record, progress)
        connector = self.sources.connector(record.mapping.source)
        query = self.datasets.query(record)
        partitioned = record.mapping.partition_on is not None and record.mapping.partitions > 1
        with connector.read_slots(record.mapping.partitions, all_at_once=self.store.distributed), \
                connector.snapshot(query.tables, partitioned=partitioned) as snapshot:
            plan = read_plan(connector, query, snapshot)
            record.source_sql = [q.sql for q in plan.queries]
            self._log(record, record.source_sql)
            if self.store.distributed and connector.supports_distributed_reads:
                return self._write_partitions(record, connector, plan, query, snapshot,
                                              progress)
            cancel = threading.Event()
            batches = connector.stream(plan, cancel, snapshot)
            masked = self.masked(batches, query)
            try:
                return self.store.write(record.key, record.schema, masked, progress=progress,
                                        make_room=lambda n: self.make_room(n, record))
            except BaseException as exc:
                cancel.set()
                batches.close()  # the connector cancels its own source queries
                if not isinstance(exc, SourceUnavailable):  # no point knocking on a dead source
                    connector.cancel_tagged(plan.tag)
                raise

    def _write_partitions(self, record: DatasetRecord, connector: Connector, plan: Any,
                          query: MappedQuery, snapshot: Any, progress: ProgressFn) -> Version:
        """A distributed store: every partition query runs where the store keeps its data,
        importing the snapshot this server exported; masks are applied there, before storing."""
        try:
            return self.store.write_partitions(
                record.key, connector, plan, snapshot, record.schema, masks=query.arrow_masks,
                mask_key=self.governance.mask_key if query.arrow_masks else None,
                progress=progress, make_room=lambda n: self.make_room(n, record))
        except BaseException as exc:
            if not isinstance(exc, SourceUnavailable):
                connector.cancel_tagged(plan.tag)
            raise

    def masked(self, batches: Iterator[pa.RecordBatch], query: MappedQuery
               ) -> Iterator[pa.RecordBatch]:
        """The batches with the query's Arrow-side masks applied (governance owns masks)."""
        return self.governance.mask_batches(batches, query.arrow_masks)

    def materialize(self, owner: str, name: str, *, progress: ProgressFn = None,
                    refresh: bool = False, full: bool = False) -> Version:
        """Cache a dataset (single flight: concurrent callers wait for one source read). A
        refresh of a cached dataset declared ``incremental`` reads only what changed, unless
        ``full`` or the change is one the mode cannot express."""
        record = self.datasets.dataset(owner, name)
        with record.lock:
            if record.version is not None and not refresh:
                return record.version
            if record.state == DatasetState.LOST and not refresh:
                raise DatasetLost(
                    f"dataset {name!r} is memory-only and its cached version was lost (server "
                    "restart or crash); call refresh() to read the source again")
            if record.memory_only:
                self.store.check_memory_only(record.key)
            counters = self.freshness.counters(record) if self.freshness \
                else (None, False, time.time())
            previous = self.lifecycle.start(record)
            progress = _tracked(record, progress)
            try:
                version, reason = None, "full=True" if full and previous else None
                maxima = None  # of the new version's key and watermark, if known already
                if previous is not None and not full and record.mapping.incremental:
                    version, maxima = self._run_incremental(record, previous, progress)
                    reason = record.freshness.pop("fallback", None)
                if version is None:
                    started = time.perf_counter()
                    version = self._run(record, self._estimating(record, previous, progress))
                    self._note_refresh(record, "full", started, version.rows, version.bytes,
                                       reason=reason)
                token = self._baseline(record, version, counters, maxima)
            except BaseException as exc:
                self.lifecycle.failed(record, previous, exc)
                raise
            finally:
                record.progress = None
            if version is previous:
                self.lifecycle.kept(record, version, token)
                return version
            self.lifecycle.published(record, version, token)
            log.info("materialized %s: %d rows, %d bytes in %.2fs", record.key, version.rows,
                     version.bytes, version.seconds)
        if previous is not None:
            self.lifecycle.drop_version(previous)
        self.compact_later(record, version)
        return version

    def _estimating(self, record: DatasetRecord, previous: Version | None,
                    progress: ProgressFn) -> ProgressFn:
        """``progress`` with ``total_rows`` filled in once the size of the read is known: the
        previous version's rows for a refresh, else the source planner's estimate, asked on
        the side so the read never waits for it."""
        if progress is None:
            return None
        known: list[int | None] = [previous.rows if previous is not None else None]
        if known[0] is None and not record.derived:
            connector = self.sources.connector(record.mapping.source)
            plan = single_plan(connector, self.datasets.query(record))

            def ask() -> None:
                try:
                    known[0] = connector.estimate_rows(plan.queries[0])
                except Exception:  # only the progress display misses it
                    log.debug("no row estimate for %s", record.key, exc_info=True)

            threading.Thread(target=ask, name="ldw-estimate", daemon=True).start()

        def report(event: Progress) -> None:
            total = known[0]
            if total is not None and event.total_rows is None:
                event = dataclasses.replace(
                    event, total_rows=event.rows if event.done else max(total, event.rows))
            progress(event)

        return report

    # -- compaction -------------------------------------------------------------------------------
    def compact_later(self, record: DatasetRecord, version: Version | None) -> None:
        """Write a version of several files into fewer, in the background (see
        :meth:`VersionStore.compact`): the refresh that made it does not wait for that."""
        if version is not None and (len(version.files) > 1 or version.keep is not None):
            with contextlib.suppress(RuntimeError):  # shut down: it stays as it is
                self._compactor.submit(self._compact, record, version)

    def _compact(self, record: DatasetRecord, version: Version) -> None:
        if self._stop.is_set() or record.version != version:
            return
        cancel, written = threading.Event(), threading.Event()
        with self._compacting_lock:
            self._compacting = (cancel, written)
        try:
            if self._stop.is_set():
                return
            compacted = self.store.compact(version, cancel=cancel)
        except (CapacityExceeded, Cancelled, FileNotFoundError) as exc:
            log.info("%s stays in %d files: %s", record.key, len(version.files),
                     type(exc).__name__)
            return
        except Exception:  # (the version is fine as it is)
            log.warning("could not compact %s", record.key, exc_info=True)
            return
        finally:
            written.set()
            with self._compacting_lock:
                self._compacting = None
        if compacted is None:
            return
        current = False
        try:
            with record.lock:  # a refresh, spill or eviction meanwhile wins
                current = record.version == version
                if current:
                    self.lifecycle.compacted(record, compacted)
        except Exception:
            current = False
            log.warning("could not publish the compacted %s", record.key, exc_info=True)
        self.store.delete(version if current else compacted)  # readers keep their mappings
        if current:
            log.info("compacted %s: %d files -> %d", record.key, len(version.files),
                     len(compacted.files))

    def _yield_compaction(self) -> None:
        """A write needs room: a running compaction (optional work) stops writing and gives
        its bytes back (waiting for its end could wait for a lock the writer holds)."""
        with self._compacting_lock:
            running = self._compacting
        if running is not None:
            cancel, written = running
            cancel.set()
            written.wait(COMPACTION_YIELD)

    def close(self) -> None:
        """Stop compacting (a running one is abandoned) and wait for it."""
        self._stop.set()
        with self._compacting_lock:
            if self._compacting is not None:
                self._compacting[0].set()
        self._compactor.shutdown(wait=True, cancel_futures=True)

    def _baseline(self, record: DatasetRecord, version: Version,
                  counters: tuple[Any, bool, float],
                  maxima: dict[str, Any] | None = None) -> dict[str, Any] | None:
        if self.freshness is None:
            return None
        try:
            return self.freshness.baseline(record, version, counters, maxima)
        except Exception:  # (the version is good; its freshness reads unknown)
            log.warning("no freshness baseline for %s", record.key, exc_info=True)
            return None

    def _note_refresh(self, record: DatasetRecord, mode: str, started: float, rows: int,
                      nbytes: int, *, reason: str | None = None) -> None:
        record.freshness = {**record.freshness, "last_refresh": {
            "mode": mode, "reason": reason, "rows_read": rows, "bytes_read": nbytes,
            "seconds": round(time.perf_counter() - started, 4), "at": time.time()}}

    def _run_incremental(self, record: DatasetRecord, previous: Version, progress: ProgressFn
                         ) -> tuple[Version | None, dict[str, Any] | None]:
        """old version + what changed, ``previous`` itself if nothing did, None when only a
        full read is right (the reason is kept in the record's freshness); and the new
        version's maxima of its key and watermark, when it is new."""
        from ldw.engine.incremental import Increment, read_increment

        started = time.perf_counter()
        connector = self.sources.connector(record.mapping.source)
        query = self.datasets.query(record)
        try:
            old = self.store.open_table(previous)
        except (VersionLost, FileNotFoundError):
            return None, None
        mode = record.mapping.incremental or "full"
        with ThreadPoolExecutor(1, thread_name_prefix="ldw-extend") as pool:
            writing: Future[Version] | None = None

            def ready(increment: Increment) -> None:  # written while the probe finishes
                nonlocal writing
                writing = pool.submit(
                    self.store.extend, previous, record.schema, increment.batches,
                    replace_key=increment.replace_key, replaced=increment.replaced,
                    progress=progress, make_room=lambda n: self.make_room(n, record))

            try:
                found = read_increment(connector, record, query, old, self.masked, ready)
            except BaseException:
                self._discard(writing)
                raise
            self._log(record, found.sql)
            if found.fallback is not None:
                self._discard(writing)
            version = writing.result() if writing is not None and found.fallback is None \
                else None
        if found.fallback is not None:
            log.info("%s: full refresh: %s", record.key, found.fallback)
            record.freshness = {**record.freshness, "fallback": found.fallback}
            return None, None
        if version is None:
            self._note_refresh(record, mode, started, 0, 0, reason="no change in the source")
            return previous, None
        record.source_sql = list(found.sql)
        self._note_refresh(record, mode, started, found.rows, found.bytes)
        return version, found.maxima

    def _discard(self, writing: Future[Version] | None) -> None:
        """Drop the version a write made for an increment that will not be published."""
        if writing is None:
            return
        try:
            version = writing.result()
        except BaseException:  # (the write failed: nothing to drop)
            return
        self.store.delete(version)

    # -- capacity ---------------------------------------------------------------------------------
    def make_room(self, needed: int, writing: DatasetRecord | None = None) -> int:
        """Free ``needed`` bytes of the memory tier: drop automatically cached slices, stop a
        background compaction, then spill the least recently used unpinned versions to disk;
        memory-only ones are dropped instead (they never touch disk)."""
        freed = self.reclaim(needed) if self.reclaim is not None else 0
        if freed < needed:
            before = self.store.used_bytes()
            self._yield_compaction()
            freed += max(before - self.store.used_bytes(), 0)
        candidates = sorted(
            (r for r in self.lifecycle.records() if r is not writing and not r.pin
             and r.version is not None and r.version.tier == MEMORY),
            key=lambda r: r.last_access or r.version.created)
        for record in candidates:
            if freed >= needed:
                break
            if not record.lock.acquire(blocking=False):
                continue  # being materialized or evicted right now
            try:
                version = record.version
                if version is None or version.tier != MEMORY:
                    continue
                if record.memory_only:
                    self.lifecycle.dropped(record)
                    log.info("capacity: dropped memory-only %s", record.key)
                else:
                    self.lifecycle.spilled(record, self.store.spill(version))
                    log.info("capacity: spilled %s to disk", record.key)
                freed += version.bytes
            finally:
                record.lock.release()
        return freed

    def evict(self, owner: str, name: str, *, reason: str = "evicted") -> None:
        record = self.lifecycle.get(f"{owner}/{name}")
        if record is None:
            raise UnknownDataset(f"no dataset named {name!r}; map it first")
        with record.lock:
            self.lifecycle.dropped(record)
        log.info("%s %s", reason, record.key)

    def drop_all(self, *, wait: float = 10.0) -> dict[str, Any]:
        """Drop the cached version of every dataset, in memory and on disk; the mappings stay
        and reload from their sources on next use. A dataset still being materialized after
        ``wait`` seconds is left alone (counted in ``busy``)."""
        dropped = {"memory_versions": 0, "memory_bytes": 0, "disk_versions": 0,
                   "disk_bytes": 0, "busy": 0}
        for record in self.lifecycle.records():
            if not record.lock.acquire(timeout=wait):
                dropped["busy"] += 1
                continue
            try:
                version = record.version
                if version is None:
                    continue
                tier = "memory" if version.tier == MEMORY else "disk"
                self.lifecycle.dropped(record)
                dropped[f"{tier}_versions"] += 1
                dropped[f"{tier}_bytes"] += version.bytes
            finally:
                record.lock.release()
        log.info("cache dropped: %s", dropped)
        return dropped

    def expire(self) -> int:
        """Evict every version past its TTL; returns how many."""
        expired = [r for r in self.lifecycle.records() if r.expired()]
        for record in expired:
            self.evict(record.owner, record.name, reason="expired")
        return len(expired)

    def version_lost(self, owner: str, name: str, version: Version) -> None:
        """A version whose bytes are gone (a Ray node died with them): forget it, so the next
        access recomputes it from the mapping; a memory-only one is reported lost instead."""
        record = self.datasets.dataset(owner, name)
        with record.lock:
            if record.version is None or record.version.version_id != version.version_id:
                return  # someone else noticed first
            log.warning("version %s of %s was lost; it will be recomputed from its mapping",
                        version.version_id, record.key)
            self.lifecycle.dropped(record, lost=True, forget=self.store.forget)

    # -- serving ----------------------------------------------------------------------------------
    def attach(self, owner: str, name: str, *, progress: ProgressFn = None) -> Version:
        """The current version (materialized first if needed), counted as a hit; refreshed
        first if its policy is ``on_access`` and the source changed."""
        record = self.datasets.dataset(owner, name)
        if self.freshness is not None and record.version is not None:
            self.freshness.on_access(record)
        version = record.version or self.materialize(owner, name, progress=progress)
        record.hits += 1
        record.bytes_served += version.bytes
        record.last_access = time.time()
        return version

    def open_with(self, opener: Callable[[Version], T], owner: str, name: str,
                  progress: ProgressFn) -> tuple[Version, T]:
        """Open the current version with ``opener``. A version replaced in between (a refresh,
        a spill) is looked up again, so a reader never meets a vanished file."""
        for _ in range(16):
            version = self.attach(owner, name, progress=progress)
            try:
                return version, opener(version)
            except VersionLost:
                self.version_lost(owner, name, version)
            except FileNotFoundError:
                continue
        raise LdwError(f"dataset {name!r} kept changing while it was being opened; retry")

    def attach_ticket(self, owner: str, name: str, progress: ProgressFn
                      ) -> tuple[Version, str | None]:
        """A distributed store: the current version (cached if needed) and a single-use ticket
        a client in the cluster redeems to map it from its node; no ticket (None) if the
        version is on the server's disk (the client attaches through the server then)."""
        if not self.store.distributed:
            raise BadRequest("ray_attach needs backend = \"ray\"; this server's backend is "
                             "\"local\" (use attach)")

        def ticket_for(version: Version) -> str | None:
            # VersionLost if its objects are gone: recomputed, retried
            return self.store.ticket(version) if version.tier == MEMORY else None

        return self.open_with(ticket_for, owner, name, progress)

    def peek(self, owner: str, name: str, limit: int) -> tuple[Version, pa.Table] | None:
        """The first ``limit`` rows of the current version in fresh buffers (a slice would
        carry the whole version's string data), or None if nothing is cached: never a source
        read, never a materialization."""
        version = self.datasets.dataset(owner, name).version
        if version is None:
            return None
        try:
            table = self.store.open_table(version)
        except (VersionLost, FileNotFoundError):  # replaced or lost meanwhile: show no rows
            return None
        head = standard_table(table.slice(0, limit))
        return version, head.take(pa.array(range(head.num_rows), pa.int64()))

    def open(self, owner: str, name: str) -> pa.Table:
        """The cached table, memory-mapped; materialized first if needed."""
        return self.open_with(self.store.open_table, owner, name, None)[1]

    def scan(self, owner: str, name: str, *, columns: Sequence[str] | None = None,
             predicate: sa.ColumnElement | None = None, limit: int | None = None
             ) -> tuple[list[str], Iterator[pa.RecordBatch]]:
        """Stream from the source with pushdown (a lazy read of an uncached dataset): the SQL
        sent and the batches."""
        record = self.datasets.dataset(owner, name)
        if record.derived:  # no source to push into: read the cached result
            table = self.open(owner, name)
            if columns is not None:
                table = table.select(list(columns))
            return [record.mapping.sql or ""], iter(table.to_batches())
        connector = self.sources.connector(record.mapping.source)
        query = narrow(self.datasets.query(record), columns=columns, predicate=predicate,
                       limit=limit)
        plan = single_plan(connector, query)
        self._log(record, [q.sql for q in plan.queries])

        def batches() -> Iterator[pa.RecordBatch]:
            cancel = threading.Event()
            stream = connector.stream(plan, cancel)
            try:
                yield from self.masked(stream, query)
            finally:
                if not cancel.is_set():
                    cancel.set()
                stream.close()

        return [q.sql for q in plan.queries], batches()

    def status(self, records: Sequence[DatasetRecord]) -> dict[str, Any]:
        """The store's capacity and use; dataset counts, hits and bytes served of ``records``."""
        everything = self.lifecycle.records()
        return {
            "backend": self.settings.backend,
            "ray_address": self.store.address,
            "memory_limit": self.settings.memory_limit,
            "used_bytes": self.store.used_bytes(),
            "spilled_bytes": sum(r.version.bytes for r in everything
                                 if r.version is not None and r.version.tier == DISK),
            "memory_versions": sum(r.version is not None and r.version.tier == MEMORY
                                   for r in everything),
            "spilled_versions": sum(r.version is not None and r.version.tier == DISK
                                    for r in everything),
            "datasets": len(records),
            "cached": sum(r.version is not None for r in records),
            "hits": {r.key: r.hits for r in records},
            "bytes_served": {r.key: r.bytes_served for r in records},
            "source_queries": {r.key: r.source_queries for r in records},
        }
