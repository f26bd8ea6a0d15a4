"""Incremental refresh against real PostgreSQL and MariaDB: append and upsert read only what
changed and publish old version + increment; deletes and anything the mode cannot express fall
back to a full read; the result always equals the source."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import MYSQL_URL, POSTGRES_URL
from freshness_helpers import ROWS, Source, same, wait_stale

import ldw
from ldw.planner import Mapping, mapping_from_json, mapping_to_json

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


@pytest.fixture
def wh(src: Source, shm_dir: str) -> Iterator[ldw.Warehouse]:
    url = POSTGRES_URL if src.kind == "pg" else MYSQL_URL
    warehouse = ldw.connect(in_process=True, config={"sources": {src.kind: {"url": url}}},
                            shm_dir=shm_dir, spill_dir=f"{shm_dir}-spill", memory_limit="2GiB",
                            freshness_interval=f"{INTERVAL}s")
    yield warehouse
    warehouse.close()


def _last(dataset: ldw.Dataset) -> dict:
    return dataset.info()["freshness"]["last_refresh"]


def test_append_reads_only_the_new_rows(src: Source, wh: ldw.Warehouse) -> None:
    orders = wh.map("orders", src.table, incremental="append", key="o_orderkey").cache()
    full_bytes = _last(orders)["bytes_read"]
    assert _last(orders)["mode"] == "full" and orders.info()["stale"] is False
    src.insert(ROWS + 1, ROWS + ROWS // 100)  # 1 %
    info = wait_stale(orders, True, within=INTERVAL + 10)
    assert info["stale"] is True and "row count" in info["freshness"]["reason"]
    orders.refresh()
    last = _last(orders)
    assert last["mode"] == "append" and last["rows_read"] == ROWS // 100
    assert last["bytes_read"] < full_bytes / 20  # the old rows were not read again
    info = orders.info()
    assert info["rows"] == ROWS + ROWS // 100 and info["stale"] is False
    assert any("o_orderkey >" in sql for sql in info["source_sql"])
    assert same(orders, src)


def test_nothing_new_keeps_the_version(src: Source, wh: ldw.Warehouse) -> None:
    orders = wh.map("orders", src.table, incremental="append", key="o_orderkey").cache()
    version = orders.info()["version"]
    orders.refresh()
    assert orders.info()["version"] == version
    assert _last(orders)["reason"] == "no change in the source"


def test_upsert_replaces_updated_rows_and_adds_new_ones(src: Source, wh: ldw.Warehouse) -> None:
    # distinct watermarks: only the rows at the last one seen are read again
    src.run(f"update {src.schema}.orders set updated_at = "
            + ("timestamp '2024-01-01' + o_orderkey * interval '1 second'" if src.kind == "pg"
               else "timestamp '2024-01-01 00:00:00' + interval o_orderkey second"))
    orders = wh.map("orders", src.table, incremental="upsert", key="o_orderkey",
                    watermark="updated_at").cache()
    now = "now()" if src.kind == "pg" else "now(6)"
    src.run(f"update {src.schema}.orders set o_comment = 'changed', o_totalprice = 1, "
            f"updated_at = {now} where mod(o_orderkey, 1000) = 7")  # 0.1 %
    src.insert(ROWS + 1, ROWS + 500)
    assert wait_stale(orders, True, within=INTERVAL + 10)["stale"] is True
    orders.refresh()
    last = _last(orders)
    assert last["mode"] == "upsert"
    assert ROWS // 1000 + 500 <= last["rows_read"] <= ROWS // 1000 + 501  # + the last seen
    assert orders.info()["rows"] == ROWS + 500
    assert same(orders, src)


def test_deleted_rows_fall_back_to_a_full_refresh(src: Source, wh: ldw.Warehouse) -> None:
    orders = wh.map("orders", src.table, incremental="append", key="o_orderkey").cache()
    src.run(f"delete from {src.schema}.orders where o_orderkey between 100 and 109")
    src.insert(ROWS + 1, ROWS + 10)  # as many rows as deleted: the count alone would not tell
    orders.refresh()
    last = _last(orders)
    assert last["mode"] == "full" and "changed in the source" in last["reason"]
    assert same(orders, src)


def test_upsert_detects_deletes(src: Source, wh: ldw.Warehouse) -> None:
    orders = wh.map("orders", src.table, incremental="upsert", key="o_orderkey",
                    watermark="updated_at").cache()
    src.run(f"delete from {src.schema}.orders where o_orderkey < 5")
    orders.refresh()
    assert _last(orders)["mode"] == "full"
    assert same(orders, src)


def test_full_true_reads_everything(src: Source, wh: ldw.Warehouse) -> None:
    orders = wh.map("orders", src.table, incremental="append", key="o_orderkey").cache()
    src.insert(ROWS + 1, ROWS + 5)
    orders.refresh(full=True)
    last = _last(orders)
    assert last["mode"] == "full" and last["reason"] == "full=True"
    assert last["rows_read"] == ROWS + 5
    assert same(orders, src)


def test_increment_is_governed_like_a_full_read(src: Source, shm_dir: str) -> None:
    """A row filter and a where clause apply to the new rows as to the first read."""
    url = POSTGRES_URL if src.kind == "pg" else MYSQL_URL
    policies = {f"{src.kind}.{src.schema}.orders": {
        "row_filter": {"analyst": "o_custkey < 500"},
        "columns": {"o_comment": {"mask": "redact"}}}}
    wh = ldw.connect(in_process=True, config={"sources": {src.kind: {"url": url}},
                                              "policies": policies,
                                              "users": {_me(): {"roles": ["analyst"]}}},
                     shm_dir=shm_dir, spill_dir=f"{shm_dir}-spill", memory_limit="2GiB")
    try:
        orders = wh.map("orders", src.table, where="o_custkey <> 3", incremental="append",
                        key="o_orderkey").cache()
        src.insert(ROWS + 1, ROWS + 2000)
        orders.refresh()
        assert _last(orders)["mode"] == "append"
        table = orders.to_arrow()
        custkeys = set(table.column("o_custkey").to_pylist())
        assert max(custkeys) < 500 and 3 not in custkeys
        assert "comment" not in " ".join(str(v) for v in table.column("o_comment").to_pylist())
        assert table.num_rows == sum(1 for k in range(1, ROWS + 2001)
                                     if k % 1000 < 500 and k % 1000 != 3)
    finally:
        wh.close()


def _me() -> str:
    from ldw.config import _user

    return _user()


def test_a_reader_keeps_the_version_it_holds(src: Source, wh: ldw.Warehouse) -> None:
    orders = wh.map("orders", src.table, incremental="append", key="o_orderkey").cache()
    held = orders.to_arrow()
    src.insert(ROWS + 1, ROWS + 100)
    orders.refresh()
    assert held.num_rows == ROWS and held.column("o_orderkey").to_pylist()[-1] == ROWS
    assert orders.to_arrow().num_rows == ROWS + 100


@pytest.mark.parametrize(("options", "words"), [
    ({"incremental": "append"}, "needs key="),
    ({"incremental": "upsert", "key": "o_orderkey"}, "needs watermark="),
    ({"incremental": "merge", "key": "o_orderkey"}, "must be \"append\" or \"upsert\""),
    ({"incremental": "append", "key": "nope"}, "must be one of the mapped columns"),
    ({"incremental": "append", "key": "o_orderkey", "limit": 5}, "cannot be combined"),
    ({"refresh": "hourly"}, "every <duration>"),
])
def test_bad_declarations_say_what_to_do(src: Source, wh: ldw.Warehouse, options: dict,
                                         words: str) -> None:
    with pytest.raises(ldw.InvalidMapping, match=words.replace("(", r"\(")):
        wh.map("orders", src.table, **options)


def test_old_catalog_mappings_still_load() -> None:
    old = {"name": "o", "source": "pg", "schema": "s", "table": "t", "sql": None,
           "columns": None, "where": None, "limit": None, "partition_on": None,
           "partitions": 1, "params": {}}
    mapping = mapping_from_json(old)
    assert mapping == Mapping("o", "pg", "s", "t")
    assert (mapping.incremental, mapping.key, mapping.refresh) == (None, None, "manual")
    new = Mapping("o", "pg", "s", "t", incremental="append", key="k", refresh="every 10m")
    assert mapping_from_json(mapping_to_json(new)) == new



def test_the_store_extends_a_version_without_touching_it(tmp_path) -> None:
    """VersionStore.extend: old rows from the store plus new ones; with replace_key the new
    rows replace old ones of the same key; the base version stays as it was."""
    import pyarrow as pa

    from ldw.storage.local import Store

    store = Store(tmp_path / "memory", tmp_path / "disk", memory_limit=1 << 30)
    try:
        schema = pa.schema([("id", pa.int64()), ("s", pa.string())])
        base = store.write("me/t", schema, [pa.record_batch(
            {"id": [1, 2, 3], "s": ["a", "b", "c"]}, schema=schema)])
        added = pa.record_batch({"id": [2, 4], "s": ["B", "d"]}, schema=schema)
        appended = store.extend(base, schema, [added])
        upserted = store.extend(base, schema, [added], replace_key="id")
        assert store.open_table(appended).to_pylist() == [
            {"id": 1, "s": "a"}, {"id": 2, "s": "b"}, {"id": 3, "s": "c"},
            {"id": 2, "s": "B"}, {"id": 4, "s": "d"}]
        assert sorted(store.open_table(upserted).to_pylist(), key=lambda r: r["id"]) == [
            {"id": 1, "s": "a"}, {"id": 2, "s": "B"}, {"id": 3, "s": "c"}, {"id": 4, "s": "d"}]
        assert store.open_table(base).num_rows == 3
        assert store.open_table(upserted).schema.field("s").type == pa.string_view()
    finally:
        store.close()


def test_the_dense_key_lookup_finds_what_a_hash_lookup_finds() -> None:
    """Upsert finds the old rows its keys replace through a table over the keys' range when
    that is small; it must agree with Arrow's hash lookup, also at the range's edges."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from ldw.engine.incremental import _dense_lookup

    rng = np.random.default_rng(15)
    for low, high in ((-50, 50), (0, 20_000), (2**40, 2**40 + 5000)):
        column = pa.chunked_array([rng.integers(low, high, n) for n in (0, 1000, 777, 1)])
        wanted = pa.array(np.unique(np.concatenate([
            rng.choice(column.combine_chunks().to_numpy(), 50),
            rng.integers(low - 10, high + 10, 50), [low - 1, high]])))
        positions, total = _dense_lookup(column, wanted)
        expected = pc.indices_nonzero(pc.is_in(column, value_set=wanted).combine_chunks())
        assert positions.to_pylist() == expected.to_pylist()
        assert total == sum(column.take(expected).to_pylist())
    assert _dense_lookup(pa.chunked_array([[1, None]]), pa.array([1])) is None
    assert _dense_lookup(pa.chunked_array([[0, 1]]), pa.array([0, 10**9])) is None  # sparse
    assert _dense_lookup(pa.chunked_array([[0, 2**62]]), pa.array([0, 2**62])) is None
    assert _dense_lookup(pa.chunked_array([["a"]]), pa.array(["a"])) is None
