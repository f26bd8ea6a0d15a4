"""The engine: sources, datasets, materialization, capacity and recovery, in one owner object.

``ldw.connect(in_process=True)`` runs it inside the caller; the shared server hosts the same
engine. It holds source credentials (through the connectors) and never hands them out.

Datasets belong to an owner (the OS or token user) and are keyed ``owner/name``. Their
definitions and published versions live in the :class:`~ldw.catalog.Catalog`, so a restarted
server knows them again: surviving versions are re-adopted after validation, lost ones are
recomputed from their mapping on next access, except memory-only ones, which are reported lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import os
import pwd
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa
import sqlalchemy as sa

from ldw.audit import AuditSeal
from ldw.catalog import Catalog, DatasetRow, VersionRow
from ldw.config import Settings, parse_duration
from ldw.connectors import Connector, connector_for
from ldw.connectors.convert import target_schema
from ldw.errors import (
    AccessDenied,
    AccessRevoked,
    BadRequest,
    DatasetLost,
    InvalidMapping,
    LdwError,
    SourceUnavailable,
    UnknownDataset,
)
from ldw.governance import Governance, combine_fingerprints, hash_array
from ldw.planner import (
    MappedQuery,
    Mapping,
    PolicyLookup,
    mapping_from_json,
    mapping_to_json,
    narrow,
    parse_table_ref,
    plan_mapping,
    read_plan,
    single_plan,
)
from ldw.store import DISK, MEMORY, Progress, Store, Version, VersionLost, storage_schema

if TYPE_CHECKING:
    from ldw.ray_store import RayStore

__all__ = ["DatasetRecord", "Engine"]

log = logging.getLogger("ldw.engine")

T = TypeVar("T")

DERIVED = "@datasets"  # the pseudo-source of datasets defined by SQL over other datasets

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def server_os_user() -> str:
    """The OS user this process runs as, named as local peers are (ldw.server.peer_user)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def check_name(name: object, what: str = "dataset name") -> str:
    if not isinstance(name, str) or not name or len(name) > 128 or not set(name) <= _NAME_OK:
        raise InvalidMapping(f"{what} {name!r} must be 1-128 letters, digits, '_' or '-'")
    return name


_USER_OK = _NAME_OK | frozenset(".@$")  # OS user names may also carry these


def check_user(name: object, what: str = "user name") -> str:
    """A user (owner) name as a client may send it: no '/', spaces or control characters."""
    if not isinstance(name, str) or not name or len(name) > 128 or not set(name) <= _USER_OK:
        raise InvalidMapping(f"{what} {name!r} must be 1-128 letters, digits, '_', '-', '.', "
                             "'@' or '$'")
    return name


@dataclass
class DatasetRecord:
    """Everything the engine knows about one dataset."""

    owner: str
    mapping: Mapping
    schema: pa.Schema
    ttl: float | None = None
    pin: bool = False
    memory_only: bool = False
    state: str = "mapped"
    version: Version | None = None
    error: str | None = None
    stale: bool = False
    created: float = field(default_factory=time.time)
    last_access: float | None = None
    hits: int = 0
    bytes_served: int = 0
    policy: str = ""  # fingerprint of the owner's effective policies when mapped
    policy_tables: tuple[str, ...] = ()  # source.schema.table of every table read
    export: str = "allow"
    source_sql: list[str] = field(default_factory=list)
    query: MappedQuery | None = field(default=None, repr=False)
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
                "export": self.export}

    @property
    def derived(self) -> bool:
        return self.mapping.source == DERIVED

    @property
    def notes(self) -> dict[str, str]:
        return {p.name: p.note for p in (self.query.columns if self.query else []) if p.note}

    def expired(self) -> bool:
        return (self.version is not None and self.ttl is not None
                and time.time() - self.version.created > self.ttl)


def _schema_of(query: MappedQuery) -> pa.Schema:
    """The stored schema: the planned Arrow types, hashed columns as hex strings."""
    schema = target_schema(query.columns)
    for name in query.hashed:
        i = schema.get_field_index(name)
        schema = schema.set(i, schema.field(i).with_type(pa.string()))
    return schema


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
        self.store: Store | RayStore
        if settings.backend == "ray":
            from ldw.ray_store import RayStore  # the optional ``ray`` extra

            # one holder actor per server identity (its catalog); a private one in-process
            key = f"inproc-{uuid.uuid4().hex}" if ephemeral else settings.catalog
            self.store = RayStore(settings, disk_root, key=key, ephemeral=ephemeral)
        else:
            self.store = Store(memory_root, disk_root, memory_limit=settings.memory_limit)
        self.catalog = Catalog("sqlite://" if ephemeral else settings.catalog,
                               seal=AuditSeal.ephemeral() if ephemeral else AuditSeal.open(
                                   settings.audit_key_file, settings.audit_anchor_file))
        self.governance = Governance(settings.policies, settings.users,
                                     mask_key_path=settings.mask_key_file)
        self.governance.extra_roles = self.catalog.user_roles
        self._connectors: dict[str, Connector] = {}
        self._records: dict[str, DatasetRecord] = {}
        self._lock = threading.RLock()
        self._sql_engine: Any = None
        self.query_log: list[tuple[str, str]] = []  # (source alias, SQL sent), newest last
        if not ephemeral:
            self.recover()

    # -- recovery -----------------------------------------------------------------------------
    def recover(self) -> dict[str, list[str]]:
        """Rebuild the registry from the catalog; adopt, drop or report versions; clean orphans."""
        report: dict[str, list[str]] = {"adopted": [], "lost": [], "dropped": [], "orphans": []}
        versions = {v.version_id: v for v in self.catalog.versions()}
        live: set[Path] = set()
        for row in self.catalog.datasets():
            record = self._record_from_row(row)
            row_version = versions.pop(row.version_id, None) if row.version_id else None
            if row_version is not None:
                version = Version(record.key, row_version.version_id, row_version.path,
                                  row_version.rows, row_version.bytes, row_version.created,
                                  row_version.seconds, row_version.tier)
                if self.store.adopt(version):
                    record.version, record.source_sql = version, list(row_version.source_sql)
                    record.state = "cached" if version.tier == MEMORY else "spilled"
                    live.add(version.path)
                    report["adopted"].append(record.key)
                else:
                    self.catalog.drop_version(version.version_id)
                    record.state = "lost" if record.memory_only else "evicted"
                    report["lost"].append(record.key)
                    self.catalog.set_state(record.owner, record.name, record.state)
            elif row.state in ("materializing", "cached", "spilled"):
                record.state = "evicted"
                self.catalog.set_state(record.owner, record.name, "evicted")
            self._records[record.key] = record
        for stray in versions.values():  # versions no dataset points at any more
            self.catalog.drop_version(stray.version_id)
            report["dropped"].append(stray.version_id)
        for tier in (MEMORY, DISK):
            for path in self.store.files(tier):
                if path not in live:
                    self.store.remove_orphan(path)
                    report["orphans"].append(str(path))
        log.info("recovered: %s", {k: len(v) for k, v in report.items()})
        return report

    def _record_from_row(self, row: DatasetRow) -> DatasetRecord:
        options = row.options
        return DatasetRecord(row.owner, mapping_from_json(row.mapping), row.schema,
                             ttl=options.get("ttl"), pin=bool(options.get("pin")),
                             memory_only=bool(options.get("memory_only")), state=row.state,
                             error=row.error, created=row.created,
                             policy=options.get("policy", ""),
                             policy_tables=tuple(options.get("policy_tables", ())),
                             export=options.get("export", "allow"))

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

    def policy_lookup(self, user: str, source: str) -> PolicyLookup:
        """The user's effective policy per (schema, table) of ``source``, for the planner."""
        return lambda schema, table: self.governance.effective(
            user, f"{source}.{schema}.{table}")

    def tables(self, user: str, source: str, schema: str | None) -> list[dict[str, Any]]:
        """Tables the user may read; row estimates hidden where rows are filtered for them."""
        rows = self.connector(source).tables(schema)
        if not self.governance.enforced:
            return rows
        visible = []
        for row in rows:
            try:
                policy = self.governance.effective(user, f"{source}.{row['schema']}."
                                                         f"{row['table']}")
            except AccessDenied:
                continue
            if policy.row_filters or policy.max_rows is not None:
                row = {**row, "rows": None}
            visible.append(row)
        return visible

    def schemas(self, user: str, source: str) -> list[str]:
        """Schemas of a source, its default schema first; with policies, only those holding a
        table the user may read."""
        connector = self.connector(source)
        default = connector.default_schema()
        names = sorted(connector.schemas(), key=lambda n: (n != default, n))
        if not self.governance.enforced:
            return names
        patterns = [p.pattern for p in self.governance.policies
                    if p.allow_roles is None or p.allow_roles & self.governance.roles(user)]
        return [n for n in names if any(
            fnmatch.fnmatchcase(f"{source}.{n}.x", p.rsplit(".", 1)[0] + ".x")
            for p in patterns)]

    def preview(self, user: str, ref: str, limit: int) -> tuple[list[str], Iterator]:
        """The first ``limit`` rows of a source table through the user's policy."""
        source, schema, table = parse_table_ref(ref)
        connector = self.connector(source)
        query = plan_mapping(connector, Mapping("preview", source, schema, table, limit=limit),
                             self.policy_lookup(user, source))
        plan = single_plan(connector, query)
        self.query_log.extend((source, q.sql) for q in plan.queries)
        cancel = threading.Event()
        return [q.sql for q in plan.queries], self._hash_masked(
            connector.stream(plan, cancel), query)

    def describe(self, user: str, ref: str) -> list[dict[str, Any]]:
        source, schema, table = parse_table_ref(ref)
        connector = self.connector(source)
        query = plan_mapping(connector, Mapping("describe", source, schema, table),
                             self.policy_lookup(user, source))
        reflected = {c.name: c for c in connector.reflect(schema, table).columns}
        policy = query.policies[0] if query.policies else None
        rows = []
        for plan in query.columns:
            row = plan.as_row()
            column = reflected.get(plan.name)
            if column is not None:
                if not isinstance(column.type, sa.types.NullType):
                    row["source_type"] = str(column.type.compile(
                        dialect=connector.engine.dialect))
                row["nullable"] = bool(column.nullable)
            if plan.name in query.hashed:
                row["arrow_type"] = "string"
            row["policy_tags"] = policy.tags(plan.name) if policy is not None else []
            rows.append(row)
        return rows

    # -- datasets ------------------------------------------------------------------------------
    def map(self, owner: str, name: str, table: str | None = None, *, sql: str | None = None,
            source: str | None = None, columns: Sequence[str] | None = None,
            where: str | None = None, limit: int | None = None, partition_on: str | None = None,
            partitions: int | None = None, ttl: str | float | None = None, pin: bool = False,
            memory_only: bool = False, params: dict[str, Any] | None = None) -> DatasetRecord:
        check_name(name)
        if params is not None and (not isinstance(params, dict) or not all(
                isinstance(k, str) for k in params)):
            raise InvalidMapping("params must be a dict of parameter name -> value")
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
        if columns is not None and (isinstance(columns, str) or not all(
                isinstance(c, str) for c in columns)):
            raise InvalidMapping("columns must be a list of column names")
        mapping = dataclasses.replace(
            mapping, columns=tuple(columns) if columns is not None else None, where=where,
            limit=limit, partition_on=partition_on,
            partitions=partitions if partitions is not None else (2 if partition_on else 1),
            params=tuple(sorted((params or {}).items())))
        query = plan_mapping(self.connector(mapping.source), mapping,
                             self.policy_lookup(owner, mapping.source))
        record = DatasetRecord(owner, mapping, _schema_of(query),
                               ttl=parse_duration(ttl), pin=bool(pin),
                               memory_only=bool(memory_only)
                               or any(p.memory_only for p in query.policies),
                               query=query, policy=combine_fingerprints(query.policies),
                               policy_tables=tuple(p.table for p in query.policies),
                               export="deny" if any(p.export == "deny" for p in query.policies)
                               else "allow")
        with self._lock:
            old = self._records.get(record.key)
            mapping_json = mapping_to_json(mapping)
            self.catalog.put_dataset(owner, name, mapping=mapping_json, options=record.options,
                                     schema=record.schema)
            self._records[record.key] = record
        if old is not None and old.version is not None:
            self._drop_version(old.version)
        if old is not None:
            self.catalog.drop_grants(owner, name)  # a new definition is not what was shared
        return record

    def _input(self, owner: str, ref: str) -> DatasetRecord:
        """A dataset a derived one reads: ``name`` (the owner's) or ``other/name`` (shared)."""
        other, _, name = ref.rpartition("/")
        return self.readable(owner, other or owner, name)

    def map_derived(self, owner: str, name: str, query: str, *,
                    ttl: str | float | None = None, pin: bool = False) -> DatasetRecord:
        """A dataset defined by SQL over other datasets: its lineage is the query."""
        from ldw.sql import referenced_datasets

        check_name(name)
        names = referenced_datasets(query)
        inputs = [self._input(owner, ref) for ref in names]
        if any(r.key == f"{owner}/{name}" for r in inputs):
            raise InvalidMapping(f"dataset {name!r} cannot be defined over itself")
        empty = {ref: storage_schema(r.schema).empty_table() for ref, r in zip(names, inputs,
                                                                             strict=True)}
        limit, setting = self.settings.sql_timeout_for(owner)
        schema = self.sql_engine().run(query, empty, time_limit=limit,
                                       time_setting=setting).schema  # no rows move
        tables = tuple(sorted({t for r in inputs for t in r.policy_tables}))
        record = DatasetRecord(owner, Mapping(name, DERIVED, sql=query), schema,
                               ttl=parse_duration(ttl), pin=bool(pin),
                               memory_only=any(r.memory_only for r in inputs),
                               policy_tables=tables,
                               export="deny" if any(r.export == "deny" for r in inputs)
                               else "allow")
        record.policy = self.current_policy(owner, record)
        with self._lock:
            old = self._records.get(record.key)
            self.catalog.put_dataset(owner, name, mapping=mapping_to_json(record.mapping),
                                     options=record.options, schema=record.schema)
            self._records[record.key] = record
        if old is not None:
            if old.version is not None:
                self._drop_version(old.version)
            self.catalog.drop_grants(owner, name)
        return record

    def dataset(self, owner: str, name: str) -> DatasetRecord:
        check_name(name)
        check_user(owner, "owner")
        with self._lock:
            record = self._records.get(f"{owner}/{name}")
            if record is None:
                mine = sorted(r.name for r in self._records.values() if r.owner == owner)
                raise UnknownDataset(f"no dataset named {name!r} (yours: "
                                     f"{', '.join(mine) or 'none'}); map it first")
        if record.expired():
            self.evict(owner, name, reason="expired")
        return record

    def datasets(self, owner: str | None = None) -> list[DatasetRecord]:
        with self._lock:
            return [r for r in self._records.values() if owner is None or r.owner == owner]

    def query(self, record: DatasetRecord) -> MappedQuery | None:
        """The record's plan against its source (planned again after a restart); None for a
        derived dataset, which has no source query."""
        if record.derived:
            return None
        if record.query is None:
            record.query = plan_mapping(self.connector(record.mapping.source), record.mapping,
                                        self.policy_lookup(record.owner, record.mapping.source))
        return record.query

    # -- access ---------------------------------------------------------------------------------
    def current_policy(self, user: str, record: DatasetRecord) -> str:
        """Fingerprint of ``user``'s effective policies on the record's tables, now
        (AccessDenied if a grant or role that allowed them is gone)."""
        return combine_fingerprints(self.governance.effective(user, table)
                                    for table in record.policy_tables)

    def readable(self, user: str, owner: str, name: str) -> DatasetRecord:
        """The record, if ``user`` may read it now; raises AccessDenied/UnknownDataset.

        Another owner's dataset that is not shared with ``user`` and one that does not exist
        get the same answer, so probing tells nothing about other users' datasets."""
        check_name(name)
        check_user(owner, "owner")
        if user != owner:
            roles = self.governance.roles(user)
            grants = self.catalog.grants(owner, name)
            try:
                if ("user", user) not in grants and not any(
                        kind == "role" and grantee in roles for kind, grantee in grants):
                    raise UnknownDataset(name)
                record = self.dataset(owner, name)
            except UnknownDataset:
                raise UnknownDataset(f"no dataset {owner}/{name} is shared with you; "
                                     f"ask {owner} to share it") from None
            if self.current_policy(user, record) != record.policy:
                raise AccessDenied(
                    f"{owner}/{name} was made under a policy that differs from yours (other "
                    "row filters or masks); map the table yourself to get your own view")
            return record
        record = self.dataset(owner, name)
        policy = self.current_policy(owner, record)
        if policy != record.policy:  # the owner's policy changed: the old bytes must go
            log.info("policy of %s changed: replanning", record.key)
            with record.lock:
                if record.version is not None:
                    self._drop_version(record.version)
                record.version, record.state, record.query = None, "mapped", None
                record.policy = policy
                query = self.query(record)
                if query is not None:
                    record.schema = _schema_of(query)
                    record.memory_only = record.memory_only or any(
                        p.memory_only for p in query.policies)
                    record.export = "deny" if any(p.export == "deny" for p in query.policies) \
                        else "allow"
            self.catalog.put_dataset(owner, name, mapping=mapping_to_json(record.mapping),
                                     options=record.options, schema=record.schema)
        return record

    def visible(self, user: str, *, everything: bool = False) -> list[DatasetRecord]:
        """The datasets ``user`` may know of: their own and those shared with them (by user
        or role); ``everything`` (an administrator) for all."""
        if everything:
            return self.datasets()
        shared = {f"{o}/{n}" for o, n in self.catalog.shared_with(
            user, self.governance.roles(user))}
        with self._lock:
            return [r for r in self._records.values() if r.owner == user or r.key in shared]

    def known_users(self) -> set[str]:
        """Identities this server knows: ``[users.*]``, token users (``ldw user add``) and the
        server's own OS user (local clients are named by their OS user)."""
        return set(self.settings.users) | self.catalog.token_users() | {server_os_user()}

    def known_roles(self) -> set[str]:
        """Roles the configuration names (``[users.*]`` and every policy) or a token holds."""
        roles = {r for table in self.settings.users.values()
                 for r in (table or {}).get("roles", [])}
        for policy in self.governance.policies:
            roles |= set(policy.allow_roles or ()) | set(policy.row_filters)
            roles |= {r for mask in policy.masks.values() for r in mask.exempt_roles}
        return roles | self.catalog.token_roles()

    def check_user(self, user: str) -> None:
        """AccessDenied if ``user`` was revoked (``ldw user revoke``), whatever their roles."""
        if self.catalog.is_revoked(user):
            raise AccessDenied(f"user {user!r} was revoked on this ldw server; ask its "
                               f"administrator (`ldw user add {user}` lets them in again)")

    def check_stream(self, user: str, owner: str, name: str, policy: str) -> None:
        """Whether a stream of ``owner/name`` opened for ``user`` under the policy fingerprint
        ``policy`` may go on: the user is not revoked, the share and the roles still hold and
        the effective policy is the same. Raises AccessDenied (AccessRevoked for a share that
        ended); unlike :meth:`readable` it changes nothing, so it runs before every batch."""
        self.check_user(user)
        with self._lock:
            record = self._records.get(f"{owner}/{name}")
        if record is None:
            raise AccessRevoked(f"no dataset {owner}/{name} is shared with you any more (it "
                                "was dropped or redefined); read it again")
        if user != owner:
            roles = self.governance.roles(user)
            grants = self.catalog.grants(owner, name)
            if ("user", user) not in grants and not any(
                    kind == "role" and grantee in roles for kind, grantee in grants):
                raise AccessRevoked(f"no dataset {owner}/{name} is shared with you any more "
                                    "(the share was revoked); the stream ended")
        if self.current_policy(user, record) != policy:
            raise AccessDenied(f"your policy for {owner}/{name} changed while the stream was "
                               "open (roles, masks or row filters); read it again")

    def share(self, owner: str, name: str, *, user: str | None = None,
              role: str | None = None, revoke: bool = False) -> list[tuple[str, str]]:
        """Grant (or revoke) a user or role access to a dataset; only known users and roles
        can be granted, so nobody created later under that name inherits the grant."""
        self.dataset(owner, name)
        if (user is None) == (role is None):
            raise InvalidMapping("share with exactly one of user= or role=")
        kind, grantee = ("user", user) if user is not None else ("role", role)
        check_name(grantee, f"{kind} name")
        if not revoke and kind == "user" and grantee not in self.known_users():
            raise InvalidMapping(
                f"cannot share with user {grantee!r}: this server knows no such user; the "
                f"administrator adds one with `ldw user add {grantee}` or [users.{grantee}]")
        if not revoke and kind == "role" and grantee not in self.known_roles():
            raise InvalidMapping(
                f"cannot share with role {grantee!r}: no user holds it and no policy names "
                "it; check the spelling or ask the administrator to configure it")
        if revoke:
            self.catalog.revoke(owner, name, kind=kind, grantee=grantee)
        else:
            self.catalog.grant(owner, name, kind=kind, grantee=grantee)
        return self.catalog.grants(owner, name)

    def _run_derived(self, record: DatasetRecord,
                     progress: Callable[[Progress], None] | None) -> Version:
        from ldw.sql import referenced_datasets

        query = record.mapping.sql or ""
        tables = {}
        for ref in referenced_datasets(query):
            source = self._input(record.owner, ref)  # access is checked again, now
            tables[ref] = self.open(source.owner, source.name)
        limit, setting = self.settings.sql_timeout_for(record.owner)
        result = self.sql_engine().run(query, tables, time_limit=limit, time_setting=setting)
        record.source_sql = [query]
        return self.store.write(record.key, record.schema, result.to_batches(),
                                progress=progress, make_room=lambda n: self.make_room(n, record))

    def _run(self, record: DatasetRecord, progress: Callable[[Progress], None] | None) -> Version:
        if record.derived:
            return self._run_derived(record, progress)
        connector = self.connector(record.mapping.source)
        query = self.query(record)
        partitioned = record.mapping.partition_on is not None and record.mapping.partitions > 1
        with connector.read_slots(record.mapping.partitions, all_at_once=self.store.distributed), \
                connector.snapshot(query.tables, partitioned=partitioned) as snapshot:
            plan = read_plan(connector, query, snapshot)
            record.source_sql = [q.sql for q in plan.queries]
            self.query_log.extend((record.mapping.source, q.sql) for q in plan.queries)
            if self.store.distributed and connector.family == "postgresql":
                return self._run_tasks(record, connector, plan, query, snapshot, progress)
            cancel = threading.Event()
            batches = connector.stream(plan, cancel, snapshot)
            masked = self._hash_masked(batches, query)
            try:
                return self.store.write(record.key, record.schema, masked, progress=progress,
                                        make_room=lambda n: self.make_room(n, record))
            except BaseException as exc:
                cancel.set()
                batches.close()  # the connector cancels its own source queries
                if not isinstance(exc, SourceUnavailable):  # no point knocking on a dead source
                    connector.cancel_tagged(plan.tag)
                raise

    def _run_tasks(self, record: DatasetRecord, connector: Connector, plan: Any,
                   query: MappedQuery, snapshot: Any, progress: Callable[[Progress], None] | None
                   ) -> Version:
        """Ray backend: every partition query runs as a task in the cluster, importing the
        snapshot this server exported; masks are applied in the task, before the object store."""
        store: RayStore = self.store  # type: ignore[assignment]
        specs = store.task_specs(connector, plan, snapshot.info.get("ldw_snapshot"),
                                 record.schema, query.hashed,
                                 self.governance.mask_key if query.hashed else None)
        try:
            return store.write_tasks(record.key, specs, progress=progress,
                                     make_room=lambda n: self.make_room(n, record))
        except BaseException as exc:
            if not isinstance(exc, SourceUnavailable):
                connector.cancel_tagged(plan.tag)
            raise

    def materialize(self, owner: str, name: str, *,
                    progress: Callable[[Progress], None] | None = None,
                    refresh: bool = False) -> Version:
        """Cache a dataset (single flight: concurrent callers wait for one source read)."""
        record = self.dataset(owner, name)
        with record.lock:
            if record.version is not None and not refresh:
                return record.version
            if record.state == "lost" and not refresh:
                raise DatasetLost(
                    f"dataset {name!r} is memory-only and its cached version was lost (server "
                    "restart or crash); call refresh() to read the source again")
            if record.memory_only:
                self.store.check_memory_only(record.key)
            previous, record.state, record.error = record.version, "materializing", None
            try:
                version = self._run(record, progress)
            except BaseException as exc:
                record.state = ("cached" if previous.tier == MEMORY else "spilled") \
                    if previous is not None else "failed"
                record.stale = previous is not None
                record.error = str(exc) if isinstance(exc, Exception) else "interrupted"
                with contextlib.suppress(Exception):
                    self.catalog.set_state(owner, name, record.state, error=record.error,
                                           keep_version=True)
                raise
            self.catalog.publish(VersionRow(
                version.version_id, owner, name, version.tier, version.path, version.rows,
                version.bytes, version.created, version.seconds, tuple(record.source_sql)))
            record.version, record.state, record.stale = version, "cached", False
            log.info("materialized %s: %d rows, %d bytes in %.2fs", record.key, version.rows,
                     version.bytes, version.seconds)
        if previous is not None:
            self._drop_version(previous)
        return version

    def _hash_masked(self, batches: Iterator[pa.RecordBatch], query: MappedQuery
                     ) -> Iterator[pa.RecordBatch]:
        """Apply keyed-hash masks: each masked column is rebuilt into fresh buffers."""
        if not query.hashed:
            yield from batches
            return
        key = self.governance.mask_key
        for batch in batches:
            arrays, fields = list(batch.columns), list(batch.schema)
            for i, field_ in enumerate(fields):
                if field_.name in query.hashed:
                    arrays[i] = hash_array(arrays[i], key)
                    fields[i] = field_.with_type(pa.string())
            yield pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))

    def _drop_version(self, version: Version) -> None:
        self.store.delete(version)
        self.catalog.drop_version(version.version_id)

    def make_room(self, needed: int, writing: DatasetRecord | None = None) -> int:
        """Free ``needed`` bytes of the memory tier: spill the least recently used unpinned
        versions to disk; memory-only ones are dropped instead (they never touch disk)."""
        candidates = sorted(
            (r for r in self.datasets() if r is not writing and not r.pin
             and r.version is not None and r.version.tier == MEMORY),
            key=lambda r: r.last_access or r.version.created)
        freed = 0
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
                    self._drop_version(version)
                    record.version, record.state = None, "evicted"
                    self.catalog.set_state(record.owner, record.name, "evicted")
                    log.info("capacity: dropped memory-only %s", record.key)
                else:
                    spilled = self.store.spill(version)
                    self.catalog.move_version(version.version_id, tier=DISK, path=spilled.path)
                    record.version, record.state = spilled, "spilled"
                    self.catalog.set_state(record.owner, record.name, "spilled",
                                           version_id=version.version_id)
                    log.info("capacity: spilled %s to disk", record.key)
                freed += version.bytes
            finally:
                record.lock.release()
        return freed

    def attach(self, owner: str, name: str, *,
               progress: Callable[[Progress], None] | None = None) -> Version:
        """The current version (materialized first if needed), counted as a hit."""
        record = self.dataset(owner, name)
        version = record.version or self.materialize(owner, name, progress=progress)
        record.hits += 1
        record.bytes_served += version.bytes
        record.last_access = time.time()
        return version

    def open_current(self, owner: str, name: str, *,
                     progress: Callable[[Progress], None] | None = None) -> tuple[Version, int]:
        """The current version and a read-only descriptor to its file; once open, the
        descriptor keeps the bytes whatever happens to the file."""
        return self.open_with(self.store.open_readonly, owner, name, progress)

    def open_table(self, owner: str, name: str, *,
                   progress: Callable[[Progress], None] | None = None
                   ) -> tuple[Version, pa.Table]:
        """The current version and its table (memory-mapped locally, zero-copy from the node's
        object store on Ray); materialized first if needed, recomputed if its bytes were lost."""
        return self.open_with(self.store.open_table, owner, name, progress)

    def open_with(self, opener: Callable[[Version], T], owner: str, name: str,
                   progress: Callable[[Progress], None] | None) -> tuple[Version, T]:
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

    def open(self, owner: str, name: str) -> pa.Table:
        """The cached table, memory-mapped; materialized first if needed."""
        return self.open_table(owner, name)[1]

    def version_lost(self, owner: str, name: str, version: Version) -> None:
        """A version whose bytes are gone (a Ray node died with them): forget it, so the next
        access recomputes it from the mapping; a memory-only one is reported lost instead."""
        record = self.dataset(owner, name)
        with record.lock:
            if record.version is None or record.version.version_id != version.version_id:
                return  # someone else noticed first
            log.warning("version %s of %s was lost; it will be recomputed from its mapping",
                        version.version_id, record.key)
            with contextlib.suppress(Exception):
                self.store.forget(version)
            self.catalog.drop_version(version.version_id)
            record.version = None
            record.state = "lost" if record.memory_only else "evicted"
            self.catalog.set_state(owner, name, record.state)

    def evict(self, owner: str, name: str, *, reason: str = "evicted") -> None:
        with self._lock:
            record = self._records.get(f"{owner}/{name}")
        if record is None:
            raise UnknownDataset(f"no dataset named {name!r}; map it first")
        with record.lock:
            if record.version is not None:
                self._drop_version(record.version)
            record.version, record.state, record.stale = None, "evicted", False
            self.catalog.set_state(owner, name, "evicted")
        log.info("%s %s", reason, record.key)

    def set_options(self, owner: str, name: str, *, pin: bool | None = None,
                    ttl: str | float | None = None) -> DatasetRecord:
        record = self.dataset(owner, name)
        if pin is not None:
            record.pin = bool(pin)
        if ttl is not None:
            record.ttl = parse_duration(ttl)
        self.catalog.set_options(owner, name, record.options)
        return record

    def expire(self) -> int:
        """Evict every version past its TTL; returns how many."""
        expired = [r for r in self.datasets() if r.expired()]
        for record in expired:
            self.evict(record.owner, record.name, reason="expired")
        return len(expired)

    def scan(self, owner: str, name: str, *, columns: Sequence[str] | None = None,
             predicate: sa.ColumnElement | None = None, limit: int | None = None
             ) -> tuple[list[str], Iterator[pa.RecordBatch]]:
        """Stream from the source with pushdown (a lazy read of an uncached dataset): the SQL
        sent and the batches."""
        record = self.dataset(owner, name)
        if record.derived:  # no source to push into: read the cached result
            table = self.open(owner, name)
            if columns is not None:
                table = table.select(list(columns))
            return [record.mapping.sql or ""], iter(table.to_batches())
        connector = self.connector(record.mapping.source)
        query = narrow(self.query(record), columns=columns, predicate=predicate, limit=limit)
        plan = single_plan(connector, query)
        self.query_log.extend((record.mapping.source, q.sql) for q in plan.queries)

        def batches() -> Iterator[pa.RecordBatch]:
            cancel = threading.Event()
            stream = connector.stream(plan, cancel)
            try:
                yield from self._hash_masked(stream, query)
            finally:
                if not cancel.is_set():
                    cancel.set()
                stream.close()

        return [q.sql for q in plan.queries], batches()

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

    def status(self, records: Sequence[DatasetRecord] | None = None) -> dict[str, Any]:
        """The server's capacity and use; dataset counts, hits and bytes served only of
        ``records`` (default: all), so a caller is told only of datasets they may know of."""
        everything = self.datasets()
        records = everything if records is None else list(records)
        return {
            "backend": self.settings.backend,
            "ray_address": getattr(self.store, "address", None),
            "memory_limit": self.settings.memory_limit,
            "used_bytes": self.store.used_bytes(),
            "spilled_bytes": sum(r.version.bytes for r in everything
                                 if r.version is not None and r.version.tier == DISK),
            "datasets": len(records),
            "cached": sum(r.version is not None for r in records),
            "hits": {r.key: r.hits for r in records},
            "bytes_served": {r.key: r.bytes_served for r in records},
        }

    def close(self) -> None:
        with self._lock:
            for connector in self._connectors.values():
                connector.close()
            self._connectors.clear()
            if self._sql_engine is not None:
                self._sql_engine.close()
        self.catalog.close()
        self.store.close()
        if self.ephemeral:
            for root in self.store.roots.values():
                shutil.rmtree(root, ignore_errors=True)

    # -- facade additions (protocol helper) -----------------------------------------------------
    # What the service and the transports asked of the catalog, governance and store directly.
    @property
    def governed(self) -> bool:
        """Whether any governance policy is configured (and so enforced)."""
        return self.governance.enforced

    def roles(self, user: str) -> set[str]:
        return set(self.governance.roles(user))

    def grants(self, owner: str, name: str) -> list[tuple[str, str]]:
        """(kind, grantee) of every share of ``owner/name``."""
        return self.catalog.grants(owner, name)

    def append_audit(self, entry: dict[str, Any]) -> None:
        self.catalog.append_audit(entry)

    def audit_log(self, *, user: str | None, dataset: str | None,
                  limit: int) -> list[dict[str, Any]]:
        return self.catalog.audit(user=user, dataset=dataset, limit=limit)

    def user_for_token_hash(self, digest: str) -> str | None:
        return self.catalog.user_for_token_hash(digest)

    def _configured_users(self) -> set[str]:
        return set(self.settings.users) | {server_os_user()}

    def add_user(self, name: str, roles: list[str]) -> str:
        """A new token for ``name`` (shown once; see :mod:`ldw.users`)."""
        from ldw import users

        return users.add_user(self.catalog, self._configured_users(), name, roles,
                              check=check_name)

    def revoke_user(self, name: str) -> dict[str, Any]:
        from ldw import users

        return dict(users.revoke_user(self.catalog, self._configured_users(), name,
                                      check=check_name))

    def token_users(self) -> list[dict[str, Any]]:
        from ldw import users

        return [dict(row) for row in users.list_users(self.catalog)]

    def attach_ticket(self, owner: str, name: str, progress: Callable | None
                      ) -> tuple[Version, str | None]:
        """A distributed store: the current version (cached if needed) and a single-use ticket
        a client in the cluster redeems to map it from its node; no ticket (None) if the
        version is on the server's disk (the client attaches through the server then)."""
        store = self.store
        if not store.distributed:
            raise BadRequest("ray_attach needs backend = \"ray\"; this server's backend is "
                             "\"local\" (use attach)")

        def ticket_for(version: Version) -> str | None:
            if version.tier != MEMORY:
                return None
            store.refs(version)  # VersionLost if its objects are gone: recomputed, retried
            return store.ticket(version)

        return self.open_with(ticket_for, owner, name, progress)
