"""Freshness: whether a dataset's source changed since its cached version, and the refresh
policies that act on it (``on_access``, ``every <duration>``).

A check compares the source now with the *baseline* taken when the version was read
(``DatasetRecord.token``): the dialect's own change counters where it keeps them (PostgreSQL
``pg_stat_user_tables``, MariaDB ``information_schema.tables.update_time``; see
:meth:`Connector.change_counters`) and, for every dialect, a probe of the governed query:
``count(*)`` and ``max`` of the declared ``key`` and ``watermark``
(:func:`ldw.connectors.changes.probe`). Counters are skipped under a row filter (they count
rows the user may not see).

Checks run at most every ``freshness_interval`` per version, each in a thread of its own, under
the source's ``timeout``: a read never waits for one; ``info`` waits a bounded time and answers
with what is known; an ``on_access`` read waits at most :data:`ACCESS_WAIT` and otherwise serves
the cached version.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ldw.config import Settings, every_seconds
from ldw.connectors.changes import probe
from ldw.engine.datasets import Datasets
from ldw.engine.sources import Sources
from ldw.errors import LdwError
from ldw.lifecycle import DatasetRecord, Lifecycle
from ldw.planner import MappedQuery
from ldw.storage import Version, VersionStore
from ldw.wire import encode_value

__all__ = ["ACCESS_WAIT", "INFO_WAIT", "Freshness", "tracked_columns"]

log = logging.getLogger("ldw.freshness")

INFO_WAIT = 2.0  # seconds info() waits for a running check before answering with what it knows
ACCESS_WAIT = 5.0  # at most this long (or the source timeout) an on_access read waits for one
TICK = 0.5  # how often the scheduler of "every" policies looks at the datasets
PROBE = "count/max probe"


def tracked_columns(record: DatasetRecord) -> list[str]:
    """The declared columns whose maximum tells of new rows: key, then watermark."""
    mapping = record.mapping
    return list(dict.fromkeys(c for c in (mapping.key, mapping.watermark) if c is not None))


def _comparable(value: Any, arrow_type: pa.DataType) -> Any:
    """A source or Arrow value as JSON, normalized through the stored Arrow type."""
    if value is None:
        return None
    try:
        value = pa.scalar(value, type=arrow_type).as_py()
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.astimezone(dt.UTC)
    return encode_value(value)


def _watch_counters(query: MappedQuery) -> bool:
    """Table counters count every row; under a row filter they would tell of hidden ones."""
    return not any(p.row_filters or p.max_rows is not None for p in query.policies)


class Freshness:
    """Decides staleness off the read path and runs the refresh policies."""

    def __init__(self, settings: Settings, lifecycle: Lifecycle, store: VersionStore,
                 sources: Sources, datasets: Datasets) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.store = store
        self.sources = sources
        self.datasets = datasets
        # refresh(owner, name): a refresh, incremental where declared (set by the engine)
        self.refresh: Callable[[str, str], Any] | None = None
        self._lock = threading.Lock()
        self._checks: dict[str, threading.Thread] = {}
        self._refreshing: dict[str, threading.Thread] = {}
        self._every_last: dict[str, float] = {}
        self._stop = threading.Event()
        self._scheduler: threading.Thread | None = None

    # -- the baseline of a version --------------------------------------------------------------
    def counters(self, record: DatasetRecord) -> tuple[dict[str, Any] | None, bool, float]:
        """The source's change counters now (before a read opens its snapshot), whether they
        could be read at all, and when; never raises (a read does not depend on them)."""
        now = time.time()
        if record.derived:
            return None, False, now
        try:
            query = self.datasets.query(record)
            if query is None or not _watch_counters(query):
                return None, False, now
            connector = self.sources.connector(record.mapping.source)
            return connector.change_counters(query.tables), True, now
        except Exception:  # (the read decides whether the source is usable)
            log.debug("no change counters for %s", record.key, exc_info=True)
            return None, False, now

    def baseline(self, record: DatasetRecord, version: Version,
                 counters: tuple[dict[str, Any] | None, bool, float],
                 known: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """What a check compares with: counters read before the read, and the version's own
        row count and maxima of the declared columns (exactly what it holds; ``known``: the
        maxima, already found by an incremental read)."""
        if record.derived:
            return None
        maxima: dict[str, Any] = {}
        columns = tracked_columns(record)
        if known is not None and all(name in known for name in columns):
            return self._token(version, counters, {
                name: _comparable(known[name], record.schema.field(name).type)
                for name in columns})
        if columns:
            table = self.store.open_table(version)
            for name in columns:
                arrow_type = record.schema.field(name).type
                column = table.column(name)
                if column.type != arrow_type:
                    column = column.cast(arrow_type)
                maxima[name] = _comparable(pc.max(column).as_py(), arrow_type)
        return self._token(version, counters, maxima)

    @staticmethod
    def _token(version: Version, counters: tuple[dict[str, Any] | None, bool, float],
               maxima: dict[str, Any]) -> dict[str, Any]:
        values, ok, at = counters
        return {"counters": values, "counters_ok": ok, "rows": version.rows, "max": maxima,
                "at": at}

    # -- checks ---------------------------------------------------------------------------------
    def look(self, record: DatasetRecord, wait: float = INFO_WAIT) -> None:
        """Start a check of the record's version if one is due and wait up to ``wait``
        seconds for it; the record's ``stale`` and ``freshness`` say what is known."""
        thread = self._start_check(record)
        if thread is not None and wait > 0:
            thread.join(wait)
        if thread is not None and thread.is_alive():
            record.freshness = {**record.freshness, "checking": True}

    def _start_check(self, record: DatasetRecord) -> threading.Thread | None:
        version = record.version
        if version is None or record.derived:
            return None
        with self._lock:
            running = self._checks.get(record.key)
            if running is not None and running.is_alive():
                return running
            checked = record.freshness.get("checked_at")
            if checked is not None and record.freshness.get("version") == version.version_id \
                    and time.time() - checked < self.settings.freshness_interval:
                return None
            thread = threading.Thread(target=self._check, args=(record, version),
                                      name=f"ldw-freshness-{record.key}", daemon=True)
            self._checks[record.key] = thread
            thread.start()
            return thread

    def _check(self, record: DatasetRecord, version: Version) -> None:
        started = time.time()
        stale: bool | None = None
        found: dict[str, Any] = {"checked_at": started, "version": version.version_id,
                                 "checking": False, "error": None}
        try:
            stale, reasons, method = self._decide(record)
            found.update(method=method, reason="; ".join(reasons) or None)
        except LdwError as exc:
            found["error"] = f"could not check the source: {exc}"
        except Exception as exc:  # (a check must never take the server down)
            log.exception("freshness check of %s failed", record.key)
            found["error"] = f"could not check the source: {type(exc).__name__}"
        found["seconds"] = round(time.time() - started, 4)
        self.lifecycle.checked(record, version, stale=stale, freshness=found)

    def _decide(self, record: DatasetRecord) -> tuple[bool | None, list[str], str]:
        token = record.token
        connector = self.sources.connector(record.mapping.source)
        method = PROBE
        if token is None:
            return None, ["no baseline for this version (cached before ldw tracked its "
                          "source); refresh() to start tracking"], method
        query = self.datasets.query(record)
        if query is None:
            return None, [], "derived"
        counters, ok, _ = self.counters(record)
        reasons = []
        if ok and token.get("counters_ok") and connector.change_counters_method:
            method = f"{connector.change_counters_method} + {PROBE}"
            before = token.get("counters")
            if counters is not None and counters != before:
                reasons.append(f"{connector.change_counters_method}: "
                               f"{_counter_change(before, counters)}")
        columns = tracked_columns(record)
        probed = probe(connector, query.select, maxima=columns)
        if probed.rows != token["rows"]:
            reasons.append(f"row count {token['rows']} -> {probed.rows}")
        for name in columns:
            now = _comparable(probed.maxima[name], record.schema.field(name).type)
            if now != token["max"].get(name):
                reasons.append(f"max({name}) {token['max'].get(name)} -> {now}")
        return bool(reasons), reasons, method

    # -- refresh policies -----------------------------------------------------------------------
    def on_access(self, record: DatasetRecord) -> None:
        """``refresh = "on_access"``: a stale dataset is refreshed before it is read. A source
        that does not answer in time leaves the cached version to be served."""
        if record.mapping.refresh != "on_access" or record.version is None or record.derived:
            return
        timeout = self._timeout(record)
        self.look(record, min(timeout, ACCESS_WAIT) if timeout else ACCESS_WAIT)
        if record.stale and self.refresh is not None:
            try:
                self.refresh(record.owner, record.name)
            except LdwError as exc:  # the previous version stays, flagged stale
                log.warning("on_access refresh of %s failed: %s", record.key, exc)

    def _timeout(self, record: DatasetRecord) -> float | None:
        """The source's ``timeout``; None if it has none (or is no longer configured: the
        check then says so, the cached version is still served)."""
        try:
            return self.settings.source(record.mapping.source).timeout
        except LdwError:
            return None

    def watch(self, record: DatasetRecord) -> None:
        """Start the scheduler if ``record`` has an ``every`` policy (once per engine)."""
        if every_seconds(record.mapping.refresh) is None:
            return
        with self._lock:
            if self._scheduler is None and not self._stop.is_set():
                self._scheduler = threading.Thread(target=self._loop, name="ldw-refresh",
                                                   daemon=True)
                self._scheduler.start()

    def _loop(self) -> None:
        while not self._stop.wait(TICK):
            for record in self.lifecycle.records():
                period = every_seconds(record.mapping.refresh)
                if period is None or record.version is None or record.derived:
                    continue
                last = self._every_last.get(record.key, record.version.created)
                if time.time() - last >= period:
                    self._every_last[record.key] = time.time()
                    self._refresh_in_background(record)

    def _refresh_in_background(self, record: DatasetRecord) -> None:
        with self._lock:
            running = self._refreshing.get(record.key)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(target=self._refresh_if_stale, args=(record,),
                                      name=f"ldw-refresh-{record.key}", daemon=True)
            self._refreshing[record.key] = thread
            thread.start()

    def _refresh_if_stale(self, record: DatasetRecord) -> None:
        timeout = self._timeout(record)
        self.look(record, timeout or ACCESS_WAIT)
        if record.stale and self.refresh is not None and not self._stop.is_set():
            try:
                self.refresh(record.owner, record.name)
                log.info("refreshed %s (%s)", record.key, record.mapping.refresh)
            except Exception:  # (the next period tries again)
                log.warning("scheduled refresh of %s failed", record.key, exc_info=True)

    def close(self) -> None:
        self._stop.set()
        scheduler = self._scheduler
        if scheduler is not None:
            scheduler.join(2 * TICK)


def _counter_change(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """How counters moved, in words: "+120 rows written" or "last write 12:00:01 -> ..."."""
    if not before:
        return "the table was written to since this version"
    parts = []
    for table, now in after.items():
        old = before.get(table)
        if isinstance(now, int) and isinstance(old, int):
            parts.append(f"{table.lstrip('.')} +{now - old} rows inserted/updated/deleted")
        elif now != old:
            parts.append(f"{table.lstrip('.')} last written {old} -> {now}")
    return ", ".join(parts) or "the table was written to since this version"
