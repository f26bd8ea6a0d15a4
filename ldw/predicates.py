"""User predicates and SQL: parsed with sqlglot, validated, rebuilt as SQLAlchemy Core.

A ``where`` is one boolean expression over known columns, made of comparisons, boolean logic,
IN lists, BETWEEN, LIKE, IS NULL, arithmetic, typed literals and an allow-list of functions.
It is translated node by node into SQLAlchemy, so values become bound parameters and column names
come from the reflected schema; nothing the user typed is pasted into SQL.

A mapping's ``sql`` is one read-only query made only of allow-listed syntax, functions and cast
targets (:mod:`ldw.governance.allowlist`); :mod:`ldw.governance.resolve` then resolves the
relations it reads.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from ldw.errors import InvalidMapping
from ldw.governance.allowlist import check_query_nodes
from ldw.parse_errors import describe_parse_error, node_name, span

__all__ = ["ALLOWED_FUNCTIONS", "parse_query", "parse_where", "validate_select_sql",
           "sqlglot_dialect"]

def sqlglot_dialect(dialect: str | None) -> str | None:
    """The sqlglot dialect for ``dialect``: a SQLAlchemy dialect name (asked from the connector
    that owns it) or a sqlglot dialect name (e.g. a connector's ``sqlglot_dialect``)."""
    from ldw.connectors import sqlglot_name  # the connectors own their dialect facts

    return sqlglot_name(dialect)


_COMPARISONS: dict[type, Callable] = {
    exp.EQ: lambda a, b: a == b,
    exp.NEQ: lambda a, b: a != b,
    exp.GT: lambda a, b: a > b,
    exp.GTE: lambda a, b: a >= b,
    exp.LT: lambda a, b: a < b,
    exp.LTE: lambda a, b: a <= b,
    exp.Add: lambda a, b: a + b,
    exp.Sub: lambda a, b: a - b,
    exp.Mul: lambda a, b: a * b,
    exp.Div: lambda a, b: a / b,
    exp.Mod: lambda a, b: a % b,
    exp.Like: lambda a, b: a.like(b),
    exp.ILike: lambda a, b: a.ilike(b),
}
_BOOLEAN_NODES = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.And, exp.Or, exp.Not,
                  exp.In, exp.Between, exp.Like, exp.ILike, exp.Is, exp.Boolean)

ALLOWED_FUNCTIONS: dict[type, Callable] = {
    exp.Lower: lambda args: sa.func.lower(*args),
    exp.Upper: lambda args: sa.func.upper(*args),
    exp.Abs: lambda args: sa.func.abs(*args),
    exp.Length: lambda args: sa.func.length(*args),
    exp.Round: lambda args: sa.func.round(*args),
    exp.Coalesce: lambda args: sa.func.coalesce(*args),
}
_EXTRACT_FIELDS = {"YEAR", "MONTH", "DAY", "HOUR", "MINUTE", "SECOND", "QUARTER", "DOW", "DOY"}

_CASTS: dict[str, Callable[[exp.DataType], sa.types.TypeEngine]] = {
    "DATE": lambda t: sa.Date(),
    "TIMESTAMP": lambda t: sa.DateTime(),
    "TIMESTAMPTZ": lambda t: sa.DateTime(timezone=True),
    "TIME": lambda t: sa.Time(),
    "INT": lambda t: sa.Integer(),
    "SMALLINT": lambda t: sa.SmallInteger(),
    "BIGINT": lambda t: sa.BigInteger(),
    "DOUBLE": lambda t: sa.Float(),
    "FLOAT": lambda t: sa.Float(),
    "BOOLEAN": lambda t: sa.Boolean(),
    "TEXT": lambda t: sa.Text(),
    "VARCHAR": lambda t: sa.String(),
    "DECIMAL": lambda t: sa.Numeric(*[int(p.this.this) for p in t.expressions]),
}


def _invalid(text: str, what: str, node: exp.Expression | None = None) -> InvalidMapping:
    """A where that parsed but asks for something not allowed; ``node`` says where."""
    where = span(node) if node is not None else None
    at = f" (at character {where[0] + 1})" if where is not None else ""
    return InvalidMapping(f"invalid where {text!r}{at}: {what}")


def _parse_one(text: str, dialect: str | None, kind: str) -> exp.Expression:
    try:
        statements = [s for s in sqlglot.parse(text, read=dialect) if s is not None]
    except (ParseError, TokenError) as exc:
        raise InvalidMapping(f"cannot parse {kind} {text!r}: "
                             f"{describe_parse_error(text, exc)}") from None
    if len(statements) != 1:
        raise InvalidMapping(
            f"{kind} {text!r} must be a single {'expression' if kind == 'where' else 'query'}, "
            f"found {len(statements)} statements (no ';')"
        )
    return statements[0]


class _Text(sa.types.TypeDecorator):
    """A string literal the source types by what it is compared with, as the same literal
    written in SQL: bound without a cast (SQLAlchemy's psycopg dialect would send a string as
    ``%(p)s::VARCHAR``, and ``date > varchar`` has no operator in PostgreSQL), and rendered as
    a quoted string where SQL is sent with literal values."""

    impl = sa.types.NullType
    cache_ok = True

    def process_literal_param(self, value: Any, dialect: Any) -> str:
        return sa.String().literal_processor(dialect)(value)


_PARAM_TYPES = (str, int, float, bool, decimal.Decimal, dt.date, dt.datetime, dt.time)


class _Translator:
    def __init__(self, text: str, columns: Mapping[str, sa.ColumnElement],
                 params: Mapping[str, Any] | None = None,
                 refused: Mapping[str, str] | None = None) -> None:
        self.text = text
        self.params = dict(params or {})
        self.refused = dict(refused or {})
        self.columns = {key: columns[key] for key in columns.keys()}
        self.folded = {}
        for name in self.columns:
            self.folded.setdefault(name.lower(), []).append(name)

    def column(self, node: exp.Column) -> sa.ColumnElement:
        if node.table and node.table not in {""}:
            # A qualifier would let a predicate reach other tables: columns are named bare.
            raise _invalid(self.text, f"write column {node.name!r} without a table qualifier",
                           node)
        name = node.name
        if name in self.columns:
            return self.columns[name]
        matches = self.folded.get(name.lower(), [])
        if len(matches) == 1 and not node.this.quoted:
            return self.columns[matches[0]]
        refused = [n for n in self.refused if n == name or (
            not node.this.quoted and n.lower() == name.lower())]
        if refused:
            raise _invalid(self.text, f"column {refused[0]!r} {self.refused[refused[0]]}", node)
        known = ", ".join(sorted(self.columns))
        raise _invalid(self.text, f"unknown column {name!r}; columns are: {known}", node)

    def literal(self, node: exp.Literal) -> sa.ColumnElement:
        if node.is_string:
            return sa.literal(node.this, _Text())
        try:
            value = int(node.this)
        except ValueError:
            value = decimal.Decimal(node.this)
        return sa.literal(value)

    def cast(self, node: exp.Cast) -> sa.ColumnElement:
        target = node.to.this.name if hasattr(node.to.this, "name") else str(node.to.this)
        if target not in _CASTS:
            raise _invalid(self.text, f"cast to {node.to.sql()} is not allowed; "
                           f"allowed: {', '.join(sorted(_CASTS))}", node)
        inner = node.this
        if isinstance(inner, exp.Literal) and inner.is_string and target in {"DATE", "TIMESTAMP"}:
            try:
                value = (dt.date.fromisoformat(inner.this) if target == "DATE"
                         else dt.datetime.fromisoformat(inner.this))
            except ValueError:
                raise _invalid(self.text, f"{inner.this!r} is not a valid {target}") from None
            return sa.literal(value, _CASTS[target](node.to))
        return sa.cast(self.build(inner), _CASTS[target](node.to))

    def placeholder(self, node: exp.Placeholder) -> sa.ColumnElement:
        name = node.name
        if not name:
            raise _invalid(self.text, "parameters are named: write :name and pass params=")
        if name not in self.params:
            raise _invalid(self.text, f"parameter :{name} has no value; pass "
                           f"params={{{name!r}: ...}}")
        value = self.params[name]
        if value is not None and not isinstance(value, _PARAM_TYPES):
            raise _invalid(self.text, f"parameter :{name} is a {type(value).__name__}; "
                           "use a string, number, bool, date, datetime or None")
        if isinstance(value, str):
            return sa.literal(value, _Text())
        return sa.literal(value) if value is not None else sa.null()

    def build(self, node: exp.Expression) -> sa.ColumnElement:
        if node.args.get("negate"):  # sqlglot writes x NOT LIKE y as Like(..., negate=True)
            positive = node.copy()
            positive.set("negate", None)
            return sa.not_(self.build(positive))
        if isinstance(node, exp.Placeholder):
            return self.placeholder(node)
        if isinstance(node, exp.Paren):
            return sa.Grouping(self.build(node.this))
        if isinstance(node, exp.Column):
            return self.column(node)
        if isinstance(node, exp.Literal):
            return self.literal(node)
        if isinstance(node, exp.Boolean):
            return sa.true() if node.this else sa.false()
        if isinstance(node, exp.Null):
            return sa.null()
        if isinstance(node, exp.Cast):
            return self.cast(node)
        if isinstance(node, exp.And):
            return sa.and_(self.build(node.this), self.build(node.expression))
        if isinstance(node, exp.Or):
            return sa.or_(self.build(node.this), self.build(node.expression))
        if isinstance(node, exp.Not):
            return sa.not_(self.build(node.this))
        if isinstance(node, exp.Neg):
            return -self.build(node.this)
        if isinstance(node, exp.Is):
            target = node.expression
            if not isinstance(target, exp.Null | exp.Boolean):
                raise _invalid(self.text, "IS takes NULL, TRUE or FALSE")
            return self.build(node.this).is_(self.build(target))
        if type(node) in _COMPARISONS:
            return _COMPARISONS[type(node)](self.build(node.this), self.build(node.expression))
        if isinstance(node, exp.In):
            if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
                raise _invalid(self.text, "IN takes a list of values, not a subquery")
            return self.build(node.this).in_([self.build(e) for e in node.expressions])
        if isinstance(node, exp.Between):
            return self.build(node.this).between(self.build(node.args["low"]),
                                                 self.build(node.args["high"]))
        if isinstance(node, exp.Extract):
            field = node.this.name.upper()
            if field not in _EXTRACT_FIELDS:
                raise _invalid(self.text, f"EXTRACT({field}) is not allowed", node)
            return sa.extract(field.lower(), self.build(node.expression))
        if type(node) in ALLOWED_FUNCTIONS:
            args = [self.build(a) for a in [node.this, *node.expressions] if a is not None]
            return ALLOWED_FUNCTIONS[type(node)](args)
        if isinstance(node, exp.Subquery | exp.Select | exp.Exists | exp.Query):
            raise _invalid(self.text, "subqueries are not allowed in a where", node)
        if isinstance(node, exp.Func):
            allowed = ", ".join(sorted(f.__name__.upper() for f in ALLOWED_FUNCTIONS))
            raise _invalid(self.text, f"function {node.sql()!r} is not allowed; "
                           f"allowed: {allowed}, EXTRACT, CAST", node)
        raise _invalid(self.text, f"{node_name(node)} ({node.sql()!r}) is not allowed in a where; "
                       "use comparisons (=, <>, <, <=, >, >=), AND, OR, NOT, IN, BETWEEN, LIKE, "
                       "IS [NOT] NULL, + - * /, CAST, EXTRACT and the allowed functions", node)


def parse_where(text: str, columns: Mapping[str, sa.ColumnElement], *,
                dialect: str | None = None, params: Mapping[str, Any] | None = None,
                refused: Mapping[str, str] | None = None) -> sa.ColumnElement:
    """Validate ``text`` as one boolean expression over ``columns``; return it as SQLAlchemy.

    ``:name`` placeholders take their values from ``params`` as bound values, never as text.
    ``refused``: columns that exist but may not be filtered on, each with the reason.

    >>> import sqlalchemy as sa
    >>> t = sa.table("t", sa.column("a"))
    >>> str(parse_where("a > 5", t.c, dialect="postgresql"))
    't.a > :param_1'
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidMapping("where must be a non-empty string such as \"price > 10\"")
    tree = _parse_one(text, sqlglot_dialect(dialect), "where")
    if not isinstance(tree, exp.Condition) or isinstance(tree, exp.Query):
        raise _invalid(text, "expected a boolean expression, e.g. \"o_totalprice > 1000\"")
    node = tree
    while isinstance(node, exp.Paren):
        node = node.this
    translated = _Translator(text, columns, params, refused).build(tree)
    if not isinstance(node, _BOOLEAN_NODES) and not (
        isinstance(node, exp.Column) and isinstance(translated.type, sa.Boolean)
    ):
        raise _invalid(text, "it is not a condition (compare it: \"x > 0\", \"x IS NOT NULL\")")
    return translated


def parse_query(sql: str, dialect: str | None) -> exp.Query:
    """``sql`` parsed in the sqlglot ``dialect`` as one query of allowed syntax, functions and
    cast targets (see :mod:`ldw.governance.allowlist`); InvalidMapping otherwise."""
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidMapping("sql must be a non-empty SELECT statement")
    tree = _parse_one(sql, dialect, "sql")
    if not isinstance(tree, exp.Query):
        raise InvalidMapping(f"sql must be a SELECT query, not {tree.key.upper()}")
    check_query_nodes(tree, dialect)
    return tree


def validate_select_sql(sql: str, *, dialect: str | None = None) -> str:
    """Check ``sql`` is one read-only query of allowed syntax and functions and return it
    regenerated for ``dialect``."""
    glot = sqlglot_dialect(dialect)
    return parse_query(sql, glot).sql(dialect=glot)
