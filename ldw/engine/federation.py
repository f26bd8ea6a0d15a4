"""SQL over datasets and source tables, read lazily: the logical layer.

A query names my datasets (``orders``), shared ones (``"alice/orders"``) and governed source
tables (``pg.sales.orders``; MariaDB ``my.shop.orders``). Each relation is resolved with the
same checks as ``map`` (a source table named in SQL is an implicit, ephemeral mapping: the
user's policy view, masks, row filters, fences), then:

- a relation with a cached version is read from the cache, zero-copy;
- any other relation reads from its source only the columns the query needs and the rows its
  pushable conditions keep (:mod:`ldw.logical.analyze`), through ldw's own connectors,
  all such relations in parallel; nothing is cached on the way (``cache=True`` caches the
  datasets first, as ``wh.sql`` used to);
- DuckDB runs the whole query over what was read and streams the result.

Nothing the user typed is pasted into source SQL: conditions are translated into ldw's
predicate format and rebuilt with SQLAlchemy (:mod:`ldw.pushdown`), and the query DuckDB runs is
the validated tree with relations renamed, written out by sqlglot.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlglot import exp

from ldw.config import Settings
from ldw.connectors.convert import target_schema
from ldw.engine.datasets import Datasets
from ldw.engine.observe import Observations, Shape, shape_conditions, visible_to
from ldw.engine.rewrite import references, renamed
from ldw.engine.slices import Slice, Slices
from ldw.engine.sources import Sources, schema_of
from ldw.errors import Cancelled, InvalidMapping, UnknownSource
from ldw.governance.masks import masked_schema
from ldw.governance.policies import combine_fingerprints
from ldw.lifecycle import DatasetRecord
from ldw.logical.analyze import Needs, analyze
from ldw.logical.conjuncts import to_predicate
from ldw.logical.dynamic import MAX_KEYS, IntegerSet, integer_keys, integer_type, key_set
from ldw.logical.implies import Rows
from ldw.planner import MappedQuery, Mapping, narrow, ranged_plan, single_plan
from ldw.pushdown import predicate_to_sql
from ldw.query_log import QueryLog

__all__ = ["Federation", "Relation"]

MAX_DEPTH = 8          # derived datasets over derived datasets, read lazily
PARALLEL_READS = 4     # relations read from sources at the same time
MAX_RANGES = 8         # parallel readers of one big table
RANGE_ROWS = 250_000   # rows (as the source estimates them) worth a reader of their own
WAIT_RATIO = 8         # a relation waits for a join partner this many times smaller
DIALECT = "duckdb"
DATASETS_CATALOG = "ldw"  # ldw.<owner>.<name> names a dataset (the Flight SQL catalog)


@dataclass
class Relation:
    """One relation a query reads, and how it is read."""

    ref: str                                   # as the query names it
    view: str                                  # the name DuckDB sees
    schema: pa.Schema                          # every column it has (as the user sees them)
    record: DatasetRecord | None = None        # a dataset; None for a source table
    source: str | None = None
    query: MappedQuery | None = None           # the governed plan of a source table
    read: str = "cache"                        # "cache" | "source" | "query" | "slice"
    needs: Needs | None = None
    columns: list[str] | None = None           # what is read (None: every column)
    predicate: sa.ColumnElement | None = None  # the rows it keeps, on the source side
    conditions: list[str] = field(default_factory=list)   # pushed, as the query wrote them
    notes: list[str] = field(default_factory=list)        # what was not pushed, and why
    limit: int | None = None
    sql: list[str] = field(default_factory=list)          # sent to the source
    estimated_rows: int | None = None
    shape: tuple[str, ...] | None = None       # conditions the query itself pushed (None:
    # a read not worth observing for caching: a limit, a dynamic filter)
    kept: Rows = None                          # the same as predicate nodes (None: every row)
    slice: Slice | None = None                 # the automatically cached slice it reads
    keyed: bool = False                        # narrowed to a join partner's keys
    widened: float | None = None               # read whole to keep: the slice's worth
    rows: int | None = None                    # read, after a run
    seconds: float | None = None

    def explain(self) -> dict[str, Any]:
        return {"relation": self.ref, "kind": "dataset" if self.record is not None else "source",
                "dataset": self.record.key if self.record is not None else None,
                "source": self.source, "read": self.read,
                "slice": self.slice.row() if self.slice is not None else None,
                "columns": self.columns if self.columns is not None else list(self.schema.names),
                "pushed": self.conditions, "not_pushed": self.notes, "limit": self.limit,
                "sql": self.sql, "estimated_rows": self.estimated_rows, "rows": self.rows,
                "seconds": self.seconds}


@dataclass
class Plan:
    """A query resolved and planned: its relations and the SQL DuckDB runs over them."""

    query: str
    relations: list[Relation]
    duckdb_sql: str

    @property
    def source_reads(self) -> list[Relation]:
        return [r for r in self.relations if r.read not in ("cache", "slice")]

    def explain(self) -> dict[str, Any]:
        sources = sorted({r.source or "" for r in self.source_reads} - {""})
        if not self.source_reads:
            why = "every relation is cached: nothing is sent to a source"
        elif len(sources) > 1:
            why = f"the relations come from {len(sources)} sources ({', '.join(sources)})"
        elif any(r.read in ("cache", "slice") for r in self.relations):
            why = "some relations are cached; they are read from the cache instead"
        else:
            why = ("ldw sends each relation's own columns and conditions to its source and "
                   "joins in DuckDB; whole-query pushdown is not implemented yet")
        return {"query": self.query, "relations": [r.explain() for r in self.relations],
                "joins": "DuckDB on the ldw server" if len(self.relations) > 1 else None,
                "duckdb_sql": self.duckdb_sql,
                "pushdown": {"whole_query": False, "why": why}}


class Federation:
    """Plans and runs SQL over datasets and source tables (see the module docstring)."""

    def __init__(self, settings: Settings, datasets: Datasets, sources: Sources,
                 cache: Any, sql_engine: Callable[[], Any], query_log: QueryLog) -> None:
        self.settings = settings
        self.datasets = datasets
        self.sources = sources
        self.cache = cache
        self.sql_engine = sql_engine
        self.query_log = query_log
        self.observations = Observations()
        self.slices = Slices(settings, cache.store, sources, self.observations)

    # -- planning ---------------------------------------------------------------------------------
    def plan(self, user: str, query: str, *, cache: bool = False) -> Plan:
        """Resolve every relation ``query`` reads for ``user`` (access, policies) and decide
        what to read from each; no rows move (``cache=True`` caches datasets first)."""
        from ldw.sql.validate import source_references

        tree, _ = source_references(query)  # validated
        tree = self._folded(tree)
        refs = references(tree)
        relations = [self._resolve(user, ref, cache) for ref in refs]
        index = {ref: i for i, ref in enumerate(refs)}
        analysed = renamed(tree, index, [r.view for r in relations], internal=True)
        for relation, needs in zip(relations, analyze(analysed, [r.schema.names
                                                                  for r in relations]),
                                   strict=True):
            relation.needs = needs
            if relation.read != "cache":
                self._narrow(relation)
                self._from_slice(relation)
        qualified = any(isinstance(ref, tuple) for ref in refs)
        duckdb_sql = (renamed(tree, index, [r.view for r in relations], internal=False).sql(DIALECT)
                      if qualified else query)  # bare datasets only: runs exactly as written
        return Plan(query, relations, duckdb_sql)

    def _dataset(self, user: str, ref: str, owner: str, name: str, cache: bool) -> Relation:
        record = self.datasets.readable(user, owner, name)
        if cache:
            self.cache.attach(record.owner, record.name)
        read = "cache" if record.version is not None else (
            "query" if record.derived else "source")
        return Relation(ref, ref, record.schema, record=record,
                        source=None if record.derived else record.mapping.source, read=read)

    def _folded(self, tree: exp.Expression) -> exp.Expression:
        """Source table names as their source folds unquoted identifiers (PostgreSQL: lower
        case), written quoted from here on so nothing folds them again."""
        from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

        def fold(node: exp.Expression) -> exp.Expression:
            if not isinstance(node, exp.Table) or node.args.get("db") is None \
                    or not isinstance(node.this, exp.Identifier):
                return node
            source = node.parts[0].name
            if source not in self.settings.sources:
                return node
            dialect = self.sources.connector(source).sqlglot_dialect
            for part in node.parts[1:]:
                folded = normalize_identifiers(part.copy(), dialect=dialect)
                part.set("this", folded.name)
                part.set("quoted", True)
            return node

        return tree.copy().transform(fold, copy=False)

    def _resolve(self, user: str, ref: str | tuple[str, ...], cache: bool) -> Relation:
        if isinstance(ref, str):
            owner, _, name = ref.rpartition("/")
            return self._dataset(user, ref, owner or user, name, cache)
        text = ".".join(ref)
        source = ref[0]
        if source == DATASETS_CATALOG and len(ref) == 3 and source not in self.settings.sources:
            return self._dataset(user, text, ref[1], ref[2], cache)  # ldw.<owner>.<name>
        if source not in self.settings.sources:
            known = ", ".join(sorted(self.settings.sources)) or "none"
            raise UnknownSource(
                f"sql reads {text}, but {source!r} is not a configured source (sources: "
                f"{known}); name a dataset bare (FROM orders) or a source table as "
                "source.schema.table")
        schema, table = (ref[1], ref[2]) if len(ref) == 3 else (None, ref[1])
        query = self.sources.plan(user, Mapping(table, source, schema, table))
        return Relation(text, text, schema_of(query), source=source, query=query,
                        read="source")

    def _narrow(self, relation: Relation) -> None:
        """What to read of a relation that is not cached: columns, conditions, limit."""
        needs = relation.needs
        assert needs is not None
        relation.columns = needs.columns
        relation.notes = list(needs.notes)
        if relation.read == "query":
            relation.notes.append("a derived dataset: its own SQL runs over its inputs")
            return
        if relation.record is not None and relation.record.mapping.limit is not None:
            relation.notes.append("the dataset has a row limit: conditions are applied after it")
            return
        query = self._mapped(relation)
        parts = []
        for occurrence in needs.occurrences:
            nodes, texts, kept = [], [], []
            for conjunct in occurrence:
                node = to_predicate(conjunct)
                if node is None:
                    relation.notes.append(f"{conjunct.sql(DIALECT)}: not translatable to the "
                                          "source exactly")
                    continue
                sql, complete = predicate_to_sql([node], query.lookup, relation.schema)
                if sql is None:
                    relation.notes.append(f"{conjunct.sql(DIALECT)}: not pushed (types, "
                                          "collation or a masked column)")
                    continue
                nodes.append(sql)
                texts.append(conjunct.sql(DIALECT))
                kept.append(node)
            if not nodes:
                parts = None
                break
            parts.append((sa.and_(*nodes), texts, tuple(kept)))
        if parts:
            relation.predicate = sa.or_(*[p for p, _, _ in parts]) if len(parts) > 1 \
                else parts[0][0]
            relation.conditions = [" AND ".join(t) for _, t, _ in parts]
            relation.kept = tuple(k for _, _, k in parts)
        elif needs.limit is not None:
            relation.limit = needs.limit
        relation.shape = shape_conditions(parts) if relation.limit is None else None

    def _from_slice(self, relation: Relation) -> None:
        """Read a source table from an automatically cached slice that holds what it needs."""
        shape = _shape(relation)
        if shape is None and relation.query is not None and relation.record is None \
                and relation.read == "source":  # a limited read: any slice of its rows
            shape = _shape(relation, observed=False)
        if shape is None:
            return
        found = self.slices.find(shape.table, shape.fingerprint, shape.columns, relation.kept)
        if found is not None:
            relation.read, relation.slice = "slice", found
            seen = self.observations.get(shape) if found.kept != relation.kept else None
            relation.estimated_rows = seen.rows if seen is not None else found.rows  # (what its
            # own conditions keep, for the joins that wait for it: a slice may hold more)
        elif relation.shape is not None and not relation.keyed and relation.needs is not None \
                and not relation.needs.joins:  # (its rows may narrow a join partner's read)
            self._widen(relation, shape)

    def _widen(self, relation: Relation, shape: Shape) -> None:
        """Read every row (and the columns other reads of the table used) instead, to keep
        as a slice, when :meth:`Slices.widen` finds that worth it; DuckDB applies the
        query's conditions to what is read."""
        names = list(relation.schema.names)

        def whole_rows() -> int | None:
            connector = self.sources.connector(relation.source or "")
            narrowed = narrow(self._mapped(relation), columns=names)
            return connector.estimate_rows(single_plan(connector, narrowed).queries[0])

        wide = self.slices.widen(shape, relation.schema, whole_rows)
        if wide is None:
            return
        read, relation.widened = wide
        relation.columns = [c for c in names if c in read.columns]
        relation.notes += [f"{c}: applied after reading every row, kept as a slice"
                           for c in relation.conditions]
        relation.conditions, relation.shape, relation.kept = [], (), None
        relation.predicate, relation.estimated_rows = None, None

    def _mapped(self, relation: Relation) -> MappedQuery:
        if relation.query is not None:
            return relation.query
        assert relation.record is not None
        query = self.datasets.query(relation.record)
        assert query is not None
        return query

    # -- running --------------------------------------------------------------------------------
    def tables(self, plan: Plan, *, cancelled: Callable[[], bool] | None = None,
               depth: int = 0) -> dict[str, pa.Table]:
        """Every relation of ``plan`` as an Arrow table: from the cache, or read from its
        source now, in parallel waves: a relation that joins a much smaller one on an integer
        key waits for it and reads only the rows whose key it has (:mod:`ldw.logical.dynamic`)."""
        read: dict[int, pa.Table] = {}
        for i, relation in enumerate(plan.relations):
            if relation.read == "cache":
                assert relation.record is not None
                read[i] = self.cache.open(relation.record.owner, relation.record.name)
                relation.rows = read[i].num_rows
        pending = [i for i, r in enumerate(plan.relations) if r.read != "cache"]
        waits = self._waits(plan, pending)
        stop = threading.Event()
        with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_READS, len(pending))),
                                thread_name_prefix="ldw-read") as pool:
            while pending:
                wave = [i for i in pending if waits[i] <= read.keys()] or pending
                for i in wave:
                    self._dynamic_filters(plan.relations[i], plan.relations, read)
                futures = [(i, pool.submit(self._read, plan.relations[i], stop, depth,
                                           cancelled)) for i in wave]
                try:
                    for i, future in futures:
                        read[i] = future.result()
                except BaseException:
                    stop.set()
                    raise
                pending = [i for i in pending if i not in read]
        return {plan.relations[i].view: table for i, table in read.items()}

    def _waits(self, plan: Plan, pending: list[int]) -> dict[int, set[int]]:
        """For each relation to read, the much smaller join partners worth waiting for."""
        def size(i: int) -> int | None:
            relation = plan.relations[i]
            if relation.read == "cache":
                return relation.record.version.rows  # type: ignore[union-attr]
            if relation.read == "slice":
                return relation.estimated_rows
            if relation.read != "source":
                return None
            if relation.estimated_rows is None:
                self._ranged(relation)
            return relation.estimated_rows

        waits: dict[int, set[int]] = {i: set() for i in pending}
        for i in pending:
            relation = plan.relations[i]
            if relation.read != "source" or relation.needs is None or not relation.needs.joins:
                continue
            mine = size(i)
            for _, other, _ in relation.needs.joins:
                theirs = size(other)
                if mine is not None and theirs is not None and theirs <= MAX_KEYS \
                        and theirs * WAIT_RATIO <= mine:
                    waits[i].add(other)
        return waits

    def _dynamic_filters(self, relation: Relation, relations: list[Relation],
                         read: dict[int, pa.Table]) -> None:
        """Add ``key IN (keys of a partner already read)`` to a relation's source query."""
        needs = relation.needs
        if relation.read != "source" or needs is None or relation.limit is not None \
                or relation.widened is not None:
            return
        query = self._mapped(relation)
        names = {n.lower(): n for n in relation.schema.names}
        added, tags = [], []
        for column, other, other_column in needs.joins:
            name = names.get(column.lower())
            partner = read.get(other)
            if name is None or partner is None or name not in query.lookup \
                    or not pa.types.is_integer(relation.schema.field(name).type) \
                    or not _filtered(relations[other]):
                continue
            sql_type = integer_type(query.lookup[name])
            if sql_type is None:
                continue
            partner_names = {n.lower(): n for n in partner.column_names}
            source_column = partner_names.get(other_column.lower())
            keys = integer_keys(self._kept_column(relations[other], partner, source_column)) \
                if source_column else None
            if keys is None:
                continue
            keys = sorted(keys)
            added.append(IntegerSet(query.lookup[name], keys, sql_type))
            tags.append(key_set(name, keys))
            relation.conditions.append(f"{name} IN ({len(keys):,} keys of "
                                       f"{relations[other].ref}.{source_column})")
        if added:
            relation.predicate = sa.and_(*([relation.predicate] if relation.predicate is not None
                                           else []), *added)
            relation.estimated_rows = None  # the source estimates the filtered read again
            relation.sql = []
            self._keyed(relation, tags)

    def _kept_column(self, partner: Relation, table: pa.Table, column: str) -> Any:
        """A partner's join ``column``; from a slice (maybe more rows than its conditions
        keep) after those conditions, in DuckDB (on failure all of it: still right)."""
        needs = partner.needs
        if partner.read != "slice" or needs is None or not needs.filtered:
            return table.column(column)
        kept = exp.or_(*(exp.and_(*(c.copy() for c in occurrence))
                         for occurrence in needs.occurrences))
        query = exp.select(exp.column(column, quoted=True)).from_(
            exp.to_identifier("partner", quoted=True)).where(kept)
        try:
            return self.sql_engine().run(query.sql(DIALECT), {"partner": table},
                                         time_limit=self.settings.sql_timeout,
                                         time_setting="[server] sql_timeout").column(0)
        except Exception:  # (a wider key set is still right)
            return table.column(column)

    def _keyed(self, relation: Relation, tags: list[tuple[str, dict[str, Any]]]) -> None:
        """A read narrowed to a partner's keys is a shape of its own: each key set is one more
        condition, known by its digest (a slice serves only a read of the very same keys), so a
        repeated join is answered from a slice as a repeated plain read is."""
        if relation.shape is None:
            return  # (a read not observed: a limit)
        relation.shape = (*relation.shape, *(text for text, _ in tags))
        relation.keyed = True
        nodes = tuple(node for _, node in tags)
        relation.kept = tuple((*occurrence, *nodes) for occurrence in relation.kept) \
            if relation.kept is not None else (nodes,)
        self._from_slice(relation)

    def _read(self, relation: Relation, stop: threading.Event, depth: int,
              cancelled: Callable[[], bool] | None) -> pa.Table:
        started = time.perf_counter()
        if relation.read == "slice":
            assert relation.slice is not None
            table = self.slices.open(relation.slice, relation.columns
                                     if relation.columns is not None else relation.schema.names)
            if table is not None:
                relation.rows = table.num_rows
                relation.seconds = round(time.perf_counter() - started, 4)
                return table
            relation.read, relation.slice = "source", None  # dropped meanwhile
        shape = _shape(relation)
        counters = None
        if relation.read == "source" and relation.query is not None and shape is not None:
            counters = self.slices.counters(shape, relation.query, relation.source or "")
        if relation.read == "query":
            table = self._derived(relation, depth)
        else:
            table = self._from_source(relation, stop, cancelled)
        relation.rows = table.num_rows
        relation.seconds = round(time.perf_counter() - started, 4)
        if relation.read == "source":
            self.observations.spend(seconds=relation.seconds, rows=table.num_rows,
                                    nbytes=table.nbytes)
        self._observe(relation, table)
        if relation.read == "source" and relation.query is not None and shape is not None \
                and relation.shape is not None:
            self.slices.admit(shape, relation.kept, relation.conditions, table, relation.query,
                              relation.source or "", relation.predicate, counters,
                              relation.seconds, relation.widened)
        return table

    def advice(self, user: str, *, everything: bool = False) -> list[dict[str, Any]]:
        """What automatic caching would keep within ``memory_limit``, from the source reads
        observed: ``user`` sees the reads made under their own policies on tables they may
        read (``everything``: the admin role sees all)."""
        budget = self.settings.memory_limit
        if everything:
            return self.observations.advice(budget)
        mine = self._mine(user)
        return self.observations.advice(budget, lambda s: mine(s.table, s.fingerprint))

    def slice_status(self, user: str, *, everything: bool = False) -> list[dict[str, Any]]:
        """The automatically cached slices ``user`` would be served (admin: all)."""
        return self.slices.status(None if everything else self._mine(user))

    def _mine(self, user: str) -> Callable[[str, str], bool]:
        return visible_to(self.sources.governance, user)

    def _observe(self, relation: Relation, table: pa.Table) -> None:
        """Record a plain read of a source table (see :mod:`ldw.engine.observe`)."""
        shape = _shape(relation)
        if shape is not None and relation.seconds is not None:
            rows = max(table.num_rows, 1)
            self.observations.record(shape, seconds=relation.seconds, rows=table.num_rows,
                                     nbytes=table.nbytes,
                                     widths={name: column.nbytes / rows for name, column
                                             in zip(table.column_names, table.columns,
                                                    strict=True)} if table.num_rows else None)

    def _derived(self, relation: Relation, depth: int) -> pa.Table:
        record = relation.record
        assert record is not None and record.mapping.sql is not None
        if depth >= MAX_DEPTH:
            raise InvalidMapping(f"dataset {record.name!r} is derived more than {MAX_DEPTH} "
                                 "levels deep; cache one of its inputs")
        inner = self.plan(record.owner, record.mapping.sql)
        tables = self.tables(inner, depth=depth + 1)
        limit, setting = self.settings.sql_timeout_for(record.owner)
        result = self.sql_engine().run(inner.duckdb_sql, tables, time_limit=limit,
                                       time_setting=setting)
        relation.sql = [f"{r.ref}: {s}" for r in inner.relations for s in r.sql]
        if relation.columns is not None:
            result = result.select(relation.columns)
        return result

    def read_plan(self, relation: Relation) -> tuple[Any, Any, MappedQuery]:
        """The connector, the source read and the narrowed query of an uncached relation."""
        assert relation.source is not None
        connector = self.sources.connector(relation.source)
        narrowed = narrow(self._mapped(relation), columns=relation.columns,
                          predicate=relation.predicate, limit=relation.limit)
        return connector, single_plan(connector, narrowed), narrowed

    def _ranged(self, relation: Relation) -> tuple[Any, Any, MappedQuery, list | None]:
        """:meth:`read_plan`, split into page ranges read in parallel when the source
        estimates enough rows for more than one reader (a plain table, no limit)."""
        connector, plan, narrowed = self.read_plan(relation)
        if relation.estimated_rows is None:
            relation.estimated_rows = connector.estimate_rows(plan.queries[0])
        if relation.limit is not None:
            return connector, plan, narrowed, None
        parts = min(self._parts(connector), (relation.estimated_rows or 0) // RANGE_ROWS)
        ranges = connector.row_ranges(narrowed.select, parts) if parts >= 2 else None
        if ranges:
            plan = ranged_plan(connector, narrowed, ranges)
        return connector, plan, narrowed, ranges

    def _from_source(self, relation: Relation, stop: threading.Event,
                     cancelled: Callable[[], bool] | None = None) -> pa.Table:
        connector, plan, narrowed, ranges = self._ranged(relation)
        relation.sql = [q.sql for q in plan.queries]
        self.query_log.extend((relation.source, q) for q in relation.sql)
        if relation.record is not None:
            relation.record.source_queries += len(relation.sql)
        schema = masked_schema(target_schema(narrowed.columns), narrowed.arrow_masks)
        cancel = threading.Event()
        with contextlib.ExitStack() as stack:
            snapshot = None
            if ranges:
                stack.enter_context(connector.read_slots(len(ranges)))
                snapshot = stack.enter_context(connector.snapshot(narrowed.tables,
                                                                  partitioned=True))
            batches = connector.stream(plan, cancel, snapshot)
            try:
                kept = []
                for batch in self.cache.masked(batches, narrowed):
                    if stop.is_set() or (cancelled is not None and cancelled()):
                        cancel.set()
                        raise Cancelled(f"sql: reading {relation.ref} was stopped (the query "
                                        "failed elsewhere or its client went away)")
                    kept.append(batch)
            finally:
                batches.close()
        return pa.Table.from_batches(kept, schema=schema) if kept else schema.empty_table()

    @staticmethod
    def _parts(connector: Any) -> int:
        """Ranges per big table: one reader per core, within the source's connections."""
        return max(1, min(os.cpu_count() or 1, MAX_RANGES, connector.max_partitions))

    def estimate(self, plan: Plan) -> None:
        """The sources' own row estimates for what each uncached relation reads."""
        for relation in plan.relations:
            if relation.read == "cache":
                relation.estimated_rows = relation.record.version.rows  # type: ignore[union-attr]
            elif relation.read == "source" and not relation.sql:
                _, read, _, _ = self._ranged(relation)
                relation.sql = [q.sql for q in read.queries]


def _shape(relation: Relation, *, observed: bool = True) -> Shape | None:
    """A plain read of a source table as a :class:`Shape` (``observed``: only one worth
    observing and keeping: no limit, no dynamic filter)."""
    query = relation.query
    if relation.read not in ("source", "slice") or relation.record is not None \
            or query is None or (observed and relation.shape is None):
        return None
    mapping = query.mapping
    return Shape(".".join(p for p in (mapping.source, mapping.schema, mapping.table) if p),
                 combine_fingerprints(query.policies),
                 frozenset(relation.columns if relation.columns is not None
                           else relation.schema.names),
                 frozenset(relation.shape or ()), relation.keyed)


def _filtered(relation: Relation) -> bool:
    """Whether a relation was read with conditions (then its keys are likely a few of the
    domain; an unfiltered table's keys are usually all of it, and filter nothing)."""
    if relation.read == "cache":
        mapping = relation.record.mapping  # type: ignore[union-attr]
        return relation.record.derived or mapping.where is not None or mapping.sql is not None
    return relation.predicate is not None
