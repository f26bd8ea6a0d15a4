"""Full against incremental refresh: append 1 %, update 0.1 % of an SF1-sized PostgreSQL table.

Reproduce (PostgreSQL on 127.0.0.1:5432, user postgres, database ``test``):

    python benchmarks/refresh.py                 # orders at SF1: 1.5 M rows
    python benchmarks/refresh.py --lineitem      # and lineitem (6 M rows): several minutes more

The tables are copies in a schema of their own (dropped at the end): of ``tpch_sf1`` when
``benchmarks/tpch_data.py --scale 1`` loaded it, else generated in SQL with TPC-H's columns and
row counts (values are synthetic; sizes and types are TPC-H's). Each copy gets an ``updated_at``
watermark (indexed) and its primary key. For each table, in one in-process ldw:

1. ``map(..., incremental="append", key=<key>)`` and ``cache()`` (the first, full read);
2. append 1 % new keys; time until ``info()["stale"]`` says so (``freshness_interval`` = 1 s);
3. ``refresh()`` (incremental) then, once background compaction (if any) is done,
   ``refresh(full=True)`` on the same data: time and bytes read from the source
   (``info()["freshness"]["last_refresh"]``) and the files the incremental version is made of;
   both versions are checked against the source (row count, sum of the key, sum of a numeric
   column);
4. the same with ``incremental="upsert", watermark="updated_at"`` after updating 0.1 % of the
   rows and appending 1 %.

Steps 2-4 run ``--rounds`` times (default 3) per mode, each round on the version the previous
full refresh left; the table reports every round and the median ratio. Each refresh is timed
like ``timeit`` does: after ``gc.collect()``, with the garbage collector off. The copies are
vacuumed once after loading, as autovacuum would do to a table in use (it is off on the test
server):
a table never vacuumed has no visibility map, so PostgreSQL cannot answer the probe that proves
no cached row was deleted from the key index alone (``--no-vacuum`` measures that case).

The numbers go to stdout and to ``benchmarks/results/refresh-<time>.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import sqlalchemy as sa

import ldw

ROOT = Path(__file__).resolve().parent.parent

ORDERS = ("orders", "o_orderkey", "o_totalprice", 1_500_000, """
    select g as o_orderkey, mod(g * 7, 150000) + 1 as o_custkey,
        (array['O','F','P'])[mod(g, 3) + 1]::char(1) as o_orderstatus,
        round((mod(g, 500000)) * 1.37 + 900, 2)::numeric(15,2) as o_totalprice,
        date '1992-01-01' + (mod(g, 2405)) as o_orderdate,
        (array['1-URGENT','2-HIGH','3-MEDIUM','4-NOT SPECIFIED','5-LOW'])[mod(g, 5) + 1]::char(15)
            as o_orderpriority,
        ('Clerk#' || lpad((mod(g, 1000))::text, 9, '0'))::char(15) as o_clerk,
        0 as o_shippriority,
        ('furiously regular deposits ' || md5(g::text))::varchar(79) as o_comment
    from generate_series(1, {n}) g""")
LINEITEM = ("lineitem", "l_id", "l_extendedprice", 6_000_000, """
    select g as l_id, (g + 3) / 4 as l_orderkey, mod(g, 200000) + 1 as l_partkey,
        mod(g, 10000) + 1 as l_suppkey, mod(g - 1, 4) + 1 as l_linenumber,
        (mod(g, 50) + 1)::numeric(15,2) as l_quantity,
        round((mod(g, 100000)) * 0.91 + 900, 2)::numeric(15,2) as l_extendedprice,
        ((mod(g, 11)) / 100.0)::numeric(15,2) as l_discount,
        ((mod(g, 9)) / 100.0)::numeric(15,2) as l_tax,
        (array['A','N','R'])[mod(g, 3) + 1]::char(1) as l_returnflag,
        (array['O','F'])[mod(g, 2) + 1]::char(1) as l_linestatus,
        date '1992-01-02' + (mod(g, 2526)) as l_shipdate,
        date '1992-01-31' + (mod(g, 2466)) as l_commitdate,
        date '1992-01-03' + (mod(g, 2554)) as l_receiptdate,
        'DELIVER IN PERSON'::char(25) as l_shipinstruct, 'TRUCK'::char(10) as l_shipmode,
        ('carefully final ' || md5(g::text))::varchar(44) as l_comment
    from generate_series(1, {n}) g""")


def _copy(conn: sa.Connection, schema: str, spec: tuple, *, tpch: bool) -> str:
    name, key, _, rows, generated = spec
    if tpch and name == "orders":
        select = "select * from tpch_sf1.orders"
        origin = "copy of tpch_sf1.orders"
    elif tpch:
        select = ("select row_number() over () as l_id, * from tpch_sf1.lineitem")
        origin = "copy of tpch_sf1.lineitem (+ l_id)"
    else:
        select, origin = generated.format(n=rows), f"generated, {rows:,} rows"
    conn.exec_driver_sql(f"create table {schema}.{name} as {select}")
    conn.exec_driver_sql(f"alter table {schema}.{name} add column updated_at timestamp "
                         f"not null default timestamp '2024-01-01'")
    conn.exec_driver_sql(f"alter table {schema}.{name} add primary key ({key})")
    conn.exec_driver_sql(f"create index on {schema}.{name} (updated_at)")
    conn.exec_driver_sql(f"analyze {schema}.{name}")
    return origin


def _vacuum(engine: sa.Engine, schema: str, spec: tuple) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f"vacuum analyze {schema}.{spec[0]}")


def _append(engine: sa.Engine, schema: str, spec: tuple, fraction: float) -> int:
    """Append ``fraction`` new rows: copies of the first rows with keys above the maximum."""
    name, key, _, _, _ = spec
    with engine.begin() as conn:
        top, count = conn.exec_driver_sql(
            f"select max({key}), count(*) from {schema}.{name}").one()
        columns = [c for c, in conn.exec_driver_sql(
            "select column_name from information_schema.columns where table_schema = "
            f"'{schema}' and table_name = '{name}' order by ordinal_position").all()]
        rest = ", ".join(c for c in columns if c not in (key, "updated_at"))
        return conn.exec_driver_sql(
            f"insert into {schema}.{name} ({key}, {rest}, updated_at) "
            f"select {key} + {top}, {rest}, now() from (select * from {schema}.{name} "
            f"order by {key} limit {int(count * fraction)}) s").rowcount


def _update(engine: sa.Engine, schema: str, spec: tuple, fraction: float) -> int:
    """Update ``fraction`` of the rows, spread over the whole key range."""
    name, key, amount, _, _ = spec
    with engine.begin() as conn:
        return conn.exec_driver_sql(
            f"update {schema}.{name} set {amount} = {amount} + 1, updated_at = now() "
            f"where {key} in (select {key} from (select {key}, row_number() over (order by "
            f"{key}) as n from {schema}.{name}) s where mod(n, {int(1 / fraction)}) = 0)"
        ).rowcount


def _source_digest(engine: sa.Engine, schema: str, spec: tuple) -> tuple:
    name, key, amount, _, _ = spec
    with engine.connect() as conn:
        return tuple(conn.exec_driver_sql(
            f"select count(*), sum({key}), sum({amount}) from {schema}.{name}").one())


def _cached_digest(dataset: ldw.Dataset, spec: tuple) -> tuple:
    _, key, amount, _, _ = spec
    table = dataset.to_arrow()
    return (table.num_rows, pc.sum(table.column(key)).as_py(),
            pc.sum(table.column(amount)).as_py())


def _refresh(dataset: ldw.Dataset, *, full: bool = False) -> dict[str, Any]:
    """Time one refresh as ``timeit`` times code: after a full garbage collection and with
    the collector off (a collection of this process's ~150,000 objects takes 0.1-0.25 s
    here, landing in whichever refresh happens to allocate when it is due)."""
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        dataset.refresh(full=full)
        seconds = time.perf_counter() - started
    finally:
        gc.enable()
    last = dataset.info()["freshness"]["last_refresh"]
    return {"mode": last["mode"], "seconds": round(seconds, 3), "rows_read": last["rows_read"],
            "bytes_read": last["bytes_read"], "reason": last["reason"]}


def _detect(dataset: ldw.Dataset, limit: float = 30) -> float | None:
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if dataset.info()["stale"]:
            return round(time.perf_counter() - started, 3)
        time.sleep(0.05)
    return None


def _compacted(dataset: ldw.Dataset, files: int, limit: float = 60) -> float | None:
    """Seconds until background compaction leaves the version in at most ``files`` files
    (an upsert's version, which leaves replaced rows out, is written into one)."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if dataset.info()["files"] <= files:
            return round(time.perf_counter() - started, 3)
        time.sleep(0.02)
    return None


def run_table(wh: ldw.Warehouse, engine: sa.Engine, schema: str, spec: tuple,
              rounds: int) -> dict:
    name, key, _, _, _ = spec
    result: dict[str, Any] = {}
    for mode in ("append", "upsert"):
        options = {"watermark": "updated_at"} if mode == "upsert" else {}
        dataset = wh.map(f"{name}_{mode}", f"pg.{schema}.{name}", incremental=mode, key=key,
                         **options)
        started = time.perf_counter()
        dataset.cache()
        first = round(time.perf_counter() - started, 3)
        runs = []
        for _ in range(rounds):
            changed = {"appended": _append(engine, schema, spec, 0.01)}
            if mode == "upsert":
                changed["updated"] = _update(engine, schema, spec, 0.001)
            detected = _detect(dataset)
            incremental = _refresh(dataset)
            incremental["files"] = dataset.info()["files"]
            incremental["equal"] = _cached_digest(dataset, spec) == _source_digest(
                engine, schema, spec)
            incremental["compacted_after_seconds"] = _compacted(
                dataset, 1 if mode == "upsert" else 2)
            full = _refresh(dataset, full=True)
            full["equal"] = _cached_digest(dataset, spec) == _source_digest(engine, schema,
                                                                            spec)
            runs.append({"changed": changed, "stale_after_seconds": detected,
                         "incremental": incremental, "full": full,
                         "time_ratio": round(incremental["seconds"] / full["seconds"], 4),
                         "bytes_ratio": round(incremental["bytes_read"] / full["bytes_read"],
                                              4)})
        result[mode] = {"first_cache_seconds": first, "rounds": runs,
                        "median_time_ratio": round(statistics.median(
                            r["time_ratio"] for r in runs), 4)}
        dataset.evict()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--lineitem", action="store_true", help="also lineitem (6 M rows)")
    p.add_argument("--rounds", type=int, default=3, help="refreshes per mode (default 3)")
    p.add_argument("--no-vacuum", action="store_true",
                   help="leave the copies unvacuumed (no visibility map)")
    args = p.parse_args()
    url = sa.make_url(args.url)
    engine = sa.create_engine(url.set(drivername="postgresql+psycopg"))
    schema = f"ldw_refresh_bench_{uuid.uuid4().hex[:6]}"
    specs = [ORDERS, LINEITEM] if args.lineitem else [ORDERS]
    report: dict[str, Any] = {"when": datetime.now().isoformat(timespec="seconds"),
                              "load_before": os.getloadavg(), "tables": {}}
    with engine.begin() as conn:
        tpch = conn.exec_driver_sql("select count(*) from information_schema.tables where "
                                    "table_schema = 'tpch_sf1'").scalar_one() > 0
        conn.exec_driver_sql(f"create schema {schema}")
    try:
        for spec in specs:
            with engine.begin() as conn:
                origin = _copy(conn, schema, spec, tpch=tpch)
            if not args.no_vacuum:
                _vacuum(engine, schema, spec)
                origin += ", vacuumed"
            wh = ldw.connect(in_process=True, config={"sources": {"pg": {"url": args.url}}},
                             memory_limit="6GiB", freshness_interval="1s")
            try:
                report["tables"][spec[0]] = {"origin": origin,
                                             **run_table(wh, engine, schema, spec,
                                                         args.rounds)}
            finally:
                wh.close()
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"drop schema {schema} cascade")
    report["load_after"] = os.getloadavg()
    print(f"load average (1, 5, 15 min) before: {report['load_before']}, "
          f"after: {report['load_after']}")
    print(f"{'table':10} {'mode':7} {'changed':>22} {'stale in':>9} {'incremental':>12} "
          f"{'files':>5} {'full':>8} {'time':>7} {'MB incr':>8} {'MB full':>8} {'bytes':>7} "
          "equal")
    for table, modes in report["tables"].items():
        for mode, m in ((k, v) for k, v in modes.items() if k != "origin"):
            for r in m["rounds"]:
                changed = ", ".join(f"{v:,} {k}" for k, v in r["changed"].items())
                print(f"{table:10} {mode:7} {changed:>22} "
                      f"{r['stale_after_seconds'] or '-':>8}s "
                      f"{r['incremental']['seconds']:>11.3f}s {r['incremental']['files']:>5} "
                      f"{r['full']['seconds']:>7.3f}s {r['time_ratio']:>7.1%} "
                      f"{r['incremental']['bytes_read'] / 1e6:>8.1f} "
                      f"{r['full']['bytes_read'] / 1e6:>8.1f} {r['bytes_ratio']:>7.2%} "
                      f"{r['incremental']['equal'] and r['full']['equal']}")
            print(f"{table:10} {mode:7} median time ratio {m['median_time_ratio']:.1%}")
        print(f"  ({table}: {modes['origin']})")
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"refresh-{datetime.now():%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
