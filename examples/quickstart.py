"""Quickstart: map a SQLite table, look at it lazily, cache it, read it back zero-copy."""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path

import polars as pl

import ldw


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="ldw-quickstart-"))
    db = work / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table orders (id integer primary key, customer text, amount real)")
        conn.executemany("insert into orders values (?, ?, ?)",
                         [(i, f"c{i % 100}", i * 1.5) for i in range(1, 200_001)])
    wh = ldw.connect(in_process=True, config={"sources": {"shop": {"url": f"sqlite:///{db}"}}},
                     shm_dir=str(work / "cache"))
    print(wh.describe("shop.orders"))
    orders = wh.map("orders", "shop.orders", where="amount > 100")
    print("mapped:", orders, "schema:", orders.schema.names)
    print(orders.lazy().filter(pl.col("customer") == "c7").head(3).collect())
    started = time.perf_counter()
    orders.cache(progress=lambda p: p.done and print(
        f"cached {p.rows:,} rows, {p.bytes / 1e6:.1f} MB at {p.mb_per_s:.0f} MB/s"))
    print(f"cache took {time.perf_counter() - started:.3f}s")
    started = time.perf_counter()
    df = orders.to_polars()
    print(f"to_polars (memory map) took {(time.perf_counter() - started) * 1000:.1f} ms:",
          df.shape)
    print(df.group_by("customer").agg(pl.col("amount").sum()).sort("customer").head(3))


if __name__ == "__main__":
    main()
