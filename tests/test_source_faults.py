"""A source connection killed mid-read: SourceUnavailable naming the alias, nothing published,
the previous version still served and flagged stale, and a retry succeeds."""

from __future__ import annotations

import pathlib
import threading
import time

import pytest
import sqlalchemy as sa
from conftest import MYSQL_URL, POSTGRES_URL, make_warehouse

import ldw

ROWS = 3_000_000


def _kill_when_running(engine: sa.Engine, find: str, kill: str, stop: threading.Event,
                       killed: list) -> None:
    """Kill the first ldw query that shows up on the source."""
    deadline = time.monotonic() + 60
    with engine.connect() as conn:
        while not stop.is_set() and time.monotonic() < deadline:
            params = {"tag": "%/* ldw:%"} if ":tag" in find else {}
            ids = [row[0] for row in conn.execute(sa.text(find), params)]
            conn.rollback()  # pg_stat_activity is a snapshot per transaction
            if ids:
                for ident in ids:
                    conn.exec_driver_sql(kill.format(int(ident)))
                killed.extend(ids)
                return
            time.sleep(0.02)


def _refresh_with_a_kill(wh, ds, engine, find, kill) -> BaseException:
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_when_running, args=(engine, find, kill, stop, killed))
    killer.start()
    try:
        with pytest.raises(ldw.SourceError) as info:  # a slow consumer keeps the query active
            ds.refresh(progress=lambda p: time.sleep(0.2))
    finally:
        stop.set()
        killer.join()
    assert killed, "the read was never seen on the source"
    return info.value





@pytest.mark.postgres
def test_postgres_backend_terminated_mid_read(pg_engine, shm_dir):
    wh = make_warehouse(shm_dir, pg={"url": POSTGRES_URL})
    # a query that keeps the backend busy for seconds (ADBC drains a plain table at once)
    ds = wh.map("big", sql=f"select g as id, md5(md5(md5(g::text))) as tag from "
                f"generate_series(1, {ROWS}) g", source="pg").cache()
    version = ds.info()["version"]
    error = _refresh_with_a_kill(
        wh, ds, pg_engine,
        # ADBC's COPY does not show its text in pg_stat_activity; its connections are named
        "select pid from pg_stat_activity where application_name = 'ldw' "
        "and pid <> pg_backend_pid() and state = 'active'",
        "select pg_terminate_backend({})")
    assert isinstance(error, ldw.SourceUnavailable), repr(error)
    assert "'pg'" in str(error) and "postgresql://" not in str(error)
    info = ds.info()
    assert info["version"] == version and info["stale"] and info["state"] == "cached"
    assert ds.to_arrow().num_rows == ROWS          # the previous version is still served
    time.sleep(0.5)
    with pg_engine.connect() as conn:                # nothing of ours left on the source
        assert not list(conn.execute(sa.text(
            "select pid from pg_stat_activity where application_name = 'ldw' "
            "and state = 'active'")))
    assert not [p for p in pathlib.Path(shm_dir).rglob(".tmp-*")]
    assert ds.refresh().info()["version"] != version and not ds.info()["stale"]
    wh.close()


@pytest.mark.mysql
def test_mariadb_connection_killed_mid_read(mysql_engine, mysql_db, shm_dir):
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {mysql_db}.big (id int primary key, tag char(32))")
        conn.exec_driver_sql(f"insert into {mysql_db}.big select seq, md5(seq) "
                             f"from seq_1_to_{ROWS}")
    wh = make_warehouse(shm_dir, my={"url": MYSQL_URL})
    ds = wh.map("big", f"my.{mysql_db}.big").cache()
    version = ds.info()["version"]
    error = _refresh_with_a_kill(
        wh, ds, mysql_engine,
        "select id from information_schema.processlist where info like :tag "
        "and id <> connection_id()",
        "KILL CONNECTION {}")
    assert isinstance(error, ldw.SourceError) and "'my'" in str(error), repr(error)
    assert "mysql://" not in str(error)
    info = ds.info()
    assert info["version"] == version and info["stale"]
    assert ds.to_arrow().num_rows == ROWS
    assert ds.refresh().info()["version"] != version
    wh.close()
