"""Time the 22 TPC-H queries over cached Arrow tables: ldw (DuckDB) vs polars SQL vs PostgreSQL.

Reproduce (PostgreSQL on 127.0.0.1:5432, user postgres, database ``test``):

    python benchmarks/tpch_data.py --scale 1 && python benchmarks/sql_tpch.py --scale 1

The data is ``tpch_data.py``'s: the ``.tbl`` files it generated (generated again if missing) are
read into Arrow the way ldw caches them (char(n) trimmed, numeric(15,2) as decimal128(15, 2),
strings as string_view), and PostgreSQL runs the same texts on schema ``tpch_sf<N>``. Loading is
not timed. Per query, "duckdb" is ldw's engine, ``ldw.sql.SqlEngine.run`` (validation, a fresh
sandboxed connection, zero-copy registration, result as Arrow), "polars" is ``pl.SQLContext`` over
DataFrames converted from the same Arrow tables beforehand, "postgres" is psycopg ``execute`` +
``fetchall`` under ``statement_timeout``. With ``--repeat N`` the fastest run counts. Each result is
compared with PostgreSQL's (or with DuckDB's where PostgreSQL timed out). Results are printed as a
Markdown table of ratios and written to ``benchmarks/results/sql_tpch-<timestamp>.json``.

``--pg-indexes`` first creates the foreign-key indexes of ``ldw.tpch.INDEXES`` in the schema (it
changes the shared schema; without them PostgreSQL needs minutes for Q17 and Q20).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tpch_data import generate, load_postgres

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's ldw

import polars as pl
import psycopg
import pyarrow as pa
from psycopg import sql as pgsql

from ldw import tpch
from ldw.sql import SqlEngine, referenced_datasets

ENGINES = ("duckdb", "polars", "postgres")
RESULTS = Path(__file__).parent / "results"


def redact(text: str, url: str) -> str:
    """Never let a password from the URL reach the output."""
    password = urlsplit(url).password
    return text.replace(url, "<url>").replace(password, "***") if password else text


def timed(run: Callable[[], list[tuple]], repeat: int) -> dict[str, Any]:
    """Best of ``repeat`` runs of ``run``: seconds and the rows of the last run, or a status."""
    best, rows = None, None
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            rows = run()
        except Exception as exc:  # report and carry on with the next engine/query
            return {"status": f"{type(exc).__name__}: {exc}".splitlines()[0][:160]}
        seconds = time.perf_counter() - started
        best = seconds if best is None else min(best, seconds)
    return {"seconds": best, "rows": rows}


def arrow_rows(table: pa.Table) -> list[tuple]:
    return list(zip(*(column.to_pylist() for column in table.columns), strict=True))


def ensure_indexes(conn: psycopg.Connection, schema: str) -> None:
    for table, indexes in tpch.INDEXES.items():
        for columns in indexes:
            name = f"{table}_{'_'.join(columns)}_idx"
            conn.execute(pgsql.SQL("create index if not exists {} on {} ({})").format(
                pgsql.Identifier(name), pgsql.Identifier(schema, table),
                pgsql.SQL(", ").join(map(pgsql.Identifier, columns))))
        conn.execute(pgsql.SQL("analyze {}").format(pgsql.Identifier(schema, table)))


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(results: dict[int, dict[str, dict[str, Any]]], engines: tuple[str, ...]) -> str:
    others = [e for e in engines if e != "duckdb"]
    head = ["query", *(f"{e} s" for e in engines), *(f"{e} / duckdb" for e in others), "results"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = dict.fromkeys(engines, 0.0)
    complete = 0
    for number, by_engine in results.items():
        cells = [f"Q{number:02d}"]
        for engine in engines:
            r = by_engine.get(engine, {})
            cells.append(fmt(r.get("seconds"), ".3f") if "seconds" in r
                         else r.get("status", "—")[:40])
        duck = by_engine.get("duckdb", {}).get("seconds")
        for engine in others:
            s = by_engine.get(engine, {}).get("seconds")
            cells.append(fmt(s / duck if s is not None and duck else None, ".1f"))
        cells.append(", ".join(f"{e} {by_engine[e]['check']}" for e in engines
                               if "check" in by_engine.get(e, {})) or "—")
        lines.append("| " + " | ".join(cells) + " |")
        if all("seconds" in by_engine.get(e, {}) for e in engines):
            complete += 1
            for engine in engines:
                totals[engine] += by_engine[engine]["seconds"]
    duck_total = totals.get("duckdb") or None
    lines.append("| " + " | ".join([
        f"total ({complete} queries all finished)",
        *(f"{totals[e]:.2f}" for e in engines),
        *(fmt(totals[e] / duck_total if duck_total else None, ".1f") for e in others),
        "",
    ]) + " |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=float, default=1)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    p.add_argument("--queries", type=int, nargs="+", default=list(tpch.NUMBERS),
                   choices=tpch.NUMBERS, metavar="N")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--pg-timeout", type=float, default=60, help="seconds per PostgreSQL query")
    p.add_argument("--pg-indexes", action="store_true",
                   help="create foreign-key indexes in the schema first")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    engines = tuple(e for e in ENGINES if e in args.engines)
    schema = load_postgres(args.url, args.scale, args.data)
    files = generate(args.scale, args.data / schema)
    started = time.perf_counter()
    tables = {t: tpch.read_tbl(files / f"{t}.tbl", t) for t in tpch.TABLES}
    frames = {t: pl.from_arrow(table) for t, table in tables.items()} if "polars" in engines \
        else {}
    print(f"loaded {schema} into Arrow in {time.perf_counter() - started:.1f}s "
          f"({sum(t.nbytes for t in tables.values()) / 2**20:.0f} MB)", file=sys.stderr)

    conn = None
    if "postgres" in engines:
        conn = psycopg.connect(args.url, autocommit=True)
        if args.pg_indexes:
            ensure_indexes(conn, schema)
        conn.execute(pgsql.SQL("set search_path to {}").format(pgsql.Identifier(schema)))
        conn.execute(pgsql.SQL("set statement_timeout = {}").format(
            pgsql.Literal(f"{int(args.pg_timeout * 1000)}ms")))

    def on_postgres(text: str) -> list[tuple]:
        with conn.cursor() as cur:
            cur.execute(text)
            return cur.fetchall()

    ldw_engine = SqlEngine()
    context = pl.SQLContext(frames)
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for number in args.queries:
        text = tpch.query(number)
        used = {name: tables[name] for name in referenced_datasets(text)}
        runners: dict[str, Callable[[], list[tuple]]] = {
            "duckdb": lambda text=text, used=used: arrow_rows(ldw_engine.run(text, used)),
            "polars": lambda text=text: context.execute(text, eager=True).rows(),
            "postgres": lambda text=text: on_postgres(text),
        }
        by_engine = {engine: timed(runners[engine], args.repeat) for engine in engines}
        reference_engine = next((e for e in ("postgres", "duckdb") if "rows" in
                                 by_engine.get(e, {})), None)
        order_by = tpch.order_by_columns(text)
        for engine, r in by_engine.items():
            if "rows" in r and reference_engine is not None and engine != reference_engine:
                difference = tpch.compare_results(by_engine[reference_engine]["rows"], r["rows"],
                                                  order_by=order_by)
                r["check"] = (f"= {reference_engine}" if difference is None
                              else f"DIFFERS from {reference_engine}")
                r["difference"] = difference
        for r in by_engine.values():
            r["row_count"] = len(r.pop("rows", None) or [])
        results[number] = by_engine
        print(f"Q{number:02d} " + ", ".join(
            f"{e} {r.get('seconds', r.get('status'))}" for e, r in by_engine.items()),
            file=sys.stderr, flush=True)
    ldw_engine.close()
    if conn is not None:
        conn.close()

    print(markdown(results, engines), flush=True)
    import duckdb

    report = {"scale": args.scale, "schema": schema, "repeat": args.repeat,
              "host": urlsplit(args.url).hostname, "pg_indexes": args.pg_indexes,
              "versions": {"duckdb": duckdb.__version__, "polars": pl.__version__,
                           "pyarrow": pa.__version__},
              "queries": {f"q{n:02d}": r for n, r in results.items()}}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"sql_tpch-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(redact(json.dumps(report, indent=2, default=str), args.url))
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
