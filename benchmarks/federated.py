"""Federated SQL: the 22 TPC-H queries naming source tables, ldw vs DuckDB's scanners vs PostgreSQL.

Reproduce (PostgreSQL on 127.0.0.1:5432 user postgres database ``test``, MariaDB on 3306 as root):

    python benchmarks/tpch_data.py --scale 1
    python -m venv /tmp/duckscan && /tmp/duckscan/bin/pip install duckdb==1.5.5 \\
        duckdb-extension-postgres-scanner==1.5.5 duckdb-extension-mysql-scanner==1.5.5
    python benchmarks/federated.py --scale 1 --scanner-python /tmp/duckscan/bin/python [--mixed]

Every engine reads the data where it lives, in the same run: "ldw" is ``wh.sql`` over
``pg.tpch_sf1.<table>`` (in process, nothing cached: each query reads what it needs from
PostgreSQL through ldw's connectors and joins in DuckDB), "scanner" is DuckDB 1.5.5 with its
postgres scanner ATTACHed read-only (``benchmarks/duckdb_scanner.py``, in its own venv),
"postgres" runs the query itself under ``--pg-timeout``. Results are compared with PostgreSQL's
(or the scanner's where PostgreSQL timed out). ``--mixed`` loads customer and orders into MariaDB
(database ``tpch_sf1``, once) and reads them from there. The selective query (a count of 105 rows of
lineitem) is timed too, also over an uncached mapped dataset. Output: a Markdown table with
per-query ratios, and ``benchmarks/results/federated-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tpch_data import generate, load_postgres

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's ldw

import psycopg
from psycopg import sql as pgsql

import ldw
from ldw import tpch

RESULTS = Path(__file__).parent / "results"
MIXED = ("customer", "orders")
SELECTIVE = "SELECT count(*) AS n FROM {lineitem} WHERE l_orderkey < 100"


def plain(rows: list) -> list[list]:
    out = []
    for row in rows:
        out.append([float(v) if isinstance(v, decimal.Decimal) else
                    v.isoformat() if isinstance(v, dt.date | dt.datetime) else v for v in row])
    return out


def timed(run: Callable[[], list], repeat: int) -> dict[str, Any]:
    best, rows = None, None
    for _ in range(repeat):
        started = time.perf_counter()
        try:
            rows = run()
        except Exception as exc:  # report and carry on
            return {"status": f"{type(exc).__name__}: {exc}".splitlines()[0][:160]}
        seconds = time.perf_counter() - started
        best = seconds if best is None else min(best, seconds)
    return {"seconds": best, "rows": plain(rows)}


def load_mysql(url: str, scale: float, data_root: Path, schema: str) -> None:
    """customer and orders of ``schema``'s data in MariaDB database ``schema`` (once)."""
    import pymysql

    parts = urlsplit(url)
    conn = pymysql.connect(host=parts.hostname, port=parts.port or 3306,
                           user=parts.username or "root", password=parts.password or "",
                           local_infile=True, autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"create database if not exists `{schema}`")  # tpch_sf<N>: our own name
        cur.execute(f"use `{schema}`")
        files = generate(scale, data_root / schema)
        for table in MIXED:
            cur.execute("select count(*) from information_schema.tables where table_schema = %s "
                        "and table_name = %s", (schema, table))
            if cur.fetchone()[0]:
                cur.execute(f"select count(*) from `{table}`")
                if cur.fetchone()[0] > 0:
                    continue
                cur.execute(f"drop table `{table}`")
            columns = ", ".join(f"{n} {t}" for n, t in tpch.TABLES[table])
            cur.execute(f"create table `{table}` ({columns}, primary key "
                        f"({tpch.TABLES[table][0][0]}))")
            started = time.perf_counter()
            cur.execute(f"load data local infile %s into table `{table}` fields terminated by "
                        "'|' lines terminated by '|\\n'", (str(files / f"{table}.tbl"),))
            print(f"loaded MariaDB {schema}.{table} in {time.perf_counter() - started:.1f}s",
                  file=sys.stderr)
        cur.execute("analyze table customer, orders")
    conn.close()


def libpq_dsn(url: str) -> str:
    parts = urlsplit(url)
    dsn = f"host={parts.hostname} port={parts.port or 5432} dbname={parts.path.lstrip('/')} " \
          f"user={parts.username or 'postgres'}"
    return dsn + (f" password={parts.password}" if parts.password else "")


def mysql_dsn(url: str, database: str) -> str:
    parts = urlsplit(url)
    dsn = f"host={parts.hostname} port={parts.port or 3306} user={parts.username or 'root'} " \
          f"database={database}"
    return dsn + (f" password={parts.password}" if parts.password else "")


def scanner(python: str, job: dict) -> dict:
    done = subprocess.run([python, str(Path(__file__).parent / "duckdb_scanner.py")],
                          input=json.dumps(job), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the DuckDB scanner failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout)


def markdown(results: dict[str, dict[str, dict]], engines: list[str]) -> str:
    head = ["query", *(f"{e} s" for e in engines),
            *(f"{e} / ldw" for e in engines if e != "ldw"), "results"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals = dict.fromkeys(engines, 0.0)
    complete = 0
    for key, by in results.items():
        cells = [key]
        for e in engines:
            r = by.get(e, {})
            cells.append(f"{r['seconds']:.3f}" if "seconds" in r else r.get("status", "—")[:30])
        mine = by.get("ldw", {}).get("seconds")
        for e in engines:
            if e != "ldw":
                s = by.get(e, {}).get("seconds")
                cells.append(f"{s / mine:.2f}" if s is not None and mine else "—")
        cells.append(", ".join(f"{e} {by[e]['check']}" for e in engines
                               if "check" in by.get(e, {})))
        lines.append("| " + " | ".join(cells) + " |")
        if key.startswith("Q") and all("seconds" in by.get(e, {}) for e in engines):
            complete += 1
            for e in engines:
                totals[e] += by[e]["seconds"]
    lines.append("| " + " | ".join([
        f"total ({complete} queries finished on all)", *(f"{totals[e]:.2f}" for e in engines),
        *(f"{totals[e] / totals['ldw']:.2f}" if totals.get("ldw") else "—"
          for e in engines if e != "ldw"), ""]) + " |")
    for other in (e for e in engines if e != "ldw"):  # pairwise, over every query both finish
        both = [k for k, by in results.items() if k.startswith("Q")
                and "seconds" in by.get("ldw", {}) and "seconds" in by.get(other, {})]
        mine = sum(results[k]["ldw"]["seconds"] for k in both)
        theirs = sum(results[k][other]["seconds"] for k in both)
        lines.append(f"\nldw vs {other} over the {len(both)} queries both finish: "
                     f"{mine:.2f} s vs {theirs:.2f} s ({other} / ldw = {theirs / mine:.2f})"
                     if mine else "")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=float, default=1)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--mysql-url", default="mysql://root@127.0.0.1:3306/test")
    p.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    p.add_argument("--queries", type=int, nargs="+", default=list(tpch.NUMBERS), metavar="N")
    p.add_argument("--engines", nargs="+", default=["ldw", "scanner", "postgres"],
                   choices=["ldw", "scanner", "postgres"])
    p.add_argument("--scanner-python", default="/tmp/duckscan/bin/python")
    p.add_argument("--mixed", action="store_true", help="customer and orders from MariaDB")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--pg-timeout", type=float, default=60)
    args = p.parse_args()

    schema = load_postgres(args.url, args.scale, args.data)
    where = {t: f"pg.{schema}" for t in tpch.TABLES}
    if args.mixed:
        load_mysql(args.mysql_url, args.scale, args.data, schema)
        where.update({t: f"my.{schema}" for t in MIXED})
    texts = {f"Q{n:02d}": tpch.query(n) for n in args.queries}
    sourced = {k: tpch.on_sources(t, where) for k, t in texts.items()}
    selective = SELECTIVE.format(lineitem=f"pg.{schema}.lineitem")
    sourced["selective"] = selective
    texts["selective"] = SELECTIVE.format(lineitem="lineitem")

    results: dict[str, dict[str, dict]] = {k: {} for k in sourced}
    if "ldw" in args.engines:
        sources = {"pg": {"url": args.url}}
        if args.mixed:
            sources["my"] = {"url": args.mysql_url}
        wh = ldw.connect(in_process=True, config={"sources": sources}, memory_limit="8GiB")
        for key, sql in sourced.items():
            results[key]["ldw"] = timed(lambda sql=sql: wh.sql(sql).rows(), args.repeat)
            print(f"ldw {key}: {results[key]['ldw'].get('seconds', results[key]['ldw'])}",
                  file=sys.stderr, flush=True)
        li = wh.map("li", f"pg.{schema}.lineitem")
        results["selective (mapped dataset)"] = {"ldw": timed(
            lambda: wh.sql(SELECTIVE.format(lineitem="li")).rows(), args.repeat)}
        assert li.info()["state"] == "mapped"
        wh.close()
    if "scanner" in args.engines:
        job = {"postgres": libpq_dsn(args.url), "repeat": args.repeat, "queries": sourced,
               "mysql": mysql_dsn(args.mysql_url, schema) if args.mixed else None}
        for key, r in scanner(args.scanner_python, job).items():
            results[key]["scanner"] = r
    if "postgres" in args.engines:
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(pgsql.SQL("set search_path to {}").format(pgsql.Identifier(schema)))
            conn.execute(pgsql.SQL("set statement_timeout = {}").format(
                pgsql.Literal(f"{int(args.pg_timeout * 1000)}ms")))
            for key, text in texts.items():
                results[key]["postgres"] = timed(
                    lambda text=text: conn.execute(text).fetchall(), args.repeat)
                print(f"postgres {key}: {results[key]['postgres'].get('seconds', '-')}",
                      file=sys.stderr, flush=True)
    for key, by in results.items():
        reference = next((e for e in ("postgres", "scanner") if "rows" in by.get(e, {})), None)
        order_by = tpch.order_by_columns(texts[key]) if key in texts else None
        for e, r in by.items():
            if "rows" in r and reference is not None and e != reference:
                diff = tpch.compare_results(by[reference]["rows"], r["rows"], order_by=order_by)
                r["check"] = f"= {reference}" if diff is None else f"DIFFERS from {reference}"
                r["difference"] = diff
        for r in by.values():
            r["row_count"] = len(r.pop("rows", None) or [])
    engines = [e for e in ("ldw", "scanner", "postgres") if e in args.engines]
    print(markdown(results, engines))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"federated-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"scale": args.scale, "mixed": args.mixed, "repeat": args.repeat,
                                "results": results}, indent=2, default=str))
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
