"""Mapping, pushdown and partitioned reads against the real MariaDB."""

import threading

import polars as pl
import pytest

import ldw

pytestmark = pytest.mark.mysql

N = 5_000


@pytest.fixture
def accounts(mysql_engine, mysql_db):
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create table {mysql_db}.accounts (id int primary key, owner varchar(20), "
            "balance decimal(12,2), opened date) engine=InnoDB")
        conn.exec_driver_sql(
            f"insert into {mysql_db}.accounts select seq, concat('o', seq mod 50), 100.00, "
            f"date '2020-01-01' + interval (seq mod 300) day from seq_1_to_{N}")
        conn.exec_driver_sql(f"insert into {mysql_db}.accounts values "
                             "(0, 'back\\\\slash''q', 0.00, null)")
    return f"my.{mysql_db}.accounts"


def test_cache_pushdown_and_escaping(mysql_wh, accounts):
    ds = mysql_wh.map("acc", accounts, columns=["id", "balance"],
                      where="balance >= 100 AND id <= 10")
    df = ds.to_polars()
    assert sorted(df["id"].to_list()) == list(range(1, 11))
    sql = ds.info()["source_sql"][0]
    assert "balance >= 100" in sql and "owner" not in sql
    tricky = mysql_wh.map("tricky", accounts, where="owner = 'back\\\\slash''q'").to_polars()
    assert tricky["id"].to_list() == [0]


def test_partitioned_equals_whole_and_sees_one_snapshot(mysql_wh, mysql_engine, accounts):
    table = accounts[3:]
    whole = mysql_wh.map("whole", accounts).to_polars().sort("id")
    parts = mysql_wh.map("parts", accounts, partition_on="id", partitions=3)
    assert parts.to_polars().sort("id").equals(whole)
    assert len(parts.info()["source_sql"]) == 4  # 3 ranges + NULL keys

    stop = threading.Event()

    def writer():
        while not stop.is_set():
            with mysql_engine.begin() as conn:
                conn.exec_driver_sql(f"update {table} set balance = balance - 7 where id = 1")
                conn.exec_driver_sql(f"update {table} set balance = balance + 7 where id = {N}")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(4):
            total = parts.refresh().to_polars()["balance"].cast(pl.Float64).sum()
            assert total == pytest.approx(N * 100.0)
    finally:
        stop.set()
        thread.join()


def test_lazy_and_sql_mapping(mysql_wh, accounts):
    ds = mysql_wh.map("acc", accounts)
    got = ds.lazy().filter(pl.col("id") < 5).select("id").collect()
    assert sorted(got["id"].to_list()) == [0, 1, 2, 3, 4]
    assert "id < 5" in mysql_wh._engine.query_log[-1][1]
    db = accounts.split(".")[1]
    agg = mysql_wh.map("agg", sql=f"select owner, count(*) as n from {db}.accounts "
                       "group by owner", source="my", where="n > 50").to_polars()
    assert agg.height == 50 and set(agg["n"].to_list()) == {100}


def test_bad_input(mysql_wh, accounts):
    with pytest.raises(ldw.InvalidMapping):
        mysql_wh.map("x", accounts, where="1=1; DROP TABLE accounts")
    with pytest.raises(ldw.UnknownTable):
        mysql_wh.map("x", accounts + "_nope")
    assert mysql_wh.map("ok", accounts).to_arrow().num_rows == N + 1


def test_generic_path_matches(mysql_wh, accounts):
    fast = mysql_wh.map("fast", accounts).to_polars().sort("id")
    slow = mysql_wh.map("slow", "my_dbapi" + accounts[2:]).to_polars().sort("id")
    assert fast.equals(slow)
