"""TPC-H kit shared by tests, benchmarks and demos: the 22 queries, the schema, data and checks.

Queries are the standard texts of the TPC-H specification with its default (validation)
substitution parameters, one file per query in ``ldw/tpch/queries/qNN.sql``; Q15's view is written
as a ``WITH`` clause. Every text runs unchanged on DuckDB and on PostgreSQL (date arithmetic is
written ``date '1994-01-01' + interval '1' year``, which both accept).

Data comes from ``tpchgen-cli`` (dev and bench extras) as pipe-delimited ``.tbl`` files;
:func:`read_tbl` reads one into Arrow the way ldw caches a PostgreSQL table: ``char(n)`` trimmed,
``numeric(15,2)`` as decimal128(15, 2), strings as ``string_view``.

>>> from ldw import tpch
>>> tpch.query(6).splitlines()[0]
'-- TPC-H Q6: forecasting revenue change (DATE = 1994-01-01, DISCOUNT = 0.06, QUANTITY = 24)'
>>> tpch.order_by_columns(tpch.query(3))
[1, 2]
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import sqlglot
from sqlglot import exp

__all__ = ["INDEXES", "NUMBERS", "PRIMARY_KEYS", "TABLES", "arrow_schema", "compare_results",
           "on_sources",
           "order_by_columns", "postgres_columns", "queries", "query", "read_tbl"]

NUMBERS = tuple(range(1, 23))

#: table -> ((column, SQL type), ...) as in the specification (PostgreSQL spelling).
TABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "region": (("r_regionkey", "integer"), ("r_name", "char(25)"), ("r_comment", "varchar(152)")),
    "nation": (("n_nationkey", "integer"), ("n_name", "char(25)"), ("n_regionkey", "integer"),
               ("n_comment", "varchar(152)")),
    "part": (("p_partkey", "integer"), ("p_name", "varchar(55)"), ("p_mfgr", "char(25)"),
             ("p_brand", "char(10)"), ("p_type", "varchar(25)"), ("p_size", "integer"),
             ("p_container", "char(10)"), ("p_retailprice", "numeric(15,2)"),
             ("p_comment", "varchar(23)")),
    "supplier": (("s_suppkey", "integer"), ("s_name", "char(25)"), ("s_address", "varchar(40)"),
                 ("s_nationkey", "integer"), ("s_phone", "char(15)"),
                 ("s_acctbal", "numeric(15,2)"), ("s_comment", "varchar(101)")),
    "partsupp": (("ps_partkey", "integer"), ("ps_suppkey", "integer"),
                 ("ps_availqty", "integer"), ("ps_supplycost", "numeric(15,2)"),
                 ("ps_comment", "varchar(199)")),
    "customer": (("c_custkey", "integer"), ("c_name", "varchar(25)"),
                 ("c_address", "varchar(40)"), ("c_nationkey", "integer"),
                 ("c_phone", "char(15)"), ("c_acctbal", "numeric(15,2)"),
                 ("c_mktsegment", "char(10)"), ("c_comment", "varchar(117)")),
    "orders": (("o_orderkey", "bigint"), ("o_custkey", "integer"), ("o_orderstatus", "char(1)"),
               ("o_totalprice", "numeric(15,2)"), ("o_orderdate", "date"),
               ("o_orderpriority", "char(15)"), ("o_clerk", "char(15)"),
               ("o_shippriority", "integer"), ("o_comment", "varchar(79)")),
    "lineitem": (("l_orderkey", "bigint"), ("l_partkey", "integer"), ("l_suppkey", "integer"),
                 ("l_linenumber", "integer"), ("l_quantity", "numeric(15,2)"),
                 ("l_extendedprice", "numeric(15,2)"), ("l_discount", "numeric(15,2)"),
                 ("l_tax", "numeric(15,2)"), ("l_returnflag", "char(1)"),
                 ("l_linestatus", "char(1)"), ("l_shipdate", "date"), ("l_commitdate", "date"),
                 ("l_receiptdate", "date"), ("l_shipinstruct", "char(25)"),
                 ("l_shipmode", "char(10)"), ("l_comment", "varchar(44)")),
}
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "region": ("r_regionkey",), "nation": ("n_nationkey",), "part": ("p_partkey",),
    "supplier": ("s_suppkey",), "partsupp": ("ps_partkey", "ps_suppkey"),
    "customer": ("c_custkey",), "orders": ("o_orderkey",),
    "lineitem": ("l_orderkey", "l_linenumber"),
}
#: Secondary indexes on the foreign keys; without them PostgreSQL needs minutes for Q17 and Q20
#: (correlated subqueries into lineitem).
INDEXES: dict[str, tuple[tuple[str, ...], ...]] = {
    "lineitem": (("l_partkey", "l_suppkey"), ("l_suppkey",)),
    "orders": (("o_custkey",),),
    "partsupp": (("ps_suppkey",),),
    "customer": (("c_nationkey",),),
    "supplier": (("s_nationkey",),),
    "nation": (("n_regionkey",),),
}


def query(number: int) -> str:
    """The text of TPC-H query ``number`` (1-22)."""
    if number not in NUMBERS:
        raise ValueError(f"TPC-H has queries 1 to 22, not {number!r}")
    path = resources.files(__name__).joinpath("queries", f"q{number:02d}.sql")
    return path.read_text(encoding="utf-8").strip()


def queries() -> dict[int, str]:
    """All 22 query texts by number."""
    return {number: query(number) for number in NUMBERS}


def on_sources(text: str, where: dict[str, str]) -> str:
    """A query with each TPC-H table named as a source table, ``where`` giving its
    ``source.schema`` per table (the alias stays the table's name, so qualified columns resolve).

    >>> on_sources("select count(*) from region", {"region": "pg.tpch"})
    'SELECT COUNT(*) FROM pg.tpch.region AS region'
    """
    from ldw.sql.validate import visible_ctes

    def qualify(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and node.name in TABLES \
                and node.name not in visible_ctes(node):
            catalog, db = where[node.name].split(".")
            return exp.Table(this=exp.to_identifier(node.name), db=exp.to_identifier(db),
                             catalog=exp.to_identifier(catalog),
                             alias=node.args.get("alias") or exp.TableAlias(
                                 this=exp.to_identifier(node.name)))
        return node
    return sqlglot.parse_one(text, read="duckdb").transform(qualify).sql("duckdb")


def _arrow_type(sql_type: str) -> pa.DataType:
    if sql_type == "integer":
        return pa.int32()
    if sql_type == "bigint":
        return pa.int64()
    if sql_type == "date":
        return pa.date32()
    if sql_type.startswith("numeric"):
        return pa.decimal128(15, 2)
    return pa.string_view()  # char(n), varchar(n)


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema ldw gives ``table``: decimals decimal128(15, 2), strings string_view."""
    return pa.schema([pa.field(name, _arrow_type(kind), nullable=False)
                      for name, kind in TABLES[table]])


def postgres_columns(table: str) -> str:
    """Column definitions and primary key of ``table`` for a PostgreSQL CREATE TABLE."""
    columns = [f"{name} {kind} not null" for name, kind in TABLES[table]]
    columns.append(f"primary key ({', '.join(PRIMARY_KEYS[table])})")
    return ", ".join(columns)


def read_tbl(path: str | Path, table: str) -> pa.Table:
    """Read a ``tpchgen-cli`` ``.tbl`` file into Arrow with :func:`arrow_schema` types.

    ``char(n)`` values are right-trimmed, as ldw does for PostgreSQL ``char(n)`` columns.
    """
    schema = arrow_schema(table)
    read_types = {f.name: pa.string() if f.type == pa.string_view() else f.type for f in schema}
    reader = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=[*schema.names, "_end"],
                                       block_size=16 << 20),
        parse_options=pacsv.ParseOptions(delimiter="|", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types=read_types,
                                             include_columns=schema.names,
                                             strings_can_be_null=False),
    )
    columns = []
    for (name, kind), field in zip(TABLES[table], schema, strict=True):
        column = reader.column(name)
        if kind.startswith("char("):
            column = pc.utf8_rtrim(column, characters=" ")
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def order_by_columns(text: str) -> list[int] | None:
    """Positions of the output columns in ``text``'s outermost ORDER BY; None without one."""
    tree = sqlglot.parse_one(text, read="postgres")
    order = tree.args.get("order")
    if order is None:
        return None
    names = [name.lower() for name in tree.named_selects]
    positions = []
    for ordered in order.expressions:
        key = ordered.this
        if isinstance(key, exp.Literal) and not key.is_string:
            positions.append(int(key.this) - 1)
        elif isinstance(key, exp.Column) and key.name.lower() in names:
            positions.append(names.index(key.name.lower()))
        else:
            raise ValueError(f"ORDER BY {key.sql()} is not an output column")
    return positions


def _normalize(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float | decimal.Decimal):
        return float(value)
    if isinstance(value, str):
        return value.rstrip(" ")  # PostgreSQL returns char(n) padded
    return value


def _sort_key(row: Sequence[Any]) -> tuple:
    key = []
    for value in row:
        if value is None:
            key.append((0, 0))
        elif isinstance(value, float):
            key.append((1, float(f"{value:.8g}")))
        elif isinstance(value, dt.date | dt.datetime):
            key.append((2, value.isoformat()))
        else:
            key.append((3, str(value)))
    return tuple(key)


def _close(a: Any, b: Any, rel_tol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
    return a == b


def _rows_close(a: Sequence[Any], b: Sequence[Any], rel_tol: float) -> bool:
    return len(a) == len(b) and all(_close(x, y, rel_tol) for x, y in zip(a, b, strict=True))


def compare_results(expected: Iterable[Sequence[Any]], actual: Iterable[Sequence[Any]], *,
                    order_by: Sequence[int] | None = None, rel_tol: float = 1e-9) -> str | None:
    """None if two results hold the same rows, else a description of the first difference.

    Numbers compare as floats within ``rel_tol`` (PostgreSQL returns NUMERIC where DuckDB returns
    DOUBLE or HUGEINT), strings ignore trailing blanks (``char(n)`` padding). Rows may come in any
    order, except that the ``order_by`` columns must follow the same sequence in both (rows that
    tie on them may be swapped, as SQL allows).
    """
    want = [tuple(_normalize(v) for v in row) for row in expected]
    got = [tuple(_normalize(v) for v in row) for row in actual]
    if len(want) != len(got):
        return f"expected {len(want)} rows, got {len(got)}"
    if order_by is not None:
        for index, (a, b) in enumerate(zip(want, got, strict=True)):
            keys_a, keys_b = [a[i] for i in order_by], [b[i] for i in order_by]
            if not _rows_close(keys_a, keys_b, rel_tol):
                return f"row {index}: ORDER BY keys expected {keys_a}, got {keys_b}"
    for a, b in zip(sorted(want, key=_sort_key), sorted(got, key=_sort_key), strict=True):
        if not _rows_close(a, b, rel_tol):
            return f"expected row {a}, got {b}"
    return None
