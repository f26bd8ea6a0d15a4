"""Generate TPC-H data with ``tpchgen-cli`` and load it into PostgreSQL (schema ``tpch_sf<N>``).

Usage: python benchmarks/tpch_data.py --scale 1 --url postgresql://postgres@127.0.0.1/test
Idempotent: a schema whose row counts already match is left alone.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg

DDL = {
    "region": "r_regionkey integer primary key, r_name char(25) not null, "
    "r_comment varchar(152) not null",
    "nation": "n_nationkey integer primary key, n_name char(25) not null, "
    "n_regionkey integer not null, n_comment varchar(152) not null",
    "part": "p_partkey integer primary key, p_name varchar(55) not null, p_mfgr char(25) not null, "
    "p_brand char(10) not null, p_type varchar(25) not null, p_size integer not null, "
    "p_container char(10) not null, p_retailprice numeric(15,2) not null, "
    "p_comment varchar(23) not null",
    "supplier": "s_suppkey integer primary key, s_name char(25) not null, "
    "s_address varchar(40) not null, s_nationkey integer not null, s_phone char(15) not null, "
    "s_acctbal numeric(15,2) not null, s_comment varchar(101) not null",
    "partsupp": "ps_partkey integer not null, ps_suppkey integer not null, "
    "ps_availqty integer not null, ps_supplycost numeric(15,2) not null, "
    "ps_comment varchar(199) not null, primary key (ps_partkey, ps_suppkey)",
    "customer": "c_custkey integer primary key, c_name varchar(25) not null, "
    "c_address varchar(40) not null, c_nationkey integer not null, c_phone char(15) not null, "
    "c_acctbal numeric(15,2) not null, c_mktsegment char(10) not null, "
    "c_comment varchar(117) not null",
    "orders": "o_orderkey bigint primary key, o_custkey integer not null, "
    "o_orderstatus char(1) not null, o_totalprice numeric(15,2) not null, "
    "o_orderdate date not null, o_orderpriority char(15) not null, o_clerk char(15) not null, "
    "o_shippriority integer not null, o_comment varchar(79) not null",
    "lineitem": "l_orderkey bigint not null, l_partkey integer not null, "
    "l_suppkey integer not null, l_linenumber integer not null, l_quantity numeric(15,2) not null, "
    "l_extendedprice numeric(15,2) not null, l_discount numeric(15,2) not null, "
    "l_tax numeric(15,2) not null, l_returnflag char(1) not null, l_linestatus char(1) not null, "
    "l_shipdate date not null, l_commitdate date not null, l_receiptdate date not null, "
    "l_shipinstruct char(25) not null, l_shipmode char(10) not null, "
    "l_comment varchar(44) not null, primary key (l_orderkey, l_linenumber)",
}
ROWS_SF1 = {"region": 5, "nation": 25, "supplier": 10_000, "part": 200_000,
            "partsupp": 800_000, "customer": 150_000, "orders": 1_500_000}


def schema_name(scale: float) -> str:
    return "tpch_sf" + (str(scale).replace(".", "_") if scale != int(scale) else str(int(scale)))


def generate(scale: float, out: Path) -> Path:
    """Write the eight tables as pipe-delimited .tbl files (tpchgen-cli: dev extra)."""
    out.mkdir(parents=True, exist_ok=True)
    if all((out / f"{t}.tbl").exists() for t in DDL):
        return out
    exe = shutil.which("tpchgen-cli") or str(Path(sys.executable).parent / "tpchgen-cli")
    subprocess.run([exe, "-s", str(scale), "--output-dir", str(out)], check=True)
    return out


def load_postgres(url: str, scale: float, data_root: Path) -> str:
    """Create and fill ``tpch_sf<N>`` in PostgreSQL unless it is already complete."""
    schema = schema_name(scale)
    with psycopg.connect(url, autocommit=True) as conn:
        have = conn.execute(
            "select count(*) from information_schema.tables where table_schema = %s", (schema,)
        ).fetchone()[0]
        if have == len(DDL):
            n = conn.execute(f'select count(*) from "{schema}".region').fetchone()[0]
            if n == 5:
                return schema
        files = generate(scale, data_root / schema)
        conn.execute(f'drop schema if exists "{schema}" cascade')
        conn.execute(f'create schema "{schema}"')
        for table, cols in DDL.items():
            started = time.perf_counter()
            conn.execute(f'create table "{schema}".{table} ({cols})')
            with conn.cursor().copy(
                f"copy \"{schema}\".{table} from stdin (format csv, delimiter '|')"
            ) as copy, open(files / f"{table}.tbl", "rb") as fh:
                rest = b""
                while chunk := fh.read(1 << 20):
                    # tpchgen's .tbl lines end with a trailing '|'; strip it per whole line.
                    chunk = rest + chunk
                    cut = chunk.rfind(b"\n") + 1
                    copy.write(chunk[:cut].replace(b"|\n", b"\n"))
                    rest = chunk[cut:]
            print(f"loaded {schema}.{table} in {time.perf_counter() - started:.1f}s", flush=True)
        conn.execute("analyze")
    return schema


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1)
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()
    print(load_postgres(args.url, args.scale, args.data))


if __name__ == "__main__":
    main()
