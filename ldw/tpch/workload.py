"""A replayed analyst workload over TPC-H: the 22 queries plus exploratory filters, chosen with
a skewed (Zipf) popularity, for the automatic-caching benchmark and its equality test.

Each *template* is a TPC-H query or an exploratory query with one parameter (a year, a size, a
price). Templates are ranked by a seeded shuffle and drawn with probability proportional to
``1 / rank ** skew``; a template's parameter values are ranked and drawn the same way, so a few
queries repeat often and many are seen once or twice, as in a team's notebooks. Texts name the
TPC-H tables bare (``lineitem``); :func:`ldw.tpch.on_sources` names them as source tables.

:func:`replay` runs a workload on a warehouse in one of three :data:`MODES`: ``none`` (SQL over
the source tables, nothing cached: run it with ``caching = "manual"``), ``lru`` (every table a
query touches is mapped and cached whole first, the way an analyst caches by hand; the cache
makes room by its least-recently-used rule) and ``auto`` (SQL over the source tables with
``caching = "auto"``). It measures the source time each mode spends: SQL's source reads
(``status()["sql_source_reads"]``) plus, for ``lru``, the time of every ``cache()``.

>>> queries = workload(5, seed=1)
>>> len(queries), queries[0].template in TEMPLATES
(5, True)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot import exp

from ldw.errors import CapacityExceeded
from ldw.tpch import NUMBERS, TABLES, on_sources, query

__all__ = ["MODES", "TEMPLATES", "Query", "Replay", "replay", "tables_of", "workload"]

MODES = ("none", "lru", "auto")

YEARS = tuple(range(1992, 1999))
QUARTERS = tuple((f"{y}-{m:02d}-01", f"{y + (m == 10)}-{(m + 2) % 12 + 1:02d}-01")
                 for y in YEARS[:-1] for m in (1, 4, 7, 10))  # (first day, next quarter's)

# name -> (text with {value} and {next}, parameter values as (value, next) pairs)
EXPLORATORY: dict[str, tuple[str, Sequence[tuple[object, object]]]] = {
    "flags_by_year": (
        "SELECT l_returnflag, l_linestatus, count(*) AS n, sum(l_extendedprice) AS revenue "
        "FROM lineitem WHERE l_shipdate >= DATE '{value}-01-01' "
        "AND l_shipdate < DATE '{next}-01-01' GROUP BY 1, 2 ORDER BY 1, 2",
        [(y, y + 1) for y in YEARS]),
    "discount_band": (
        "SELECT count(*) AS n, sum(l_extendedprice * l_discount) AS revenue FROM lineitem "
        "WHERE l_discount >= {value} AND l_discount <= {next} AND l_quantity < 24",
        [(f"0.0{d - 1}", f"0.0{d + 1}") for d in range(2, 9)]),
    "ship_modes": (
        "SELECT l_shipmode, count(*) AS n, avg(l_quantity) AS quantity FROM lineitem "
        "WHERE l_shipmode IN ('MAIL', 'SHIP', 'AIR') AND l_receiptdate >= DATE '{value}-01-01' "
        "AND l_receiptdate < DATE '{next}-01-01' GROUP BY 1 ORDER BY 1",
        [(y, y + 1) for y in YEARS]),
    "priorities_by_quarter": (
        "SELECT o_orderpriority, count(*) AS n, sum(o_totalprice) AS total FROM orders "
        "WHERE o_orderdate >= DATE '{value}' AND o_orderdate < DATE '{next}' "
        "GROUP BY 1 ORDER BY 1",
        QUARTERS),
    "segments_by_year": (
        "SELECT c_mktsegment, count(*) AS n, sum(o_totalprice) AS total FROM customer "
        "JOIN orders ON c_custkey = o_custkey WHERE o_orderdate >= DATE '{value}-01-01' "
        "AND o_orderdate < DATE '{next}-01-01' GROUP BY 1 ORDER BY 1",
        [(y, y + 1) for y in YEARS]),
    "rich_customers": (
        "SELECT n_name, count(*) AS n, avg(c_acctbal) AS balance FROM customer "
        "JOIN nation ON c_nationkey = n_nationkey WHERE c_acctbal > {value} "
        "GROUP BY 1 ORDER BY 1",
        [(b, None) for b in range(0, 9000, 1000)]),
    "brands_by_size": (
        "SELECT p_brand, count(*) AS n, avg(p_retailprice) AS price FROM part "
        "WHERE p_size = {value} GROUP BY 1 ORDER BY 1",
        [(s, None) for s in range(1, 51, 3)]),
    "stock_by_nation": (
        "SELECT s_nationkey, sum(ps_availqty) AS quantity, "
        "sum(ps_supplycost * ps_availqty) AS stock FROM partsupp "
        "JOIN supplier ON ps_suppkey = s_suppkey WHERE ps_supplycost < {value} "
        "GROUP BY 1 ORDER BY 1",
        [(c, None) for c in range(100, 1001, 150)]),
    "late_lines_by_priority": (
        "SELECT o_orderpriority, count(*) AS n FROM orders JOIN lineitem "
        "ON l_orderkey = o_orderkey WHERE l_receiptdate > l_commitdate "
        "AND o_orderdate >= DATE '{value}' AND o_orderdate < DATE '{next}' "
        "GROUP BY 1 ORDER BY 1",
        QUARTERS),
    "big_orders": (
        "SELECT o_orderstatus, count(*) AS n, max(o_totalprice) AS top FROM orders "
        "WHERE o_totalprice > {value} GROUP BY 1 ORDER BY 1",
        [(p, None) for p in range(100_000, 500_001, 50_000)]),
}
TEMPLATES = (*(f"Q{n:02d}" for n in NUMBERS), *EXPLORATORY)


@dataclass(frozen=True)
class Query:
    """One query of the workload: its template, its parameter (or None) and its text."""

    template: str
    parameter: object
    text: str


def _ranked(rng: random.Random, count: int, skew: float) -> list[float]:
    """Zipf weights for ``count`` items in a seeded random order of popularity."""
    ranks = list(range(1, count + 1))
    rng.shuffle(ranks)
    return [1.0 / rank ** skew for rank in ranks]


def workload(count: int, *, seed: int = 7, skew: float = 1.1) -> list[Query]:
    """``count`` queries drawn from :data:`TEMPLATES` (see the module docstring)."""
    rng = random.Random(seed)
    weights = _ranked(rng, len(TEMPLATES), skew)
    parameters = {name: _ranked(rng, len(values), skew)
                  for name, (_, values) in EXPLORATORY.items()}
    drawn = []
    for template in rng.choices(TEMPLATES, weights, k=count):
        if template in EXPLORATORY:
            text, values = EXPLORATORY[template]
            value, after = rng.choices(values, parameters[template])[0]
            drawn.append(Query(template, value, text.format(value=value, next=after)))
        else:
            drawn.append(Query(template, None, query(int(template[1:]))))
    return drawn


def tables_of(text: str) -> list[str]:
    """The TPC-H tables a query reads, in order of first mention."""
    tree = sqlglot.parse_one(text, read="duckdb")
    ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
    seen: dict[str, None] = {}
    for table in tree.find_all(exp.Table):
        if table.name in TABLES and table.name not in ctes:
            seen.setdefault(table.name, None)
    return list(seen)


@dataclass
class Replay:
    """What replaying a workload cost and returned."""

    mode: str
    results: list[list[tuple]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # per query, wall clock
    source: list[float] = field(default_factory=list)   # per query, SQL's source seconds
    source_seconds: float = 0.0    # SQL's source reads, plus cache() for "lru"
    source_reads: int = 0          # SQL's source reads, plus each cache() for "lru"
    cache_seconds: float = 0.0     # "lru": cache() time (in source_seconds)
    too_big: list[str] = field(default_factory=list)  # "lru": tables that never fit
    max_used_bytes: int = 0        # memory tier, sampled after every query

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "queries": len(self.results),
                "wall_seconds": round(sum(self.seconds), 3),
                "source_seconds": round(self.source_seconds, 3),
                "source_reads": self.source_reads,
                "cache_seconds": round(self.cache_seconds, 3), "too_big": self.too_big,
                "max_used_bytes": self.max_used_bytes}


def replay(wh: Any, queries: Sequence[Query], mode: str, schema: str, *,
           on_query: Callable[[int, Query, float], None] | None = None) -> Replay:
    """Run ``queries`` on ``wh`` in ``mode`` over the TPC-H tables of ``schema``
    (``source.schema``); see the module docstring."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    done = Replay(mode)
    where = {t: schema for t in TABLES}
    datasets: dict[str, Any] = {}
    before = wh.status()["sql_source_reads"]
    for i, item in enumerate(queries):
        started = time.perf_counter()
        if mode == "lru":
            for table in tables_of(item.text):
                done.cache_seconds += _cached_whole(wh, datasets, table, schema, done)
            text = item.text
        else:
            text = on_sources(item.text, where)
        done.results.append(wh.sql(text).rows())
        done.seconds.append(time.perf_counter() - started)
        status = wh.status()
        spent = status["sql_source_reads"]["seconds"]
        done.source.append(spent - (before["seconds"] + sum(done.source)))
        done.max_used_bytes = max(done.max_used_bytes, status["used_bytes"])
        if on_query is not None:
            on_query(i, item, done.seconds[-1])
    after = wh.status()["sql_source_reads"]
    done.source_seconds = after["seconds"] - before["seconds"] + done.cache_seconds
    done.source_reads += after["reads"] - before["reads"]
    return done


def _cached_whole(wh: Any, datasets: dict[str, Any], table: str, schema: str,
                  done: Replay) -> float:
    """Map and cache ``table`` whole unless it is cached or never fits; the seconds spent."""
    if table in done.too_big:
        return 0.0
    if table not in datasets:
        datasets[table] = wh.map(table, f"{schema}.{table}")
    dataset = datasets[table]
    if dataset.state == "cached":
        return 0.0
    started = time.perf_counter()
    try:
        dataset.cache()
    except CapacityExceeded:
        done.too_big.append(table)  # read from its source by SQL from now on, like "none"
    done.source_reads += 1
    return time.perf_counter() - started
