"""Mapping, pushdown, partitioned reads and bad input against the real PostgreSQL."""

import threading

import polars as pl
import pyarrow as pa
import pytest
from conftest import POSTGRES_URL, make_warehouse

import ldw

pytestmark = pytest.mark.postgres

N = 10_000


@pytest.fixture
def orders(pg_engine, pg_schema):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create table {pg_schema}.orders (id bigint primary key, cust int, "
            "price numeric(12,2), day date, status char(3), note text)")
        conn.exec_driver_sql(
            f"insert into {pg_schema}.orders select i, "
            "case when mod(i, 10) = 0 then null else mod(i, 97) end, "
            "(i * 1.25)::numeric(12,2), date '2020-01-01' + mod(i, 400), "
            "case when mod(i, 2) = 0 then 'ab' else 'xyz' end, 'n' || i "
            f"from generate_series(1, {N}) i")
        conn.exec_driver_sql(f"insert into {pg_schema}.orders values (0, 5, -1.00, null, null, "
                             "'it''s 50%% off')")
    return f"pg.{pg_schema}.orders"


def test_map_knows_schema_without_moving_rows(pg_wh, orders):
    before = len(pg_wh._engine.query_log)
    ds = pg_wh.map("orders", orders)
    assert ds.state == "mapped"
    assert ds.schema.field("price").type == pa.decimal128(12, 2)
    assert ds.schema.field("status").type == pa.string()
    assert len(pg_wh._engine.query_log) == before  # the schema came from a LIMIT 0 probe
    assert ds.info()["rows"] is None


def test_cache_and_read_back(pg_wh, orders):
    events = []
    ds = pg_wh.map("orders", orders).cache(progress=events.append)
    table = ds.to_arrow()
    assert table.num_rows == N + 1 and ds.state == "cached"
    assert events[-1].done and events[-1].rows == N + 1
    df = ds.to_polars()
    assert df.filter(pl.col("id") == 2)["status"].item() == "ab"  # char(n) trimmed
    assert df.filter(pl.col("id") == 0)["note"].item() == "it's 50% off"
    assert ds.info()["lossy"]["status"].startswith("char(n)")
    assert ds.to_pandas().shape == (N + 1, 6)
    assert pg_wh.datasets()["state"].to_list() == ["cached"]


def test_projection_and_filter_reach_the_source(pg_wh, orders):
    ds = pg_wh.map("o", orders, columns=["id", "price"], where="price > 100 AND id < 500")
    ds.cache()
    sql = ds.info()["source_sql"][0]
    assert "price > 100" in sql and "id < 500" in sql
    assert "note" not in sql and "status" not in sql
    table = ds.to_arrow()
    assert table.column_names == ["id", "price"]
    assert table.num_rows == len([i for i in range(1, N + 1) if i * 1.25 > 100 and i < 500])


def test_lazy_pushdown_while_uncached(pg_wh, orders):
    ds = pg_wh.map("orders", orders)
    log = pg_wh._engine.query_log
    start = len(log)
    result = ds.lazy().filter(pl.col("cust") == 5).select("id", "cust").collect()
    expected = sorted([i for i in range(1, N + 1) if i % 10 and i % 97 == 5] + [0])
    assert sorted(result["id"].to_list()) == expected
    sql = log[-1][1]
    assert len(log) == start + 1
    assert "cust = 5" in sql and "note" not in sql and "price" not in sql
    assert ds.state == "mapped"  # a lazy read does not cache


def test_lazy_reapplies_untranslatable_predicates_and_limits(pg_wh, orders):
    ds = pg_wh.map("orders", orders)
    result = ds.lazy().filter(pl.col("note").str.ends_with("7") & (pl.col("id") < 100)).collect()
    assert sorted(result["id"].to_list()) == [i for i in range(1, 100) if str(i).endswith("7")]
    assert "id < 100" in pg_wh._engine.query_log[-1][1]
    head = ds.head(3)
    assert head.height == 3
    assert "LIMIT 3" in pg_wh._engine.query_log[-1][1]


def test_lazy_reads_the_cache_once_cached(pg_wh, orders):
    ds = pg_wh.map("orders", orders).cache()
    start = len(pg_wh._engine.query_log)
    assert ds.lazy().filter(pl.col("id") < 10).collect().height == 10
    assert len(pg_wh._engine.query_log) == start


@pytest.mark.parametrize("key", ["id", "cust", "day"])
def test_partitioned_read_equals_unpartitioned(pg_wh, orders, key):
    whole = pg_wh.map("whole", orders).cache().to_polars().sort("id")
    parts = pg_wh.map("parts", orders, partition_on=key, partitions=4).cache()
    sqls = parts.info()["source_sql"]
    assert len(sqls) >= 3 and any("IS NULL" in s for s in sqls)  # ranges + a NULL partition
    assert parts.to_polars().sort("id").equals(whole)


def test_partitions_share_one_snapshot(pg_wh, pg_engine, orders):
    """A writer that commits during the read must be invisible to every partition."""
    schema = orders.split(".")[1]
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            with pg_engine.begin() as conn:
                conn.exec_driver_sql(f"update {schema}.orders set price = price + 1 where id = 1")
                conn.exec_driver_sql(f"update {schema}.orders set price = price - 1 where id = 2")

    total = None
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            ds = pg_wh.map("parts", orders, partition_on="id", partitions=4).cache()
            t = ds.to_polars()
            now = t["price"].cast(pl.Float64).sum()
            total = now if total is None else total
            assert abs(now - total) < 1e-6
            ds.evict()
    finally:
        stop.set()
        thread.join()


def test_map_sql(pg_wh, orders):
    schema = orders.split(".")[1]
    ds = pg_wh.map("agg", sql=f"select status, count(*) as n from {schema}.orders group by status",
                   source="pg", where="n > 10")
    df = ds.to_polars().sort("status")
    assert df["status"].to_list() == ["ab", "xyz"]
    assert df["n"].to_list() == [N // 2, N // 2]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"table": "nope.s.t"}, ldw.UnknownSource, "no source named 'nope'"),
    ({"table": "pg.no_such_schema.t"}, ldw.UnknownTable, "no table"),
    ({"table": "pg.orders"}, ldw.UnknownTable, "no table"),
    ({"columns": ["id", "bogus"]}, ldw.UnknownTable, "bogus"),
    ({"where": "1=1; DROP TABLE orders"}, ldw.InvalidMapping, "single expression"),
    ({"where": "x') OR ('1'='1"}, ldw.InvalidMapping, "cannot parse"),
    ({"where": "id in (select id from pg_user)"}, ldw.InvalidMapping, "subquer"),
    ({"where": "bogus > 1"}, ldw.InvalidMapping, "unknown column"),
    ({"partition_on": "bogus", "partitions": 2}, ldw.UnknownTable, "bogus"),
    ({"limit": -1}, ldw.InvalidMapping, "limit"),
    ({"table": "just_a_name"}, ldw.InvalidMapping, "SOURCE.SCHEMA.TABLE"),
])
def test_bad_input_raises_clear_errors_and_runs_nothing(pg_wh, pg_engine, orders, kwargs,
                                                        error, message):
    args = {"table": orders, **kwargs}
    table = args.pop("table")
    before = len(pg_wh._engine.query_log)
    with pytest.raises(error, match=message):
        pg_wh.map("bad", table, **args)
    assert len(pg_wh._engine.query_log) == before
    with pg_engine.connect() as conn:  # nothing was dropped
        count = conn.exec_driver_sql(f"select count(*) from {orders[3:]}").scalar_one()
    assert count == N + 1


def test_bad_sql_mappings(pg_wh, orders):
    schema = orders.split(".")[1]
    with pytest.raises(ldw.InvalidMapping, match="SELECT query, not DELETE"):
        pg_wh.map("x", sql=f"delete from {schema}.orders returning *", source="pg")
    with pytest.raises(ldw.InvalidMapping, match="source="):
        pg_wh.map("x", sql="select 1")
    with pytest.raises(ldw.SourceError, match="'pg'"):
        pg_wh.map("x", sql="select * from no_such_table", source="pg")


def test_unknown_dataset(pg_wh):
    with pytest.raises(ldw.UnknownDataset, match="map it first"):
        pg_wh.dataset("ghost")


def test_interrupt_cancels_and_publishes_nothing(pg_wh, orders, shm_dir):
    ds = pg_wh.map("orders", orders)

    def interrupt(progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ds.cache(progress=interrupt)
    assert ds.state == "failed"
    import pathlib
    assert not list(pathlib.Path(shm_dir).rglob("*.arrow"))
    assert ds.cache().to_arrow().num_rows == N + 1  # a retry works


def test_password_never_in_errors_or_reprs(pg_engine, shm_dir, monkeypatch):
    canary = "Pw-canary-7f3@x"
    monkeypatch.setenv("LDW_PG_PW", canary)
    url = POSTGRES_URL.replace("postgres@", "ldw_nobody@")
    wh = make_warehouse(shm_dir, bad={"url": url, "password_env": "LDW_PG_PW"},
                        down={"url": "postgresql://u@127.0.0.1:1/db", "password_env": "LDW_PG_PW"})
    texts = [repr(wh), str(wh.sources()), repr(wh._engine.connector("bad"))]
    for alias in ("bad", "down"):
        with pytest.raises(ldw.LdwError) as info:
            wh.map("x", f"{alias}.public.t")
        texts += [str(info.value), repr(info.value)]
        assert f"'{alias}'" in str(info.value)
        cause = info.value.__cause__ or info.value.__context__
        texts += [str(cause)] if cause is not None else []
    assert all(canary not in t and "Pw-canary" not in t for t in texts), texts
    wh.close()


def test_refresh_publishes_a_new_version_and_readers_keep_theirs(pg_wh, pg_engine, orders):
    ds = pg_wh.map("orders", orders).cache()
    first = ds.to_arrow()
    v1 = ds.info()["version"]
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"delete from {orders[3:]} where id > 5000")
    ds.refresh()
    assert ds.info()["version"] != v1
    assert ds.to_arrow().num_rows == 5001
    assert first.num_rows == N + 1  # the mapped old version is still readable
    assert first.column("id").to_pylist()[-1] is not None


def test_generic_dbapi_path_matches(pg_wh, orders):
    fast = pg_wh.map("fast", orders).to_polars().sort("id")
    slow = pg_wh.map("slow", "pg_dbapi" + orders[2:]).to_polars().sort("id")
    assert fast.equals(slow)


def test_bound_parameters_schemas_and_preview(pg_wh, orders, pg_schema):
    import datetime as dt
    ds = pg_wh.map("p", orders, where="id < :top AND id >= :bottom",
                   params={"top": 10, "bottom": 3})
    assert sorted(ds.to_polars()["id"].to_list()) == list(range(3, 10))
    sql = ds.info()["source_sql"][0]
    assert "10" in sql and ":top" not in sql
    with pytest.raises(ldw.SourceError, match="invalid input syntax"):  # a value, never SQL
        pg_wh.map("t", orders, where="id = :v", params={"v": "1 OR 1=1"})
    with pytest.raises(ldw.InvalidMapping, match=":missing"):
        pg_wh.map("m", orders, where="id = :missing", params={})
    with pytest.raises(ldw.InvalidMapping):
        pg_wh.map("m", orders, where="id = :v", params={"v": [1, 2]})
    dated = pg_wh.map("d", sql="select current_date as today", source="pg",
                      where="today >= :since", params={"since": dt.date(2000, 1, 1)})
    assert dated.to_polars().height == 1
    assert pg_schema in pg_wh.schemas("pg")
    head = pg_wh.preview(orders, 3)
    assert head.height == 3
    assert "p" in pg_wh.datasets()["name"].to_list() and "preview" not in \
        pg_wh.datasets()["name"].to_list()


def test_types_created_after_the_first_read_are_read_as_such(pg_wh, pg_engine, orders,
                                                              pg_schema):
    """Reads share one ADBC database (its type catalog is read once, not per connection);
    mapping a query reads the catalog anew, so a type created since is no opaque value."""
    assert pg_wh.map("orders", orders).cache().to_arrow().num_rows == N + 1
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create type {pg_schema}.mood as enum ('sad', 'glad')")
        conn.exec_driver_sql(f"create table {pg_schema}.later as select i as id, "
                             f"(array['sad', 'glad'])[mod(i, 2) + 1]::{pg_schema}.mood as m "
                             "from generate_series(1, 3) i")
    later = pg_wh.map("later", f"pg.{pg_schema}.later")
    assert later.schema.field("m").type == pa.string() and "m" not in later.info()["lossy"]
    assert later.cache().to_arrow().sort_by("id").column("m").to_pylist() == [
        "glad", "sad", "glad"]
