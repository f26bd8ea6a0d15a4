"""What a query needs from each relation it reads: columns, row conditions and a row limit.

The analysis runs on a copy of the validated query in which every relation is named by its
index (``ldw_r0``, ``ldw_r1``, ...). sqlglot qualifies it against the relations' columns; scope
analysis then attributes every column and every conjunct of a ``WHERE`` or join condition to the
relation it reads. What the analysis finds is a pre-filter only: DuckDB runs the whole query
again over what comes back, so a relation may be read with *more* rows than the query keeps but
never fewer. That is the rule every decision here follows:

- a conjunct is pushed to a relation only if it references that relation alone and filtering
  the relation first cannot change the result: ``WHERE`` conjuncts on a relation that no outer
  join pads with NULLs, inner join conditions likewise, and a ``LEFT JOIN``'s own condition on
  its right-hand relation; a scope with a RIGHT, FULL, SEMI, ANTI, ASOF, POSITIONAL, NATURAL or
  LATERAL join pushes nothing;
- a relation read several times (a self-join, a correlated subquery) is read once, with the
  disjunction of what each occurrence needs, or unfiltered if one occurrence needs every row;
- columns are the union of every column any scope takes from the relation; anything the
  analysis cannot attribute (a star it could not expand, a column it cannot place) falls back
  to more columns, never fewer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope
from sqlglot.optimizer.simplify import simplify
from sqlglot.schema import MappingSchema

__all__ = ["Needs", "analyze", "internal_name"]

DIALECT = "duckdb"
_UNSAFE_IN_CONJUNCT = (exp.Subquery, exp.Exists, exp.AggFunc, exp.Window, exp.Placeholder,
                       exp.Query, exp.Lambda, exp.Rand)


def internal_name(index: int) -> str:
    """The name relation ``index`` carries in the analysed copy of a query."""
    return f"ldw_r{index}"


@dataclass
class Needs:
    """What the query needs from one relation."""

    columns: list[str] | None = None  # None: every column
    # per occurrence of the relation, the conjuncts (bare column names) it may be filtered by;
    # an empty list means that occurrence needs every row
    occurrences: list[list[exp.Expression]] = field(default_factory=list)
    limit: int | None = None
    notes: list[str] = field(default_factory=list)  # why something was not pushed
    # inner equi-joins every occurrence has: (its column, other relation, other column); its
    # rows without a partner there cannot reach the result (a dynamic filter)
    joins: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def filtered(self) -> bool:
        return bool(self.occurrences) and all(self.occurrences)


def analyze(tree: exp.Expression, columns: Sequence[Sequence[str]]) -> list[Needs]:
    """For a query whose relations are named :func:`internal_name` ``(i)``, what it needs from
    relation ``i`` with columns ``columns[i]``."""
    needs = [Needs() for _ in columns]
    schema = MappingSchema({internal_name(i): {c: "TEXT" for c in cols}
                            for i, cols in enumerate(columns)}, dialect=DIALECT)
    try:
        qualified = qualify(tree.copy(), schema=schema, dialect=DIALECT,
                            validate_qualify_columns=False, quote_identifiers=False,
                            identify=False)
        scopes = traverse_scope(qualified)
    except (SqlglotError, KeyError, ValueError, TypeError, AttributeError) as exc:
        for need in needs:
            need.occurrences = [[]]
            need.notes.append(f"the query could not be analysed ({type(exc).__name__}); "
                              "every column and row is read")
        return needs
    _columns(qualified, scopes, columns, needs)
    _conjuncts(qualified, scopes, needs)
    _limits(scopes, needs)
    return needs


# -- columns --------------------------------------------------------------------------------------
def _relation_of(source: object) -> int | None:
    if isinstance(source, exp.Table) and not source.args.get("db"):
        name = source.name
        if name.startswith("ldw_r") and name[5:].isdigit():
            return int(name[5:])
    return None


def _resolve(scope: Scope | None, alias: str) -> int | None:
    """The relation an alias names, looked up from ``scope`` outwards (correlation)."""
    while scope is not None:
        if alias in scope.sources:
            return _relation_of(scope.sources[alias])
        scope = scope.parent
    return None


def _columns(tree: exp.Expression, scopes: list[Scope], columns: Sequence[Sequence[str]],
             needs: list[Needs]) -> None:
    folded = [{c.lower(): c for c in cols} for cols in columns]
    wanted: list[set[str] | None] = [set() for _ in columns]

    def everything(index: int, why: str) -> None:
        if wanted[index] is not None:
            wanted[index] = None
            needs[index].notes.append(why)

    def add_by_name(name: str) -> None:
        for index, names in enumerate(folded):
            if wanted[index] is not None and name.lower() in names:
                wanted[index].add(names[name.lower()])

    for scope in scopes:
        aliases = {alias: _relation_of(source) for alias, source in scope.sources.items()}
        ignored = _exists_projection(scope.expression)
        for column in scope.columns:
            if id(column) in ignored:
                continue
            alias = column.table
            index = _resolve(scope, alias) if alias else None
            if index is not None:
                name = folded[index].get(column.name.lower())
                if name is None:  # the relation itself used as a value (a row struct)
                    everything(index, "the query uses the whole row")
                elif wanted[index] is not None:
                    wanted[index].add(name)
            elif not alias:
                if column.name in aliases and aliases[column.name] is not None:
                    everything(aliases[column.name], "the query uses the whole row")
                add_by_name(column.name)
        if _has_star(scope.expression) and not ignored:
            for index in aliases.values():
                if index is not None:
                    everything(index, "a star in the query could not be expanded")
        for join in scope.expression.args.get("joins") or []:
            if join.args.get("method") or join.args.get("using"):
                for index in aliases.values():
                    if index is not None:
                        everything(index, "NATURAL or USING joins read every column")
    for node in tree.find_all(exp.Column):  # anything still unqualified: by name, to be safe
        if not node.table:
            add_by_name(node.name)
    for index, names in enumerate(wanted):
        if names is None:
            needs[index].columns = None
        else:  # in the relation's column order; at least one column to count rows with
            chosen = [c for c in columns[index] if c in names]
            needs[index].columns = chosen or list(columns[index][:1])


def _exists_projection(select: exp.Expression) -> set[int]:
    """Nodes of the select list of an ``EXISTS (SELECT ...)`` body: it yields no values."""
    if not isinstance(select, exp.Select) or not isinstance(select.parent, exp.Exists):
        return set()
    return {id(node) for projection in select.expressions for node in projection.walk()}


def _has_star(select: exp.Expression) -> bool:
    if not isinstance(select, exp.Select):
        return False
    for projection in select.expressions:
        for node in projection.walk():
            if isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
                return True
            if isinstance(node, exp.Column) and isinstance(node.this, exp.Star):
                return True
            if isinstance(node, exp.Anonymous) and node.name.lower() == "columns":
                return True
    return False


# -- row conditions -------------------------------------------------------------------------------
def _conjuncts_of(condition: exp.Expression | None) -> list[exp.Expression]:
    if condition is None:
        return []
    return list(condition.flatten()) if isinstance(condition, exp.And) else [condition]


def _single_alias(conjunct: exp.Expression) -> str | None:
    if any(isinstance(node, _UNSAFE_IN_CONJUNCT) for node in conjunct.walk()):
        return None
    aliases = {column.table for column in conjunct.find_all(exp.Column)}
    if len(aliases) != 1:
        return None
    alias = aliases.pop()
    return alias or None


def _bare(conjunct: exp.Expression) -> exp.Expression:
    """The conjunct over bare column names, with constant arithmetic folded."""
    def strip(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column):
            return exp.column(node.this.copy())
        return node
    try:
        return simplify(conjunct.copy().transform(strip), dialect=DIALECT)
    except SqlglotError:
        return conjunct.copy().transform(strip)


Pushdown = tuple[dict[str, list[exp.Expression]], str | None,
                 list[tuple[str, str, str | int, str]]]


def _scope_pushdown(select: exp.Select) -> Pushdown:
    """Conjuncts of one SELECT that may filter a single source first, by alias, or why none;
    and its equi-joins between two sources no outer join pads (alias, column, alias, column)."""
    from_ = select.args.get("from_") or select.args.get("from")
    if from_ is None:
        return {}, None, []
    nullable: set[str] = set()
    candidates: list[tuple[exp.Expression, bool]] = []  # (conjunct, from a LEFT JOIN's ON)
    for join in select.args.get("joins") or []:
        side, kind = (join.side or "").upper(), (join.kind or "").upper()
        if side in {"RIGHT", "FULL"} or kind in {"SEMI", "ANTI", "ASOF", "POSITIONAL"} \
                or join.args.get("method") or isinstance(join.this, exp.Lateral):
            return {}, f"the query has a {side or kind or 'special'} join", []
        alias = join.this.alias_or_name
        if side == "LEFT":
            nullable.add(alias)
            for conjunct in _conjuncts_of(join.args.get("on")):
                if _single_alias(conjunct) == alias:
                    candidates.append((conjunct, True))
        else:
            candidates += [(c, False) for c in _conjuncts_of(join.args.get("on"))]
    where = select.args.get("where")
    candidates += [(c, False) for c in _conjuncts_of(where.this if where else None)]
    pushed: dict[str, list[exp.Expression]] = {}
    equi: list[tuple[str, str, str | int, str]] = []
    for conjunct, left_on in candidates:
        alias = _single_alias(conjunct)
        pair = _equi_join(conjunct) if not left_on else None
        if pair is not None and not {pair[0], pair[2]} & nullable:
            equi += [pair, (pair[2], pair[3], pair[0], pair[1])]
        semi = _semi_join(conjunct) if not left_on else None
        if semi is not None and semi[0] not in nullable:
            equi.append(semi)
        if alias is None:
            for alias, implied in _implied(conjunct).items():
                if alias not in nullable:
                    pushed.setdefault(alias, []).append(_bare(implied))
            continue
        if alias in nullable and not left_on:
            continue
        pushed.setdefault(alias, []).append(_bare(conjunct))
    return pushed, None, _transitive(equi)


def _transitive(equi: list[tuple[str, str, str | int, str]]
                ) -> list[tuple[str, str, str | int, str]]:
    """Equi-joins closed under transitivity: a.x = b.y and b.y = c.z give a.x = c.z."""
    pairs = [(a, c, b, d) for a, c, b, d in equi if isinstance(b, str)]
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def root(node: tuple[str, str]) -> tuple[str, str]:
        while parent.get(node, node) != node:
            node = parent[node]
        return node

    for a, c, b, d in pairs:
        parent[root((a, c))] = root((b, d))
    classes: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for node in {n for a, c, b, d in pairs for n in ((a, c), (b, d))}:
        classes.setdefault(root(node), []).append(node)
    closed = {(a, c, b, d) for members in classes.values() for a, c in members
              for b, d in members if a != b}
    return sorted(closed) + [e for e in equi if not isinstance(e[2], str)]


def _equi_join(conjunct: exp.Expression) -> tuple[str, str, str, str] | None:
    node = conjunct.unnest()
    if not isinstance(node, exp.EQ):
        return None
    left, right = node.this.unnest(), node.expression.unnest()
    if isinstance(left, exp.Column) and isinstance(right, exp.Column) \
            and left.table and right.table and left.table != right.table:
        return left.table, left.name, right.table, right.name
    return None


def _semi_join(conjunct: exp.Expression) -> tuple[str, str, int, str] | None:
    """``x.c IN (SELECT y.d FROM relation y ...)``: x's rows need a partner among the
    relation's values of d (alias, column, relation index, its column)."""
    node = conjunct.unnest()
    query = node.args.get("query") if isinstance(node, exp.In) else None
    column = node.this.unnest() if isinstance(node, exp.In) else None
    if not isinstance(column, exp.Column) or not column.table or node.args.get("negate"):
        return None
    select = query.this if isinstance(query, exp.Subquery) else query
    if not isinstance(select, exp.Select) or len(select.expressions) != 1:
        return None
    projected = select.expressions[0].unalias()
    if not isinstance(projected, exp.Column) or not projected.table:
        return None
    from_ = select.args.get("from_") or select.args.get("from")
    sources = [from_.this] if from_ is not None else []
    sources += [j.this for j in select.args.get("joins") or []]  # a value shown is theirs
    for source in sources:
        index = _relation_of(source)
        if index is not None and source.alias_or_name == projected.table:
            return column.table, column.name, index, projected.name
    return None


def _implied(conjunct: exp.Expression) -> dict[str, exp.Expression]:
    """From ``(a1 AND b1) OR (a2 AND b2)``, per alias, the condition each row it keeps must meet
    (``a1 OR a2`` for a's alias), if every branch constrains that alias."""
    node = conjunct.unnest()
    if not isinstance(node, exp.Or) or any(isinstance(n, _UNSAFE_IN_CONJUNCT)
                                           for n in node.walk()):
        return {}
    per_branch: list[dict[str, list[exp.Expression]]] = []
    for branch in node.flatten():
        found: dict[str, list[exp.Expression]] = {}
        for part in _conjuncts_of(branch.unnest()):
            alias = _single_alias(part)
            if alias is not None:
                found.setdefault(alias, []).append(part)
        per_branch.append(found)
    common = set.intersection(*(set(found) for found in per_branch)) if per_branch else set()
    return {alias: exp.or_(*(exp.and_(*found[alias]) for found in per_branch))
            for alias in sorted(common)}


def _conjuncts(tree: exp.Expression, scopes: list[Scope], needs: list[Needs]) -> None:
    seen = [0] * len(needs)
    joins: list[list[set[tuple[str, int, str]]]] = [[] for _ in needs]
    for scope in scopes:
        select = scope.expression
        pushed, why, equi = (_scope_pushdown(select) if isinstance(select, exp.Select)
                             else ({}, "the relation is read by a non-SELECT clause", []))
        partners: dict[str, set[tuple[str, int, str]]] = {}
        for alias, column, other_alias, other_column in equi:
            other = (other_alias if isinstance(other_alias, int)  # IN (SELECT ...)
                     else _resolve(scope, other_alias))  # this scope's, or an outer one
            if alias in scope.sources and other is not None:
                partners.setdefault(alias, set()).add((column, other, other_column))
        for alias, source in scope.sources.items():
            index = _relation_of(source)
            if index is None:
                continue
            seen[index] += 1
            needs[index].occurrences.append(pushed.get(alias, []))
            joins[index].append({j for j in partners.get(alias, set()) if j[1] != index})
            if why:
                needs[index].notes.append(f"no row condition pushed: {why}")
    for table in tree.find_all(exp.Table):
        index = _relation_of(table)
        if index is not None:
            seen[index] -= 1
    for index, left in enumerate(seen):
        if left < 0:  # read somewhere the scopes do not show (e.g. PIVOT): every row
            needs[index].occurrences.append([])
    for need, found in zip(needs, joins, strict=True):
        # a partner every occurrence needs (one occurrence's says nothing of the others)
        if found and len(found) == len(need.occurrences):
            need.joins = sorted(set.intersection(*found))


# -- row limits -----------------------------------------------------------------------------------
def _limits(scopes: list[Scope], needs: list[Needs]) -> None:
    """A LIMIT over a plain read of one relation (no filter, join, grouping, order or
    distinct) is a limit on that relation, if it is read only there."""
    for scope in scopes:
        select = scope.expression
        if not isinstance(select, exp.Select) or len(scope.sources) != 1:
            continue
        (source,) = scope.sources.values()
        index = _relation_of(source)
        if index is None or len(needs[index].occurrences) != 1:
            continue
        limit = select.args.get("limit")
        if limit is None or any(select.args.get(k) for k in (
                "where", "group", "having", "qualify", "order", "distinct", "joins", "offset",
                "windows", "laterals")):
            continue
        if any(node.find(exp.AggFunc, exp.Window) for node in select.expressions):
            continue
        value = limit.expression if isinstance(limit, exp.Limit) else None
        if isinstance(value, exp.Literal) and value.is_int:
            needs[index].limit = int(value.this)
