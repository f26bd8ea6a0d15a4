"""Names in a validated SQL tree: the relations it reads, and a copy with each renamed for
analysis or for DuckDB (:class:`~ldw.engine.federation.Federation`'s planning)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlglot import exp

from ldw.logical.analyze import internal_name

__all__ = ["references", "renamed"]


def references(tree: exp.Expression) -> list[str | tuple[str, ...]]:
    """Datasets (names) and source tables (name parts) a validated query reads, in order of
    first mention; CTEs and table functions are not relations."""
    from ldw.sql.validate import visible_ctes

    found: dict[str | tuple[str, ...], None] = {}
    for node in tree.walk(bfs=False):
        if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
            continue
        if node.args.get("db") is not None:
            found.setdefault(tuple(p.name for p in node.parts), None)
        elif node.name.lower() not in visible_ctes(node):
            found.setdefault(node.name, None)
    return list(found)


def renamed(tree: exp.Expression, index: dict, views: Sequence[str], *,
             internal: bool) -> exp.Expression:
    """A copy of ``tree`` with each relation named :func:`internal_name` (for analysis) or by
    its DuckDB view, ``views[i]`` (to run); source tables keep their table name as alias, so columns
    qualified with it still resolve."""
    from ldw.sql.validate import visible_ctes

    def rename(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column) and node.args.get("db") is not None:
            parts = tuple(p.name for p in node.parts[:-1])
            if parts in index:  # pg.tpch.lineitem.l_orderkey -> lineitem.l_orderkey
                return exp.column(node.this.copy(), table=exp.to_identifier(parts[-1]))
            return node
        if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
            return node
        qualified = node.args.get("db") is not None
        key: Any = tuple(p.name for p in node.parts) if qualified else node.name
        if key not in index or (not qualified and node.name.lower() in visible_ctes(node)):
            return node
        i = index[key]
        if not internal and not qualified:
            return node  # a dataset runs under its own name
        name = internal_name(i) if internal else views[i]
        alias = node.args.get("alias")
        if alias is None:
            alias = exp.TableAlias(this=exp.to_identifier(node.name, quoted=node.this.quoted))
        renamed = exp.Table(this=exp.to_identifier(name, quoted=True), alias=alias.copy())
        for arg in ("sample", "pivots", "joins", "laterals", "hints"):
            if node.args.get(arg):
                renamed.set(arg, node.args[arg])
        return renamed

    return tree.copy().transform(rename)
