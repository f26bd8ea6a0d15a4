"""Time materializing whole PostgreSQL tables into memory: ldw against raw COPY and its peers.

Reproduce (PostgreSQL on 127.0.0.1:5432, user postgres, database ``test``):

    python benchmarks/tpch_data.py --scale 1 && python benchmarks/materialize.py --scale 1

Every method runs in a fresh subprocess with its libraries already imported. "seconds" is the read
alone (connection setup included for the drivers, ``ldw.connect`` excluded); peak RSS delta is the
child's ``ru_maxrss`` minus its RSS right before the read (for ldw, "+N shm" adds what its cache
holds in /dev/shm, which RSS does not count). With ``--repeat N`` the fastest run is
shown; the JSON keeps every run. Results are printed as a Markdown table and written to
``benchmarks/results/materialize-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tpch_data import DDL, schema_name

METHODS = ["copy_binary", "connectorx", "connectorx_2p", "adbc", "pandas_read_sql",
           "polars_read_database", "ldw", "ldw_2p"]
SF1_ROWS = {"orders": 1_500_000, "lineitem": 6_001_215}
RESULTS = Path(__file__).parent / "results"
MB = 1 << 20
PRELOAD = {  # imported before the baseline so import time and memory are not counted as the read
    "copy_binary": ["psycopg"],
    "connectorx": ["connectorx", "pyarrow"], "connectorx_2p": ["connectorx", "pyarrow"],
    "adbc": ["adbc_driver_postgresql.dbapi", "pyarrow"],
    "pandas_read_sql": ["sqlalchemy", "psycopg", "pandas"],
    "polars_read_database": ["sqlalchemy", "psycopg", "polars", "pyarrow"],
}


def redact(text: str, url: str) -> str:
    """Never let a password from the URL reach the output."""
    password = urlsplit(url).password
    return text.replace(url, "<url>").replace(password, "***") if password else text


def read_copy_binary(url: str, query: str) -> dict[str, Any]:
    import psycopg

    received = 0
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY ({query}) TO STDOUT (FORMAT binary)") as copy:
            for chunk in copy:
                received += len(chunk)
        return {"rows": cur.rowcount, "stream_bytes": received}


def read_connectorx(url: str, query: str, key: str | None) -> dict[str, Any]:
    import connectorx as cx

    extra: dict[str, Any] = {"partition_on": key, "partition_num": 2} if key else {}
    table = cx.read_sql(url, query, return_type="arrow", **extra)
    return {"rows": table.num_rows, "obj": table}


def read_adbc(url: str, query: str) -> dict[str, Any]:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(url) as conn, conn.cursor() as cur:
        cur.execute(query)
        table = cur.fetch_arrow_table()
    return {"rows": table.num_rows, "obj": table}


def read_sqlalchemy(url: str, query: str, lib: str) -> dict[str, Any]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        if lib == "pandas":
            import pandas as pd

            frame = pd.read_sql(query, engine)
        else:
            import polars as pl

            frame = pl.read_database(query, connection=engine)
    finally:
        engine.dispose()
    return {"rows": len(frame), "obj": frame}


def object_bytes(obj: Any) -> int | None:
    if obj is None:
        return None
    if hasattr(obj, "memory_usage"):  # pandas
        return int(obj.memory_usage(deep=True).sum())
    if hasattr(obj, "estimated_size"):  # polars
        return int(obj.estimated_size())
    return int(obj.nbytes)  # pyarrow


def measure(read: Any) -> dict[str, Any]:
    """Run ``read()`` and return its outcome with timing and memory figures."""
    import resource

    import psutil

    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    out = read()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    bytes_fn = out.pop("bytes_fn", None)
    out["bytes"] = bytes_fn() if bytes_fn else object_bytes(out.pop("obj", None))
    return {**out, "seconds": seconds, "rss_before": before, "rss_peak": peak,
            "rss_delta": peak - before}


def run_ldw(url: str, schema: str, table: str, key: str | None) -> dict[str, Any]:
    import shutil
    import tempfile

    shm = tempfile.mkdtemp(prefix="ldw-bench-", dir="/dev/shm")
    try:
        try:
            sys.path.append(str(Path(__file__).resolve().parent.parent))  # the checkout's ldw
            import ldw

            wh = ldw.connect(in_process=True, config={"sources": {"bench": {"url": url}}},
                             shm_dir=shm)
        except BaseException as exc:  # the API may not exist yet
            return {"status": f"unavailable: {type(exc).__name__}: {exc}"}

        def read() -> dict[str, Any]:
            extra = {"partition_on": key, "partitions": 2} if key else {}
            ds = wh.map(table, f"bench.{schema}.{table}", **extra)
            ds.cache()
            return {"rows": ds.info()["rows"], "bytes_fn": lambda: ds.to_arrow().nbytes}

        result = measure(read)
        # Pages ldw wrote to /dev/shm are memory too, but not in this process's RSS.
        result["shm_bytes"] = sum(f.stat().st_blocks * 512 for f in Path(shm).rglob("*")
                                  if f.is_file())
        if hasattr(wh, "close"):
            wh.close()
        return result
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def child(method: str, url: str, schema: str, table: str, key: str) -> dict[str, Any]:
    query = f'SELECT * FROM "{schema}".{table}'
    two = key if method.endswith("_2p") else None
    if method.startswith("ldw"):
        return run_ldw(url, schema, table, two)
    for module in PRELOAD[method]:
        importlib.import_module(module)
    readers = {
        "copy_binary": lambda: read_copy_binary(url, query),
        "connectorx": lambda: read_connectorx(url, query, None),
        "connectorx_2p": lambda: read_connectorx(url, query, key),
        "adbc": lambda: read_adbc(url, query),
        "pandas_read_sql": lambda: read_sqlalchemy(url, query, "pandas"),
        "polars_read_database": lambda: read_sqlalchemy(url, query, "polars"),
    }
    return measure(readers[method])


def run_child(method: str, url: str, schema: str, table: str, timeout: float) -> dict[str, Any]:
    key = DDL[table].split()[0]
    cmd = [sys.executable, __file__, "--child", method, "--url", url, "--schema", schema,
           "--tables", table, "--key", key]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: timeout after {timeout:.0f}s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": redact(f"failed: exit {proc.returncode}: {tail}", url)}
    return json.loads(lines[-1])


def wait_for_table(url: str, schema: str, table: str, scale: float, limit: float = 3600) -> int:
    """Block until the loader has finished ``table`` (its COPY commits as one transaction)."""
    import psycopg

    deadline = time.monotonic() + limit
    while True:
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(f'select count(*) from "{schema}".{table}').fetchone()[0]
        want = SF1_ROWS.get(table) if scale == 1 else None
        if rows and (want is None or rows == want):
            return rows
        if time.monotonic() > deadline:
            raise SystemExit(f"{schema}.{table} still has {rows} rows; is the load running?")
        print(f"waiting for {schema}.{table} to load ({rows} rows so far)", file=sys.stderr)
        time.sleep(15)


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "seconds" in r]
    return min(ok, key=lambda r: r["seconds"]) if ok else runs[0]


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(table: str, results: dict[str, dict[str, Any]]) -> str:
    copy_s = results.get("copy_binary", {}).get("seconds")
    ldw_s = results.get("ldw", {}).get("seconds")
    head = ("| method | seconds | rows | Arrow bytes (MB) | RSS before (MB) | peak RSS (MB) "
            "| peak RSS delta (MB) | x COPY | x ldw |")
    lines = [f"### {table}", "", head, "|" + "---|" * 9]
    for method, r in results.items():
        if "seconds" not in r:
            lines.append(f"| {method} | {r.get('status', 'failed')} |" + " |" * 7)
            continue
        s = r["seconds"]
        nbytes = r.get("bytes")
        lines.append(
            f"| {method} | {s:.2f} | {r['rows']:,} | {fmt(nbytes and nbytes / MB, '.0f')} "
            f"| {r['rss_before'] / MB:.0f} | {r['rss_peak'] / MB:.0f} | {r['rss_delta'] / MB:.0f}"
            + (f" (+{r['shm_bytes'] / MB:.0f} shm)" if "shm_bytes" in r else "") + " "
            f"| {fmt(copy_s and s / copy_s, '.2f')} | {fmt(ldw_s and s / ldw_s, '.2f')} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tables", nargs="+", default=["orders", "lineitem"], choices=sorted(DDL))
    p.add_argument("--scale", type=float, default=1)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--only", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--schema", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.child:
        try:
            out = child(args.child, args.url, args.schema, args.tables[0], args.key)
        except BaseException as exc:  # incl. pyo3 PanicException
            out = {"status": f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:200]}
        if "status" in out:
            out["status"] = redact(out["status"], args.url)
        print(json.dumps(out))
        return
    schema = schema_name(args.scale)
    report: dict[str, Any] = {"scale": args.scale, "schema": schema, "repeat": args.repeat,
                              "host": urlsplit(args.url).hostname, "tables": {}}
    for table in args.tables:
        wait_for_table(args.url, schema, table, args.scale)
        results: dict[str, dict[str, Any]] = {}
        for method in args.only:
            runs = [run_child(method, args.url, schema, table, args.timeout)
                    for _ in range(args.repeat)]
            results[method] = {**best(runs), "runs": runs}
            done = results[method]
            print(f"{table} {method}: {done.get('seconds', done.get('status'))}",
                  file=sys.stderr, flush=True)
        report["tables"][table] = results
        print(markdown(table, results) + "\n", flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"materialize-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
