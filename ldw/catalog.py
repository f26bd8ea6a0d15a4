"""The catalog: what survives the server — datasets (their lineage), versions and user tokens.

SQLAlchemy Core over SQLite by default (PostgreSQL for a team). Values are JSON and Arrow IPC
schemas, never pickles. A version row is written only after its file was published by rename,
so the catalog never points at half a version; files the catalog does not know are orphans.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from ldw.audit import ZERO, Anchor, AuditReport, AuditSeal, printable
from ldw.audit import verify as verify_audit
from ldw.errors import ConfigError, UnknownDataset
from ldw.governance.trust import NOT_WRITABLE, create_private, private_dir

__all__ = ["Catalog", "DatasetRow", "VersionRow"]

log = logging.getLogger("ldw.catalog")

_meta = sa.MetaData()

datasets_table = sa.Table(
    "ldw_datasets", _meta,
    sa.Column("owner", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("mapping", sa.Text, nullable=False),        # JSON: the lineage
    sa.Column("options", sa.Text, nullable=False),        # JSON: ttl, pin, memory_only
    sa.Column("schema", sa.LargeBinary, nullable=False),  # Arrow IPC schema
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("version_id", sa.String(64)),
    sa.Column("error", sa.Text),
    sa.Column("created", sa.Float, nullable=False),
)

versions_table = sa.Table(
    "ldw_versions", _meta,
    sa.Column("version_id", sa.String(64), primary_key=True),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("dataset", sa.String(128), nullable=False),
    sa.Column("tier", sa.String(16), nullable=False),     # memory | disk
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("source_sql", sa.Text, nullable=False),     # JSON list
    sa.Column("layout", sa.Text),                         # JSON: its files, if several
)

tokens_table = sa.Table(
    "ldw_tokens", _meta,
    sa.Column("user", sa.String(128), primary_key=True),
    sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("roles", sa.Text, nullable=False, default="[]"),  # JSON list
    sa.Column("created", sa.Float, nullable=False),
)

revoked_table = sa.Table(  # users refused everywhere (also local and [users.*] ones)
    "ldw_revoked_users", _meta,
    sa.Column("user", sa.String(128), primary_key=True),
    sa.Column("revoked", sa.Float, nullable=False),
)

grants_table = sa.Table(
    "ldw_grants", _meta,
    sa.Column("owner", sa.String(128), primary_key=True),
    sa.Column("dataset", sa.String(128), primary_key=True),
    sa.Column("kind", sa.String(8), primary_key=True),  # user | role
    sa.Column("grantee", sa.String(128), primary_key=True),
    sa.Column("created", sa.Float, nullable=False),
)

audit_table = sa.Table(
    "ldw_audit", _meta,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("user", sa.String(128), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("dataset", sa.String(260)),
    sa.Column("outcome", sa.String(16), nullable=False),  # allow | deny | error
    sa.Column("policy", sa.String(64)),
    sa.Column("sql", sa.Text),
    sa.Column("rows", sa.BigInteger),
    sa.Column("bytes", sa.BigInteger),
    sa.Column("detail", sa.Text),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

AUDIT_FIELDS = ("ts", "user", "action", "dataset", "outcome", "policy", "sql", "rows", "bytes",
                "detail")  # what each record's MAC covers, with its seq and the previous MAC


@dataclass
class DatasetRow:
    owner: str
    name: str
    mapping: dict[str, Any]
    options: dict[str, Any]
    schema: pa.Schema
    state: str
    version_id: str | None
    error: str | None
    created: float


@dataclass(frozen=True)
class VersionRow:
    version_id: str
    owner: str
    dataset: str
    tier: str
    path: Path
    rows: int
    bytes: int
    created: float
    seconds: float
    source_sql: tuple[str, ...]
    layout: dict[str, Any] | None = None  # the store's, when the version is several files


def _dataset_row(row: sa.Row) -> DatasetRow:
    return DatasetRow(row.owner, row.name, json.loads(row.mapping), json.loads(row.options),
                      pa.ipc.read_schema(pa.py_buffer(row.schema)), row.state, row.version_id,
                      row.error, row.created)


def _version_row(row: sa.Row) -> VersionRow:
    return VersionRow(row.version_id, row.owner, row.dataset, row.tier, Path(row.path), row.rows,
                      row.bytes, row.created, row.seconds, tuple(json.loads(row.source_sql)),
                      json.loads(row.layout) if row.layout else None)


def _add_columns(engine: sa.Engine) -> None:
    """Columns later ldw versions added to a catalog an earlier one created."""
    have = {c["name"] for c in sa.inspect(engine).get_columns(versions_table.name)}
    if "layout" not in have:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE ldw_versions ADD COLUMN layout TEXT"))


def _private_sqlite(path: Path) -> None:
    """The catalog's folder is ours and nobody else's to change; its file is 0600 from the
    start (SQLite gives its journal and WAL files the same mode)."""
    folder = private_dir(path.parent, "catalog folder", forbidden=NOT_WRITABLE)
    os.close(create_private(folder / path.name))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Catalog:
    """One owner of the catalog database; every method is one short transaction."""

    def __init__(self, url: str, *, seal: AuditSeal | None = None) -> None:
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            path = Path(url.removeprefix("sqlite:///")).expanduser()
            _private_sqlite(path)
            url = f"sqlite:///{path}"
        options: dict[str, Any] = {}
        if url in ("sqlite://", "sqlite:///:memory:"):  # one shared in-memory database
            options = {"poolclass": sa.pool.StaticPool,
                       "connect_args": {"check_same_thread": False}}
        try:
            self._engine = sa.create_engine(url, hide_parameters=True, **options)
            _meta.create_all(self._engine)
            _add_columns(self._engine)
        except sa.exc.ArgumentError:
            raise ConfigError(f"catalog {url!r} is not a database URL; write "
                              "sqlite:///path/catalog.db or postgresql://...") from None
        if self._engine.dialect.name == "sqlite":
            with self._engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        self._lock = threading.Lock()
        self._seal = seal
        if seal is not None:
            try:
                self._seal_start()
            except OSError as exc:
                raise ConfigError(f"the audit anchor {str(seal.anchor.path)!r} cannot be "
                                  f"written ({exc.strerror or exc}); it must be a regular file "
                                  "in a directory private to the server's user") from None

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        with self._lock, self._engine.begin() as conn:
            yield conn

    def close(self) -> None:
        if self._seal is not None:
            self._seal.close()
        self._engine.dispose()

    # -- datasets -----------------------------------------------------------------------------
    def put_dataset(self, owner: str, name: str, *, mapping: dict[str, Any],
                    options: dict[str, Any], schema: pa.Schema) -> None:
        """Create or replace a dataset's definition (its versions are the caller's to drop)."""
        values = {"mapping": json.dumps(mapping), "options": json.dumps(options),
                  "schema": schema.serialize().to_pybytes(), "state": "mapped",
                  "version_id": None, "error": None, "created": time.time()}
        key = (datasets_table.c.owner == owner) & (datasets_table.c.name == name)
        with self._tx() as conn:
            if conn.execute(sa.select(sa.func.count()).where(key)).scalar_one():
                conn.execute(datasets_table.update().where(key).values(**values))
            else:
                conn.execute(datasets_table.insert().values(owner=owner, name=name, **values))

    def set_mapping(self, owner: str, name: str, mapping: dict[str, Any]) -> None:
        """Change a dataset's mapping in place (e.g. its refresh policy), keeping its state."""
        with self._tx() as conn:
            conn.execute(datasets_table.update().where(
                (datasets_table.c.owner == owner) & (datasets_table.c.name == name)
            ).values(mapping=json.dumps(mapping)))

    def dataset(self, owner: str, name: str) -> DatasetRow:
        query = datasets_table.select().where(
            (datasets_table.c.owner == owner) & (datasets_table.c.name == name))
        with self._tx() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise UnknownDataset(f"no dataset named {name!r}; map it first")
        return _dataset_row(row)

    def datasets(self, owner: str | None = None) -> list[DatasetRow]:
        query = datasets_table.select().order_by(datasets_table.c.owner, datasets_table.c.name)
        if owner is not None:
            query = query.where(datasets_table.c.owner == owner)
        with self._tx() as conn:
            return [_dataset_row(r) for r in conn.execute(query)]

    def set_state(self, owner: str, name: str, state: str, *, version_id: str | None = None,
                  error: str | None = None, keep_version: bool = False) -> None:
        values: dict[str, Any] = {"state": state, "error": error}
        if not keep_version:
            values["version_id"] = version_id
        with self._tx() as conn:
            conn.execute(datasets_table.update().where(
                (datasets_table.c.owner == owner) & (datasets_table.c.name == name)
            ).values(**values))

    def set_options(self, owner: str, name: str, options: dict[str, Any]) -> None:
        with self._tx() as conn:
            conn.execute(datasets_table.update().where(
                (datasets_table.c.owner == owner) & (datasets_table.c.name == name)
            ).values(options=json.dumps(options)))

    # -- versions -----------------------------------------------------------------------------
    def publish(self, version: VersionRow, *, state: str = "cached") -> None:
        """Record a published version and make it the dataset's current one, atomically."""
        with self._tx() as conn:
            conn.execute(versions_table.insert().values(
                version_id=version.version_id, owner=version.owner, dataset=version.dataset,
                tier=version.tier, path=str(version.path), rows=version.rows,
                bytes=version.bytes, created=version.created, seconds=version.seconds,
                source_sql=json.dumps(list(version.source_sql)),
                layout=json.dumps(version.layout) if version.layout else None))
            conn.execute(datasets_table.update().where(
                (datasets_table.c.owner == version.owner)
                & (datasets_table.c.name == version.dataset)
            ).values(state=state, version_id=version.version_id, error=None))

    def version(self, version_id: str) -> VersionRow | None:
        query = versions_table.select().where(versions_table.c.version_id == version_id)
        with self._tx() as conn:
            row = conn.execute(query).first()
        return _version_row(row) if row is not None else None

    def versions(self) -> list[VersionRow]:
        with self._tx() as conn:
            return [_version_row(r) for r in conn.execute(versions_table.select())]

    def move_version(self, version_id: str, *, tier: str, path: Path,
                     layout: dict[str, Any] | None = None, nbytes: int | None = None) -> None:
        """The version's bytes moved (spilled to disk, compacted): new place and files."""
        values: dict[str, Any] = {"tier": tier, "path": str(path),
                                  "layout": json.dumps(layout) if layout else None}
        if nbytes is not None:
            values["bytes"] = nbytes
        with self._tx() as conn:
            conn.execute(versions_table.update().where(
                versions_table.c.version_id == version_id).values(**values))

    def drop_version(self, version_id: str) -> None:
        with self._tx() as conn:
            conn.execute(versions_table.delete().where(
                versions_table.c.version_id == version_id))

    # -- tokens -------------------------------------------------------------------------------
    def new_token(self, user: str, roles: list[str] | None = None) -> str:
        """A fresh token for ``user`` (replacing any old one); only its hash is kept."""
        token = "ldw_" + secrets.token_urlsafe(32)
        with self._tx() as conn:
            conn.execute(tokens_table.delete().where(tokens_table.c.user == user))
            conn.execute(revoked_table.delete().where(revoked_table.c.user == user))
            conn.execute(tokens_table.insert().values(
                user=user, token_sha256=hash_token(token), roles=json.dumps(roles or []),
                created=time.time()))
        return token

    def user_roles(self, user: str) -> list[str]:
        query = sa.select(tokens_table.c.roles).where(tokens_table.c.user == user)
        with self._tx() as conn:
            found = conn.execute(query).scalar()
        return json.loads(found) if found else []

    def token_users(self) -> set[str]:
        """Every user that has a token (``ldw user add``)."""
        with self._tx() as conn:
            return set(conn.execute(sa.select(tokens_table.c.user)).scalars())

    def token_roles(self) -> set[str]:
        """Every role some token user holds."""
        with self._tx() as conn:
            return {r for found in conn.execute(sa.select(tokens_table.c.roles)).scalars()
                    for r in json.loads(found or "[]")}

    def revoke_token(self, user: str) -> bool:
        """Forget ``user``'s token: every later call with it is refused."""
        with self._tx() as conn:
            return conn.execute(tokens_table.delete().where(tokens_table.c.user == user)
                                ).rowcount > 0

    def revoke_user(self, user: str) -> bool:
        """Forget ``user``'s token and refuse the user everywhere (local socket and roles from
        ``[users.*]`` too) until :meth:`new_token` gives them a new one; True if they had a
        token."""
        with self._tx() as conn:
            had = conn.execute(tokens_table.delete().where(tokens_table.c.user == user)
                               ).rowcount > 0
            conn.execute(revoked_table.delete().where(revoked_table.c.user == user))
            conn.execute(revoked_table.insert().values(user=user, revoked=time.time()))
        return had

    def is_revoked(self, user: str) -> bool:
        query = sa.select(revoked_table.c.user).where(revoked_table.c.user == user)
        with self._tx() as conn:
            return conn.execute(query).first() is not None

    def user_for_token(self, token: str) -> str | None:
        return self.user_for_token_hash(hash_token(token))

    def user_for_token_hash(self, digest: str) -> str | None:
        """The user whose current token has this SHA-256 (hex), or None."""
        query = sa.select(tokens_table.c.user).where(tokens_table.c.token_sha256 == digest)
        with self._tx() as conn:
            return conn.execute(query).scalar()

    # -- grants -------------------------------------------------------------------------------
    def grant(self, owner: str, dataset: str, *, kind: str, grantee: str) -> None:
        key = ((grants_table.c.owner == owner) & (grants_table.c.dataset == dataset)
               & (grants_table.c.kind == kind) & (grants_table.c.grantee == grantee))
        with self._tx() as conn:
            if not conn.execute(sa.select(sa.func.count()).where(key)).scalar_one():
                conn.execute(grants_table.insert().values(
                    owner=owner, dataset=dataset, kind=kind, grantee=grantee,
                    created=time.time()))

    def revoke(self, owner: str, dataset: str, *, kind: str, grantee: str) -> bool:
        with self._tx() as conn:
            return conn.execute(grants_table.delete().where(
                (grants_table.c.owner == owner) & (grants_table.c.dataset == dataset)
                & (grants_table.c.kind == kind) & (grants_table.c.grantee == grantee)
            )).rowcount > 0

    def grants(self, owner: str, dataset: str) -> list[tuple[str, str]]:
        query = sa.select(grants_table.c.kind, grants_table.c.grantee).where(
            (grants_table.c.owner == owner) & (grants_table.c.dataset == dataset))
        with self._tx() as conn:
            return [(k, g) for k, g in conn.execute(query)]

    def shared_with(self, user: str, roles: frozenset[str]) -> list[tuple[str, str]]:
        """(owner, dataset) of everything shared with ``user`` or one of ``roles``."""
        query = sa.select(grants_table.c.owner, grants_table.c.dataset).where(
            ((grants_table.c.kind == "user") & (grants_table.c.grantee == user))
            | ((grants_table.c.kind == "role") & grants_table.c.grantee.in_(sorted(roles))))
        with self._tx() as conn:
            return sorted({(o, d) for o, d in conn.execute(query)})

    def drop_user_grants(self, user: str) -> int:
        """Forget every share with ``user`` (a removed user); how many there were."""
        with self._tx() as conn:
            return conn.execute(grants_table.delete().where(
                (grants_table.c.kind == "user") & (grants_table.c.grantee == user))).rowcount

    def drop_grants(self, owner: str, dataset: str) -> None:
        with self._tx() as conn:
            conn.execute(grants_table.delete().where(
                (grants_table.c.owner == owner) & (grants_table.c.dataset == dataset)))

    # -- audit --------------------------------------------------------------------------------
    def _seal_start(self) -> None:
        """Start the anchor if there is none: a new log, or one from an older ldw (its records
        so far are pinned by the genesis line and checked as the older unkeyed chain)."""
        assert self._seal is not None
        if self._seal.anchor.exists():
            return
        with self._tx() as conn:
            head = conn.execute(sa.select(audit_table.c.seq, audit_table.c.hash).order_by(
                audit_table.c.seq.desc()).limit(1)).first()
        if head is None:
            self._seal.anchor.start(0, ZERO, "new")
            return
        reason = "migrated" if self._seal.key_created else "anchor-recreated"
        log.warning("audit: starting the anchor at record %d (%s)", head.seq, reason)
        self._seal.anchor.start(head.seq, head.hash, reason)

    def append_audit(self, record: dict[str, Any]) -> None:
        """Append one record to the keyed chain, then anchor its number and MAC outside the
        catalog. Names and reasons are stored escaped (no control characters)."""
        if self._seal is None:
            raise RuntimeError("this catalog has no audit key: only the server appends audit "
                               "records")
        values = {k: record.get(k) for k in AUDIT_FIELDS}
        for name, width in _AUDIT_TEXT.items():
            if values[name] is not None:
                values[name] = printable(values[name])[:width]
        with self._lock:
            with self._engine.begin() as conn:
                head = conn.execute(sa.select(audit_table.c.seq, audit_table.c.hash).order_by(
                    audit_table.c.seq.desc()).limit(1)).first()
                prev = head.hash if head is not None else ZERO
                anchored = self._seal.anchor.last_seq()
                seq = max(head.seq if head is not None else 0, anchored) + 1
                if head is None and anchored or head is not None and head.seq < anchored:
                    # never reuse an anchored number: the removal stays visible as a gap
                    log.error("audit: the catalog's log ends before record %d, which is "
                              "anchored; records were removed (ldw audit --verify)", anchored)
                digest = self._seal.mac(prev, seq, values)
                conn.execute(audit_table.insert().values(seq=seq, **values, prev_hash=prev,
                                                         hash=digest))
            try:
                self._seal.anchor.append(seq, digest)
            except BaseException:
                with contextlib.suppress(Exception), self._engine.begin() as conn:
                    conn.execute(audit_table.delete().where(audit_table.c.seq == seq))
                raise

    def audit(self, *, user: str | None = None, dataset: str | None = None,
              limit: int = 100) -> list[dict[str, Any]]:
        query = audit_table.select().order_by(audit_table.c.seq.desc()).limit(limit)
        if user is not None:
            query = query.where(audit_table.c.user == user)
        if dataset is not None:
            query = query.where(audit_table.c.dataset == dataset)
        with self._tx() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def audit_records(self) -> list[dict[str, Any]]:
        """Every audit record in sequence order (for verification)."""
        with self._tx() as conn:
            return [dict(r._mapping) for r in conn.execute(
                audit_table.select().order_by(audit_table.c.seq))]

    def verify_audit(self, key: bytes | None = None, anchor: Anchor | None = None
                     ) -> AuditReport:
        """Check the whole log: links, MACs, gaps and the anchor (see :func:`ldw.audit.verify`);
        by default with this catalog's own seal."""
        if self._seal is not None:
            key = key if key is not None else self._seal.key
            anchor = anchor if anchor is not None else self._seal.anchor
        return verify_audit(self.audit_records(), key, anchor or Anchor(None))


# stored escaped and cut to their column's width
_AUDIT_TEXT = {"user": 128, "action": 32, "dataset": 260, "outcome": 16, "policy": 64,
               "detail": 4000}
