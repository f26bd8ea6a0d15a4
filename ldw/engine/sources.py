"""Source browsing: the connectors, and what a user may see of each source's schemas, tables,
columns and rows (policies applied), without defining a dataset."""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from ldw.config import Settings
from ldw.connectors import Connector, connector_for
from ldw.connectors.convert import target_schema
from ldw.errors import AccessDenied
from ldw.governance.masks import masked_schema
from ldw.governance.policies import Governance
from ldw.planner import (
    MappedQuery,
    Mapping,
    PolicyLookup,
    parse_table_ref,
    plan_mapping,
    single_plan,
)
from ldw.query_log import QueryLog

__all__ = ["Sources"]

Masker = Callable[[Iterator[pa.RecordBatch], MappedQuery], Iterator[pa.RecordBatch]]



def schema_of(query: MappedQuery) -> pa.Schema:
    """The stored schema: the planned Arrow types, with what Arrow-side masks make of them."""
    return masked_schema(target_schema(query.columns), query.arrow_masks)


class Sources:
    """The configured sources, one connector each (opened on first use), seen through a
    user's policies."""

    def __init__(self, settings: Settings, governance: Governance, query_log: QueryLog,
                 masked: Masker) -> None:
        self.settings = settings
        self.governance = governance
        self.query_log = query_log
        self._masked = masked
        self._connectors: dict[str, Connector] = {}
        self._lock = threading.Lock()

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

    def plan(self, user: str, mapping: Mapping) -> MappedQuery:
        """``mapping`` planned against its source under ``user``'s policies."""
        return plan_mapping(self.connector(mapping.source), mapping,
                            self.policy_lookup(user, mapping.source))

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
        query = self.plan(user, Mapping("preview", source, schema, table, limit=limit))
        plan = single_plan(connector, query)
        self.query_log.extend((source, q.sql) for q in plan.queries)
        cancel = threading.Event()
        return [q.sql for q in plan.queries], self._masked(connector.stream(plan, cancel), query)

    def schema(self, user: str, ref: str) -> pa.Schema:
        """The Arrow schema reading source table ``ref`` gives ``user`` (policy applied)."""
        source, schema, table = parse_table_ref(ref)
        return schema_of(self.plan(user, Mapping("schema", source, schema, table)))

    def describe(self, user: str, ref: str) -> list[dict[str, Any]]:
        source, schema, table = parse_table_ref(ref)
        connector = self.connector(source)
        query = self.plan(user, Mapping("describe", source, schema, table))
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
            if plan.name in query.arrow_masks:
                row["arrow_type"] = str(query.arrow_masks[plan.name].result_type(plan.arrow_type))
            row["policy_tags"] = policy.tags(plan.name) if policy is not None else []
            rows.append(row)
        return rows

    def forget(self, names: list[str]) -> None:
        """Drop the connectors of sources whose definition changed or went (a reload); reads
        still running keep theirs, the next use opens the new one."""
        with self._lock:
            for name in names:
                self._connectors.pop(name, None)

    def close(self) -> None:
        with self._lock:
            for connector in self._connectors.values():
                connector.close()
            self._connectors.clear()
