"""The scan predicate: ldw's own small JSON format for what a lazy read pushes into the source.

A client never sends code or a serialized polars expression. It translates the conjuncts of the
polars predicate it was given into this format (:func:`encode_polars_predicate`) and sends the
ones that translate as a JSON list; polars applies the whole predicate again to every batch, so
anything not pushed is still applied (the polars IO plugin contract). The server validates each
conjunct against the dataset's columns and rebuilds it with SQLAlchemy
(:func:`predicate_to_sql`); a malformed one is refused, a well-formed one it cannot push exactly
(a masked column, mismatched types) is left to the client.

Nodes (every node is a JSON object)::

    {"col": NAME}
    {"lit": VALUE, "type": "int" | "float" | "str" | "bool" | "date"}    date: "YYYY-MM-DD"
    {"lit": "DIGITS", "type": "decimal"}                                e.g. "0.07", exact
    {"op": "eq" | "ne" | "lt" | "le" | "gt" | "ge", "args": [X, Y]}     X, Y: col or lit
    {"op": "and" | "or", "args": [P, P, ...]}
    {"op": "not", "args": [P]}
    {"op": "is_null" | "is_not_null", "args": [COL]}
    {"op": "is_in", "args": [COL, LIT, ...]}
    {"op": "between", "args": [COL, LOW, HIGH]}                         both ends included
    {"op": "like", "args": [COL, STR]}                                  SQL LIKE pattern

A pushed conjunct is either exact (the source keeps exactly the rows polars keeps) or a superset
(string equality: collations and ``char(n)`` padding may match more); a row limit is pushed only
when every conjunct was pushed exactly.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from ldw.errors import InvalidMapping

__all__ = ["encode_polars_predicate", "predicate_to_sql"]

MAX_NODES = 2_000  # nodes in one scan predicate
MAX_DEPTH = 32
_INT64 = (-(2**63), 2**63 - 1)

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
}
_OPS = frozenset({*_COMPARE, "and", "or", "not", "is_null", "is_not_null", "is_in", "between",
                  "like"})
_LIT_TYPES = frozenset({"int", "float", "str", "bool", "date", "decimal"})


# -- client: polars expression -> ldw predicate ---------------------------------------------------
class _Untranslatable(Exception):
    pass


_POLARS_COMPARE = {"Eq": "eq", "NotEq": "ne", "Lt": "lt", "LtEq": "le", "Gt": "gt", "GtEq": "ge"}
_POLARS_INTS = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64"}


def _polars_literal(node: Any) -> dict[str, Any]:
    if isinstance(node, dict) and len(node) == 1:
        (kind, body), = node.items()
        if kind == "Dyn" and isinstance(body, dict) and len(body) == 1:
            (kind, value), = body.items()
            kinds = {"Int": "int", "Float": "float", "Str": "str"}
            if kind in kinds:
                return {"lit": value, "type": kinds[kind]}
        if kind == "Scalar" and isinstance(body, dict) and len(body) == 1:
            (kind, value), = body.items()
            if kind in _POLARS_INTS and isinstance(value, int):
                return {"lit": value, "type": "int"}
            if kind in ("Float32", "Float64") and isinstance(value, int | float):
                return {"lit": float(value), "type": "float"}
            if kind == "String" and isinstance(value, str):
                return {"lit": value, "type": "str"}
            if kind == "Boolean" and isinstance(value, bool):
                return {"lit": value, "type": "bool"}
            if kind == "Date" and isinstance(value, int):
                return {"lit": (dt.date(1970, 1, 1) + dt.timedelta(days=value)).isoformat(),
                        "type": "date"}
    raise _Untranslatable


def _polars_values(node: Any) -> list[dict[str, Any]]:
    """The literals of an ``is_in`` list (polars sends them as an Arrow IPC stream)."""
    body = node.get("Literal") if isinstance(node, dict) else None
    blob = None
    if isinstance(body, dict) and isinstance(body.get("Scalar"), dict):
        blob = body["Scalar"].get("List")
    elif isinstance(body, dict):
        blob = body.get("Series")
    if not isinstance(blob, list):
        raise _Untranslatable
    try:
        column = pa.ipc.open_stream(bytes(blob)).read_all().column(0)
    except (pa.ArrowException, ValueError, IndexError):
        raise _Untranslatable from None
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        column = column.combine_chunks().flatten()
    kind = ("int" if pa.types.is_integer(column.type) else
            "float" if pa.types.is_floating(column.type) else
            "str" if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_string_view(column.type) else
            "date" if pa.types.is_date(column.type) else None)
    values = column.to_pylist()
    if kind is None or not values or any(v is None for v in values):
        raise _Untranslatable
    return [{"lit": v.isoformat() if kind == "date" else v, "type": kind} for v in values]


def _from_polars(node: Any) -> dict[str, Any]:
    if not isinstance(node, dict) or len(node) != 1:
        raise _Untranslatable
    (kind, body), = node.items()
    if kind == "Column" and isinstance(body, str):
        return {"col": body}
    if kind == "Literal":
        return _polars_literal(body)
    if kind == "BinaryExpr" and isinstance(body, dict):
        op = body.get("op")
        left, right = _from_polars(body.get("left")), _from_polars(body.get("right"))
        if op in _POLARS_COMPARE:
            return {"op": _POLARS_COMPARE[op], "args": [left, right]}
        if op in ("And", "LogicalAnd", "Or", "LogicalOr"):
            name = "and" if "And" in op else "or"
            args = [a for side in (left, right)  # a chain of ands (ors) becomes one node
                    for a in (side["args"] if side.get("op") == name else [side])]
            return {"op": name, "args": args}
        raise _Untranslatable
    if kind == "Function" and isinstance(body, dict):
        inputs, function = body.get("input"), body.get("function")
        if not isinstance(inputs, list) or not isinstance(function, dict):
            raise _Untranslatable
        boolean = function.get("Boolean")
        if boolean in ("Not", "IsNull", "IsNotNull") and len(inputs) == 1:
            name = {"Not": "not", "IsNull": "is_null", "IsNotNull": "is_not_null"}[boolean]
            return {"op": name, "args": [_from_polars(inputs[0])]}
        if isinstance(boolean, dict) and "IsIn" in boolean and len(inputs) == 2:
            return {"op": "is_in", "args": [_from_polars(inputs[0]), *_polars_values(inputs[1])]}
        if isinstance(boolean, dict) and "IsBetween" in boolean and len(inputs) == 3:
            column, low, high = (_from_polars(n) for n in inputs)
            closed = (boolean["IsBetween"] or {}).get("closed")
            if closed == "Both":
                return {"op": "between", "args": [column, low, high]}
            lower = "ge" if closed == "Left" else "gt"
            upper = "le" if closed == "Right" else "lt"
            if closed not in ("Left", "Right", "None"):
                raise _Untranslatable
            return {"op": "and", "args": [{"op": lower, "args": [column, low]},
                                          {"op": upper, "args": [column, high]}]}
    raise _Untranslatable


def _polars_conjuncts(node: Any) -> Iterator[Any]:
    body = node.get("BinaryExpr") if isinstance(node, dict) else None
    if isinstance(body, dict) and body.get("op") in ("And", "LogicalAnd"):
        yield from _polars_conjuncts(body.get("left"))
        yield from _polars_conjuncts(body.get("right"))
    else:
        yield node


def encode_polars_predicate(predicate: Any) -> tuple[list[dict[str, Any]], bool]:
    """The conjuncts of a polars expression that translate into ldw predicates, and whether
    all of them did. Reads the client's own expression; nothing is ever deserialized."""
    try:
        tree = json.loads(predicate.meta.serialize(format="json"))
    except Exception:  # an expression polars cannot serialize (e.g. a Python function)
        return [], False
    parts, complete, nodes = [], True, 0
    for conjunct in _polars_conjuncts(tree):
        try:
            part = _from_polars(conjunct)
        except (_Untranslatable, RecursionError):
            complete = False
            continue
        size, depth = _size(part)
        if nodes + size > MAX_NODES or depth > MAX_DEPTH:  # the server would refuse it
            complete = False
            continue
        parts.append(part)
        nodes += size
    return parts, complete


def _size(node: dict[str, Any]) -> tuple[int, int]:
    """(nodes, depth) of a predicate node."""
    sizes = [_size(a) for a in node.get("args", ())]
    return 1 + sum(n for n, _ in sizes), 1 + max((d for _, d in sizes), default=0)


# -- server: ldw predicate -> SQLAlchemy ----------------------------------------------------------
class _NotPushed(Exception):
    """Well-formed, but not pushed exactly: the client applies it."""


def _check_shape(node: Any, depth: int, count: list[int]) -> None:
    """Refuse anything that is not a node of the format (InvalidMapping)."""
    count[0] += 1
    if count[0] > MAX_NODES or depth > MAX_DEPTH:
        raise InvalidMapping(f"scan predicate too large (at most {MAX_NODES} nodes, "
                             f"{MAX_DEPTH} levels)")
    if not isinstance(node, dict):
        raise InvalidMapping("a scan predicate node must be a JSON object (ldw predicate "
                             "format); serialized expressions are not accepted")
    keys = set(node)
    if keys == {"col"}:
        if not isinstance(node["col"], str):
            raise InvalidMapping("scan predicate: col must be a column name")
        return
    if keys == {"lit", "type"}:
        kind, value = node["type"], node["lit"]
        ok = (kind == "int" and type(value) is int and _INT64[0] <= value <= _INT64[1]
              or kind == "float" and type(value) in (int, float) and math.isfinite(value)
              or kind == "str" and isinstance(value, str)
              or kind == "bool" and isinstance(value, bool)
              or kind == "date" and isinstance(value, str) and _date(value) is not None
              or kind == "decimal" and isinstance(value, str) and _decimal(value) is not None)
        if kind not in _LIT_TYPES or not ok:
            raise InvalidMapping(f"scan predicate: invalid literal of type {kind!r}")
        return
    if keys == {"op", "args"} and node["op"] in _OPS and isinstance(node["args"], list):
        for arg in node["args"]:
            _check_shape(arg, depth + 1, count)
        return
    raise InvalidMapping("scan predicate: unknown node; the ldw predicate format has col, lit "
                         f"and op nodes (ops: {', '.join(sorted(_OPS))})")


def _decimal(text: str) -> decimal.Decimal | None:
    try:
        value = decimal.Decimal(text)
    except (decimal.InvalidOperation, ValueError):
        return None
    return value if value.is_finite() and len(text) <= 40 else None


def _date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if len(text) == 10 else None
    except ValueError:
        return None


def _category(field_type: pa.DataType) -> str | None:
    """How a column compares, or None if it is never pushed."""
    if pa.types.is_integer(field_type):
        return "int"
    if pa.types.is_decimal(field_type):
        return "decimal"
    if pa.types.is_float64(field_type):
        return "float"
    if pa.types.is_boolean(field_type):
        return "bool"
    if pa.types.is_date(field_type):
        return "date"
    if (pa.types.is_string(field_type) or pa.types.is_large_string(field_type)
            or pa.types.is_string_view(field_type)):
        return "str"
    return None  # float32 (the source compares in double precision), timestamps, ...


# which literal types compare exactly with which column categories
_EXACT_LITERALS = {"int": {"int", "decimal", "float"}, "float": {"float"},
                   "decimal": {"int", "decimal", "float"},
                   "bool": {"bool"}, "date": {"date"}, "str": {"str"}}
_SQL_TYPES = {"int": sa.BigInteger(), "float": sa.Float(), "str": sa.String(),
              "bool": sa.Boolean(), "date": sa.Date(), "decimal": sa.Numeric()}


class _Builder:
    def __init__(self, columns: Mapping[str, sa.ColumnElement], schema: pa.Schema) -> None:
        self.columns = columns
        self.types = {f.name: _category(f.type) for f in schema}

    def column(self, node: Any) -> tuple[Any, str]:
        if not isinstance(node, dict) or "col" not in node:
            raise _NotPushed
        name = node["col"]
        if name not in self.types:
            raise InvalidMapping(f"scan predicate names column {name!r}, which the dataset "
                                 f"does not have; its columns are: {sorted(self.types)}")
        category = self.types[name]
        if name not in self.columns or category is None:  # e.g. a hashed column
            raise _NotPushed
        return self.columns[name], category

    def operand(self, node: dict) -> tuple[Any, str, bool]:
        """(SQL, category, is_literal)."""
        if "col" in node:
            return (*self.column(node), False)
        kind, value = node["type"], node["lit"]
        if kind == "str" and "\x00" in value:
            raise _NotPushed
        if kind == "date":
            value = _date(value)
        if kind == "decimal":
            value = _decimal(value)
            exponent = value.as_tuple().exponent
            scale = -exponent if isinstance(exponent, int) and exponent < 0 else 0
            digits = max(len(value.as_tuple().digits), scale + 1)
            return sa.literal(value, sa.Numeric(digits, scale)), kind, True
        return sa.literal(value, _SQL_TYPES[kind]), kind, True

    @staticmethod
    def _compatible(left: tuple, right: tuple) -> bool:
        (_, lcat, llit), (_, rcat, rlit) = left, right
        if llit and rlit:
            return False
        if llit or rlit:
            literal, column = (lcat, rcat) if llit else (rcat, lcat)
            return column in _EXACT_LITERALS[literal]
        numeric = {"int", "decimal", "float"}
        return lcat == rcat or (lcat in numeric and rcat in numeric
                                and {lcat, rcat} != {"decimal", "float"})

    def build(self, node: dict) -> tuple[Any, bool]:
        """(SQL, exact) for a predicate node; _NotPushed if it cannot be pushed."""
        if "col" in node:  # a boolean column used as a predicate
            sql, category = self.column(node)
            if category != "bool":
                raise _NotPushed
            return sql.is_(True), True
        if "lit" in node:
            raise _NotPushed
        op, args = node["op"], node["args"]
        if op in _COMPARE:
            if len(args) != 2:
                raise InvalidMapping(f"scan predicate: {op} takes two arguments")
            left, right = self.operand(args[0]), self.operand(args[1])
            if not self._compatible(left, right):
                raise _NotPushed
            if "str" in (left[1], right[1]) or "bool" in (left[1], right[1]):
                if op not in ("eq", "ne") or "str" in (left[1], right[1]) and op != "eq":
                    raise _NotPushed  # string order and inequality follow the collation
            exact = "str" not in (left[1], right[1])
            return _COMPARE[op](left[0], right[0]), exact
        if op in ("and", "or"):
            if len(args) < 2:
                raise InvalidMapping(f"scan predicate: {op} takes two or more arguments")
            built = [self.build(a) for a in args]
            combine = sa.and_ if op == "and" else sa.or_
            return combine(*[sql for sql, _ in built]), all(exact for _, exact in built)
        if op == "not":
            if len(args) != 1:
                raise InvalidMapping("scan predicate: not takes one argument")
            sql, exact = self.build(args[0])
            if not exact:  # the negation of a superset would drop rows
                raise _NotPushed
            return sa.not_(sql), True
        if op in ("is_null", "is_not_null"):
            if len(args) != 1:
                raise InvalidMapping(f"scan predicate: {op} takes one column")
            sql, _ = self.column(args[0])
            return (sql.is_(None) if op == "is_null" else sql.is_not(None)), True
        if op == "is_in":
            if len(args) < 2 or any("lit" not in a for a in args[1:]):
                raise InvalidMapping("scan predicate: is_in takes a column and literals")
            column = (*self.column(args[0]), False)
            values = [self.operand(a) for a in args[1:]]
            if not all(self._compatible(column, v) for v in values):
                raise _NotPushed
            return column[0].in_([v[0] for v in values]), column[1] != "str"
        if op == "between":
            if len(args) != 3:
                raise InvalidMapping("scan predicate: between takes a column, low and high")
            column = (*self.column(args[0]), False)
            low, high = self.operand(args[1]), self.operand(args[2])
            if column[1] not in ("int", "decimal", "float", "date") or not (
                    self._compatible(column, low) and self._compatible(column, high)):
                raise _NotPushed
            return sa.and_(column[0] >= low[0], column[0] <= high[0]), True
        if op == "like":
            if len(args) != 2 or "lit" not in args[1] or args[1]["type"] != "str":
                raise InvalidMapping("scan predicate: like takes a column and a string pattern")
            column = self.column(args[0])
            if column[1] != "str" or "\x00" in args[1]["lit"]:
                raise _NotPushed
            # a superset where the collation ignores case or trailing spaces
            return column[0].like(sa.literal(args[1]["lit"], sa.String())), False
        raise _NotPushed


def predicate_to_sql(conjuncts: Any, columns: Mapping[str, sa.ColumnElement],
                     schema: pa.Schema) -> tuple[sa.ColumnElement | None, bool]:
    """SQL for the conjuncts that push down, and whether all did, exactly.

    ``conjuncts`` is the JSON list a client sent; ``columns`` the source-side columns a
    predicate may use (masked-by-hash ones are absent); ``schema`` the dataset's. Raises
    InvalidMapping for anything that is not the ldw predicate format.
    """
    if not isinstance(conjuncts, list):
        raise InvalidMapping("scan predicate must be a JSON list of ldw predicate nodes; "
                             "serialized polars expressions are not accepted")
    count = [0]
    for node in conjuncts:
        _check_shape(node, 1, count)
    builder = _Builder(columns, schema)
    parts, complete = [], True
    for node in conjuncts:
        try:
            sql, exact = builder.build(node)
        except _NotPushed:
            complete = False
            continue
        parts.append(sql)
        complete = complete and exact
    return (sa.and_(*parts) if parts else None), complete
