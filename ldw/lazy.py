"""Lazy polars frames over datasets: a polars IO plugin with pushdown into the source SQL.

While a dataset is uncached, polars hands the plugin the columns it needs, a predicate and a row
limit. The columns and the limit go into the source query; the conjuncts of the predicate that
translate into SQL go there too, and the *whole* predicate is applied again to every batch
(polars trusts a plugin to apply it). Once cached, the frame scans the memory-mapped version.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import polars as pl
import sqlalchemy as sa
from polars.io.plugins import register_io_source

__all__ = ["polars_predicate_to_sql", "scan_dataset"]

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "Eq": lambda a, b: a == b, "NotEq": lambda a, b: a != b, "Gt": lambda a, b: a > b,
    "GtEq": lambda a, b: a >= b, "Lt": lambda a, b: a < b, "LtEq": lambda a, b: a <= b,
}


_SCALARS = {"Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32",
            "Float64", "String", "Boolean"}


class _Untranslatable(Exception):
    pass


def _literal(node: dict) -> Any:
    if "Dyn" in node:
        (kind, value), = node["Dyn"].items()
        if kind in {"Int", "Float", "Str"}:
            return value
    if "Scalar" in node and isinstance(node["Scalar"], dict) and len(node["Scalar"]) == 1:
        (kind, value), = node["Scalar"].items()
        if kind in _SCALARS and isinstance(value, int | float | str | bool):
            return value
        if kind == "Date" and isinstance(value, int):
            return dt.date(1970, 1, 1) + dt.timedelta(days=value)
    raise _Untranslatable


def _build(node: Any, columns: Mapping[str, sa.ColumnElement]) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise _Untranslatable
    (kind, body), = node.items()
    if kind == "Column":
        if body not in columns:
            raise _Untranslatable
        return columns[body]
    if kind == "Literal":
        return sa.literal(_literal(body))
    if kind == "BinaryExpr":
        op = body["op"]
        left, right = _build(body["left"], columns), _build(body["right"], columns)
        if op in _OPS:
            return _OPS[op](left, right)
        if op in {"And", "LogicalAnd"}:
            return sa.and_(left, right)
        if op in {"Or", "LogicalOr"}:
            return sa.or_(left, right)
    raise _Untranslatable


def _conjuncts(node: Any) -> Iterator[Any]:
    if isinstance(node, dict) and "BinaryExpr" in node and node["BinaryExpr"]["op"] in {
            "And", "LogicalAnd"}:
        yield from _conjuncts(node["BinaryExpr"]["left"])
        yield from _conjuncts(node["BinaryExpr"]["right"])
    else:
        yield node


def polars_predicate_to_sql(predicate: pl.Expr, columns: Mapping[str, sa.ColumnElement]
                            ) -> tuple[sa.ColumnElement | None, bool]:
    """SQL for the conjuncts of ``predicate`` that translate exactly, and whether all did."""
    try:
        tree = json.loads(predicate.meta.serialize(format="json"))
    except Exception:
        return None, False
    parts, complete = [], True
    for conjunct in _conjuncts(tree):
        try:
            parts.append(_build(conjunct, columns))
        except (_Untranslatable, KeyError, TypeError, ValueError):
            complete = False
    return (sa.and_(*parts) if parts else None), complete


def scan_dataset(name: str, schema: pl.Schema, *, is_cached: Callable[[], bool],
                 scan_cached: Callable[[], pl.LazyFrame],
                 scan_source: Callable[[list[str] | None, pl.Expr | None, int | None],
                                       Iterator[pl.DataFrame]]) -> pl.LazyFrame:
    """A LazyFrame that reads the cache when the dataset is cached, else the source."""

    def source(with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
               batch_size: int | None) -> Iterator[pl.DataFrame]:
        if is_cached():
            frame = scan_cached()
            if with_columns is not None:
                frame = frame.select(with_columns)
            if predicate is not None:
                frame = frame.filter(predicate)
            if n_rows is not None:
                frame = frame.head(n_rows)
            yield frame.collect()
            return
        left = n_rows
        for frame in scan_source(with_columns, predicate, n_rows):
            if predicate is not None:
                frame = frame.filter(predicate)
            if left is not None:
                frame = frame.head(left)
                left -= frame.height
            yield frame
            if left == 0:
                return

    return register_io_source(source, schema=schema, explain_name=f"ldw:{name}")
