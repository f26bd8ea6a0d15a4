"""Validation of SQL over datasets: one read-only query, allow-listed table functions, no
file, network or settings access, no qualified names (the first layer of defence, see
:mod:`ldw.sql`)."""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from ldw.errors import (
    InvalidMapping,
)
from ldw.parse_errors import describe_parse_error, span

__all__ = ["ALLOWED_TABLE_FUNCTIONS", "DIALECT", "referenced_datasets", "source_references",
           "validate"]

DIALECT = "duckdb"

#: Functions allowed in a FROM/JOIN/LATERAL position (they generate rows, never read anything).
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
_TABLE_FUNCTION_NODES: dict[type, str] = {exp.GenerateSeries: "generate_series",
                                          exp.Unnest: "unnest", exp.Explode: "unnest"}

# Statements and clauses that are not part of a read-only query.
_FORBIDDEN_NODES: tuple[type, ...] = (
    exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Create, exp.Drop, exp.Alter,
    exp.TruncateTable, exp.Copy, exp.Command, exp.Into, exp.Set, exp.Pragma, exp.Use, exp.Attach,
    exp.Detach, exp.Install, exp.Describe, exp.Show, exp.Summarize, exp.Transaction, exp.Commit,
    exp.Rollback, exp.Grant, exp.LoadData, exp.Analyze, exp.Export, exp.Refresh, exp.Cache,
    exp.Uncache, exp.Kill, exp.Declare,
)

# Scalar functions that touch files, the network, settings or run SQL, by name or name prefix.
_DENIED_FUNCTIONS = frozenset({
    "glob", "getenv", "current_setting", "getvariable", "checkpoint", "force_checkpoint",
    "which_secret", "nextval", "currval", "query", "query_table", "sniff_csv", "parquet_scan",
    "json_execute_serialized_sql", "sql_auto_complete", "load_aws_credentials", "arrow_scan",
    "arrow_scan_dumb", "python_map_function", "summary",
})
_DENIED_PREFIXES = ("read_", "parquet_", "duckdb_", "pragma_", "sqlite_", "postgres_", "mysql_",
                    "iceberg_", "delta_", "http", "s3_", "ducklake_", "write_", "load_",
                    "install_", "glob", "json_execute")


def _reject(node: exp.Expression, query: str, what: str) -> InvalidMapping:
    where = span(node)
    if where is None:
        return InvalidMapping(f"sql: {what}")
    start, end = where
    line = query.count("\n", 0, start) + 1
    column = start - (query.rfind("\n", 0, start) + 1) + 1
    text = " ".join(query[start:end + 1].split())
    text = text if len(text) <= 60 else text[:57] + "..."
    return InvalidMapping(f"sql: {what} (near line {line}, column {column}: {text!r})")


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    return node.sql_name().lower()


def _denied(name: str) -> bool:
    return name in _DENIED_FUNCTIONS or name.startswith(_DENIED_PREFIXES)


def _parse(query: str) -> exp.Expression:
    if not isinstance(query, str) or not query.strip():
        raise InvalidMapping("sql must be a non-empty query, e.g. \"SELECT * FROM orders\"")
    try:
        statements = [s for s in sqlglot.parse(query, read=DIALECT) if s is not None]
    except (ParseError, TokenError) as exc:
        raise InvalidMapping(f"sql: cannot parse the query: {describe_parse_error(query, exc)}"
                             ) from exc
    if len(statements) != 1:
        raise InvalidMapping(
            f"sql must be a single query; found {len(statements)} statements "
            "(remove the ';' between them and run them one at a time)")
    tree = statements[0]
    if not isinstance(tree, exp.Query | exp.Pivot) or isinstance(tree, exp.Values):
        words = (str(tree.this) if isinstance(tree, exp.Command) else tree.sql(DIALECT)).split()
        kind = words[0].upper() if words else tree.key.upper()
        raise InvalidMapping(
            f"sql must be a read-only query (SELECT, WITH ... SELECT, UNION, ...), not {kind}")
    return tree


def _visible_ctes(table: exp.Table) -> set[str]:
    """Names of the common table expressions in scope where ``table`` is referenced."""
    names: set[str] = set()
    child: exp.Expression = table
    node = table.parent
    while node is not None:
        if isinstance(node, exp.With):
            ctes = list(node.expressions)
            # Inside a CTE's body the earlier CTEs are visible; all of them under WITH RECURSIVE.
            upto = next((i for i, cte in enumerate(ctes) if cte is child), 0)
            if node.args.get("recursive"):
                upto = len(ctes)
            names.update(cte.alias_or_name.lower() for cte in ctes[:upto])
        else:
            with_ = node.args.get("with_") or node.args.get("with")
            if isinstance(with_, exp.With) and with_ is not child:
                names.update(cte.alias_or_name.lower() for cte in with_.expressions)
        child, node = node, node.parent
    return names


_TABLE_POSITIONS = (exp.Lateral, exp.Join, exp.From)
_ALLOWED_LIST = ", ".join(f"{name}()" for name in sorted(ALLOWED_TABLE_FUNCTIONS))


def _table_function(node: exp.Func, query: str) -> None:
    name = _function_name(node)
    if _TABLE_FUNCTION_NODES.get(type(node), name) not in ALLOWED_TABLE_FUNCTIONS:
        raise _reject(node, query, f"table function {name}() is not allowed; read datasets by "
                      f"name (FROM orders); allowed table functions: {_ALLOWED_LIST}")


def _check_table(table: exp.Table, query: str, sources: bool = False
                 ) -> str | tuple[str, ...] | None:
    """The dataset a table reference reads; None for a CTE or an allowed table function.
    With ``sources``, a 2- or 3-part name (a source table) comes back as its parts."""
    target = table.this
    qualified = table.args.get("db") or table.args.get("catalog")
    if isinstance(target, exp.Func):
        _table_function(target, query)
        if qualified:
            raise _reject(table, query, "qualified table functions are not allowed")
        return None
    if not isinstance(target, exp.Identifier):
        raise _reject(table, query, "qualified names are not allowed; refer to a dataset by its "
                      "bare name (FROM orders)")
    if qualified and sources:
        return tuple(p.name for p in table.parts)
    if qualified:
        raise _reject(table, query, f"qualified name {table.sql(dialect=DIALECT)} is not "
                      f"allowed; refer to the dataset by its bare name ({target.name})")
    start = target.meta.get("start")
    if isinstance(start, int) and 0 <= start < len(query) and query[start] in "'$":
        raise _reject(table, query, "a string literal cannot be used as a table (files are not "
                      "readable); refer to a dataset by name (FROM orders)")
    if target.name.lower() in _visible_ctes(table):
        return None
    return target.name


def _validate(query: str) -> list[str]:
    return [name for name in _references(query, _parse(query), sources=False)
            if isinstance(name, str)]


def source_references(query: str) -> tuple[exp.Expression, list[str | tuple[str, ...]]]:
    """The parsed query and what it reads, after validating it as :func:`referenced_datasets`
    does, except that a 2- or 3-part name (``source.schema.table``) is allowed and comes back
    as a tuple of its parts; datasets come back as names."""
    tree = _parse(query)
    return tree, _references(query, tree, sources=True)


def _references(query: str, tree: exp.Expression, *, sources: bool
                ) -> list[str | tuple[str, ...]]:
    names: dict[str | tuple[str, ...], int] = {}
    for node in tree.walk(bfs=False):
        if isinstance(node, _FORBIDDEN_NODES):
            raise _reject(node, query, f"{node.key.upper()} is not allowed in a read-only query")
        if isinstance(node, exp.Select) and node.args.get("locks"):
            raise _reject(node, query, "FOR UPDATE/SHARE is not allowed in a read-only query")
        if isinstance(node, exp.Table):
            name = _check_table(node, query, sources)
            if name is not None and name not in names:
                at = span(node)
                names[name] = at[0] if at else len(query)
        elif isinstance(node, exp.Func):
            name = _function_name(node)
            if _denied(name):
                raise _reject(node, query, f"function {name}() is not allowed: it reads files, "
                              "the network or settings, or runs SQL")
            if node.arg_key == "this" and isinstance(node.parent, _TABLE_POSITIONS):
                _table_function(node, query)
    return sorted(names, key=names.__getitem__)  # in order of first mention


def referenced_datasets(query: str) -> list[str]:
    """The datasets ``query`` reads, in order of first mention, after validating it.

    ``query`` must be one read-only DuckDB-dialect query; names of its common table expressions
    are not datasets. Raises :class:`ldw.InvalidMapping` saying what is not allowed and where.

    >>> referenced_datasets("WITH big AS (SELECT * FROM orders WHERE o_totalprice > 1e5) "
    ...                     "SELECT c_name, count(*) FROM big "
    ...                     "JOIN customer ON o_custkey = c_custkey GROUP BY c_name")
    ['orders', 'customer']
    """
    return _validate(query)



validate = _validate
visible_ctes = _visible_ctes
