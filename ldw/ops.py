"""The one table of operations a client may ask of an ldw server.

Each operation has a name, the arguments it takes (a ``TypedDict``: anything else is refused as
a :class:`~ldw.errors.BadRequest`, as is an argument of the wrong type), the
:class:`~ldw.service.Service` method that handles it and
its kind, which says how a transport delivers the answer:

- ``json``: one JSON result (after progress frames);
- ``stream``: record batches (the Unix socket sends an Arrow IPC stream, Flight a ticket);
- ``attach``: a cached version (the Unix socket sends a file descriptor, Flight tickets).

The Unix dispatcher, Flight's ``do_action``/``list_actions`` and the service read this table;
adding an operation is a request type and a row here plus its handler in :mod:`ldw.service`.
This module imports nothing heavy, so a client may use it too.
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict

from ldw.arguments import check
from ldw.errors import BadRequest

__all__ = ["OPS", "Kind", "Op", "checked_request", "kind_of", "names", "op"]


class Kind(StrEnum):
    JSON = "json"
    STREAM = "stream"
    ATTACH = "attach"


# -- request types: the arguments of each operation (all optional unless a handler says) -----

class NoArgs(TypedDict, total=False):
    pass


class SourceArgs(TypedDict, total=False):
    source: str


class TablesArgs(SourceArgs, total=False):
    schema: str | None


class TableArgs(TypedDict, total=False):
    table: str


class DatasetRef(TypedDict, total=False):
    name: str
    owner: str | None  # whose dataset; the caller's own if absent


class MapArgs(TypedDict, total=False):
    name: str
    table: str | None
    sql: str | None
    source: str | None
    columns: list[str] | None
    where: str | None
    limit: int | None
    partition_on: str | None
    partitions: int | None
    ttl: str | float | None
    pin: bool
    memory_only: bool
    params: dict[str, Any] | None  # values encoded with ldw.wire.encode_value
    incremental: str | None  # "append" | "upsert"
    key: str | None
    watermark: str | None
    refresh: str | None  # "manual" | "on_access" | "every <duration>"


class AttachArgs(DatasetRef, total=False):
    streams: int  # Flight: how many parallel streams the client reads


class PeekArgs(DatasetRef, total=False):
    limit: int  # rows, at most 100


class CacheArgs(DatasetRef, total=False):
    refresh: bool
    full: bool  # with refresh: read everything even where incremental is declared


class OptionsArgs(DatasetRef, total=False):
    pin: bool | None
    ttl: str | float | None


class ShareArgs(DatasetRef, total=False):
    user: str | None
    role: str | None
    revoke: bool


class AuditArgs(TypedDict, total=False):
    user: str | None
    dataset: str | None
    limit: int


class ExportArgs(DatasetRef, total=False):
    path: str
    format: str | None   # "parquet" (default), "delta" or "iceberg"
    mode: str | None     # "error" (default), "append" (tables) or "overwrite"
    partition_by: list[str] | None
    compression: str | None
    overwrite: bool


class ManifestArgs(DatasetRef, total=False):
    path: str
    format: str | None


class ScanArgs(DatasetRef, total=False):
    columns: list[str] | None
    limit: int | None
    predicate: list[Any] | None  # conjuncts in ldw's predicate format (ldw.pushdown)


class SqlArgs(TypedDict, total=False):
    query: str
    name: str | None  # a new dataset whose lineage is the query
    cache: bool       # cache the datasets the query reads first


class ExplainArgs(TypedDict, total=False):
    query: str
    analyze: bool     # run the query too, for the rows actually read


class PreviewArgs(TableArgs, total=False):
    limit: int


class UserArgs(TypedDict, total=False):
    name: str
    roles: list[str]


class ReloadArgs(TypedDict, total=False):
    config: str | dict[str, Any] | None  # absolute path on the server's host, or a config table


@dataclass(frozen=True)
class Op:
    """One operation: its name, arguments, handler (a Service method name) and kind.
    ``admin``: user management, which the server's owner may do even while revoked (it owns
    the catalog anyway, and must be able to let itself in again)."""

    name: str
    request: type
    handler: str
    kind: Kind
    summary: str
    admin: bool = False

    @property
    def arguments(self) -> frozenset[str]:
        return frozenset(self.request.__required_keys__ | self.request.__optional_keys__)

    @functools.cached_property
    def hints(self) -> dict[str, Any]:
        """Each argument's type, from the request type."""
        return typing.get_type_hints(self.request)


def op(name: str, request: type, summary: str, kind: Kind = Kind.JSON,
       handler: str | None = None) -> Op:
    return Op(name, request, handler or f"op_{name}", kind, summary,
              admin=name.startswith("user_"))


OPS: dict[str, Op] = {o.name: o for o in (
    op("sources", NoArgs, "configured sources: name, dialect, host, database (no passwords)"),
    op("schemas", SourceArgs, "schema names of a source, its default first"),
    op("tables", TablesArgs, "tables and views of a source schema, with estimated rows"),
    op("describe", TableArgs, "columns of a source table with types and policy tags"),
    op("map", MapArgs, "define a dataset over a table or a query; no rows move"),
    op("info", DatasetRef, "what the caller may know of one dataset"),
    op("peek", PeekArgs, "the first rows of the cached version (never a source read)"),
    op("cache", CacheArgs, "materialize a dataset now (refresh: read the source again)"),
    op("evict", DatasetRef, "drop a dataset's cached version; the mapping stays"),
    op("set_options", OptionsArgs, "change a dataset's pin or ttl"),
    op("share", ShareArgs, "share a dataset with a user or role (or revoke the share)"),
    op("datasets", NoArgs, "my datasets and those shared with me"),
    op("status", NoArgs, "the server's capacity, use and per-dataset hits"),
    op("audit", AuditArgs, "audit records, newest first"),
    op("export", ExportArgs,
       "the server writes a dataset to Parquet, Delta or Iceberg in an export root"),
    op("export_manifest", ManifestArgs, "policy check, audit and provenance for a local export"),
    op("ray_attach", DatasetRef, "Ray backend: a ticket to map a version from the object store"),
    op("user_add", UserArgs, "admin: create (or replace) a user's token; shown once"),
    op("user_revoke", UserArgs, "admin: revoke a user's token, tickets and streams"),
    op("user_list", NoArgs, "admin: users holding a token, with their roles"),
    op("drop_cache", NoArgs, "admin: drop every cached version; the mappings stay"),
    op("reload", ReloadArgs, "admin: re-read sources, policies and users; the cache stays"),
    op("attach", AttachArgs, "cache if needed; the version (a descriptor, or do_get tickets)",
       Kind.ATTACH, "attach_table"),
    op("scan", ScanArgs, "read from the source with pushdown; record batches", Kind.STREAM,
       "stream_scan"),
    op("explain", ExplainArgs, "how SQL would read each relation: cache or source, SQL sent"),
    op("cache_advice", NoArgs, "slices of source tables worth caching, from observed SQL"),
    op("sql", SqlArgs, "SQL over datasets and source tables; record batches", Kind.STREAM,
       "stream_sql"),
    op("preview", PreviewArgs, "the first rows of a source table as my policy shows them",
       Kind.STREAM, "stream_preview"),
)}


def kind_of(name: str) -> Kind:
    """How a transport answers ``name``; an unknown name is JSON (the service refuses it)."""
    spec = OPS.get(name)
    return spec.kind if spec is not None else Kind.JSON


def names(kind: Kind | None = None) -> list[str]:
    """The operation names (of one kind), sorted."""
    return sorted(n for n, o in OPS.items() if kind is None or o.kind == kind)


def checked_request(name: object, args: object, kind: Kind | None = None) -> Op:
    """The operation ``name`` names, if it exists (of ``kind``) and ``args`` is a dict of its
    arguments; else :class:`BadRequest` saying what was wrong."""
    spec = OPS.get(name) if isinstance(name, str) else None
    if spec is None or kind is not None and spec.kind != kind:
        known = names(kind)
        what = "operation" if kind in (None, Kind.JSON) else f"{kind} operation"
        raise BadRequest(f"unknown {what} {name!r}; known: {known}")
    if not isinstance(args, dict):
        raise BadRequest(f"{spec.name}() takes a JSON object of arguments")
    unknown = set(args) - spec.arguments
    if unknown:
        raise BadRequest(f"{spec.name}() got unknown argument(s) {sorted(unknown)}")
    for key, value in args.items():
        check(f"{spec.name}()", key, value, spec.hints[key])
    return spec
