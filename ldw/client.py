"""The user-facing API: ``Warehouse`` (one connection to ldw) and ``Dataset`` handles.

In-process, a ``Warehouse`` drives an :class:`ldw.engine.Engine` directly. Methods take
keyword-only options and return polars DataFrames for listings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa

from ldw.config import load_settings
from ldw.engine import DatasetRecord, Engine
from ldw.lazy import polars_predicate_to_sql, scan_dataset
from ldw.store import Progress

__all__ = ["Dataset", "Warehouse", "connect"]

ProgressCallback = Callable[[Progress], None]


def _polars_ready(table: pa.Table) -> pa.Table:
    """Arrow types polars cannot import become ones it can (intervals become structs)."""
    for i, field in enumerate(table.schema):
        if pa.types.is_interval(field.type):
            values = table.column(i).to_pylist()
            struct = pa.array(
                [None if v is None else {"months": v.months, "days": v.days,
                                         "nanoseconds": v.nanoseconds} for v in values],
                pa.struct([("months", pa.int32()), ("days", pa.int32()),
                           ("nanoseconds", pa.int64())]))
            table = table.set_column(i, field.with_type(struct.type), struct)
    return table


class Dataset:
    """A handle to a mapped dataset: rows move only when it is read or cached."""

    def __init__(self, warehouse: Warehouse, name: str) -> None:
        self._wh = warehouse
        self.name = name

    def __repr__(self) -> str:
        record = self._record
        size = f", {record.version.rows} rows" if record.version else ""
        return f"<ldw.Dataset {self.name!r} {record.state}{size} from {record.mapping.ref!r}>"

    @property
    def _record(self) -> DatasetRecord:
        return self._wh._engine.dataset(self.name)

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema, known at map time."""
        return self._record.schema

    @property
    def state(self) -> str:
        """mapped | materializing | cached | evicted | failed."""
        return self._record.state

    def cache(self, *, progress: ProgressCallback | None = None) -> Dataset:
        """Materialize now into the cache (a no-op if already cached)."""
        self._wh._engine.materialize(self.name, progress=progress or self._wh._progress)
        return self

    def refresh(self, *, progress: ProgressCallback | None = None) -> Dataset:
        """Read the source again into a new version; readers of the old one keep it."""
        self._wh._engine.materialize(self.name, progress=progress or self._wh._progress,
                                     refresh=True)
        return self

    def evict(self) -> Dataset:
        """Drop the cached version; the mapping stays and reloads on next use."""
        self._wh._engine.evict(self.name)
        return self

    def to_arrow(self) -> pa.Table:
        """The data as a pyarrow Table memory-mapped from the cache (materializes if needed)."""
        return self._wh._engine.open(self.name)

    def to_polars(self) -> pl.DataFrame:
        """A polars DataFrame over the cached buffers (no copy where the types allow)."""
        return pl.from_arrow(_polars_ready(self.to_arrow()), rechunk=False)

    def to_pandas(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def head(self, n: int = 10) -> pl.DataFrame:
        """The first ``n`` rows: from the cache, or a ``LIMIT n`` query on the source."""
        return self.lazy().head(n).collect()

    def lazy(self) -> pl.LazyFrame:
        """A polars LazyFrame; while uncached, projections, limits and filters reach the SQL."""
        engine, name = self._wh._engine, self.name
        schema = pl.from_arrow(_polars_ready(self.schema.empty_table())).schema

        def is_cached() -> bool:
            return engine.dataset(name).version is not None

        def scan_cached() -> pl.LazyFrame:
            return self.to_polars().lazy()

        def scan_source(columns: list[str] | None, predicate: pl.Expr | None,
                        n_rows: int | None) -> Iterator[pl.DataFrame]:
            record = engine.dataset(name)
            sql_predicate, complete = (None, True) if predicate is None else \
                polars_predicate_to_sql(predicate, record.query.lookup)
            needed = None
            if columns is not None:
                needed = list(columns)
                if predicate is not None:
                    needed += [c for c in predicate.meta.root_names() if c not in needed]
            limit = n_rows if complete else None
            for batch in engine.scan(name, columns=needed, predicate=sql_predicate, limit=limit):
                yield pl.from_arrow(_polars_ready(pa.Table.from_batches([batch])))

        return scan_dataset(name, schema, is_cached=is_cached, scan_cached=scan_cached,
                            scan_source=scan_source)

    def info(self) -> dict[str, Any]:
        """State, size, version, lineage, the SQL sent to the source and type notes."""
        record = self._record
        version = record.version
        return {
            "name": self.name,
            "state": record.state,
            "source": record.mapping.source,
            "mapping": record.mapping.ref,
            "columns": [p.as_row() for p in record.query.columns],
            "rows": version.rows if version else None,
            "bytes": version.bytes if version else None,
            "version": version.version_id if version else None,
            "load_seconds": version.seconds if version else None,
            "source_sql": list(record.source_sql),
            "lossy": record.notes,
            "ttl": record.ttl,
            "pinned": record.pin,
            "memory_only": record.memory_only,
            "hits": record.hits,
            "error": record.error,
        }

    def pin(self) -> Dataset:
        self._record.pin = True
        return self


class Warehouse:
    """One connection to ldw. Use :func:`ldw.connect` to get one."""

    def __init__(self, engine: Engine, *, progress: ProgressCallback | None = None) -> None:
        self._engine = engine
        self._progress = progress

    def __repr__(self) -> str:
        return f"<ldw.Warehouse in-process, {len(self._engine.settings.sources)} source(s)>"

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._engine.close()

    def sources(self) -> pl.DataFrame:
        """Configured sources: name, dialect, host, database, user. Never a password."""
        return pl.DataFrame(self._engine.sources(), schema={
            "name": pl.String, "dialect": pl.String, "host": pl.String, "port": pl.Int64,
            "database": pl.String, "user": pl.String, "transport": pl.String})

    def tables(self, source: str, *, schema: str | None = None) -> pl.DataFrame:
        """Tables and views of a source schema with estimated row counts."""
        return pl.DataFrame(self._engine.tables(source, schema), schema={
            "schema": pl.String, "table": pl.String, "kind": pl.String, "rows": pl.Int64})

    def describe(self, table: str) -> pl.DataFrame:
        """Columns of ``"src.schema.table"``: source type, Arrow type, nullable, notes."""
        rows = self._engine.describe(table)
        return pl.DataFrame(rows, schema={
            "name": pl.String, "source_type": pl.String, "arrow_type": pl.String,
            "nullable": pl.Boolean, "note": pl.String, "policy_tags": pl.List(pl.String)})

    def map(self, name: str, table: str | None = None, *, sql: str | None = None,
            source: str | None = None, columns: Sequence[str] | None = None,
            where: str | None = None, limit: int | None = None, partition_on: str | None = None,
            partitions: int | None = None, ttl: str | float | None = None, pin: bool = False,
            memory_only: bool = False) -> Dataset:
        """Map a table (``"src.schema.table"``) or a query (``sql=``, ``source=``) as a dataset.

        The schema is known at once; no rows move until the dataset is read or cached.
        """
        self._engine.map(name, table, sql=sql, source=source, columns=columns, where=where,
                         limit=limit, partition_on=partition_on, partitions=partitions, ttl=ttl,
                         pin=pin, memory_only=memory_only)
        return Dataset(self, name)

    def dataset(self, name: str) -> Dataset:
        self._engine.dataset(name)
        return Dataset(self, name)

    def datasets(self) -> pl.DataFrame:
        """name, source, state, rows, bytes, version, last_access, hits."""
        rows = [{
            "name": r.mapping.name, "mapping": r.mapping.ref, "state": r.state,
            "rows": r.version.rows if r.version else None,
            "bytes": r.version.bytes if r.version else None,
            "version": r.version.version_id if r.version else None,
            "last_access": r.last_access, "hits": r.hits,
        } for r in self._engine.datasets()]
        return pl.DataFrame(rows, schema={
            "name": pl.String, "mapping": pl.String, "state": pl.String, "rows": pl.Int64,
            "bytes": pl.Int64, "version": pl.String, "last_access": pl.Float64,
            "hits": pl.Int64})

    def status(self) -> dict[str, Any]:
        return self._engine.status()


def connect(url: str | None = None, *, in_process: bool = False,
            config: str | os.PathLike[str] | dict[str, Any] | None = None,
            progress: ProgressCallback | None = None, **settings: Any) -> Warehouse:
    """Connect to ldw. ``in_process=True`` runs the engine inside this process.

    >>> wh = ldw.connect(in_process=True, config="ldw.toml")  # doctest: +SKIP
    """
    if not in_process or url is not None:
        from ldw.errors import ConfigError

        raise ConfigError("only ldw.connect(in_process=True) is available in this version; "
                          "the shared server arrives with `ldw server`")
    return Warehouse(Engine(load_settings(config, **settings)), progress=progress)
