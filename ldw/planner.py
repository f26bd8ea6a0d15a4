"""Compile a mapping (table or SQL, columns, where, limit, partitioning) into source queries.

Everything is built with SQLAlchemy Core for the source's dialect; user text only enters through
:mod:`ldw.predicates` (validated and rebuilt). Partition boundaries come from the data, read in
the same snapshot the partitions read.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from ldw.connectors import ColumnPlan, Connector, ReadPlan, SourceQuery
from ldw.errors import (
    ConfigError,
    InvalidMapping,
    LdwError,
    SourceError,
    SourceTimeout,
    SourceUnavailable,
    UnknownTable,
    WhereRejected,
)
from ldw.governance.masks import Mask
from ldw.governance.policies import EffectivePolicy
from ldw.governance.resolve import govern_sql
from ldw.predicates import parse_where
from ldw.wire import decode_value, encode_value

__all__ = ["Mapping", "MappedQuery", "mapping_from_json", "mapping_to_json", "parse_table_ref",
           "plan_mapping"]


@dataclass(frozen=True)
class Mapping:
    """What a dataset is: its definition (lineage), from which any version can be recomputed."""

    name: str
    source: str
    schema: str | None = None
    table: str | None = None
    sql: str | None = None
    columns: tuple[str, ...] | None = None
    where: str | None = None
    limit: int | None = None
    partition_on: str | None = None
    partitions: int = 1
    params: tuple[tuple[str, Any], ...] = ()  # values bound to :name in ``where``
    # freshness (issue 15): how a refresh reads only what changed, and when it runs
    incremental: str | None = None  # None (full refresh) | "append" | "upsert"
    key: str | None = None  # append: rows above the cached maximum; upsert: the row identity
    watermark: str | None = None  # upsert: rows whose watermark is past the last one seen
    refresh: str = "manual"  # "manual" | "on_access" | "every <duration>"

    @property
    def ref(self) -> str:
        if self.table:
            return ".".join(p for p in (self.source, self.schema, self.table) if p)
        return f"{self.source}: {self.sql}"


@dataclass
class MappedQuery:
    """A mapping bound to its source: the select to run and how its columns travel."""

    mapping: Mapping
    select: sa.Select  # with rewrites applied, no partition predicate
    columns: list[ColumnPlan]
    lookup: dict[str, sa.ColumnElement]  # source-side column by result name, for predicates
    tables: list[tuple[str | None, str, str | None]] = field(default_factory=list)
    policies: list[EffectivePolicy] = field(default_factory=list)  # of every table read
    # result columns whose mask is applied in Arrow after reading (the SQL reads them raw)
    arrow_masks: dict[str, Mask] = field(default_factory=dict)


PolicyLookup = Callable[[str, str], EffectivePolicy]  # (schema, table) -> the user's view


def mapping_to_json(mapping: Mapping) -> dict[str, Any]:
    """The mapping as JSON for the catalog (its lineage); bound values keep their types."""
    data = dataclasses.asdict(mapping)
    data["params"] = {k: encode_value(v) for k, v in mapping.params}
    return data


def mapping_from_json(data: dict[str, Any]) -> Mapping:
    columns = data.get("columns")
    params = tuple((k, decode_value(v)) for k, v in (data.get("params") or {}).items())
    known = {f.name for f in dataclasses.fields(Mapping)}
    return Mapping(**{**{k: v for k, v in data.items() if k in known},
                      "columns": tuple(columns) if columns is not None else None,
                      "params": params})


def parse_table_ref(ref: str) -> tuple[str, str | None, str]:
    """``"dwh.sales.orders"`` -> ("dwh", "sales", "orders"); ``"lite.t"`` -> ("lite", None, "t")."""
    parts = ref.split(".") if isinstance(ref, str) else []
    if len(parts) == 2 and all(parts):
        return parts[0], None, parts[1]
    if len(parts) == 3 and all(parts):
        return parts[0], parts[1], parts[2]
    raise InvalidMapping(
        f"table reference {ref!r} must be SOURCE.SCHEMA.TABLE (or SOURCE.TABLE for the default "
        "schema), e.g. \"dwh.sales.orders\""
    )


def _check_columns(requested: Sequence[str] | None, available: Sequence[str],
                   where: str) -> list[str]:
    if requested is None:
        return list(available)
    if isinstance(requested, str) or not requested:
        raise InvalidMapping("columns must be a non-empty list of column names")
    missing = [c for c in requested if c not in available]
    if missing:
        raise UnknownTable(f"{where} has no column(s) {missing}; columns are: {list(available)}")
    if len(set(requested)) != len(requested):
        raise InvalidMapping(f"columns {list(requested)} name a column twice")
    return list(requested)


def _policy_relation(connector: Connector, table: sa.Table, policy: EffectivePolicy | None
                     ) -> sa.Table | sa.Subquery:
    """The table as the user may see it: row filters, row limit and SQL masks applied."""
    if policy is None or not policy.restricts_rows_or_values:
        return table
    dialect = connector.sqlglot_dialect
    unknown = set(policy.masks) - set(table.c.keys())
    if unknown:
        raise ConfigError(f"the policy for {policy.table} masks column(s) {sorted(unknown)} "
                          f"that the table does not have; fix [policies] in ldw.toml")
    columns = []
    for column in table.c:
        mask = policy.masks.get(column.name)
        masked = mask.sql(column, connector.dialect) if mask is not None else None
        columns.append(masked.label(column.name) if masked is not None else column)
    view = sa.select(*columns)
    raw = {k: table.c[k] for k in table.c.keys()}
    for text in policy.row_filters:
        try:
            view = view.where(parse_where(text, raw, dialect=dialect))
        except (InvalidMapping, UnknownTable) as exc:
            raise ConfigError(f"the row filter of the policy for {policy.table} is invalid: "
                              f"{exc}") from None
    if policy.max_rows is not None:
        view = view.limit(policy.max_rows)
    elif policy.row_filters:
        # A fence: without it the source may merge the view into the outer query and run the
        # user's predicate on rows the filter hides first (a "division by zero" or a cast
        # error echoing a hidden value tells the user those rows exist). A subquery with
        # LIMIT/OFFSET is neither flattened nor given the outer predicates, so the filter
        # always runs first; the price is that predicates on the outside no longer reach an
        # index.
        view = view.offset(0)
    return view.subquery("ldw_policy")


def _base(connector: Connector, mapping: Mapping, policy_for: PolicyLookup | None
          ) -> tuple[sa.Select, sa.ColumnElement | None, dict, list, list[EffectivePolicy],
                     dict[str, Mask], set[str]]:
    """The select over the policy view (the ``where`` not applied yet: it comes back as its
    own condition), the columns a ``where`` may use, the tables and policies read, and the
    columns the source's reflection says are NOT NULL (and no mask makes nullable)."""
    dialect = connector.sqlglot_dialect
    arrow_masks: dict[str, Mask] = {}
    not_null: set[str] = set()
    refused: dict[str, str] = {}
    if mapping.table:
        if connector.is_system(mapping.schema or connector.default_schema(), mapping.table):
            raise connector.system_denied(mapping.schema, mapping.table)
        table = connector.reflect(mapping.schema, mapping.table)
        policy = None
        if policy_for is not None:
            policy = policy_for(mapping.schema or connector.default_schema(), mapping.table)
        policies = [policy] if policy is not None else []
        relation = _policy_relation(connector, table, policy)
        names = _check_columns(mapping.columns, list(relation.c.keys()), mapping.ref)
        select = sa.select(*[relation.c[n] for n in names])
        in_arrow = {c: m for c, m in (policy.masks if policy else {}).items()
                    if m.applied_in_arrow}
        arrow_masks = {n: in_arrow[n] for n in names if n in in_arrow}
        # A where runs over the policy view: any column of the table, masked ones as their
        # masked value. The raw values of a column masked in Arrow are still in the view, so
        # filtering on it would reveal them: it is refused.
        lookup = {k: relation.c[k] for k in relation.c.keys() if k not in in_arrow}
        refused = {k: f"is {m.kind}-masked by the policy for {policy.table}: a where on it would "
                   "reveal its values; compare the hashes after reading instead"
                   for k, m in in_arrow.items()} if policy is not None else {}
        tables = [(mapping.schema, mapping.table, None)]
        masked = set(policy.masks) if policy is not None else set()
        not_null = {c.name for c in table.c if c.nullable is False and c.name not in masked}
    else:
        governed = govern_sql(connector, mapping.sql, policy_for,
                              lambda table, policy: _policy_relation(connector, table, policy))
        sql, policies, tables = governed.sql, governed.policies, governed.tables
        names = connector.result_names(sql)
        if len(set(names)) != len(names):
            raise InvalidMapping(f"sql returns duplicate column names {names}; alias them")
        sub = sa.text(sql).columns(*[sa.column(n) for n in names]).subquery("ldw_src")
        chosen = _check_columns(mapping.columns, names, "the query")
        select = sa.select(*[sub.c[n] for n in chosen])
        lookup = {n: sub.c[n] for n in names}
    condition = None
    if mapping.where is not None:
        condition = parse_where(mapping.where, lookup, dialect=dialect,
                                params=dict(mapping.params), refused=refused)
    return select, condition, lookup, tables, policies, arrow_masks, not_null


def plan_mapping(connector: Connector, mapping: Mapping,
                 policy_for: PolicyLookup | None = None) -> MappedQuery:
    """Validate a mapping against the source and plan its columns; no rows move.

    ``policy_for`` gives the requesting user's effective policy per table read (it raises
    ``AccessDenied`` for tables they may not read); it is compiled into the SQL here.
    """
    if mapping.limit is not None and (not isinstance(mapping.limit, int) or mapping.limit < 0):
        raise InvalidMapping(f"limit must be a non-negative integer, not {mapping.limit!r}")
    if not isinstance(mapping.partitions, int) or mapping.partitions < 1:
        raise InvalidMapping(f"partitions must be a positive integer, not {mapping.partitions!r}")
    if mapping.partitions > connector.max_partitions:
        source = connector.source
        raise InvalidMapping(
            f"partitions={mapping.partitions} needs {mapping.partitions + 2} connections to "
            f"source {source.name!r} at once (one per partition, one for NULL keys, one for the "
            f"snapshot), more than its [sources.{source.name}] max_connections = "
            f"{source.max_connections}; use partitions={connector.max_partitions} or fewer, or "
            "raise max_connections")
    if mapping.partitions > 1 and mapping.partition_on is None:
        raise InvalidMapping("partitions > 1 needs partition_on=COLUMN to split the rows by")
    if mapping.partition_on is not None and mapping.limit is not None:
        raise InvalidMapping("limit and partition_on cannot be combined; drop one of them")
    unfiltered, condition, lookup, tables, policies, arrow_masks, not_null = _base(
        connector, mapping, policy_for)
    if mapping.partition_on is not None and mapping.partition_on not in lookup:
        raise UnknownTable(f"partition_on column {mapping.partition_on!r} is not in "
                           f"{mapping.ref} (or is masked); columns are: {list(lookup)}")
    if mapping.limit is not None:
        unfiltered = unfiltered.limit(mapping.limit)
    select = unfiltered.where(condition) if condition is not None else unfiltered
    plans = _plan_checked(connector, mapping, select, unfiltered)
    # nullability as the source's reflection says (what describe() shows): drivers report
    # every result column nullable
    plans = [dataclasses.replace(p, nullable=False) if p.name in not_null else p
             for p in plans]
    _check_freshness_columns(mapping, plans, lookup, policies)
    select = connector.apply_rewrites(select, plans)
    return MappedQuery(mapping, select, plans, lookup, tables, policies, arrow_masks)


def _plan_checked(connector: Connector, mapping: Mapping, select: sa.Select,
                  unfiltered: sa.Select) -> list[ColumnPlan]:
    """The columns of ``select``, with the source's word that it accepts the ``where``.

    Planning already asks the source (a prepare on PostgreSQL, ``LIMIT 0`` on MariaDB), and a
    connector that plans from reflection runs ``select`` with ``LIMIT 0`` when there is a
    ``where``: one cheap round trip, no rows, under the source's timeout. A source that
    refuses the statement, but not the same statement without the ``where``, refuses the
    ``where``: a :class:`~ldw.errors.WhereRejected` naming it, with the source's words. A
    source that cannot be reached or does not answer stays a SourceUnavailable/SourceTimeout.
    """
    try:
        plans = connector.planned_columns(select)
        if mapping.where is not None:
            connector.check_statement(select)
        return plans
    except (SourceUnavailable, SourceTimeout):
        raise
    except SourceError as exc:
        if mapping.where is None:
            raise
        try:  # the second round trip, only now: is it the where, or the rest?
            connector.planned_columns(unfiltered)
            connector.check_statement(unfiltered)
        except LdwError:
            raise exc from None
        reason = exc.reason or str(exc)
        raise WhereRejected(
            f"source {connector.source.name!r} refuses where {mapping.where!r}: {reason}. "
            "Check its literals against the columns' types (e.g. DATE '2024-01-01' for a "
            "date, numbers without quotes); nothing was mapped",
            mapping.where, reason) from None


INCREMENTAL_MODES = ("append", "upsert")


def _check_freshness_columns(mapping: Mapping, plans: Sequence[ColumnPlan],
                             lookup: dict[str, sa.ColumnElement],
                             policies: Sequence[EffectivePolicy]) -> None:
    """``incremental``, ``key`` and ``watermark`` must name columns whose values the source
    compares exactly as they are cached: selected, unmasked, not rewritten in SQL."""
    mode = mapping.incremental
    if mode is not None and mode not in INCREMENTAL_MODES:
        raise InvalidMapping(f"incremental must be \"append\" or \"upsert\" (or None for a "
                             f"full refresh), not {mode!r}")
    if mode is not None and mapping.key is None:
        raise InvalidMapping(f"incremental={mode!r} needs key=COLUMN: "
                             + ("new rows are those whose key is above the cached maximum"
                                if mode == "append" else "the column that identifies a row"))
    if mode == "upsert" and mapping.watermark is None:
        raise InvalidMapping("incremental=\"upsert\" needs watermark=COLUMN (e.g. an "
                             "updated_at timestamp): rows past the last one seen are re-read")
    if mode is not None and mapping.limit is not None:
        raise InvalidMapping("incremental refresh and limit cannot be combined (which rows a "
                             "limit keeps changes as rows arrive); drop one of them")
    by_name = {p.name: p for p in plans}
    masked = {c for p in policies for c in p.masks}
    for role, name in (("key", mapping.key), ("watermark", mapping.watermark)):
        if name is None:
            continue
        plan = by_name.get(name)
        if plan is None or name not in lookup or name in masked:
            raise InvalidMapping(
                f"{role}={name!r} must be one of the mapped columns and not masked by a "
                f"policy; mapped columns: {[p.name for p in plans]}")
        if plan.rewrite is not None or not _orderable(plan.arrow_type):
            raise InvalidMapping(
                f"{role}={name!r} is a {plan.source_type} column, which ldw cannot compare "
                "exactly with the cached values; use an integer, date, timestamp or text "
                "column")


def _orderable(arrow_type: Any) -> bool:
    import pyarrow as pa

    return (pa.types.is_integer(arrow_type) or pa.types.is_temporal(arrow_type)
            or pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
            or pa.types.is_decimal(arrow_type))


def narrow(query: MappedQuery, *, columns: Sequence[str] | None = None,
           predicate: sa.ColumnElement | None = None, limit: int | None = None) -> MappedQuery:
    """A lazy read's pushdown: fewer columns, an extra predicate, a smaller limit."""
    select, plans = query.select, query.columns
    if columns is not None:
        keep = [i for i, p in enumerate(plans) if p.name in set(columns)]
        select = select.with_only_columns(*[select.selected_columns[i] for i in keep],
                                          maintain_column_froms=True)
        plans = [plans[i] for i in keep]
    if predicate is not None:
        select = select.where(predicate)
    if limit is not None:
        current = query.mapping.limit
        select = select.limit(limit if current is None else min(limit, current))
    return replace(query, select=select, columns=plans)


def _boundaries(snapshot: sa.Connection, query: MappedQuery, key: sa.ColumnElement,
                parts: int) -> list:
    """Split points from the data: equal widths for integers, quantiles for anything else.

    Integers need only ``min`` and ``max`` (an index answers them without reading the table);
    quantiles need the count too."""
    base = query.select.with_only_columns(key.label("k"), maintain_column_froms=True).where(
        key.is_not(None)).subquery("ldw_keys")
    lo, hi = snapshot.execute(sa.select(sa.func.min(base.c.k), sa.func.max(base.c.k))).one()
    if lo is None:
        return []
    if isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool):
        step = (hi - lo + 1) / parts
        points = sorted({lo + int(step * i) for i in range(1, parts)})
        return [p for p in points if lo < p <= hi]
    count = snapshot.execute(sa.select(sa.func.count()).select_from(base)).scalar_one()
    points = []
    for i in range(1, parts):
        value = snapshot.execute(sa.select(base.c.k).order_by(base.c.k)
                                 .offset(count * i // parts).limit(1)).scalar()
        if value is not None and (not points or value > points[-1]) and value > lo:
            points.append(value)
    return points


def read_plan(connector: Connector, query: MappedQuery,
              snapshot: sa.Connection | None) -> ReadPlan:
    """The source queries for one read: one per partition (plus one for NULL keys)."""
    tag = f"ldw:{uuid.uuid4().hex[:12]}"
    literal = connector.transport != "dbapi"
    select = query.select.prefix_with(f"/* {tag} */")
    mapping = query.mapping
    statements = [select]
    if mapping.partition_on is not None and mapping.partitions > 1 and snapshot is not None:
        key = query.lookup[mapping.partition_on]
        points = _boundaries(snapshot, query, key, mapping.partitions)
        ranges = [key < points[0]] if points else []
        ranges += [sa.and_(key >= a, key < b) for a, b in zip(points, points[1:], strict=False)]
        ranges += [key >= points[-1]] if points else [key.is_not(None)]
        statements = [select.where(r) for r in ranges] + [select.where(key.is_(None))]
    queries = [connector.compile(s, literal=literal) for s in statements]
    return ReadPlan(queries, query.columns, query.tables, tag)


def ranged_plan(connector: Connector, query: MappedQuery,
                ranges: Sequence[sa.ColumnElement]) -> ReadPlan:
    """One query per range of ``connector.row_ranges`` (read in one snapshot)."""
    tag = f"ldw:{uuid.uuid4().hex[:12]}"
    select = query.select.prefix_with(f"/* {tag} */")
    literal = connector.transport != "dbapi"
    queries = [connector.compile(select.where(r), literal=literal) for r in ranges]
    return ReadPlan(queries, query.columns, query.tables, tag)


def single_plan(connector: Connector, query: MappedQuery) -> ReadPlan:
    """One query, no snapshot coordination (lazy scans, previews)."""
    return read_plan(connector, replace(query, mapping=replace(query.mapping, partitions=1)),
                     None)


__all__ += ["narrow", "ranged_plan", "read_plan", "single_plan", "SourceQuery"]
