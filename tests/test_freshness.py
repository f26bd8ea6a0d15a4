"""Change detection and refresh policies against real PostgreSQL and MariaDB: a changed source
is reported stale within the interval with how it was decided, an unchanged one never is, a
hung source never blocks reading the cached version, on_access and every refresh by themselves,
and the magics declare and refresh incrementally."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import MYSQL_URL, POSTGRES_URL
from freshness_helpers import ROWS, Source, same, wait_stale

import ldw

INTERVAL = 0.2


@pytest.fixture(params=["pg", "my"])
def src(request: pytest.FixtureRequest) -> Iterator[Source]:
    if request.param == "pg":
        engine, schema = request.getfixturevalue("pg_engine"), request.getfixturevalue("pg_schema")
    else:
        engine, schema = (request.getfixturevalue("mysql_engine"),
                          request.getfixturevalue("mysql_db"))
    source = Source(request.param, engine, schema)
    source.create()
    yield source


def _connect(src: Source, shm_dir: str, *, interval: float = INTERVAL, timeout: str | None = None,
             **config: object) -> ldw.Warehouse:
    url = POSTGRES_URL if src.kind == "pg" else MYSQL_URL
    table = {"url": url, **({"timeout": timeout} if timeout else {})}
    return ldw.connect(in_process=True, config={"sources": {src.kind: table}, **config},
                       shm_dir=shm_dir, spill_dir=f"{shm_dir}-spill", memory_limit="2GiB",
                       freshness_interval=f"{interval}s")


@pytest.fixture
def wh(src: Source, shm_dir: str) -> Iterator[ldw.Warehouse]:
    warehouse = _connect(src, shm_dir)
    yield warehouse
    warehouse.close()


def test_an_unchanged_source_is_never_stale(src: Source, wh: ldw.Warehouse) -> None:
    orders = wh.map("orders", src.table, key="o_orderkey").cache()
    checks = set()
    for _ in range(6):
        info = orders.info()
        assert info["stale"] is False, info["freshness"]
        assert info["freshness"]["error"] is None and info["freshness"]["reason"] is None
        checks.add(info["freshness"]["checked_at"])
        time.sleep(INTERVAL + 0.05)
    assert len(checks) >= 4  # it did check again each time the interval had passed
    counters = "pg_stat_user_tables" if src.kind == "pg" else "information_schema"
    assert counters in info["freshness"]["method"] and "probe" in info["freshness"]["method"]


def test_appended_rows_are_reported_with_the_reason(src: Source, wh: ldw.Warehouse) -> None:
    orders = wh.map("orders", src.table, key="o_orderkey").cache()
    assert orders.info()["stale"] is False
    src.insert(ROWS + 1, ROWS + ROWS // 100)
    info = wait_stale(orders, True, within=INTERVAL + 10)
    assert info["stale"] is True
    reason = info["freshness"]["reason"]
    assert f"row count {ROWS} -> {ROWS + ROWS // 100}" in reason
    assert f"max(o_orderkey) {ROWS} -> {ROWS + ROWS // 100}" in reason
    assert "stale" in repr(orders) and "row count" in repr(orders)
    orders.refresh()
    assert orders.info()["stale"] is False and same(orders, src)


def test_an_update_is_seen_by_the_table_counters(src: Source, wh: ldw.Warehouse) -> None:
    """No row count or key changes: only the dialect's own statistics can tell."""
    orders = wh.map("orders", src.table).cache()
    assert orders.info()["stale"] is False, orders.info()["freshness"]
    src.run(f"update {src.schema}.orders set o_comment = 'new' where o_orderkey = 42")
    info = wait_stale(orders, True, within=INTERVAL + 10)
    assert info["stale"] is True
    words = "rows inserted/updated/deleted" if src.kind == "pg" else "last written"
    assert words in info["freshness"]["reason"]


def test_a_hung_source_never_blocks_the_cached_version(src: Source, shm_dir: str) -> None:
    """Another session holds an exclusive lock: checks time out in the background while the
    cached versions (manual and on_access alike) are read at once."""
    wh = _connect(src, shm_dir, interval=0, timeout="3s")
    try:
        manual = wh.map("manual", src.table).cache()
        eager = wh.map("eager", src.table, refresh="on_access").cache()
        expected = manual.to_arrow().num_rows
        locked, release = threading.Event(), threading.Event()

        def hold_lock() -> None:
            with src.engine.connect() as conn:
                statement = (f"lock table {src.schema}.orders in access exclusive mode"
                             if src.kind == "pg" else f"lock tables {src.schema}.orders write")
                conn.exec_driver_sql(statement)
                locked.set()
                release.wait(30)
                conn.rollback()
                if src.kind == "my":
                    conn.exec_driver_sql("unlock tables")

        holder = threading.Thread(target=hold_lock)
        holder.start()
        try:
            assert locked.wait(10)
            started = time.monotonic()
            assert manual.to_arrow().num_rows == expected
            assert eager.to_arrow().num_rows == expected  # its check waits at most 3 s
            info = manual.info()  # answers with what it knows, check still running
            assert info["state"] == "cached" and info["rows"] == expected
            assert time.monotonic() - started < 9  # never the lock's 30 s
        finally:
            release.set()
            holder.join()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            info = manual.info()
            if not info["freshness"].get("checking") and info["freshness"].get("error") is None:
                break
            time.sleep(0.2)
        assert info["stale"] is False
    finally:
        wh.close()


def test_on_access_refreshes_a_stale_dataset_before_a_read(src: Source, wh: ldw.Warehouse
                                                           ) -> None:
    orders = wh.map("orders", src.table, incremental="append", key="o_orderkey",
                    refresh="on_access").cache()
    held = orders.to_arrow()
    src.insert(ROWS + 1, ROWS + 300)
    time.sleep(INTERVAL)
    fresh = orders.to_arrow()
    assert fresh.num_rows == ROWS + 300 and held.num_rows == ROWS  # the old reader keeps its own
    assert orders.info()["freshness"]["last_refresh"]["mode"] == "append"
    assert same(orders, src)


def test_every_refreshes_in_the_background(src: Source, wh: ldw.Warehouse) -> None:
    orders = wh.map("orders", src.table, incremental="append", key="o_orderkey",
                    refresh="every 1s").cache()
    src.insert(ROWS + 1, ROWS + 200)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and wh._engine.dataset(
            wh._backend.user, "orders").version.rows != ROWS + 200:
        time.sleep(0.2)  # looking at the record, not info(): nothing here triggers a check
    assert orders.info()["rows"] == ROWS + 200
    assert same(orders, src)


def test_refresh_policies_per_table_glob_in_the_config(src: Source, shm_dir: str) -> None:
    wh = _connect(src, shm_dir, refresh={f"{src.kind}.*.ord*": "on_access",
                                         "*": "every 10m"})
    try:
        assert wh.map("a", src.table).info()["freshness"]["refresh"] == "on_access"
        assert wh.map("b", src.table, refresh="manual").info()["freshness"]["refresh"] == "manual"
    finally:
        wh.close()
    with pytest.raises(ldw.ConfigError, match="every <duration>"):
        _connect(src, shm_dir, refresh={"*": "sometimes"})


def test_magics_declare_incremental_and_refresh_full(pg_engine: sa.Engine, pg_schema: str,
                                                      tmp_path: Path) -> None:
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    src = Source("pg", pg_engine, pg_schema)
    src.create()
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    shell = InteractiveShell.instance(config=config)
    shell.run_line_magic("load_ext", "ldw.extension")
    toml = tmp_path / "ldw.toml"
    toml.write_text(f'[server]\nshm_dir = "{tmp_path}/shm"\nspill_dir = "{tmp_path}/spill"\n'
                    f'state_dir = "{tmp_path}/state"\n\n[sources.pg]\nurl = "{POSTGRES_URL}"\n')
    try:
        shell.run_line_magic("ldw", f"connect --in-process --config {toml}")
        shell.run_line_magic("ldw", f"map orders = {src.table} --incremental append "
                                    "--key o_orderkey --refresh on_access --cache")
        orders = shell.user_ns["orders"]
        assert orders.info()["freshness"]["incremental"] == "append"
        src.insert(ROWS + 1, ROWS + 10)
        shell.run_line_magic("ldw", "refresh orders")
        assert orders.info()["freshness"]["last_refresh"]["mode"] == "append"
        shell.run_line_magic("ldw", "refresh orders --full")
        assert orders.info()["freshness"]["last_refresh"]["reason"] == "full=True"
        assert same(orders, src)
    finally:
        shell.magics_manager.registry["LdwMagics"].close()
        shell.reset(new_session=False)


def test_changing_only_the_refresh_policy_keeps_the_version(src: Source, wh: ldw.Warehouse
                                                            ) -> None:
    orders = wh.map("orders", src.table, incremental="append", key="o_orderkey").cache()
    version = orders.info()["version"]
    again = wh.map("orders", src.table, incremental="append", key="o_orderkey",
                   refresh="on_access")
    info = again.info()
    assert info["version"] == version and info["freshness"]["refresh"] == "on_access"
    wh.map("orders", src.table, incremental="append", key="o_orderkey", where="o_custkey > 1")
    assert orders.info()["version"] is None  # what to read changed: the version goes
