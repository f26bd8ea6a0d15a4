"""The numbers behind the cache's Arrow layout (README, "Arrow layouts"): warm calls in one process.

Reproduce (PostgreSQL on 127.0.0.1:5432, user postgres, database ``test``):

    python benchmarks/tpch_data.py --scale 1 && python benchmarks/layouts.py --scale 1

Starts its own ldw server (like ``attach.py``), caches the table, writes it once to an
uncompressed Parquet file in /dev/shm, then times each call ``--repeat`` times in this process
after one warm-up (median and minimum):

- ``to_polars()`` (zero-copy: the cache keeps ``string_view``, polars' own layout, and decimals at
  16-byte offsets) and ``to_arrow()`` (the mapped buffers, string columns rewritten as ``string``)
- ``to_pandas()`` and a DuckDB aggregate over ``to_arrow()``
- the road not taken: polars importing plain ``string`` columns (what ``to_polars()`` would cost
  if the cache stored them), and the cast ``to_arrow()`` does
- ``polars.read_parquet`` of the uncompressed Parquet file

Also reports the anonymous memory each call adds (copies; mapped cache pages are shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from attach import ROOT, ldw_cli, wait_for_table, write_config
from tpch_data import schema_name

MB = 1 << 20


def rss_anon() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def timed(call: Any, repeat: int) -> dict[str, float]:
    call()  # warm-up
    seconds, grown = [], []
    for _ in range(repeat):
        before = rss_anon()
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
        grown.append(rss_anon() - before)
        del result
    return {"ms": statistics.median(seconds) * 1e3, "min_ms": min(seconds) * 1e3,
            "anon_mb": statistics.median(grown) / MB}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--table", default="orders")
    p.add_argument("--scale", type=float, default=1)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--repeat", type=int, default=9)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    import duckdb
    import polars as pl
    import pyarrow.parquet as pq

    import ldw
    from ldw.layout import standard_table

    schema = schema_name(args.scale)
    wait_for_table(args.url, schema, args.table, args.scale)
    folder = Path(tempfile.mkdtemp(prefix="ldw-bench-layouts-"))
    shm = Path(tempfile.mkdtemp(prefix="ldw-bench-layouts-", dir="/dev/shm"))
    config = write_config(folder, shm / "cache", args.url, "6GiB")
    try:
        ldw_cli(config, "server", "start")
        wh = ldw.connect(config=str(config), autostart=False)
        started = time.perf_counter()
        ds = wh.map(args.table, f"bench.{schema}.{args.table}").cache()
        load_s = time.perf_counter() - started
        cached = ds._cached()
        parquet = shm / f"{args.table}.parquet"
        pq.write_table(ds.to_arrow(), parquet, compression="none")
        plain = standard_table(cached)
        query = "SELECT count(*), sum(o_totalprice) FROM t GROUP BY o_orderpriority" \
            if args.table == "orders" else "SELECT count(*) FROM t"

        def duck(table: Any) -> Any:
            con = duckdb.connect()
            con.register("t", table)
            return con.sql(query).fetchall()

        calls = {
            "to_polars()": ds.to_polars,
            "to_arrow()": ds.to_arrow,
            "to_pandas()": ds.to_pandas,
            "DuckDB aggregate over to_arrow()": lambda: duck(ds.to_arrow()),
            "(cast view -> string alone)": lambda: standard_table(cached),
            "(polars from plain string columns)": lambda: pl.from_arrow(plain, rechunk=False),
            "polars.read_parquet (uncompressed)": lambda: pl.read_parquet(parquet),
        }
        results = {label: timed(call, args.repeat) for label, call in calls.items()}
        report = {"table": args.table, "scale": args.scale, "rows": cached.num_rows,
                  "cache_file_mb": ds.info()["bytes"] / MB, "arrow_view_mb": cached.nbytes / MB,
                  "arrow_plain_mb": plain.nbytes / MB, "materialize_s": load_s,
                  "loadavg": os.getloadavg(), "results": results}
        print(json.dumps(report, indent=1))
        print(f"\n{args.table} SF{args.scale:g}: {cached.num_rows:,} rows, cache file "
              f"{report['cache_file_mb']:.0f} MB, materialized in {load_s:.1f}s; "
              f"load average {os.getloadavg()[0]:.1f}")
        print("| call (warm, same process) | median ms | min ms | anon MB |\n|---|---|---|---|")
        for label, r in results.items():
            print(f"| {label} | {r['ms']:.1f} | {r['min_ms']:.1f} | {r['anon_mb']:.0f} |")
        wh.close()
    finally:
        ldw_cli(config, "server", "stop")
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(shm, ignore_errors=True)


if __name__ == "__main__":
    main()
