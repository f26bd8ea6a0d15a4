"""A SQL conjunct (sqlglot, bare column names) in ldw's predicate format (:mod:`ldw.pushdown`).

The predicate format is the one place that decides what reaches a source and whether it is
exact: types that compare alike on both sides, no string order (collations), no negation of a
superset, no masked column. SQL over source tables goes through it exactly as the lazy polars
scan does, so the two cannot drift apart. What does not translate is simply not pushed: DuckDB
applies the whole query to what comes back.
"""

from __future__ import annotations

from typing import Any

from sqlglot import exp

__all__ = ["to_predicate"]

_COMPARISONS = {exp.EQ: "eq", exp.NEQ: "ne", exp.LT: "lt", exp.LTE: "le", exp.GT: "gt",
                exp.GTE: "ge"}
_FLIPPED = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}


class _Untranslatable(Exception):
    pass


def to_predicate(node: exp.Expression) -> dict[str, Any] | None:
    """The conjunct as a predicate node, or None if it has no equivalent there."""
    try:
        return _node(node)
    except _Untranslatable:
        return None


def _literal(node: exp.Expression) -> dict[str, Any]:
    negative = False
    if isinstance(node, exp.Neg):
        negative, node = True, node.this
    if isinstance(node, exp.Literal):
        if node.is_string:
            if negative:
                raise _Untranslatable
            return {"lit": node.this, "type": "str"}
        text = ("-" if negative else "") + node.this
        if node.is_int:
            return {"lit": int(text), "type": "int"}
        if "e" in text.lower():
            return {"lit": float(text), "type": "float"}
        return {"lit": text, "type": "decimal"}
    if negative:
        raise _Untranslatable
    if isinstance(node, exp.Boolean):
        return {"lit": bool(node.this), "type": "bool"}
    if isinstance(node, exp.Cast) and isinstance(node.this, exp.Literal) \
            and node.this.is_string and node.to.this == exp.DataType.Type.DATE:
        return {"lit": node.this.this, "type": "date"}
    raise _Untranslatable


def _operand(node: exp.Expression) -> dict[str, Any]:
    node = node.unnest()
    if isinstance(node, exp.Column) and not node.table and isinstance(node.this, exp.Identifier):
        return {"col": node.name}
    return _literal(node)


def _node(node: exp.Expression) -> dict[str, Any]:
    node = node.unnest()
    if node.args.get("negate"):  # x NOT LIKE y is Like(..., negate=True)
        positive = node.copy()
        positive.set("negate", None)
        return {"op": "not", "args": [_node(positive)]}
    if isinstance(node, exp.Column):
        return _operand(node)
    if type(node) in _COMPARISONS:
        op = _COMPARISONS[type(node)]
        left, right = _operand(node.this), _operand(node.expression)
        if "lit" in left and "col" in right:  # the predicate format wants the column first
            left, right, op = right, left, _FLIPPED[op]
        return {"op": op, "args": [left, right]}
    if isinstance(node, exp.And | exp.Or):
        parts = node.flatten()
        return {"op": "and" if isinstance(node, exp.And) else "or",
                "args": [_node(p) for p in parts]}
    if isinstance(node, exp.Not):
        inner = node.this.unnest()
        if isinstance(inner, exp.Is) and isinstance(inner.expression, exp.Null):
            return {"op": "is_not_null", "args": [_operand(inner.this)]}
        return {"op": "not", "args": [_node(inner)]}
    if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
        return {"op": "is_null", "args": [_operand(node.this)]}
    if isinstance(node, exp.In):
        if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
            raise _Untranslatable
        column = _operand(node.this)
        values = [_literal(v.unnest()) for v in node.expressions]
        if "col" not in column or not values:
            raise _Untranslatable
        return {"op": "is_in", "args": [column, *values]}
    if isinstance(node, exp.Between):
        column = _operand(node.this)
        if "col" not in column:
            raise _Untranslatable
        return {"op": "between", "args": [column, _literal(node.args["low"].unnest()),
                                          _literal(node.args["high"].unnest())]}
    if isinstance(node, exp.Like) and not node.args.get("escape"):
        column, pattern = _operand(node.this), _operand(node.expression)
        if "col" not in column or pattern.get("type") != "str":
            raise _Untranslatable
        return {"op": "like", "args": [column, pattern]}
    raise _Untranslatable
