"""Whether every row one read keeps is kept by another: implication over ldw's predicate format
(:mod:`ldw.pushdown`), to answer a read from an automatically cached slice.

A read's rows are a disjunction of occurrences, each a conjunction of predicate nodes (what a
query pushes for one relation, see :mod:`ldw.engine.federation`); ``None`` is every row.
:func:`implies` may say False when the answer is yes (then the source is read, as without a
slice), never True when it is no.

Per occurrence of the read, the conjuncts on each column make a domain: bounds, a finite set of
values (``=``, ``IN``), excluded values (``<>``), ``IS NULL`` / ``IS NOT NULL``. A conjunct of
the slice is implied if the read has it verbatim or it holds on its column's domain:
``amount > 20`` implies ``amount > 10``, ``region IN ('EMEA')`` implies
``region IN ('EMEA', 'APAC')``, ``d = DATE '2024-01-05'`` implies ``d >= DATE '2024-01-01'``.
A comparison keeps no NULL: any comparison implies ``IS NOT NULL``, and ``x IS NULL`` implies no
comparison. Numbers compare exactly (as decimals), dates as dates; strings and booleans only for
equality (string order depends on the source's collation). A conjunct the read has that is not
understood is ignored (the read is taken as wider: fewer implications, never a wrong one).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Rows", "implies"]

Rows = tuple[tuple[dict[str, Any], ...], ...] | None  # OR of ANDs of predicate nodes; None: all

Value = tuple[str, Any]  # ("num" | "date" | "str" | "bool", normalized value)
Bound = tuple[Value, bool]  # (value, strict)

_ORDERED = frozenset({"num", "date"})
_CHECK: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le,
    "eq": operator.eq, "ne": operator.ne}


def implies(read: Rows, kept: Rows) -> bool:
    """Whether every row ``read`` keeps is kept by ``kept``."""
    if kept is None:
        return True
    if read is None or not read:
        return False
    flat = [_flat(k) for k in kept]
    return all(any(_conjunction_implies(_flat(r), k) for k in flat) for r in read)


def _flat(conjunction: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conjuncts, with nested ``and`` nodes spread out (``BETWEEN`` arrives as one)."""
    out: list[dict[str, Any]] = []
    for node in conjunction:
        if node.get("op") == "and" and isinstance(node.get("args"), list):
            out.extend(_flat(node["args"]))
        else:
            out.append(node)
    return out


def _conjunction_implies(read: Sequence[dict[str, Any]], kept: Sequence[dict[str, Any]]) -> bool:
    verbatim = {_key(node) for node in read}
    domains = _domains(read)
    return all(_key(node) in verbatim or _holds(node, domains) for node in kept)


def _key(node: dict[str, Any]) -> str:
    return json.dumps(node, sort_keys=True, default=str)


def _value(node: Any) -> Value | None:
    """A literal node as a comparable value, or None."""
    if not isinstance(node, dict) or "lit" not in node:
        return None
    kind, value = node.get("type"), node["lit"]
    try:
        if kind in ("int", "decimal", "float") and not isinstance(value, bool):
            number = decimal.Decimal(str(value))
            return ("num", number) if number.is_finite() else None
        if kind == "date" and isinstance(value, str):
            return "date", dt.date.fromisoformat(value)
        if kind == "str" and isinstance(value, str):
            return "str", value
        if kind == "bool" and isinstance(value, bool):
            return "bool", value
    except (ValueError, decimal.InvalidOperation):
        return None
    return None


def _atom(node: dict[str, Any]) -> tuple[str, str, list[Value]] | None:
    """(column, op, literal values) of a node on one column and literals, or None."""
    op, args = node.get("op"), node.get("args")
    if not isinstance(args, list) or not args or not isinstance(args[0], dict) \
            or not isinstance(args[0].get("col"), str):
        return None
    column = args[0]["col"].lower()
    values = [_value(a) for a in args[1:]]
    if any(v is None for v in values):
        return None
    shapes = {"is_null": 0, "is_not_null": 0, "between": 2, **{o: 1 for o in _CHECK}}
    if op in shapes and len(values) != shapes[op] or op == "is_in" and not values \
            or op not in shapes and op != "is_in":
        return None
    return column, op, values  # type: ignore[return-value]


@dataclass
class _Domain:
    """What one column's values can be in the rows a conjunction keeps."""

    low: Bound | None = None
    high: Bound | None = None
    values: set[Value] | None = None  # one of these (None: not a finite set)
    excluded: set[Value] = field(default_factory=set)
    not_null: bool = False
    null: bool = False

    def add(self, op: str, values: list[Value]) -> None:
        if op == "is_null":
            self.null = True
            return
        self.not_null = True  # every other condition keeps no NULL
        if op in ("eq", "is_in"):
            found = set(values)
            self.values = found if self.values is None else self.values & found
        elif op == "ne":
            self.excluded.add(values[0])
        elif op in ("gt", "ge"):
            self.low = _tighter(self.low, (values[0], op == "gt"), low=True)
        elif op in ("lt", "le"):
            self.high = _tighter(self.high, (values[0], op == "lt"), low=False)
        elif op == "between":
            self.add("ge", values[:1])
            self.add("le", values[1:])


def _tighter(old: Bound | None, new: Bound, *, low: bool) -> Bound | None:
    (value, strict), kind = new, new[0][0]
    if kind not in _ORDERED:
        return old
    if old is None:
        return new
    if old[0][0] != kind:
        return old  # not comparable: keep one (the domain is only ever wider than the truth)
    if old[0][1] == value[1]:
        return (value, old[1] or strict)
    further = value[1] > old[0][1] if low else value[1] < old[0][1]
    return new if further else old


def _domains(read: Sequence[dict[str, Any]]) -> dict[str, _Domain]:
    domains: dict[str, _Domain] = {}
    for node in read:
        atom = _atom(node)
        if atom is not None:
            column, op, values = atom
            domains.setdefault(column, _Domain()).add(op, values)
    return domains


def _compare(a: Value, op: str, b: Value) -> bool:
    """``a op b`` for comparable values; False when they are not comparable."""
    if a[0] != b[0] or op not in ("eq", "ne") and a[0] not in _ORDERED:
        return False
    return _CHECK[op](a[1], b[1])


def _bound_holds(bound: Bound | None, op: str, value: Value) -> bool:
    """Whether every x past ``bound`` (a low bound for gt/ge, a high one for lt/le) satisfies
    ``x op value``."""
    if bound is None or bound[0][0] != value[0] or value[0] not in _ORDERED:
        return False
    (edge, strict) = bound
    if op in ("gt", "lt") and not strict:
        return _compare(edge, op, value)
    return _compare(edge, {"gt": "ge", "lt": "le"}.get(op, op), value)


def _holds(node: dict[str, Any], domains: dict[str, _Domain]) -> bool:
    """Whether a conjunct of the slice holds on every row of the read's domains."""
    atom = _atom(node)
    if atom is None:
        return False
    column, op, values = atom
    domain = domains.get(column)
    if domain is None:
        return False
    if op == "is_null":
        return domain.null and not domain.not_null
    if not domain.not_null:
        return False  # the read may keep NULLs, which no comparison keeps
    if op == "is_not_null":
        return True
    if op == "between":
        return _holds_one(domain, "ge", values[0]) and _holds_one(domain, "le", values[1])
    if op == "is_in":
        return domain.values is not None and domain.values <= set(values)
    return _holds_one(domain, op, values[0])


def _holds_one(domain: _Domain, op: str, value: Value) -> bool:
    if domain.values is not None:
        return all(_compare(v, op, value) for v in domain.values)
    if op == "ne":
        return value in domain.excluded or _bound_holds(domain.low, "gt", value) \
            or _bound_holds(domain.high, "lt", value)
    if op == "eq":
        return domain.low is not None and domain.high is not None \
            and not domain.low[1] and not domain.high[1] \
            and _compare(domain.low[0], "eq", value) and _compare(domain.high[0], "eq", value)
    return _bound_holds(domain.low if op in ("gt", "ge") else domain.high, op, value)
