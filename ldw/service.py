"""The operations a client may ask of an engine, as one table of JSON-in, JSON-out functions.

The in-process client, the local Unix-socket server and the Flight server all go through
:meth:`Service.call`, :meth:`Service.attach` and :meth:`Service.stream`, so access checks and
auditing cannot drift apart between transports. Arguments are checked by name (unknown ones are
rejected); results are JSON-able except for ``attach`` (a cached version) and the streams
(record batches), which each transport delivers its own way.

Auditing fails closed: a data-serving call whose audit record cannot be written is refused,
and every denial is recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ldw import ops
from ldw.engine import DatasetRecord, Engine, check_name, check_user, server_os_user
from ldw.errors import (
    AccessDenied,
    AuditUnavailable,
    BadRequest,
    InvalidMapping,
    LdwError,
    PolicyViolation,
    UnknownDataset,
    UnknownSource,
    UnknownTable,
)
from ldw.pushdown import predicate_to_sql
from ldw.service_admin import ADMIN_ROLE, AdminOps, _arg
from ldw.types import (
    AttachInfo,
    AuditRow,
    CacheAdvice,
    DatasetInfo,
    DatasetListing,
    ServerStatus,
)
from ldw.wire import decode_value, encode_schema, encode_table, readable_schema

if TYPE_CHECKING:
    from ldw.storage import Descriptors

__all__ = ["Service", "checked"]

log = logging.getLogger("ldw.service")

Pinned = tuple[str, str, str]  # (owner, name, policy fingerprint) a stream was opened under


def _export_format(args: dict[str, Any]) -> tuple[str, str]:
    """The export format asked for (checked before anything is audited or written), and how
    the audit detail names it (Parquet, the first, says nothing)."""
    from ldw.export import check_format

    fmt = check_format(_arg(args, "format", str) or "parquet")
    return fmt, "" if fmt == "parquet" else f" as a {fmt} table"


def _target(user: str, args: dict[str, Any]) -> tuple[str, str]:
    """(owner, name) a call is about: the caller's own dataset unless ``owner`` says whose."""
    name = check_name(_arg(args, "name", str, required=True))
    owner = check_user(_arg(args, "owner", str) or user, "owner")
    return owner, name


# What a refused request raises: each is audited as a denial where requests are dispatched
# (Service.refusals_audited), whichever check raised it: governance (AccessDenied,
# PolicyViolation), the SQL sandbox and predicate checks (InvalidMapping), malformed requests
# (BadRequest, an InvalidMapping) and probes of names the caller cannot see (Unknown*).
REFUSALS = (AccessDenied, PolicyViolation, InvalidMapping, UnknownDataset, UnknownTable,
            UnknownSource)


def _refused_target(user: str, args: dict[str, Any]) -> str | None:
    """What a refused request was about, as far as its arguments say (escaped when stored)."""
    name, table = args.get("name"), args.get("table")
    if isinstance(name, str):
        owner = args.get("owner")
        return f"{owner if isinstance(owner, str) and owner else user}/{name}"
    return table if isinstance(table, str) else None


def _refused_sql(args: dict[str, Any]) -> str | None:
    """The SQL or predicate text a refused request carried (its values are bound params, not
    stored), cut to a bounded size."""
    parts = [f"{k}: {args[k]}" for k in ("sql", "query", "where") if isinstance(args.get(k), str)]
    return "\n".join(parts)[:10_000] or None


class Service(AdminOps):
    """Runs one request of one user against an engine (the server-wide operations, which
    only its owner and the admin role may run, are in :class:`~ldw.service_admin.AdminOps`)."""

    def __init__(self, engine: Engine, *,
                 describe_server: Callable[[], dict[str, Any]] | None = None) -> None:
        self.engine = engine
        self.describe_server = describe_server or (lambda: {"mode": "in-process"})

    # -- entry points -------------------------------------------------------------------------
    def call(self, user: str, op: str, args: dict[str, Any],
             progress: Callable | None = None) -> Any:
        with self.refusals_audited(user, op, args):
            spec = ops.checked_request(op, args, ops.Kind.JSON)
            if not (spec.admin and user == server_os_user()):  # the owner can let itself in
                self.engine.check_user(user)
            return getattr(self, spec.handler)(user, args, progress)

    def attach(self, user: str, args: dict, progress: Callable | None
               ) -> tuple[AttachInfo, Descriptors]:
        """Make sure a version is cached; return its info and read-only descriptors of its
        files (the caller closes them). On the Ray backend the descriptor holds an in-memory
        copy; :meth:`attach_table` avoids it."""
        with self.refusals_audited(user, "attach", args):
            ops.checked_request("attach", args, ops.Kind.ATTACH)
            self.engine.check_user(user)
            owner, name = _target(user, args)
            self.engine.readable(user, owner, name)
            version, fds = self.engine.open_current(owner, name, progress=progress)
            try:
                return self._attached(user, owner, name, version), fds
            except BaseException:
                fds.close()
                raise

    def attach_table(self, user: str, args: dict, progress: Callable | None
                     ) -> tuple[AttachInfo, pa.Table]:
        """Like :meth:`attach`, but the cached version as a table: memory-mapped on the local
        backend, zero-copy from this node's object store on Ray."""
        with self.refusals_audited(user, "attach", args):
            ops.checked_request("attach", args, ops.Kind.ATTACH)
            self.engine.check_user(user)
            owner, name = _target(user, args)
            self.engine.readable(user, owner, name)
            version, table = self.engine.open_table(owner, name, progress=progress)
            return self._attached(user, owner, name, version), table

    def _attached(self, user: str, owner: str, name: str, version: Any) -> AttachInfo:
        record = self.engine.dataset(owner, name)
        self.audit(user, "attach", record, rows=version.rows, nbytes=version.bytes,
                   sql=record.source_sql)
        return {**self.info(record, viewer=user), "version": version.version_id,
                "rows": version.rows, "bytes": version.bytes}

    def stream(self, user: str, op: str, args: dict, *,
               client_gone: Callable[[], bool] | None = None) -> pa.RecordBatchReader:
        """A data operation whose result is record batches: ``scan``, ``sql`` or ``preview``;
        access is checked again before every batch (a revoked user or share ends it).
        ``client_gone()`` says the caller has disconnected: a SQL query still running stops."""
        reader, check = self.open_stream(user, op, args, client_gone=client_gone)
        return pa.RecordBatchReader.from_batches(reader.schema, checked(reader, check))

    def open_stream(self, user: str, op: str, args: dict, *,
                    client_gone: Callable[[], bool] | None = None
                    ) -> tuple[pa.RecordBatchReader, Callable[[], None]]:
        """Like :meth:`stream`, but the batches unchecked and the access re-check apart, for a
        transport that adds its own checks (Flight: the token)."""
        with self.refusals_audited(user, op, args):
            spec = ops.checked_request(op, args, ops.Kind.STREAM)
            self.engine.check_user(user)
            reader, pinned = getattr(self, spec.handler)(user, args, client_gone)
            return reader, self.stream_check(user, op, pinned)

    def stream_check(self, user: str, op: str, pinned: Sequence[Pinned]) -> Callable[[], None]:
        """The re-check of a stream by ``user`` over the ``pinned`` datasets: raises (and
        audits) AccessDenied once the user is revoked or a share, role or policy changed."""
        datasets = list(pinned)

        def check() -> None:
            try:
                self.engine.check_user(user)
                for owner, name, policy in datasets:
                    self.engine.check_stream(user, owner, name, policy)
            except AccessDenied as exc:
                self.audit(user, op, dataset=",".join(f"{o}/{n}" for o, n, _ in datasets)
                           or None, outcome="deny", detail=str(exc))
                raise

        return check

    # -- audit --------------------------------------------------------------------------------
    def audit(self, user: str, action: str, record: DatasetRecord | None = None, *,
              dataset: str | None = None, outcome: str = "allow", sql: Any = None,
              rows: int | None = None, nbytes: int | None = None,
              detail: str | None = None) -> None:
        """Append one audit record; refuse the call (AuditUnavailable) if that fails."""
        if isinstance(sql, list | tuple):
            sql = "\n".join(sql)
        entry = {"ts": time.time(), "user": user, "action": action,
                 "dataset": record.key if record is not None else dataset,
                 "outcome": outcome, "policy": record.policy if record is not None else None,
                 "sql": sql, "rows": rows, "bytes": nbytes, "detail": detail}
        try:
            self.engine.admin.append_audit(entry)
        except Exception:
            log.exception("audit record could not be written")
            raise AuditUnavailable(
                "the audit log cannot be written, so ldw refuses this call; tell the ldw "
                "administrator (the server log has the cause)") from None

    class _Refusals:
        def __init__(self, service: Service, user: str, op: str, args: dict) -> None:
            self.service, self.user, self.op, self.args = service, user, op, args

        def __enter__(self) -> None:
            return None

        def __exit__(self, kind: type | None, exc: BaseException | None, tb: Any) -> bool:
            if isinstance(exc, REFUSALS):
                self.service.audit(self.user, self.op, dataset=_refused_target(self.user,
                                                                             self.args),
                                   outcome="deny", sql=_refused_sql(self.args),
                                   detail=f"{type(exc).__name__}: {exc}")
            return False

    def refusals_audited(self, user: str, op: str, args: dict) -> Service._Refusals:
        """A context in which a refusal (see REFUSALS) is audited as a denial, then raised;
        if the denial cannot be audited, AuditUnavailable is raised instead."""
        return Service._Refusals(self, user, op, args)

    # -- descriptions -------------------------------------------------------------------------
    def info(self, record: DatasetRecord, *, viewer: str | None = None) -> DatasetInfo:
        """What ``viewer`` (default: the owner) may know of a dataset; a user it is shared
        with sees only the grants that concern them, not who else it is shared with."""
        version = record.version
        grants = self.engine.grants(record.owner, record.name)
        if viewer is not None and viewer != record.owner:
            roles = self.engine.roles(viewer)
            grants = [(k, g) for k, g in grants
                      if (k, g) == ("user", viewer) or k == "role" and g in roles]
        try:
            query = self.engine.query(record)
            if query is None:  # derived: SQL over datasets
                raise LdwError("no source plan")
            columns = [p.as_row() for p in query.columns]
            for plan, row in zip(query.columns, columns, strict=True):
                mask = query.arrow_masks.get(plan.name)
                if mask is not None:
                    row["arrow_type"] = str(mask.result_type(plan.arrow_type))
                    row["note"] = mask.note
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
            **_definition(record),
            "limit": record.mapping.limit,
            "schema": readable_schema(record.schema),
            "arrow_schema": encode_schema(record.schema),
            "columns": columns,
            "rows": version.rows if version else None,
            "bytes": version.bytes if version else None,
            "version": version.version_id if version else None,
            "tier": version.tier if version else None,
            "files": len(version.files) if version else None,
            "load_seconds": version.seconds if version else None,
            "source_sql": list(record.source_sql),
            "lossy": record.notes,
            "ttl": record.ttl,
            "pinned": record.pin,
            "memory_only": record.memory_only,
            "export": record.export,
            "policy": record.policy,
            "shared_with": [f"{k}:{g}" for k, g in grants],
            "hits": record.hits,
            "bytes_served": record.bytes_served,
            "last_access": record.last_access,
            "error": record.error,
            "freshness": {"refresh": record.mapping.refresh,
                          "incremental": record.mapping.incremental, "key": record.mapping.key,
                          "watermark": record.mapping.watermark, **record.freshness},
            "progress": record.progress.as_json() if record.progress else None,
        }

    def listing(self, record: DatasetRecord) -> DatasetListing:
        version = record.version
        return {"name": record.name, "owner": record.owner, "mapping": record.mapping.ref,
                **_definition(record), "state": record.state,
                "rows": version.rows if version else None,
                "bytes": version.bytes if version else None,
                "version": version.version_id if version else None,
                "last_access": record.last_access, "hits": record.hits,
                "pinned": record.pin, "memory_only": record.memory_only,
                "stale": record.stale}

    # -- operations: (user, args, progress) -> JSON ------------------------------------------
    def op_sources(self, user: str, args: dict, progress: Callable | None) -> Any:
        return self.engine.sources()

    def op_tables(self, user: str, args: dict, progress: Callable | None) -> Any:
        return self.engine.tables(user, _arg(args, "source", str, required=True),
                                  _arg(args, "schema", str))

    def op_schemas(self, user: str, args: dict, progress: Callable | None) -> Any:
        return self.engine.schemas(user, _arg(args, "source", str, required=True))

    def op_describe(self, user: str, args: dict, progress: Callable | None) -> Any:
        return self.engine.describe(user, _arg(args, "table", str, required=True))

    def op_map(self, user: str, args: dict, progress: Callable | None) -> DatasetInfo:
        params = _arg(args, "params", dict)
        if params is not None:
            args = {**args, "params": {k: decode_value(v) for k, v in params.items()}}
        record = self.engine.map(user, **args)
        self.audit(user, "map", record, detail=record.mapping.ref)
        return self.info(record)

    def op_ray_attach(self, user: str, args: dict, progress: Callable | None) -> Any:
        """Ray backend: cache if needed, check access, and return a single-use ticket that a
        client inside the Ray cluster redeems at the version holder (the store's direct reader,
        ldw.storage.direct_reader)
        to map the version zero-copy from its node's object store. A version spilled to the
        server's disk has no ticket (``{"ticket": None}``): the client attaches it instead."""
        owner, name = _target(user, args)
        self.engine.readable(user, owner, name)
        version, ticket = self.engine.attach_ticket(owner, name, progress)
        if ticket is None:
            return {"ticket": None}
        return {**self._attached(user, owner, name, version), "ticket": ticket}

    def op_info(self, user: str, args: dict, progress: Callable | None) -> Any:
        owner, name = _target(user, args)
        record = self.engine.readable(user, owner, name)
        self.engine.look(record)  # a change check if due, bounded: the source may hang
        return self.info(record, viewer=user)

    def _own(self, user: str, args: dict, op: str) -> DatasetRecord:
        owner, name = _target(user, args)
        if owner != user:
            raise AccessDenied(f"only {owner} can {op} {owner}/{name}")
        return self.engine.readable(user, owner, name)

    def op_peek(self, user: str, args: dict, progress: Callable | None) -> dict[str, Any]:
        """The first rows of the cached version, for a dataset's display: read from the cache
        only (none if nothing is cached), never from the source; policies applied when it was
        cached. Audited as a read of those rows."""
        owner, name = _target(user, args)
        record = self.engine.readable(user, owner, name)
        limit = min(max(_arg(args, "limit", int) or 5, 1), 100)
        found = self.engine.peek(owner, name, limit)
        if found is None:
            return {"version": None, "rows": None}
        version, table = found
        self.audit(user, "peek", record, rows=table.num_rows, nbytes=table.nbytes)
        return {"version": version.version_id, "rows": encode_table(table)}

    def op_cache(self, user: str, args: dict, progress: Callable | None) -> Any:
        record = self._own(user, args, "cache")
        version = self.engine.materialize(user, record.name, progress=progress,
                                          refresh=bool(args.get("refresh")),
                                          full=bool(args.get("full")))
        self.audit(user, "materialize", record, sql=record.source_sql, rows=version.rows,
                   nbytes=version.bytes)
        return self.info(record)

    def op_evict(self, user: str, args: dict, progress: Callable | None) -> Any:
        record = self._own(user, args, "evict")
        self.engine.evict(user, record.name)
        return self.info(record)

    def op_set_options(self, user: str, args: dict, progress: Callable | None) -> Any:
        record = self._own(user, args, "change")
        record = self.engine.set_options(user, record.name, pin=args.get("pin"),
                                         ttl=_arg(args, "ttl", (str, int, float)))
        return self.info(record)

    def op_share(self, user: str, args: dict, progress: Callable | None) -> Any:
        record = self._own(user, args, "share")
        revoke = bool(args.get("revoke"))
        grants = self.engine.share(user, record.name, user=_arg(args, "user", str),
                                   role=_arg(args, "role", str), revoke=revoke)
        who = args.get("user") or f"role {args.get('role')}"
        self.audit(user, "revoke" if revoke else "share", record, detail=f"with {who}")
        return [f"{k}:{g}" for k, g in grants]

    def op_datasets(self, user: str, args: dict, progress: Callable | None
                    ) -> list[DatasetListing]:
        visible = self.engine.visible(user)
        shared = sorted((r for r in visible if r.owner != user), key=lambda r: (r.owner, r.name))
        return [self.listing(r) for r in visible if r.owner == user] + \
            [self.listing(r) for r in shared]

    def op_status(self, user: str, args: dict, progress: Callable | None) -> ServerStatus:
        roles = self.engine.roles(user) | ({ADMIN_ROLE} if self.is_admin(user) else set())
        visible = self.engine.visible(user, everything=ADMIN_ROLE in roles)
        return {**self.describe_server(), "user": user, "roles": sorted(roles),
                "governed": self.engine.governed, **self.engine.status(visible),
                "slices": self.engine.federation.slice_status(user,
                                                              everything=ADMIN_ROLE in roles),
                "sql_source_reads": self.engine.federation.observations.spent(),
                **self.config_status(user)}

    def op_audit(self, user: str, args: dict, progress: Callable | None) -> list[AuditRow]:
        wanted = _arg(args, "user", str)
        if self.engine.governed and not self.is_admin(user):
            if wanted not in (None, user):
                raise AccessDenied(f"only the ldw server's owner or the {ADMIN_ROLE!r} role may "
                                   "read other users' audit records")
            wanted = user
        limit = _arg(args, "limit", int) or 100
        return self.engine.admin.audit_log(user=wanted, dataset=_arg(args, "dataset", str),
                                     limit=min(max(limit, 1), 10_000))

    def _exportable(self, user: str, args: dict) -> DatasetRecord:
        """The dataset to export, if the caller may read it and its policy lets it leave."""
        owner, name = _target(user, args)
        record = self.engine.readable(user, owner, name)
        if record.memory_only:
            raise PolicyViolation(f"{record.key} is memory-only: it may not be written to "
                                  "disk, so it cannot be exported")
        if record.export == "deny":
            raise PolicyViolation(f"the policy of {', '.join(record.policy_tables)} denies "
                                  "export")
        return record

    def _provenance(self, user: str, record: DatasetRecord, version: Any) -> dict[str, Any]:
        return {"source": record.mapping.source, "mapping": record.mapping.ref,
                "sql": list(record.source_sql), "snapshot": version.version_id,
                "policy": record.policy, "exported_by": user, "owner": record.owner,
                "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def op_export(self, user: str, args: dict, progress: Callable | None) -> Any:
        """The server writes the export, as its own OS user, only inside the caller's export
        roots (:mod:`ldw.export.roots`); local clients write theirs themselves
        (``export_manifest``)."""
        from ldw.export import export_table
        from ldw.export.roots import confine_export_path, export_roots_for

        record = self._exportable(user, args)
        path = confine_export_path(_arg(args, "path", str, required=True),
                                   export_roots_for(self.engine.settings, user), user=user)
        fmt, as_format = _export_format(args)
        version, table = self.engine.open_table(record.owner, record.name)
        partition_by = _arg(args, "partition_by", list)
        self.audit(user, "export", record, sql=record.source_sql, rows=version.rows,
                   nbytes=version.bytes, detail=f"written by the server to {path}{as_format}")
        result = export_table(table, path, manifest=self._provenance(user, record, version),
                              format=fmt, mode=_arg(args, "mode", str),
                              partition_by=partition_by,
                              compression=_arg(args, "compression", str) or "zstd",
                              overwrite=bool(args.get("overwrite")), owner=user,
                              progress=progress)
        return result.as_json()

    def op_export_manifest(self, user: str, args: dict, progress: Callable | None) -> Any:
        """For a local client that writes an export itself, as its own OS user: the policy
        checks, the audit record, and the provenance its manifest records."""
        record = self._exportable(user, args)
        path = _arg(args, "path", str, required=True)
        _, as_format = _export_format(args)
        version = record.version or self.engine.materialize(record.owner, record.name,
                                                            progress=progress)
        self.audit(user, "export", record, sql=record.source_sql, rows=version.rows,
                   nbytes=version.bytes, detail=f"written by the client to {path!r}{as_format}")
        return {"provenance": self._provenance(user, record, version), "owner": user}

    # -- data streams ---------------------------------------------------------------------------
    def stream_scan(self, user: str, args: dict, client_gone: Callable[[], bool] | None = None
                    ) -> tuple[pa.RecordBatchReader, list[Pinned]]:
        """Stream an uncached dataset from its source, pushing down what translates exactly.

        ``predicate`` is a list of conjuncts in ldw's predicate format (:mod:`ldw.pushdown`),
        never a serialized expression; the client applies its whole predicate again."""
        owner, name = _target(user, args)
        columns = _arg(args, "columns", list)
        limit = _arg(args, "limit", int)
        conjuncts = _arg(args, "predicate", list)
        if args.get("predicate") is not None and conjuncts is None:
            raise BadRequest("scan predicate must be a JSON list in ldw's predicate format; "
                                 "serialized polars expressions are refused (update ldw on the "
                                 "client)")
        record = self.engine.readable(user, owner, name)
        sql_predicate, complete = None, True
        if conjuncts:
            query = self.engine.query(record)
            if query is None:  # derived: no source to push into; the client filters
                predicate_to_sql(conjuncts, {}, record.schema)  # still validated
                complete = False
            else:
                sql_predicate, complete = predicate_to_sql(conjuncts, query.lookup,
                                                           record.schema)
        sql, batches = self.engine.scan(owner, name, columns=columns, predicate=sql_predicate,
                                        limit=limit if complete else None)
        self.audit(user, "scan", record, sql=sql)
        pinned = [(record.owner, record.name, record.policy)]
        first = next(batches, None)
        if first is None:
            fields = [f for f in record.schema if columns is None or f.name in columns]
            return pa.RecordBatchReader.from_batches(pa.schema(fields), iter(())), pinned
        return pa.RecordBatchReader.from_batches(first.schema, _chain(first, batches)), pinned

    def stream_preview(self, user: str, args: dict,
                       client_gone: Callable[[], bool] | None = None
                       ) -> tuple[pa.RecordBatchReader, list[Pinned]]:
        """The first rows of a source table as the user may see them; no dataset is made."""
        table = _arg(args, "table", str, required=True)
        limit = min(max(_arg(args, "limit", int) or 10, 0), 10_000)
        sql, batches = self.engine.preview(user, table, limit)
        rows = list(batches)
        self.audit(user, "preview", dataset=table, sql=sql,
                   rows=sum(b.num_rows for b in rows))
        if not rows:
            return pa.RecordBatchReader.from_batches(pa.schema([]), iter(())), []
        return pa.RecordBatchReader.from_batches(rows[0].schema, iter(rows)), []

    def stream_sql(self, user: str, args: dict, client_gone: Callable[[], bool] | None = None
                   ) -> tuple[pa.RecordBatchReader, list[Pinned]]:
        """SQL over datasets the caller may read (``"alice/orders"`` for a shared one) and
        governed source tables (``source.schema.table``): cached datasets are read zero-copy,
        everything else lazily from its source (:mod:`ldw.engine.federation`)."""
        query = _arg(args, "query", str, required=True)
        if args.get("name") is not None:  # a new dataset whose lineage is this query
            record = self.engine.map_derived(user, _arg(args, "name", str), query)
            self.audit(user, "map", record, sql=query)
            version = self.engine.attach(user, record.name)
            self.audit(user, "sql", record, sql=query, rows=version.rows, nbytes=version.bytes)
            return pa.RecordBatchReader.from_batches(record.schema, iter(())), []  # data stays
        federation = self.engine.federation
        plan = federation.plan(user, query, cache=bool(args.get("cache")))
        pinned = [(r.record.owner, r.record.name, r.record.policy) for r in plan.relations
                  if r.record is not None]
        tables = federation.tables(plan, cancelled=client_gone)
        # streamed as it is read (a stalled reader holds a few batches, not the result);
        # audited before the first row leaves, so the size is not known yet
        limit, setting = self.engine.settings.sql_timeout_for(user)
        result = self.engine.sql_engine().stream(plan.duckdb_sql, tables, time_limit=limit,
                                                 time_setting=setting, cancelled=client_gone)
        self.audit(user, "sql", dataset=",".join(r.ref for r in plan.relations), sql=query,
                   detail=_sent(plan.relations))
        return result, pinned

    def op_cache_advice(self, user: str, args: dict, progress: Callable | None
                        ) -> list[CacheAdvice]:
        return self.engine.federation.advice(  # type: ignore[return-value]
            user, everything=self.is_admin(user))

    def op_explain(self, user: str, args: dict, progress: Callable | None) -> dict[str, Any]:
        """How ``query`` reads each relation; with ``analyze``, after running it."""
        query = _arg(args, "query", str, required=True)
        federation = self.engine.federation
        plan = federation.plan(user, query)
        rows = None
        if args.get("analyze"):
            tables = federation.tables(plan)
            limit, setting = self.engine.settings.sql_timeout_for(user)
            rows = self.engine.sql_engine().run(plan.duckdb_sql, tables, time_limit=limit,
                                                time_setting=setting).num_rows
        federation.estimate(plan)
        self.audit(user, "explain", dataset=",".join(r.ref for r in plan.relations), sql=query,
                   rows=rows, detail=_sent(plan.relations))
        return {**plan.explain(), "rows": rows}


def _definition(record: DatasetRecord) -> dict[str, Any]:
    """What tells two mappings of one table apart: the columns and the row filter."""
    columns = record.mapping.columns
    return {"mapped_columns": list(columns) if columns is not None else None,
            "where": record.mapping.where}


def _sent(relations: Sequence[Any]) -> str | None:
    """What was sent to each source, for the audit record."""
    lines = [f"{r.ref} ({r.source}): {sql}" for r in relations for sql in r.sql]
    return "\n".join(lines) or None


def checked(batches: Iterable[pa.RecordBatch], check: Callable[[], None]
            ) -> Iterator[pa.RecordBatch]:
    """The batches, with ``check`` run before each one is taken (and before the end is
    reported); whatever it raises ends the stream."""
    iterator = iter(batches)
    while True:
        check()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield batch


def _chain(first: pa.RecordBatch, rest: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield first
    yield from rest

