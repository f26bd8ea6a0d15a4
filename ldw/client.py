"""The user-facing API: ``Warehouse`` (one connection to ldw) and ``Dataset`` handles.

A ``Warehouse`` talks to an engine through a :class:`~ldw.backend.Backend`: in this process,
the local server over its Unix socket (cached data arrives as a memory-mappable file
descriptor), or a remote server over Arrow Flight. Methods take keyword-only options and return
polars DataFrames for listings.
"""

from __future__ import annotations

import os
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa

from ldw import formatting as fmt
from ldw.arguments import check
from ldw.backend import Backend
from ldw.explain import Explain
from ldw.layout import standard_table
from ldw.lazy import scan_dataset
from ldw.pushdown import encode_polars_predicate
from ldw.types import (
    AuditRow,
    CacheAdvice,
    ColumnRow,
    DatasetInfo,
    DatasetListing,
    Progress,
    ServerStatus,
    SourceRow,
    TableRow,
)
from ldw.wire import decode_schema, decode_table, encode_value

__all__ = ["Dataset", "Warehouse", "connect"]

ProgressCallback = Callable[[Progress], None]

_POLARS = {str: pl.String, int: pl.Int64, float: pl.Float64, bool: pl.Boolean}


def _polars_type(hint: Any) -> Any:
    """The polars type of one payload field: ``X | None`` is X, ``list[X]`` a list of X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _polars_type(args[0])
    if typing.get_origin(hint) is list:
        return pl.List(_polars_type(args[0]))
    return _POLARS[hint]


def _frame(rows: list[Any], payload: type) -> pl.DataFrame:
    """Rows of one payload type (:mod:`ldw.types`) as a DataFrame with its columns, in order."""
    schema = {k: _polars_type(t) for k, t in typing.get_type_hints(payload).items()}
    return pl.DataFrame(rows, schema=schema)


def _as_list(names: Any) -> Any:
    """Names given as any iterable (a tuple, a pandas Index) as a list; anything else (None,
    a string, a number) as it is, for the request's type check to judge."""
    if isinstance(names, str | bytes) or not isinstance(names, Iterable):
        return names
    return list(names)


def _polars_ready(table: pa.Table) -> pa.Table:
    """Arrow types polars cannot import become ones it can (intervals become structs), and
    JSON columns their text, so ``pl.col("payload").str.contains(...)`` works on them."""
    for i, field in enumerate(table.schema):
        if isinstance(field.type, pa.JsonType):  # the storage itself: no copy here
            text = pa.chunked_array([c.storage for c in table.column(i).chunks],
                                    field.type.storage_type)
            table = table.set_column(i, field.with_type(text.type), text)
        elif pa.types.is_interval(field.type):
            values = table.column(i).to_pylist()
            struct = pa.array(
                [None if v is None else {"months": v.months, "days": v.days,
                                         "nanoseconds": v.nanoseconds} for v in values],
                pa.struct([("months", pa.int32()), ("days", pa.int32()),
                           ("nanoseconds", pa.int64())]))
            table = table.set_column(i, field.with_type(struct.type), struct)
    return table


def definition(info: Any) -> str:
    """`` columns [a, b] where x > 1 limit 10``: what tells two mappings of one table apart."""
    parts = []
    if info.get("mapped_columns") is not None:
        parts.append(f"columns [{', '.join(info['mapped_columns'])}]")
    if info.get("where"):
        parts.append(f"where {info['where']}")
    if info.get("limit") is not None:
        parts.append(f"limit {info['limit']}")
    return "".join(" " + p for p in parts)


class Dataset:
    """A handle to a mapped dataset: rows move only when it is read or cached.

    ``owner`` is set for a dataset another user shared (``wh.attach("alice/orders")``).
    """

    def __init__(self, warehouse: Warehouse, name: str, owner: str | None = None) -> None:
        self._wh = warehouse
        self.name = name
        self.owner = owner

    @property
    def _ref(self) -> dict[str, Any]:
        return {"name": self.name, **({"owner": self.owner} if self.owner else {})}

    def __repr__(self) -> str:
        info = self.info()
        size = f", {fmt.count(info['rows'])} rows" if info["rows"] is not None else ""
        whose = f"{self.owner}/" if self.owner else ""
        reason = (info.get("freshness") or {}).get("reason")
        stale = f", stale ({reason})" if info.get("stale") and reason else \
            ", stale" if info.get("stale") else ""
        return (f"<ldw.Dataset {whose}{self.name!r} {info['state']}{size}{stale} "
                f"from {info['mapping']!r}{definition(info)}>")

    def _call(self, op: str, *, progress: ProgressCallback | None = None,
              **args: Any) -> Any:
        return self._wh._backend.call(op, {**self._ref, **args}, progress=progress)

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema, known at map time."""
        return decode_schema(self.info()["arrow_schema"])

    @property
    def state(self) -> str:
        """mapped | materializing | cached | spilled | evicted | failed | cancelled | lost."""
        return self.info()["state"]

    def cache(self, *, progress: ProgressCallback | None = None) -> Dataset:
        """Materialize now into the cache (a no-op if already cached)."""
        self._call("cache", progress=progress or self._wh._progress)
        return self

    def refresh(self, *, full: bool = False, progress: ProgressCallback | None = None
                ) -> Dataset:
        """Read the source again into a new version; readers of the old one keep it. Only
        what changed is read where the mapping declares ``incremental`` (unless ``full``)."""
        check("refresh()", "full", full, bool)
        self._call("cache", progress=progress or self._wh._progress, refresh=True,
                   **({"full": True} if full else {}))
        return self

    def evict(self) -> Dataset:
        """Drop the cached version; the mapping stays and reloads on next use."""
        self._call("evict")
        return self

    def pin(self, pinned: bool = True) -> Dataset:
        """Keep the cached version in memory: capacity pressure spills others first."""
        self._call("set_options", pin=pinned)
        return self

    def _cached(self) -> pa.Table:
        """The cached version as stored (view layouts), memory-mapped where local."""
        return self._wh._backend.attach(self._ref, progress=self._wh._progress)[1]

    def to_arrow(self) -> pa.Table:
        """The data as a pyarrow Table memory-mapped from the cache (materializes if needed).

        Strings and binaries are plain ``string``/``binary`` (``large_*`` past 2 GiB of text
        in a batch), which every Arrow consumer handles; the other columns are the cached
        buffers themselves. ``to_polars()`` maps the strings too (see README, Arrow layouts)."""
        return standard_table(self._cached())

    def to_polars(self) -> pl.DataFrame:
        """A polars DataFrame over the cached buffers (no copy where the types allow)."""
        return pl.from_arrow(_polars_ready(self._cached()), rechunk=False)

    def to_pandas(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def peek(self, n: int = 5) -> pl.DataFrame | None:
        """The first ``n`` rows (at most 100) of the cached version, or None if nothing is
        cached: read from the cache only, never from the source (a notebook shows them)."""
        answer = self._call("peek", limit=n)
        if answer["rows"] is None:
            return None
        return pl.from_arrow(_polars_ready(decode_table(answer["rows"])), rechunk=False)

    def head(self, n: int = 10) -> pl.DataFrame:
        """The first ``n`` rows: from the cache, or a ``LIMIT n`` query on the source."""
        check("head()", "n", n, int)
        return self.lazy().head(n).collect()

    def lazy(self) -> pl.LazyFrame:
        """A polars LazyFrame; while uncached, projections, limits and filters reach the SQL."""
        backend, name = self._wh._backend, self.name
        schema = pl.from_arrow(_polars_ready(self.schema.empty_table())).schema

        def is_cached() -> bool:
            return backend.call("info", self._ref)["version"] is not None

        def scan_cached() -> pl.LazyFrame:
            return self.to_polars().lazy()

        def scan_source(columns: list[str] | None, predicate: pl.Expr | None,
                        n_rows: int | None) -> Iterator[pl.DataFrame]:
            args: dict[str, Any] = {**self._ref, "limit": n_rows}
            if columns is not None:
                needed = list(columns)
                if predicate is not None:
                    needed += [c for c in predicate.meta.root_names() if c not in needed]
                args["columns"] = needed
            if predicate is not None:  # ldw's own predicate format, never polars' serialization
                conjuncts, complete = encode_polars_predicate(predicate)
                args["predicate"] = conjuncts or None
                if not complete:  # polars filters after the source: no row limit there
                    args["limit"] = None
            for batch in backend.stream("scan", args):
                yield pl.from_arrow(_polars_ready(pa.Table.from_batches([batch])))

        return scan_dataset(name, schema, is_cached=is_cached, scan_cached=scan_cached,
                            scan_source=scan_source)

    def info(self) -> DatasetInfo:
        """State, size, version, lineage, the SQL sent to the source and type notes."""
        return self._call("info")

    def share(self, user: str | None = None, *, role: str | None = None) -> list[str]:
        """Let ``user`` (or everyone with ``role``) attach this dataset; returns the grants.

        They get it only if their own policy gives them the same view of the source.
        """
        return self._call("share", user=user, role=role)

    def unshare(self, user: str | None = None, *, role: str | None = None) -> list[str]:
        """Revoke a share: the next attach, stream or query by that user is refused."""
        return self._call("share", user=user, role=role, revoke=True)

    def export(self, path: str | os.PathLike[str], *, format: str = "parquet",
               mode: str | None = None, partition_by: Sequence[str] | None = None,
               compression: str = "zstd", overwrite: bool = False,
               progress: ProgressCallback | None = None) -> Any:
        """Write the cached data as Parquet (+ ``_ldw_manifest.json``), atomically, or as a
        Delta Lake or Iceberg table (``format="delta"`` / ``"iceberg"``, one commit per
        export, the lineage in the commit; needs ``pip install 'ldw[export]'``).

        ``mode``: ``"error"`` (default) refuses an existing path, ``"overwrite"`` (or
        ``overwrite=True``) replaces it, ``"append"`` adds rows to a Delta or Iceberg table;
        a table keeps its earlier versions for time travel. Refused for memory-only data and
        where a policy says ``export = "deny"``. A local client (in-process or over the Unix
        socket) writes the files itself, as its own OS user; a remote server writes them under
        the export roots it allows you (a relative ``path`` lands under the first). Files are
        ``0600``, folders ``0700``.
        """
        from ldw.export import ExportedFile, ExportResult, TableExportResult

        backend = self._wh._backend
        options = {"format": format, "mode": mode,
                   "partition_by": _as_list(partition_by) or None,
                   "compression": compression, "overwrite": overwrite}
        for name, value, hint in (("path", path, str | os.PathLike),
                                  ("partition_by", options["partition_by"], list[str] | None),
                                  ("format", format, str), ("mode", mode, str | None),
                                  ("compression", compression, str),
                                  ("overwrite", overwrite, bool)):
            check("export()", name, value, hint)
        if getattr(backend, "writes_exports", False):
            return self._export_here(os.path.abspath(path), options, progress)
        result = self._call("export", progress=progress, path=os.fspath(path), **options)
        if result.get("format", "parquet") != "parquet":
            return TableExportResult.from_json(result)
        return ExportResult(Path(result["path"]),
                            tuple(ExportedFile(**f) for f in result["files"]), result["rows"],
                            result["bytes"], result["seconds"], Path(result["manifest_path"]))

    def _export_here(self, path: str, options: dict[str, Any],
                     progress: ProgressCallback | None) -> Any:
        """The server checks the policy, audits and says what the manifest records; this
        process writes the version it attached, with its own file system rights."""
        from ldw.errors import ExportError
        from ldw.export import export_table

        for _ in range(5):  # a refresh between the two calls: ask again for the new version
            plan = self._call("export_manifest", progress=progress, path=path,
                              format=options["format"])
            info, table = self._wh._backend.attach(self._ref, progress=progress)
            if info["version"] == plan["provenance"]["snapshot"]:
                break
        else:
            raise ExportError(f"{self.name} kept changing while it was being exported; retry")
        return export_table(table, path, manifest=plan["provenance"], owner=plan["owner"],
                            progress=progress, **options)

class Warehouse:
    """One connection to ldw. Use :func:`ldw.connect` to get one."""

    def __init__(self, backend: Backend, *, progress: ProgressCallback | None = None) -> None:
        self._backend = backend
        self._progress = progress
        self._config: str | dict[str, Any] | None = None  # what connect() was given: reload()

    @property
    def _engine(self) -> Any:
        """The engine of an in-process warehouse (tests and benchmarks look inside)."""
        return self._backend.engine  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"<ldw.Warehouse {self._backend.where} as {self._backend.user!r}>"

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._backend.close()

    def sources(self) -> pl.DataFrame:
        """Configured sources: name, dialect, host, database, user. Never a password."""
        return _frame(self._backend.call("sources"), SourceRow)

    def tables(self, source: str, *, schema: str | None = None) -> pl.DataFrame:
        """Tables and views of a source schema with estimated row counts."""
        return _frame(self._backend.call("tables", {"source": source, "schema": schema}),
                      TableRow)

    def schemas(self, source: str) -> list[str]:
        """Schema names of a source, its default schema first (with policies, only those
        holding tables you may read)."""
        return self._backend.call("schemas", {"source": source})

    def preview(self, table: str, n: int = 10) -> pl.DataFrame:
        """The first ``n`` rows of ``"src.schema.table"`` as your policy shows them; no dataset
        is created and nothing is cached."""
        check("preview()", "n", n, int)
        reader = self._backend.stream("preview", {"table": table, "limit": n})
        return pl.from_arrow(_polars_ready(reader.read_all()), rechunk=False)

    def describe(self, table: str) -> pl.DataFrame:
        """Columns of ``"src.schema.table"``: source type, Arrow type, nullable, notes."""
        return _frame(self._backend.call("describe", {"table": table}), ColumnRow)

    def map(self, name: str, table: str | None = None, *, sql: str | None = None,
            source: str | None = None, columns: Sequence[str] | None = None,
            where: str | None = None, limit: int | None = None, partition_on: str | None = None,
            partitions: int | None = None, ttl: str | float | None = None, pin: bool = False,
            memory_only: bool = False, params: dict[str, Any] | None = None,
            incremental: str | None = None, key: str | None = None,
            watermark: str | None = None, refresh: str | None = None) -> Dataset:
        """Map a table (``"src.schema.table"``) or a query (``sql=``, ``source=``) as a dataset.

        The schema is known at once; no rows move until the dataset is read or cached.
        ``where`` may use ``:name`` placeholders whose values come from ``params`` (bound, never
        pasted into SQL). ``incremental="append"`` with ``key=`` (or ``"upsert"`` with ``key=``
        and ``watermark=``) makes a refresh read only what changed; ``refresh="manual" |
        "on_access" | "every 10m"`` says when a stale version is refreshed.
        """
        freshness = {k: v for k, v in (("incremental", incremental), ("key", key),
                                        ("watermark", watermark), ("refresh", refresh))
                     if v is not None}
        self._backend.call("map", {
            "name": name, "table": table, "sql": sql, "source": source,
            "columns": _as_list(columns), "where": where, "limit": limit,
            "partition_on": partition_on, "partitions": partitions, "ttl": ttl, "pin": pin,
            "memory_only": memory_only,
            "params": {k: encode_value(v) for k, v in params.items()}
            if isinstance(params, dict) and params else params or None,
            **freshness})
        return Dataset(self, name)

    def dataset(self, name: str) -> Dataset:
        """A handle to one of my datasets, e.g. in a new session."""
        self._backend.call("info", {"name": name})
        return Dataset(self, name)

    def attach(self, ref: str) -> Dataset:
        """A handle to a dataset another user shared with me, ``"alice/orders"``, or to one of
        my own, ``"orders"`` (as :meth:`dataset`)."""
        owner, slash, name = ref.rpartition("/") if isinstance(ref, str) else ("", "/", "")
        if slash and not owner or not name:
            from ldw.errors import BadRequest

            raise BadRequest(f"attach takes NAME (one of yours) or OWNER/NAME, e.g. "
                             f"\"alice/orders\", not {ref!r}")
        if not slash:
            return self.dataset(name)
        dataset = Dataset(self, name, owner=owner)
        dataset.info()
        return dataset

    def audit(self, *, user: str | None = None, dataset: str | None = None,
              limit: int = 100) -> pl.DataFrame:
        """Audit records, newest first: who did what to which dataset, rows, bytes, outcome.
        Users see their own records; the admin role sees everyone's."""
        rows = self._backend.call("audit", {"user": user, "dataset": dataset, "limit": limit})
        return _frame(rows, AuditRow)

    def datasets(self) -> pl.DataFrame:
        """name, owner, mapping, state, rows, bytes, version, last_access, hits, ..."""
        return _frame(self._backend.call("datasets"), DatasetListing)

    def sql(self, query: str, *, name: str | None = None, cache: bool = False) -> Any:
        """Run SQL (DuckDB dialect) over my datasets (``orders``), shared ones
        (``"alice/orders"``) and governed source tables (``pg.sales.orders``; MariaDB
        ``my.shop.orders``). Cached datasets are read from the cache; anything else reads only
        the columns and rows the query needs from its source, and nothing is cached by it
        (``cache=True`` caches the datasets it reads first). Only a single read-only query is
        accepted. Returns a polars DataFrame, or with ``name`` a new cached :class:`Dataset`
        whose lineage is the query (datasets only; recomputed if lost).

        >>> wh.sql("SELECT o_orderstatus, count(*) AS n FROM orders GROUP BY 1")  # doctest: +SKIP
        """
        args: dict[str, Any] = {"query": query, "name": name}
        if cache:
            args["cache"] = True
        table = self._backend.stream("sql", args).read_all()
        if name is not None:
            return Dataset(self, name)
        return pl.from_arrow(_polars_ready(table), rechunk=False)

    def explain(self, query: str, *, analyze: bool = False) -> Explain:
        """How :meth:`sql` would read each relation of ``query``: from the cache or from its
        source, the SQL sent, the conditions pushed (and why others were not), the source's
        row estimate; with ``analyze``, after running the query, the rows actually read."""
        return Explain(self._backend.call("explain", {"query": query, "analyze": analyze}))

    def cache_advice(self) -> pl.DataFrame:
        """Slices of source tables (columns, conditions) that caching would have served from
        memory, best first by source seconds saved per byte, within ``memory_limit``: learnt
        from the source reads :meth:`sql` made (yours, under your policies; the admin role
        sees everyone's). Nothing is cached by asking."""
        return _frame(self._backend.call("cache_advice"), CacheAdvice)

    def status(self) -> ServerStatus:
        """Capacity, memory used, datasets, per-dataset hits and bytes served; ``slices``:
        what ``[server] caching = "auto"`` keeps by itself (yours; the admin role sees all)."""
        return self._backend.call("status")

    def reload(self, *, config: str | os.PathLike[str] | dict[str, Any] | None = None
               ) -> dict[str, Any]:
        """Make the server re-read its sources, policies, users and ``[refresh]`` rules, from
        ``config`` or else the file this warehouse was connected with (else its own file); the
        cache stays. Only the server's owner and the admin role may; ``[server]`` settings take
        a restart (the answer lists them under ``restart_needed``)."""
        config = self._config if config is None else config
        if config is not None and not isinstance(config, dict):
            config = os.path.abspath(os.path.expanduser(os.fspath(config)))
        return self._backend.call("reload", {"config": config})


def connect(url: str | None = None, *, in_process: bool = False, token: str | None = None,
            config: str | os.PathLike[str] | dict[str, Any] | None = None,
            progress: ProgressCallback | None = None, autostart: bool = True,
            tls_root_certs: str | os.PathLike[str] | None = None,
            **settings: Any) -> Warehouse:
    """Connect to ldw.

    With no URL, the local server is found through its Unix socket, or started detached (it
    outlives this process). ``"grpc://host:port"`` (or ``grpc+tls://``) reaches a remote server
    with a token. ``in_process=True`` runs the engine inside this process.

    >>> wh = ldw.connect(in_process=True, config="ldw.toml")  # doctest: +SKIP
    """
    from ldw.config import _user, load_settings

    for name, value, hint in (("url", url, str | None), ("token", token, str | None),
                              ("in_process", in_process, bool), ("autostart", autostart, bool),
                              ("config", config, str | os.PathLike | dict | None)):
        check("connect()", name, value, hint)
    if url is not None:
        if in_process:
            from ldw.errors import ConfigError

            raise ConfigError("in_process=True runs the engine here; it takes no URL")
        from ldw.flight_client import FlightBackend

        return Warehouse(FlightBackend(url, token=token, tls_root_certs=tls_root_certs),
                         progress=progress)
    loaded = load_settings(config, **settings)
    if in_process:
        from ldw.backend import InProcessBackend
        from ldw.engine import Engine

        return Warehouse(InProcessBackend(Engine(loaded, ephemeral=True), _user()),
                         progress=progress)
    from ldw.unix import LocalBackend

    warehouse = Warehouse(LocalBackend.connect(loaded, config=config, overrides=settings,
                                               autostart=autostart), progress=progress)
    mine = config if isinstance(config, dict) else \
        str(loaded.config_path.resolve()) if loaded.config_path is not None else None
    warehouse._config = mine
    if mine is not None:
        note = config_mismatch(warehouse.status(), loaded)
        if note is not None:
            warnings.warn(note, UserWarning, stacklevel=2)
    return warehouse


def config_mismatch(status: ServerStatus, mine: Any) -> str | None:
    """What differs between the configuration the client loaded (``mine``: Settings) and the
    one the server runs with (``status["config"]``, shown to its owner and admins), and how to
    make them agree; None if they do (or the server does not say)."""
    from ldw.config import fingerprint

    theirs = status.get("config")
    if not isinstance(theirs, dict) or theirs.get("fingerprint") == fingerprint(mine):
        return None
    path = mine.config_path.resolve() if mine.config_path is not None else None
    named = str(path) if path is not None else "the configuration you passed"
    pid = status.get("pid")
    if path is not None and theirs.get("path") == str(path):
        what = f"{named} changed since the ldw server (pid {pid}) read it"
    else:
        what = (f"the ldw server already running (pid {pid}) reads "
                f"{theirs.get('path') or 'no config file'}, not {named}")
    return (f"{what}: its sources, policies or users differ from yours. wh.reload() makes it "
            f"read {'this file' if path is not None else 'yours'} (the cache stays); "
            "`ldw server stop` and connecting again does too")
