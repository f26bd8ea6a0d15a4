"""SQL over datasets: validate a user's query with sqlglot, run it with DuckDB over Arrow tables.

Two steps, so the caller can authorize before anything runs::

    names = referenced_datasets(query)          # parse + validate; the datasets it reads
    tables = {name: <Arrow table the caller may see> for name in names}
    result = run_sql(query, tables)             # DuckDB over exactly those tables -> pyarrow.Table

Why DuckDB: over TPC-H SF1 held as Arrow (char columns trimmed) it ran all 22 queries with results
equal to PostgreSQL's in 3.2 s on the reference machine, where polars SQL took 11.6 s (a bad join
order in Q05 alone cost 8.6 s). DuckDB also brings what a shared server needs: a sandbox (no file,
network or extension access, locked settings) and a memory limit. ``benchmarks/sql_tpch.py``
measures it again against polars SQL and PostgreSQL.

Three layers of defence:

1. :func:`referenced_datasets` accepts one read-only query (SELECT / set operations / CTEs) and
   rejects, with what and where: several statements, DML/DDL, COPY, ATTACH, PRAGMA, SET,
   INSTALL/LOAD, EXPLAIN/DESCRIBE/SHOW, ``SELECT ... INTO``, locking clauses, table functions
   outside a small allow-list (``range``, ``generate_series``, ``unnest``), functions that read
   files, the network, settings or run SQL (``read_parquet``, ``glob``, ``getenv``,
   ``query_table``, ...), schema/catalog-qualified names (``main.x``) and string literals used as
   tables (``FROM 'file.parquet'``).
2. :func:`run_sql` re-checks with DuckDB's own parser that the text is exactly one SELECT, so a
   difference between the two parsers cannot smuggle in a second statement.
3. The query runs on a fresh connection to an in-memory DuckDB database (one per :func:`run_sql`
   call, or one per :class:`SqlEngine`) that sees only the Arrow tables the query reads,
   registered zero-copy as temporary views of that connection (Python variable scans off), with
   external access (files, network, extensions) disabled and the configuration locked, no
   spilling to disk (memory-only data stays in memory) and at most ``os.cpu_count()`` threads.

Every query is bounded: a :class:`SqlEngine` has a memory limit and a time limit, and a watchdog
thread interrupts a query (DuckDB ``interrupt()``) once its time is up, once its client has gone
(``cancelled()``), or when the engine closes (the server stops).

The query text runs as written once validated; nothing else is ever pasted into it.
"""

from ldw.sql.run import SqlEngine, run_sql
from ldw.sql.validate import ALLOWED_TABLE_FUNCTIONS, referenced_datasets

__all__ = ["ALLOWED_TABLE_FUNCTIONS", "SqlEngine", "referenced_datasets", "run_sql"]
