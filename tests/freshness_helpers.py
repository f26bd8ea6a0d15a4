"""Shared set-up of the freshness and incremental tests: an orders-like table in PostgreSQL or
MariaDB that the tests append to, update and delete from, and a warehouse over it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa
import sqlalchemy as sa

import ldw

ROWS = 50_000


@dataclass
class Source:
    """One real database with a table ``<schema>.orders`` of ``ROWS`` rows."""

    kind: str  # "pg" | "my"
    engine: sa.Engine
    schema: str

    @property
    def table(self) -> str:
        return f"{self.kind}.{self.schema}.orders"

    def run(self, *statements: str, settle: bool = False) -> None:
        """Run writes in one transaction and make sure the source's statistics show them
        (PostgreSQL publishes a session's counters when it goes idle, within about a second;
        ``pg_stat_force_next_flush`` makes that immediate). ``settle``: on MariaDB, wait for
        the next second so that a later write moves ``update_time``."""
        with self.engine.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
            conn.commit()
            if self.kind == "pg":
                conn.exec_driver_sql("select pg_stat_force_next_flush()")
                conn.exec_driver_sql("select 1")
        if self.kind == "my" and settle:
            time.sleep(1.05)  # information_schema update_time has second resolution

    def create(self, rows: int = ROWS) -> None:
        ts = "timestamp" if self.kind == "pg" else "datetime(6)"
        text = "text" if self.kind == "pg" else "varchar(100)"
        self.run(f"create table {self.schema}.orders (o_orderkey bigint primary key, "
                 f"o_custkey integer not null, o_totalprice numeric(12,2), "
                 f"o_comment {text}, updated_at {ts} not null)")
        self.insert(1, rows, settle=True)

    def insert(self, first: int, last: int, *, settle: bool = False) -> None:
        """Rows ``first..last`` (inclusive) with a watermark of now."""
        if self.kind == "pg":
            self.run(f"insert into {self.schema}.orders select g, mod(g, 1000), g * 1.25, "
                     f"'comment ' || g, now() from generate_series({first}, {last}) g",
                     settle=settle)
        else:
            self.run(f"insert into {self.schema}.orders select seq, mod(seq, 1000), seq * 1.25, "
                     f"concat('comment ', seq), now(6) from seq_{first}_to_{last}",
                     settle=settle)

    def content(self) -> pa.Table:
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                f"select o_orderkey, o_custkey, o_totalprice, o_comment from "
                f"{self.schema}.orders order by o_orderkey").all()
        return pa.table({"o_orderkey": [r[0] for r in rows], "o_custkey": [r[1] for r in rows],
                         "o_totalprice": [r[2] for r in rows],
                         "o_comment": [r[3] for r in rows]})


def cached_content(dataset: ldw.Dataset) -> pa.Table:
    """The dataset's cached rows in key order, as plain Python-comparable columns."""
    table = dataset.to_arrow().select(["o_orderkey", "o_custkey", "o_totalprice", "o_comment"])
    rows = sorted(zip(*(table.column(n).to_pylist() for n in table.column_names), strict=True))
    return pa.table({name: [r[i] for r in rows] for i, name in enumerate(table.column_names)})


def same(dataset: ldw.Dataset, source: Source) -> bool:
    return cached_content(dataset).equals(source.content())


def wait_stale(dataset: ldw.Dataset, expected: bool, *, within: float) -> dict:
    """Poll ``info()`` until ``stale`` is ``expected`` (or ``within`` seconds pass)."""
    deadline = time.monotonic() + within
    while True:
        info = dataset.info()
        if info["stale"] is expected or time.monotonic() > deadline:
            return info
        time.sleep(0.1)
