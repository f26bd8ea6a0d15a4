"""Govern a ``sql=`` query: resolve every relation it reads, then read each through its policy.

Names are resolved, never matched. The query is parsed in the source's dialect and its scopes
are built (sqlglot's scope analysis), so every table reference is known, by the SQL rules, to be
either a CTE (a non-recursive CTE's own body sees the real table) or a base relation. Each base
relation is then resolved by the source itself (PostgreSQL: ``to_regclass`` with the
connection's search_path; MariaDB: ``information_schema`` with the current database), its
policy looked up by the resolved ``schema.table``, and the reference rewritten to the resolved,
quoted name or to the user's policy view of it. The query that runs therefore names exactly the
relations whose policies were applied. Anything the analysis cannot classify, or the source
cannot resolve, is refused; the source's system catalog is always denied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.optimizer.scope import traverse_scope

from ldw.connectors import Connector
from ldw.errors import InvalidMapping, PolicyViolation
from ldw.governance.policies import EffectivePolicy
from ldw.predicates import parse_query

__all__ = ["GovernedSQL", "govern_sql"]

PolicyLookup = Callable[[str, str], EffectivePolicy]
ViewBuilder = Callable[[sa.Table, EffectivePolicy], "sa.Subquery | sa.Table"]


@dataclass
class GovernedSQL:
    """A ``sql=`` query as it runs: every relation qualified, or replaced by a policy view."""

    sql: str
    policies: list[EffectivePolicy] = field(default_factory=list)
    # (schema, name, alias) of every relation read, as resolved: for snapshot locks
    tables: list[tuple[str | None, str, str | None]] = field(default_factory=list)


def _normalize_names(tree: exp.Expression, dialect: str | None) -> None:
    """Table and CTE names folded by the dialect's rules (PostgreSQL: unquoted to lower case),
    so that comparing them is comparing what the source compares."""
    for node in list(tree.find_all(exp.Table, exp.CTE)):
        parts = ([node.args.get("alias")] if isinstance(node, exp.CTE)
                 else [node.args.get(k) for k in ("this", "db", "catalog")])
        for part in parts:
            target = part.this if isinstance(part, exp.TableAlias) else part
            if isinstance(target, exp.Identifier):
                normalize_identifiers(target, dialect=dialect)


def _with_clause(query: exp.Query) -> exp.With | None:
    return query.args.get("with_", query.args.get("with"))


def _visible_ctes(node: exp.Table) -> bool:
    """Whether a CTE named like ``node`` is in scope where ``node`` stands (SQL's rules: a CTE
    sees the CTEs before it, and itself only under WITH RECURSIVE; the query body sees all)."""
    child: exp.Expression = node
    parent = node.parent
    while parent is not None:
        if isinstance(parent, exp.With):
            names = []
            for cte in parent.expressions:
                if cte is child:
                    if parent.args.get("recursive"):
                        names.append(cte.alias)
                    break
                names.append(cte.alias)
            if node.name in names:
                return True
        elif isinstance(parent, exp.Query) and _with_clause(parent) not in (None, child):
            if node.name in [cte.alias for cte in _with_clause(parent).expressions]:
                return True
        child, parent = parent, parent.parent
    return False


def base_relations(tree: exp.Expression) -> list[exp.Table]:
    """Every reference to a stored relation, by scope analysis; fail closed on the rest."""
    try:
        scopes = traverse_scope(tree)
    except OptimizeError as exc:
        raise InvalidMapping(f"cannot analyse the sql: {exc}") from None
    relations: dict[int, exp.Table] = {}
    for scope in scopes:
        for source in scope.sources.values():
            if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier):
                relations[id(source)] = source
    for node in tree.find_all(exp.Table):
        if node.args.get("catalog") is not None:
            raise InvalidMapping(f"sql= names {node.sql()!r} with a database part; name tables "
                                 "as schema.table on the mapping's source")
        if id(node) in relations:
            continue
        if isinstance(node.this, exp.Func):  # a table function, allow-listed with the others
            continue
        if isinstance(node.this, exp.Identifier) and not node.args.get("db") \
                and _visible_ctes(node):
            continue
        raise InvalidMapping(f"cannot tell which relation {node.sql()!r} reads; write it as "
                             "schema.table in a FROM or JOIN")
    return list(relations.values())


def govern_sql(connector: Connector, sql: str, policy_for: PolicyLookup | None,
               view: ViewBuilder) -> GovernedSQL:
    """The query as it may run for the user whose policies ``policy_for`` gives.

    ``view`` builds the policy view of a reflected table (row filters, masks, limits). Tables
    whose policy masks a column in Arrow (a keyed hash) are refused: those masks are applied
    after reading, and the query would compute on the raw values.
    """
    dialect = connector.sqlglot_dialect
    tree = parse_query(sql, dialect)
    _normalize_names(tree, dialect)
    governed = GovernedSQL("")
    for node in base_relations(tree):
        db = node.args.get("db")
        relation = connector.resolve_relation(db.name if db is not None else None, node.name)
        alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(
            node.name, quoted=node.this.quoted))
        policy = policy_for(relation.schema, relation.name) if policy_for else None
        if policy is not None:
            governed.policies.append(policy)
        governed.tables.append((relation.schema, relation.name, alias.name))
        if policy is not None and policy.restricts_rows_or_values:
            in_arrow = [c for c, m in policy.masks.items() if m.applied_in_arrow]
            if in_arrow:
                raise PolicyViolation(
                    f"sql= cannot read {policy.table}: column(s) {in_arrow} are masked by a keyed "
                    "hash, which ldw applies after reading; map the table itself instead")
            table = connector.reflect(relation.schema, relation.name)
            text = connector.compile(sa.select(*view(table, policy).c), literal=True).sql
            node.replace(exp.Subquery(this=sqlglot.parse_one(text, read=dialect),
                                      alias=alias.copy()))
            continue
        node.set("this", exp.to_identifier(relation.name, quoted=True))
        node.set("db", exp.to_identifier(relation.schema, quoted=True)
                 if relation.schema is not None else None)
        node.set("alias", alias.copy())
    governed.sql = tree.sql(dialect=dialect)
    return governed
