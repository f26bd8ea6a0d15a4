"""SQLite through ADBC and the generic path; store behaviour that needs no server."""

import sqlite3

import polars as pl
import pyarrow as pa
import pytest
from conftest import make_warehouse

import ldw


@pytest.fixture
def lite(tmp_path, shm_dir):
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table items (id integer primary key, name text, price real, "
                     "added date, extra)")
        conn.executemany("insert into items values (?, ?, ?, ?, ?)",
                         [(i, f"item{i}", i * 0.5, "2024-01-02", i if i % 2 else "x")
                          for i in range(1, 1001)] + [(0, None, None, None, None)])
    wh = make_warehouse(shm_dir, lite={"url": f"sqlite:///{path}"},
                        lite_dbapi={"url": f"sqlite:///{path}", "transport": "dbapi"})
    yield wh
    wh.close()


def test_sqlite_map_cache_and_browse(lite):
    assert lite.tables("lite")["table"].to_list() == ["items"]
    described = lite.describe("lite.items")
    assert described.filter(pl.col("name") == "added")["note"].item().startswith("SQLite keeps")
    ds = lite.map("items", "lite.items", where="price > 100")
    df = ds.to_polars()
    assert df.height == 800 and df["extra"].dtype == pl.String
    assert df["price"].dtype == pl.Float64 and df["id"].dtype == pl.Int64
    fast = lite.map("all", "lite.items").to_polars().sort("id")
    slow = lite.map("slow", "lite_dbapi.items").to_polars().sort("id")
    assert fast.select("id", "name").equals(slow.select("id", "name"))


def test_sqlite_partitions_and_progress(lite):
    seen = []
    ds = lite.map("items", "lite.items", partition_on="id", partitions=3)
    ds.cache(progress=seen.append)
    assert ds.to_polars().height == 1001
    assert seen[-1].done and seen[-1].rows == 1001 and seen[-1].mb_per_s >= 0


def test_evict_and_reload_from_lineage(lite):
    ds = lite.map("items", "lite.items").cache()
    version = ds.info()["version"]
    ds.evict()
    assert ds.state == "evicted"
    assert ds.to_polars().height == 1001  # recomputed from the mapping
    assert ds.info()["version"] != version


def test_capacity_is_enforced_per_batch(tmp_path, shm_dir):
    path = tmp_path / "big.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table t (s text)")
        conn.executemany("insert into t values (?)", [("x" * 1000,)] * 5000)
    wh = ldw.connect(in_process=True, config={"sources": {"b": {"url": f"sqlite:///{path}"}}},
                     shm_dir=shm_dir, memory_limit="1MiB", batch_rows=256)
    with pytest.raises(ldw.CapacityExceeded, match="memory_limit"):
        wh.map("t", "b.t").cache()
    assert wh.dataset("t").state == "failed"


def test_to_polars_is_zero_copy_over_the_mapped_file(lite):
    ds = lite.map("items", "lite.items").cache()
    column = ds._cached().column("name").chunk(0)
    assert str(column.type) == "string_view"   # the cache keeps polars' own layout
    assert ds.to_polars()["name"].dtype == pl.String
    assert ds.to_arrow().schema.field("name").type == pa.string()  # what every consumer reads


@pytest.mark.parametrize("source", ["lite", "lite_dbapi"])
def test_a_failing_query_is_a_source_error_not_unavailable(lite, source):
    """A query SQLite fails while stepping is SourceError: the file is still there."""
    ds = lite.map("overflow", source=source,
                  sql="select id, abs(-9223372036854775807 - id) as a from items")
    with pytest.raises(ldw.SourceError, match=rf"^source '{source}'.*integer overflow") as info:
        ds.to_arrow()
    assert not isinstance(info.value, ldw.SourceUnavailable)
    assert ds.state == "failed"


@pytest.mark.parametrize("transport", ["adbc", "dbapi"])
def test_an_unopenable_file_is_unavailable(tmp_path, shm_dir, transport):
    """SQLITE_CANTOPEN (a missing directory) means the source cannot be reached."""
    url = f"sqlite:///{tmp_path / 'missing' / 'x.db'}"
    options = {"transport": "dbapi"} if transport == "dbapi" else {}
    wh = make_warehouse(shm_dir, gone={"url": url, **options})
    try:
        with pytest.raises(ldw.SourceUnavailable, match="^source 'gone'"):
            wh.map("t", "gone.t")
    finally:
        wh.close()


def test_sql_result_as_a_dataset_with_lineage(lite):
    lite.map("items", "lite.items")
    query = "SELECT name, price * 2 AS doubled FROM items WHERE price > 400 ORDER BY name"
    expected = lite.sql(query)
    derived = lite.sql(query, name="pricey")
    assert isinstance(derived, ldw.Dataset) and derived.state == "cached"
    assert derived.to_polars().equals(expected)
    assert derived.info()["source_sql"] == [query]
    version = derived.info()["version"]
    lite.dataset("items").evict()
    derived.evict()
    assert derived.to_polars().equals(expected)          # recomputed from its lineage
    assert derived.info()["version"] != version
    assert derived.lazy().filter(pl.col("doubled") > 990).collect().height == 10
    assert lite.sql("SELECT count(*) AS n FROM pricey")["n"].item() == expected.height
    with pytest.raises(ldw.InvalidMapping):
        lite.sql("SELECT * FROM pricey", name="pricey")


def test_cached_versions_have_big_batches(tmp_path, shm_dir):
    path = tmp_path / "many.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table t (id integer primary key, v real)")
        conn.executemany("insert into t values (?, ?)", [(i, i / 3) for i in range(50_000)])
    wh = make_warehouse(shm_dir, lite={"url": f"sqlite:///{path}"})
    table = wh.map("t", "lite.t").to_arrow()
    assert table.num_rows == 50_000 and table.column("id").num_chunks == 1
    wh.close()
