"""Dynamic filters: a relation's join keys, sent to the source of its join partner.

When a query joins a big relation to a small one on an integer key (an inner equi-join, or a
correlated subquery's equality), the big one's rows whose key the small one does not have can
never reach the result. Once the small relation has been read, its distinct keys go into the big
relation's source query as ``key IN (...)`` (PostgreSQL: ``key = ANY('{...}'::bigint[])``), so
the source ships only rows that can join. Only integers are sent this way: their equality is the
same in every dialect, and Python formats them itself, so nothing but digits reaches the SQL.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement

__all__ = ["MAX_KEYS", "IntegerSet", "integer_keys", "integer_type", "key_set"]

MAX_KEYS = 100_000  # more keys than this: the filter costs more than it saves


# the column's integer type: its name in SQL and its range (keys outside cannot match, and an
# array of another type would make PostgreSQL compare across types, without its hashed lookup)
_INTEGERS = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}


def integer_type(column: sa.ColumnElement) -> str | None:
    """"smallint" | "integer" | "bigint" for a column of exactly that type, else None."""
    kind = column.type
    if isinstance(kind, sa.SmallInteger):
        return "smallint"
    if isinstance(kind, sa.BigInteger):
        return "bigint"
    if isinstance(kind, sa.Integer) and type(kind).__name__.upper() in {"INTEGER", "INT"}:
        return "integer"
    return None


class IntegerSet(ColumnElement):
    """``column IN (k1, k2, ...)`` for Python integers, written out cheaply."""

    inherit_cache = False
    type = sa.Boolean()

    def __init__(self, column: sa.ColumnElement, keys: list[int], sql_type: str) -> None:
        if not all(type(k) is int for k in keys) or sql_type not in _INTEGERS:
            raise TypeError("IntegerSet takes Python ints and an integer type")
        bound = _INTEGERS[sql_type]
        self.column = column
        self.keys = [k for k in keys if -bound <= k < bound]
        self.sql_type = sql_type


@compiles(IntegerSet)
def _in_list(element: IntegerSet, compiler: sa.sql.compiler.SQLCompiler, **kw: object) -> str:
    if not element.keys:
        return "1 = 0"
    column = compiler.process(element.column, **kw)
    return f"{column} IN ({', '.join(map(str, element.keys))})"


@compiles(IntegerSet, "postgresql")
def _any_array(element: IntegerSet, compiler: sa.sql.compiler.SQLCompiler, **kw: object) -> str:
    if not element.keys:
        return "1 = 0"
    column = compiler.process(element.column, **kw)
    keys = ",".join(map(str, element.keys))
    return f"{column} = ANY('{{{keys}}}'::{element.sql_type}[])"


def integer_keys(column: pa.ChunkedArray | pa.Array) -> list[int] | None:
    """The distinct non-null values of an integer column (None: not integers, or too many)."""
    if not pa.types.is_integer(column.type):
        return None
    distinct = pc.unique(pc.drop_null(column))
    if len(distinct) > MAX_KEYS:
        return None
    return distinct.to_pylist()


def key_set(column: str, keys: list[int]) -> tuple[str, dict[str, Any]]:
    """``column IN keys`` as a condition text and an opaque predicate node that names the keys by
    their digest: two reads narrowed to the same keys have the same condition (automatic caching
    matches it verbatim, :mod:`ldw.logical.implies`); the keys themselves stay out of texts."""
    digest = hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:24]
    return (f"{column} IN key set {digest} ({len(keys):,} keys)",
            {"op": "key_set", "col": column, "digest": digest, "count": len(keys)})
