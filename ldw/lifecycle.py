"""The dataset lifecycle: every dataset's record, its state machine and their persistence.

One owner for what a dataset is and where it is in its life. Every state change goes through
:class:`Lifecycle`, which checks it against :data:`TRANSITIONS` and writes it to the
:class:`~ldw.catalog.Catalog` in the same step, so a restarted server knows every dataset again
(:meth:`Lifecycle.recover`): surviving versions are re-adopted after validation, lost ones are
recomputed from their mapping on next access, except memory-only ones, which are reported lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ldw.catalog import Catalog, DatasetRow, VersionRow
from ldw.errors import Cancelled, LdwError
from ldw.planner import MappedQuery, Mapping, mapping_from_json, mapping_to_json
from ldw.storage.base import layout_of
from ldw.types import DatasetState, Progress, Tier

if TYPE_CHECKING:
    from ldw.storage import Version, VersionStore

__all__ = ["DERIVED", "TRANSITIONS", "DatasetRecord", "IllegalTransition", "Lifecycle"]

log = logging.getLogger("ldw.lifecycle")

DERIVED = "@datasets"  # the pseudo-source of datasets defined by SQL over other datasets

S = DatasetState
# Every allowed move. MAPPED is reached from anything at rest when a definition is re-planned
# (the owner's policy changed); a failed read returns to the state before it.
TRANSITIONS: dict[DatasetState, frozenset[DatasetState]] = {
    S.MAPPED: frozenset({S.MATERIALIZING, S.EVICTED, S.MAPPED}),
    S.MATERIALIZING: frozenset({S.CACHED, S.SPILLED, S.FAILED, S.CANCELLED}),
    S.CACHED: frozenset({S.MATERIALIZING, S.SPILLED, S.EVICTED, S.LOST, S.MAPPED}),
    S.SPILLED: frozenset({S.MATERIALIZING, S.EVICTED, S.LOST, S.MAPPED}),
    S.EVICTED: frozenset({S.MATERIALIZING, S.EVICTED, S.MAPPED}),
    S.LOST: frozenset({S.MATERIALIZING, S.EVICTED, S.MAPPED}),
    S.FAILED: frozenset({S.MATERIALIZING, S.EVICTED, S.MAPPED}),
    S.CANCELLED: frozenset({S.MATERIALIZING, S.EVICTED, S.MAPPED}),
}
del S


class IllegalTransition(LdwError):
    """A state change the lifecycle does not allow: a bug in ldw, never the user's doing."""


@dataclass
class DatasetRecord:
    """Everything the server knows about one dataset."""

    owner: str
    mapping: Mapping
    schema: pa.Schema
    ttl: float | None = None
    pin: bool = False
    memory_only: bool = False
    state: DatasetState = DatasetState.MAPPED
    version: Version | None = None
    error: str | None = None
    stale: bool = False
    created: float = field(default_factory=time.time)
    last_access: float | None = None
    hits: int = 0
    bytes_served: int = 0
    source_queries: int = 0  # queries sent to the source for it (plans, reads, scans)
    policy: str = ""  # fingerprint of the owner's effective policies when mapped
    policy_tables: tuple[str, ...] = ()  # source.schema.table of every table read
    export: str = "allow"
    asked_memory_only: bool = False  # memory_only as the owner asked (policies may add it)
    source_sql: list[str] = field(default_factory=list)
    # freshness: what the source looked like when the current version was read (the baseline
    # a check compares with) and how staleness was last decided (see ldw.engine.freshness)
    token: dict[str, Any] | None = None
    freshness: dict[str, Any] = field(default_factory=dict)
    query: MappedQuery | None = field(default=None, repr=False)
    progress: Progress | None = field(default=None, repr=False)  # of a running materialization
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def name(self) -> str:
        return self.mapping.name

    @property
    def key(self) -> str:
        return f"{self.owner}/{self.mapping.name}"

    @property
    def options(self) -> dict[str, Any]:
        return {"ttl": self.ttl, "pin": self.pin, "memory_only": self.memory_only,
                "policy": self.policy, "policy_tables": list(self.policy_tables),
                "export": self.export, "asked_memory_only": self.asked_memory_only,
                "source_token": self.token}

    @property
    def derived(self) -> bool:
        return self.mapping.source == DERIVED

    @property
    def notes(self) -> dict[str, str]:
        return {p.name: p.note for p in (self.query.columns if self.query else []) if p.note}

    def expired(self) -> bool:
        return (self.version is not None and self.ttl is not None
                and time.time() - self.version.created > self.ttl)

    def same_definition(self, other: DatasetRecord) -> bool:
        """Whether ``other`` defines exactly what this record holds (re-running a map cell)."""
        return (self.mapping == other.mapping and self.policy == other.policy
                and self.asked_memory_only == other.asked_memory_only)


def _at_rest(version: Version) -> DatasetState:
    return DatasetState.CACHED if version.tier == Tier.MEMORY else DatasetState.SPILLED


class Lifecycle:
    """The registry of dataset records; the only code that changes a record's state."""

    def __init__(self, catalog: Catalog, store: VersionStore) -> None:
        self.catalog = catalog
        self.store = store
        self._records: dict[str, DatasetRecord] = {}
        self._lock = threading.RLock()

    # -- the registry ---------------------------------------------------------------------------
    def get(self, key: str) -> DatasetRecord | None:
        with self._lock:
            return self._records.get(key)

    def records(self, owner: str | None = None) -> list[DatasetRecord]:
        with self._lock:
            return [r for r in self._records.values() if owner is None or r.owner == owner]

    def define(self, record: DatasetRecord) -> DatasetRecord:
        """Install a definition, replacing the record and dropping its old version. The shares
        go too unless the definition is the same (what was shared is what is defined now)."""
        with self._lock:
            old = self._records.get(record.key)
            if old is not None:  # the count is the dataset's, across its definitions
                record.source_queries += old.source_queries
            self.catalog.put_dataset(record.owner, record.name,
                                     mapping=mapping_to_json(record.mapping),
                                     options=record.options, schema=record.schema)
            self._records[record.key] = record
        if old is not None:
            if old.version is not None:
                self.drop_version(old.version)
            if not old.same_definition(record):
                self.catalog.drop_grants(record.owner, record.name)
        return record

    def keep(self, record: DatasetRecord, *, ttl: float | None, pin: bool,
             mapping: Mapping | None = None) -> DatasetRecord:
        """The dataset is defined again exactly as it is (a notebook re-run after a kernel
        restart): it keeps its version and shares, taking only the new ``ttl`` and ``pin``,
        and ``mapping`` if only its refresh policy differs (when, not what, to read)."""
        record.ttl, record.pin = ttl, pin
        if mapping is not None and mapping != record.mapping:
            record.mapping = mapping
            self.catalog.set_mapping(record.owner, record.name, mapping_to_json(mapping))
        self.save_options(record)
        return record

    def save_options(self, record: DatasetRecord) -> None:
        self.catalog.set_options(record.owner, record.name, record.options)

    # -- state changes --------------------------------------------------------------------------
    @staticmethod
    def _allowed(record: DatasetRecord, state: DatasetState) -> DatasetState:
        """``state``, if the table allows the move; checked before anything is written."""
        if state not in TRANSITIONS[record.state]:
            raise IllegalTransition(f"dataset {record.key}: {record.state} -> {state} is not "
                                    "an allowed move; please report this ldw bug")
        return state

    def start(self, record: DatasetRecord) -> Version | None:
        """A source read begins (the caller holds ``record.lock``); returns the version it
        will replace. Kept in memory only: a server that dies now recovers the dataset as
        evicted."""
        previous = record.version
        record.state = self._allowed(record, DatasetState.MATERIALIZING)
        record.error = None
        return previous

    def published(self, record: DatasetRecord, version: Version,
                  token: dict[str, Any] | None = None) -> None:
        """A read finished: its version becomes current, in the catalog and the record;
        ``token`` is the source's state it was read from (the freshness baseline)."""
        state = self._allowed(record, DatasetState.CACHED)
        self.catalog.publish(VersionRow(
            version.version_id, record.owner, record.name, version.tier, version.path,
            version.rows, version.bytes, version.created, version.seconds,
            tuple(record.source_sql), layout_of(version)), state=state)
        record.state, record.version, record.stale = state, version, False
        self._rebase(record, token)

    def kept(self, record: DatasetRecord, previous: Version,
             token: dict[str, Any] | None) -> None:
        """A refresh found nothing new in the source: ``previous`` stays current (no new
        version), with ``token`` as its new freshness baseline."""
        record.state = self._allowed(record, _at_rest(previous))
        record.version, record.stale = previous, False
        self.catalog.set_state(record.owner, record.name, record.state,
                               version_id=previous.version_id)
        self._rebase(record, token)

    def _rebase(self, record: DatasetRecord, token: dict[str, Any] | None) -> None:
        """A version read from the source now: the read was a check (at ``token["at"]``,
        when it started), so the next one is due an interval later."""
        record.token = token
        record.freshness = {k: v for k, v in record.freshness.items()
                            if k in ("method", "last_refresh")}
        if token is not None and record.version is not None:
            record.freshness.update(checked_at=token["at"], reason=None, error=None,
                                    version=record.version.version_id)
        try:
            self.save_options(record)
        except Exception:  # the version is published; without a baseline it reads as unknown
            log.exception("could not record the freshness baseline of %s", record.key)

    def checked(self, record: DatasetRecord, version: Version, *, stale: bool | None,
                freshness: dict[str, Any]) -> None:
        """A change check of ``version`` finished: whether its source moved on (None: could
        not tell) and how that was decided. A check of a version no longer current is moot."""
        if record.version is None or record.version.version_id != version.version_id:
            return
        if stale is not None:
            record.stale = stale
        record.freshness = {**record.freshness, **freshness}

    def failed(self, record: DatasetRecord, previous: Version | None, exc: BaseException) -> None:
        """A read failed: the previous version (if any) stays current, marked stale. A read
        that was interrupted (``Cancelled``, ``KeyboardInterrupt``) says so in its reason and
        does not make a previous version stale; a first read cancelled for its client (the
        client went away, a cancel) is ``cancelled``. An interrupt raised in the reading
        process itself (in-process ``KeyboardInterrupt``) stays ``failed``, as it always was."""
        interrupted = isinstance(exc, Cancelled | KeyboardInterrupt)
        first = DatasetState.CANCELLED if isinstance(exc, Cancelled) else DatasetState.FAILED
        record.state = self._allowed(record, _at_rest(previous) if previous is not None
                                     else first)
        if not interrupted:
            record.stale = previous is not None
        record.error = interrupted_reason(exc) if interrupted else \
            str(exc) if isinstance(exc, Exception) else f"stopped ({type(exc).__name__})"
        try:
            self.catalog.set_state(record.owner, record.name, record.state, error=record.error,
                                   keep_version=True)
        except Exception:  # the read's own error is the one to raise
            log.exception("could not record the failed read of %s", record.key)

    def spilled(self, record: DatasetRecord, spilled: Version) -> None:
        """The record's version moved to the disk tier."""
        state = self._allowed(record, DatasetState.SPILLED)
        self.catalog.move_version(spilled.version_id, tier=Tier.DISK, path=spilled.path,
                                  layout=layout_of(spilled), nbytes=spilled.bytes)
        record.state, record.version = state, spilled
        self.catalog.set_state(record.owner, record.name, record.state,
                               version_id=spilled.version_id)

    def compacted(self, record: DatasetRecord, compacted: Version) -> None:
        """The record's version was written into fewer files (same id, same rows): new
        readers get those; the caller deletes the old files (the caller holds
        ``record.lock``)."""
        self.catalog.move_version(compacted.version_id, tier=compacted.tier,
                                  path=compacted.path, layout=layout_of(compacted),
                                  nbytes=compacted.bytes)
        record.version = compacted

    def dropped(self, record: DatasetRecord, *, lost: bool = False,
                forget: Callable[[Version], None] | None = None) -> None:
        """The record's version is gone (evicted, expired, lost with a Ray node): it is
        recomputed from the mapping on next access; memory-only data that was ``lost`` is
        reported lost instead. ``forget`` releases bytes that are already gone."""
        state = self._allowed(record, DatasetState.LOST if lost and record.memory_only
                              else DatasetState.EVICTED)
        if record.version is not None:
            if forget is not None:
                try:
                    forget(record.version)
                except Exception:  # nothing more can be freed: the bytes are gone already
                    log.warning("could not release lost version of %s", record.key,
                                exc_info=True)
                self.catalog.drop_version(record.version.version_id)
            else:
                self.drop_version(record.version)
        record.state, record.version, record.stale = state, None, False
        self.catalog.set_state(record.owner, record.name, state)

    def replanned(self, record: DatasetRecord, apply: Callable[[DatasetRecord], None]) -> None:
        """The owner's policy changed: the old bytes go and the record is planned again by
        ``apply``; the new definition is saved."""
        state = self._allowed(record, DatasetState.MAPPED)
        if record.version is not None:
            self.drop_version(record.version)
        record.state, record.version, record.query = state, None, None
        apply(record)
        self.catalog.put_dataset(record.owner, record.name,
                                 mapping=mapping_to_json(record.mapping),
                                 options=record.options, schema=record.schema)

    def drop_version(self, version: Version) -> None:
        self.store.delete(version)
        self.catalog.drop_version(version.version_id)

    # -- recovery -------------------------------------------------------------------------------
    def recover(self, version_of: Callable[[str, VersionRow], Version]) -> dict[str, list[str]]:
        """Rebuild the registry from the catalog; adopt, drop or report versions; clean orphans.
        ``version_of`` turns a catalog row into the store's version object."""
        report: dict[str, list[str]] = {"adopted": [], "lost": [], "dropped": [], "orphans": []}
        versions = {v.version_id: v for v in self.catalog.versions()}
        live: set[Path] = set()
        for row in self.catalog.datasets():
            record = _record_from_row(row)
            row_version = versions.pop(row.version_id, None) if row.version_id else None
            if row_version is not None:
                version = version_of(record.key, row_version)
                if self.store.adopt(version):
                    record.version, record.source_sql = version, list(row_version.source_sql)
                    record.state = _at_rest(version)
                    live.update(part.path for part in version.files)
                    report["adopted"].append(record.key)
                else:
                    self.catalog.drop_version(version.version_id)
                    record.state = DatasetState.LOST if record.memory_only \
                        else DatasetState.EVICTED
                    report["lost"].append(record.key)
                    self.catalog.set_state(record.owner, record.name, record.state)
            elif row.state in (DatasetState.MATERIALIZING, DatasetState.CACHED,
                               DatasetState.SPILLED):
                record.state = DatasetState.EVICTED
                self.catalog.set_state(record.owner, record.name, record.state)
            self._records[record.key] = record
        for stray in versions.values():  # versions no dataset points at any more
            self.catalog.drop_version(stray.version_id)
            report["dropped"].append(stray.version_id)
        for tier in (Tier.MEMORY, Tier.DISK):
            for path in self.store.files(tier):
                if path not in live:
                    self.store.remove_orphan(path)
                    report["orphans"].append(str(path))
        log.info("recovered: %s", {k: len(v) for k, v in report.items()})
        return report


def interrupted_reason(exc: BaseException) -> str:
    """What an interrupted read left behind, in words a notebook user recognizes."""
    why = str(exc) if isinstance(exc, Cancelled) and str(exc) else \
        "interrupted (KeyboardInterrupt)"
    return (f"cancelled: {why}; the source query was stopped and nothing was kept; the next "
            "read tries again")


def _record_from_row(row: DatasetRow) -> DatasetRecord:
    options = row.options
    return DatasetRecord(row.owner, mapping_from_json(row.mapping), row.schema,
                         ttl=options.get("ttl"), pin=bool(options.get("pin")),
                         memory_only=bool(options.get("memory_only")),
                         state=DatasetState(row.state), error=row.error, created=row.created,
                         policy=options.get("policy", ""),
                         policy_tables=tuple(options.get("policy_tables", ())),
                         export=options.get("export", "allow"),
                         asked_memory_only=bool(options.get("asked_memory_only",
                                                            options.get("memory_only"))),
                         token=options.get("source_token"))
