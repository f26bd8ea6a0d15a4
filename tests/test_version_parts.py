"""Versions made of several files (issue 15): an incremental refresh shares the previous
version's files by hard links and adds one with the new rows; an upsert leaves the replaced rows
out by row ranges. The memory tier counts a shared file once; background compaction writes such
a version into fewer files; spill, restart, the Unix socket and Flight read it whole."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import POSTGRES_URL, ServerHandle
from freshness_helpers import ROWS, Source, same

import ldw
from ldw.catalog import Catalog
from ldw.storage import MAX_PARTS, Store, Version
from ldw.storage.local import COMPACT_PARTS

SCHEMA = pa.schema([("id", pa.int64()), ("s", pa.string()), ("d", pa.decimal128(22, 2))])


def _batch(ids: list[int], tag: str = "v") -> pa.RecordBatch:
    return pa.record_batch({"id": ids, "s": [f"{tag}{i}" for i in ids],
                            "d": pa.array(ids, pa.int64()).cast(pa.decimal128(22, 2))},
                           schema=SCHEMA)


def _rows(store: Store, version: Version) -> dict[int, str]:
    table = store.open_table(version)
    ids, tags = table.column("id").to_pylist(), table.column("s").to_pylist()
    assert len(set(ids)) == len(ids) == version.rows
    return dict(zip(ids, tags, strict=True))


def _mapped_file(address: int) -> Path | None:
    """The file whose memory mapping in this process holds ``address``."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split(maxsplit=5)
        low, high = (int(x, 16) for x in span.split("-"))
        if low <= address < high:
            return Path(rest[4]) if len(rest) == 5 else None
    return None


def _inode(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "memory", tmp_path / "disk", memory_limit=1 << 30)
    yield opened
    opened.close()


def test_appending_shares_the_base_files_and_counts_their_bytes_once(store: Store) -> None:
    base = store.write("me/t", SCHEMA, [_batch(list(range(100_000)))])
    used = store.used_bytes()
    assert used == base.path.stat().st_size and base.files == base.files[:1]
    appended = store.extend(base, SCHEMA, [_batch([100_000, 100_001])])
    first, added = appended.files
    assert _inode(first.path) == _inode(base.path) and first.path != base.path
    assert store.used_bytes() == used + added.path.stat().st_size  # the base counted once
    assert appended.rows == 100_002 and appended.keep is None
    table = store.open_table(appended)
    assert table.column("id").to_pylist()[-3:] == [99_999, 100_000, 100_001]
    # the new version's columns are the shared file's mapped pages, not a copy
    assert _mapped_file(table.column("id").chunks[0].buffers()[1].address) == first.path
    assert _mapped_file(table.column("s").chunks[-1].buffers()[1].address) == added.path

    store.delete(base)  # the base goes; its bytes stay while the new version links them
    assert not base.path.exists() and first.path.stat().st_nlink == 1
    assert store.used_bytes() == used + added.path.stat().st_size
    assert store.open(appended).num_rows == 100_002
    store.delete(appended)  # the last names: now the bytes go
    assert store.used_bytes() == 0 and not list(base.path.parent.iterdir())


def test_upserting_leaves_replaced_rows_out_without_copying_them(store: Store) -> None:
    base = store.write("me/t", SCHEMA, [_batch(list(range(0, 5000))),
                                        _batch(list(range(5000, 10_000)))])
    used = store.used_bytes()
    replaced = [0, 1, 2, 777, 4999, 5000, 9999]
    upserted = store.extend(base, SCHEMA, [_batch([*replaced, 10_000], "new")],
                            replace_key="id")
    assert _inode(upserted.files[0].path) == _inode(base.path)
    assert store.used_bytes() == used + upserted.files[-1].path.stat().st_size
    expected = {i: f"v{i}" for i in range(10_000)} | {i: f"new{i}" for i in [*replaced, 10_000]}
    assert _rows(store, upserted) == expected
    assert upserted.rows == 10_001 and upserted.keep is not None
    assert _rows(store, base) == {i: f"v{i}" for i in range(10_000)}  # untouched

    compacted = store.compact(upserted)
    assert compacted is not None and compacted.version_id == upserted.version_id
    assert len(compacted.files) == 1 and compacted.keep is None
    assert _rows(store, compacted) == expected
    store.delete(upserted)
    store.delete(base)
    assert store.used_bytes() == compacted.path.stat().st_size == compacted.bytes


def test_many_refreshes_keep_the_rows_and_compaction_merges_the_files(store: Store) -> None:
    expected = {i: f"v{i}" for i in range(2000)}
    version = store.write("me/t", SCHEMA, [_batch(list(expected))])
    for step in range(COMPACT_PARTS + 2):  # appends: one more file each
        new = list(range(2000 + step * 10, 2010 + step * 10))
        older, version = version, store.extend(version, SCHEMA, [_batch(new, f"a{step}-")])
        store.delete(older)
        expected |= {i: f"a{step}-{i}" for i in new}
        assert len(version.files) == step + 2 and _rows(store, version) == expected
    merged = store.compact(version)  # the small files merged into one, the first shared
    assert merged is not None and len(merged.files) == 2
    assert _inode(merged.files[0].path) == _inode(version.files[0].path)
    assert _rows(store, merged) == expected
    store.delete(version)
    assert store.compact(merged) is None  # nothing to gain
    version = merged
    for step in range(3):  # upserts: rows left out by ranges over every file
        changed = [step, 1000 + step, 2000 + step * 10, 5000 + step]
        older = version
        version = store.extend(version, SCHEMA, [_batch(changed, f"u{step}-")],
                               replace_key="id")
        store.delete(older)
        expected |= {i: f"u{step}-{i}" for i in changed}
        assert _rows(store, version) == expected
    whole = store.compact(version)
    assert whole is not None and len(whole.files) == 1 and _rows(store, whole) == expected
    store.delete(version)
    assert store.used_bytes() == whole.path.stat().st_size


def test_a_version_of_max_parts_files_is_copied_into_one(store: Store) -> None:
    version = store.write("me/t", SCHEMA, [_batch([0])])
    for i in range(1, MAX_PARTS):
        version = store.extend(version, SCHEMA, [_batch([i])])
    assert len(version.files) == MAX_PARTS
    copied = store.extend(version, SCHEMA, [_batch([MAX_PARTS])])
    assert len(copied.files) == 1 and _rows(store, copied) == {
        i: f"v{i}" for i in range(MAX_PARTS + 1)}


def test_compaction_and_spill_write_only_the_kept_strings(store: Store) -> None:
    """Rows left out are slices of the base's batches, whose strings all sit in shared
    buffers: a writer must not write them once per slice."""
    ids = list(range(60_000))
    base = store.write("me/t", SCHEMA, [_batch(ids[:30_000], "a long string of text #"),
                                        _batch(ids[30_000:], "a long string of text #")])
    upserted = store.extend(base, SCHEMA, [_batch(ids[::50], "new")], replace_key="id")
    assert len(upserted.keep) > 1000
    whole = store.compact(upserted)
    assert whole is not None and whole.bytes < 1.2 * base.bytes
    assert _rows(store, whole) == _rows(store, upserted)
    spilled = store.spill(upserted)
    assert spilled.bytes < 1.2 * base.bytes and _rows(store, spilled) == _rows(store, whole)


def test_spilling_a_multi_part_version_writes_one_file(store: Store) -> None:
    base = store.write("me/t", SCHEMA, [_batch(list(range(50_000)))])
    upserted = store.extend(base, SCHEMA, [_batch([3, 50_000], "new")], replace_key="id")
    expected = _rows(store, upserted)
    used, added = store.used_bytes(), upserted.files[-1].path.stat().st_size
    spilled = store.spill(upserted)
    assert spilled.tier == "disk" and len(spilled.files) == 1 and spilled.keep is None
    assert spilled.path.is_relative_to(store.roots["disk"]) and _rows(store, spilled) == expected
    # only the bytes no other version links left the memory tier
    assert store.used_bytes() == used - added
    assert _rows(store, base) == {i: f"v{i}" for i in range(50_000)}
    store.delete(base)
    assert store.used_bytes() == 0


def test_a_swapped_part_is_refused(store: Store) -> None:
    base = store.write("me/t", SCHEMA, [_batch(list(range(10)))])
    appended = store.extend(base, SCHEMA, [_batch([10])])
    victim = appended.files[-1].path
    decoy = victim.with_name("decoy.arrow")
    decoy.write_bytes(victim.read_bytes())
    os.replace(decoy, victim)  # same bytes, another file
    with pytest.raises(ldw.LdwError, match="replaced by another file"):
        store.open(appended)
    with pytest.raises(ldw.LdwError, match="replaced by another file"):
        store.open_readonly(appended)


def test_a_restarted_store_adopts_a_multi_part_version_and_counts_links_once(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "memory", tmp_path / "disk", memory_limit=1 << 30)
    base = store.write("me/t", SCHEMA, [_batch(list(range(20_000)))])
    upserted = store.extend(base, SCHEMA, [_batch([5, 20_000], "new")], replace_key="id")
    expected, used = _rows(store, upserted), store.used_bytes()
    store.close()

    again = Store(tmp_path / "memory", tmp_path / "disk", memory_limit=1 << 30)
    try:
        assert again.used_bytes() == used  # the shared file once
        assert not again.adopt(Version(**{**upserted.__dict__, "rows": upserted.rows + 1}))
        assert not again.adopt(Version(**{**upserted.__dict__,
                                          "keep": ((0, 10), (5, 10), (20_000, 2))}))
        assert again.adopt(upserted) and _rows(again, upserted) == expected
        again.remove_orphan(base.path)  # a name whose bytes the adopted version links
        assert again.used_bytes() == used and _rows(again, upserted) == expected
    finally:
        again.close()


def test_old_catalogs_gain_the_layout_column(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    Catalog(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:  # as an ldw before multi-file versions made it
        conn.execute("ALTER TABLE ldw_versions DROP COLUMN layout")
    catalog = Catalog(f"sqlite:///{path}")
    try:
        assert catalog.versions() == []
    finally:
        catalog.close()
    with sqlite3.connect(path) as conn:
        assert "layout" in {row[1] for row in conn.execute("PRAGMA table_info(ldw_versions)")}


# -- through the engine, against PostgreSQL ------------------------------------------------------

@pytest.fixture
def src(pg_engine, pg_schema) -> Source:
    source = Source("pg", pg_engine, pg_schema)
    source.create()
    # distinct watermarks: an upsert reads only the rows at or past the last one seen
    source.run(f"update {pg_schema}.orders set updated_at = "
               "timestamp '2024-01-01' + o_orderkey * interval '1 second'")
    return source


def _files_become(dataset: ldw.Dataset, files: int, within: float = 60) -> int:
    """Wait for background compaction to leave ``files`` files (or ``within`` seconds)."""
    deadline = time.monotonic() + within
    while (now := dataset.info()["files"]) != files and time.monotonic() < deadline:
        time.sleep(0.05)
    return now


@pytest.mark.postgres
def test_refreshes_equal_the_source_read_zero_copy_and_compact(src: Source, shm_dir: str,
                                                              tmp_path: Path) -> None:
    wh = ldw.connect(in_process=True, config={"sources": {"pg": {"url": POSTGRES_URL}}},
                     shm_dir=shm_dir, spill_dir=f"{shm_dir}-spill", memory_limit="2GiB")
    try:
        orders = wh.map("orders", src.table, incremental="append", key="o_orderkey").cache()
        last = ROWS
        for step in range(COMPACT_PARTS - 1):  # each append adds a file; nothing is copied
            src.insert(last + 1, last + 300)
            last += 300
            orders.refresh()
            info = orders.info()
            assert info["freshness"]["last_refresh"]["mode"] == "append"
            assert info["files"] == step + 2 and same(orders, src)
        cached = orders._cached()  # to_polars maps every file's buffers, copies none
        frame = orders.to_polars()
        assert frame.height == last
        for name in ("o_orderkey", "o_totalprice"):
            mapped = {c.buffers()[1].address for c in cached.column(name).chunks}
            assert {c.to_arrow().buffers()[1].address
                    for c in frame[name].get_chunks()} == mapped
        total = wh.sql("select count(*) as n, sum(o_orderkey) as k from orders")
        assert total.row(0) == (last, last * (last + 1) // 2)
        exported = orders.export(str(tmp_path / "export"))
        assert pl.read_parquet(str(exported.path / "*.parquet")).height == last

        src.insert(last + 1, last + 300)  # one more: past COMPACT_PARTS files
        last += 300
        orders.refresh()
        assert _files_become(orders, 2) == 2 and same(orders, src)  # the tail merged

        upserts = wh.map("upserts", src.table, incremental="upsert", key="o_orderkey",
                         watermark="updated_at").cache()
        version = upserts.info()["version"]
        src.run(f"update {src.schema}.orders set o_comment = 'changed', updated_at = now() "
                "where mod(o_orderkey, 997) = 3")
        src.insert(last + 1, last + 50)
        upserts.refresh()
        assert upserts.info()["freshness"]["last_refresh"]["mode"] == "upsert"
        assert same(upserts, src)
        assert _files_become(upserts, 1) == 1 and same(upserts, src)  # compacted in place
        assert upserts.info()["version"] != version
    finally:
        wh.close()


@pytest.mark.postgres
def test_a_multi_part_version_spills_as_one_file(src: Source, shm_dir: str) -> None:
    wh = ldw.connect(in_process=True, config={"sources": {"pg": {"url": POSTGRES_URL}}},
                     shm_dir=shm_dir, spill_dir=f"{shm_dir}-spill", memory_limit="6MiB")
    try:
        orders = wh.map("orders", src.table, incremental="append", key="o_orderkey").cache()
        src.insert(ROWS + 1, ROWS + 500)
        orders.refresh()
        assert orders.info()["files"] == 2
        wh.map("other", src.table).cache()  # no room for both: the older one spills
        info = orders.info()
        assert info["state"] == "spilled" and info["files"] == 1 and same(orders, src)
        assert len(list(Path(f"{shm_dir}-spill").rglob("orders/*.arrow"))) == 1
    finally:
        wh.close()


# -- a real server: the Unix socket, Flight, a restart ---------------------------------------------

def _kill9(server: ServerHandle) -> None:
    pid = int((server.folder / "state" / "ldw.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.postgres
def test_a_multi_part_version_over_the_socket_flight_and_after_a_restart(
        src: Source, tmp_path: Path) -> None:
    server = ServerHandle(tmp_path).start()
    try:
        wh = server.local()
        orders = wh.map("orders", src.table, incremental="append", key="o_orderkey").cache()
        src.insert(ROWS + 1, ROWS + 700)
        orders.refresh()
        info = orders.info()
        assert info["files"] == 2 and same(orders, src)  # attached over the Unix socket
        remote = ldw.connect(server.flight, token=server.token("dave"))
        theirs = remote.map("orders", src.table, incremental="append", key="o_orderkey")
        theirs.cache()
        src.insert(ROWS + 701, ROWS + 800)
        theirs.refresh()
        assert theirs.info()["files"] == 2 and same(theirs, src)  # streamed over Flight
        remote.close()
        wh.close()

        _kill9(server)
        server.start()
        wh = server.local()
        orders = wh.dataset("orders")
        after = orders.info()
        assert after["state"] == "cached" and after["version"] == info["version"]
        assert after["files"] == 2 and orders.to_arrow().num_rows == ROWS + 700
        orders.refresh()  # continues from the adopted version
        assert orders.info()["files"] == 3 and same(orders, src)
        wh.close()
    finally:
        server.stop()


@pytest.mark.postgres
def test_many_files_with_rows_left_out_over_flight_and_the_socket(src: Source,
                                                                 tmp_path: Path) -> None:
    """A memory tier with no room to compact: the version stays in files, rows left out by
    ranges, more files than one message used to carry descriptors for. Its owner reads it
    over Flight (each slice sends only its own strings), a user it is shared with attaches it
    over the Unix socket."""
    server = ServerHandle(tmp_path, memory_limit="5MiB").start()
    try:
        remote = ldw.connect(server.flight, token=server.token("dave"))
        orders = remote.map("orders", src.table, incremental="upsert", key="o_orderkey",
                            watermark="updated_at").cache()
        assert orders.info()["bytes"] > 5 * 2**20 / 2  # a second copy would not fit
        for step in range(6):
            src.run(f"update {src.schema}.orders set o_comment = 'step {step}', "
                    f"updated_at = now() where mod(o_orderkey, 101) = {step}")
            orders.refresh()
            assert orders.info()["freshness"]["last_refresh"]["mode"] == "upsert"
        assert orders.info()["files"] == 7
        assert same(orders, src)  # over Flight
        wh = server.local()
        orders.share(wh._backend.user)
        table = wh.attach("dave/orders").to_arrow()  # seven descriptors over the socket
        assert table.num_rows == ROWS
        assert pc.sum(table.column("o_orderkey")).as_py() == ROWS * (ROWS + 1) // 2
        assert sorted(table.column("o_comment").to_pylist()) == sorted(
            src.content().column("o_comment").to_pylist())
        wh.close()
        remote.close()
    finally:
        server.stop()
