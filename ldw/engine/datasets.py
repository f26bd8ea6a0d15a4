"""Dataset definition and access: mapping tables, queries and SQL over datasets, and who may
read a dataset now (owners, shares, roles, revocation, policy fingerprints)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ldw.catalog import Catalog
from ldw.config import Settings, parse_duration, refresh_policy
from ldw.engine.checks import check_name, check_user, server_os_user
from ldw.engine.sources import Sources, schema_of
from ldw.errors import AccessDenied, AccessRevoked, ConfigError, InvalidMapping, UnknownDataset
from ldw.governance.policies import Governance, combine_fingerprints
from ldw.lifecycle import DERIVED, DatasetRecord, Lifecycle
from ldw.planner import MappedQuery, Mapping, parse_table_ref
from ldw.storage import storage_schema

__all__ = ["Datasets"]

log = logging.getLogger("ldw.engine")


def _apply_plan(record: DatasetRecord, query: MappedQuery) -> None:
    """What a plan decides about a record: its schema, memory-only and export policies."""
    record.query = query
    record.schema = schema_of(query)
    record.memory_only = record.asked_memory_only or any(p.memory_only for p in query.policies)
    record.export = "deny" if any(p.export == "deny" for p in query.policies) else "allow"


class Datasets:
    """Defines datasets and decides who may read them."""

    def __init__(self, settings: Settings, lifecycle: Lifecycle, governance: Governance,
                 catalog: Catalog, sources: Sources, sql_engine: Callable[[], Any]) -> None:
        self.settings = settings
        self.lifecycle = lifecycle
        self.governance = governance
        self.catalog = catalog
        self.sources = sources
        self.sql_engine = sql_engine

    # -- definition -----------------------------------------------------------------------------
    def map(self, owner: str, name: str, table: str | None = None, *, sql: str | None = None,
            source: str | None = None, columns: Sequence[str] | None = None,
            where: str | None = None, limit: int | None = None, partition_on: str | None = None,
            partitions: int | None = None, ttl: str | float | None = None, pin: bool = False,
            memory_only: bool = False, params: dict[str, Any] | None = None,
            incremental: str | None = None, key: str | None = None,
            watermark: str | None = None, refresh: str | None = None) -> DatasetRecord:
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
            params=tuple(sorted((params or {}).items())), incremental=incremental, key=key,
            watermark=watermark, refresh=self._refresh_policy(mapping, refresh))
        ttl_seconds = parse_duration(ttl)
        same = self._unchanged(owner, mapping, bool(memory_only))
        if same is not None:
            return self.lifecycle.keep(same, ttl=ttl_seconds, pin=bool(pin), mapping=mapping)
        query = self.sources.plan(owner, mapping)
        record = DatasetRecord(owner, mapping, schema_of(query), ttl=ttl_seconds, pin=bool(pin),
                               asked_memory_only=bool(memory_only),
                               policy=combine_fingerprints(query.policies),
                               policy_tables=tuple(p.table for p in query.policies),
                               source_queries=1)
        _apply_plan(record, query)
        return self.lifecycle.define(record)

    def _refresh_policy(self, mapping: Mapping, refresh: str | None) -> str:
        """``refresh=`` as given, else what ``[refresh]`` in ldw.toml says for the table."""
        if refresh is not None:
            try:
                return refresh_policy(refresh)
            except ConfigError as exc:
                raise InvalidMapping(str(exc)) from None
        return self.settings.refresh_for(mapping.ref) if mapping.table else "manual"

    def _unchanged(self, owner: str, mapping: Mapping, memory_only: bool
                   ) -> DatasetRecord | None:
        """The owner's dataset if it holds a version of exactly this definition under the
        owner's current policy: re-running a map cell must not read the source again."""
        old = self.lifecycle.get(f"{owner}/{mapping.name}")
        if old is None or old.version is None \
                or dataclasses.replace(old.mapping, refresh=mapping.refresh) != mapping \
                or old.asked_memory_only != memory_only:
            return None
        try:
            policy = self.current_policy(owner, old)
        except AccessDenied:
            return None  # planning again gives the user the right error
        return old if policy == old.policy else None

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
        mapping = Mapping(name, DERIVED, sql=query)
        same = self._unchanged(owner, mapping, False)
        if same is not None:
            return self.lifecycle.keep(same, ttl=parse_duration(ttl), pin=bool(pin))
        empty = {ref: storage_schema(r.schema).empty_table() for ref, r in zip(names, inputs,
                                                                             strict=True)}
        limit, setting = self.settings.sql_timeout_for(owner)
        schema = self.sql_engine().run(query, empty, time_limit=limit,
                                       time_setting=setting).schema  # no rows move
        tables = tuple(sorted({t for r in inputs for t in r.policy_tables}))
        record = DatasetRecord(owner, mapping, schema, ttl=parse_duration(ttl), pin=bool(pin),
                               memory_only=any(r.memory_only for r in inputs),
                               policy_tables=tables,
                               export="deny" if any(r.export == "deny" for r in inputs)
                               else "allow")
        record.policy = self.current_policy(owner, record)
        return self.lifecycle.define(record)

    def dataset(self, owner: str, name: str) -> DatasetRecord:
        check_name(name)
        check_user(owner, "owner")
        record = self.lifecycle.get(f"{owner}/{name}")
        if record is None:
            mine = sorted(r.name for r in self.lifecycle.records(owner))
            raise UnknownDataset(f"no dataset named {name!r} (yours: "
                                 f"{', '.join(mine) or 'none'}); map it first")
        if record.expired():
            with record.lock:
                if record.expired():
                    self.lifecycle.dropped(record)
                    log.info("expired %s", record.key)
        return record

    def query(self, record: DatasetRecord) -> MappedQuery | None:
        """The record's plan against its source (planned again after a restart); None for a
        derived dataset, which has no source query."""
        if record.derived:
            return None
        if record.query is None:
            record.query = self.sources.plan(record.owner, record.mapping)
            record.source_queries += 1
        return record.query

    def set_options(self, owner: str, name: str, *, pin: bool | None = None,
                    ttl: str | float | None = None) -> DatasetRecord:
        record = self.dataset(owner, name)
        if pin is not None:
            record.pin = bool(pin)
        if ttl is not None:
            record.ttl = parse_duration(ttl)
        self.lifecycle.save_options(record)
        return record

    # -- access ---------------------------------------------------------------------------------
    def current_policy(self, user: str, record: DatasetRecord) -> str:
        """Fingerprint of ``user``'s effective policies on the record's tables, now
        (AccessDenied if a grant or role that allowed them is gone)."""
        return combine_fingerprints(self.governance.effective(user, table)
                                    for table in record.policy_tables)

    def _shared_with(self, user: str, owner: str, name: str) -> bool:
        roles = self.governance.roles(user)
        grants = self.catalog.grants(owner, name)
        return ("user", user) in grants or any(
            kind == "role" and grantee in roles for kind, grantee in grants)

    def readable(self, user: str, owner: str, name: str) -> DatasetRecord:
        """The record, if ``user`` may read it now; raises AccessDenied/UnknownDataset.

        Another owner's dataset that is not shared with ``user`` and one that does not exist
        get the same answer, so probing tells nothing about other users' datasets."""
        check_name(name)
        check_user(owner, "owner")
        if user != owner:
            try:
                if not self._shared_with(user, owner, name):
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

            def replan(record: DatasetRecord) -> None:
                record.policy = policy
                query = self.query(record)
                if query is not None:
                    _apply_plan(record, query)

            with record.lock:
                self.lifecycle.replanned(record, replan)
        return record

    def visible(self, user: str, *, everything: bool = False) -> list[DatasetRecord]:
        """The datasets ``user`` may know of: their own and those shared with them (by user
        or role); ``everything`` (an administrator) for all."""
        if everything:
            return self.lifecycle.records()
        shared = {f"{o}/{n}" for o, n in self.catalog.shared_with(
            user, self.governance.roles(user))}
        return [r for r in self.lifecycle.records() if r.owner == user or r.key in shared]

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
        record = self.lifecycle.get(f"{owner}/{name}")
        if record is None:
            raise AccessRevoked(f"no dataset {owner}/{name} is shared with you any more (it "
                                "was dropped or redefined); read it again")
        if user != owner and not self._shared_with(user, owner, name):
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
