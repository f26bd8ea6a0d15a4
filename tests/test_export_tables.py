"""Delta Lake and Iceberg exports (issue 16, item 3): each read back with its own library
(``deltalake``, ``pyiceberg``) equals the dataset, the lineage is in every commit, a second
export adds a commit that time travel can see past, and the governance of Parquet exports
holds (memory-only and export-denied data refused, remote exports confined to the roots,
another owner's table never written to).

Datasets come from a real PostgreSQL table with a wide set of column types (in-process
warehouse: the process writes its export itself) and from a real server over Flight.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import shutil
import stat
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from conftest import POSTGRES_URL, ServerHandle
from deltalake import DeltaTable
from pyiceberg.catalog.sql import SqlCatalog
from test_magics import connect, lite_config, magics, run, shell, usage_error  # noqa: F401

import ldw
from ldw.export import TableExportResult, export_table

pytestmark = pytest.mark.postgres

ROWS = 3000
LINEAGE = "ldw.lineage"
LINEAGE_FIELDS = {"source", "mapping", "sql", "snapshot", "policy", "exported_by", "owner",
                  "exported_at"}

# every column type the table formats store: (name, PostgreSQL type, value for row g);
# every column but id is NULL on every 7th row
WIDE = [
    ("id", "int primary key", "g"),
    ("si", "smallint", "(mod(g, 300) - 150)::smallint"),
    ("bi", "bigint", "g::bigint * 1000003"),
    ("num", "numeric(12,2)", "(g * 1.25)::numeric(12,2)"),
    ("big", "numeric(38,6)", "(g * 1234567.123456)::numeric(38,6)"),
    ("r", "real", "g / 4.0"),
    ("d", "double precision", "g / 3.0"),
    ("b", "boolean", "mod(g, 2) = 0"),
    ("t", "text", "'text ' || g || ' é'"),
    ("v", "varchar(20)", "'v' || g"),
    ("c", "char(4)", "'c' || mod(g, 10)"),
    ("by", "bytea", "decode(lpad(to_hex(g), 8, '0'), 'hex')"),
    ("dt", "date", "date '2020-01-01' + g"),
    ("ts", "timestamp", "timestamp '2024-03-01 12:00:00.123456' + g * interval '1 minute'"),
    ("tstz", "timestamptz", "timestamptz '2024-03-01 12:00:00.5+02' + g * interval '1 hour'"),
    ("u", "uuid", "md5(g::text)::uuid"),
    ("j", "jsonb", "jsonb_build_object('g', g)"),
    ("arr", "int[]", "array[g, g + 1]"),
]


def _fill(engine, table: str, first: int, last: int) -> None:
    select = ", ".join(value if name == "id" else
                       f"case when mod(g, 7) = 0 then null else {value} end"
                       for name, _, value in WIDE)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"insert into {table} select {select} "
                             f"from generate_series({first}, {last}) g")


@pytest.fixture(scope="module")
def wide(pg_engine) -> Iterator[str]:
    schema = f"export16_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
        columns = ", ".join(f"{name} {kind}" for name, kind, _ in WIDE)
        conn.exec_driver_sql(f"create table {schema}.wide ({columns})")
        conn.exec_driver_sql(f"create table {schema}.odd (id int, tm time, iv interval, "
                             "huge numeric(50, 5))")
        conn.exec_driver_sql(f"insert into {schema}.odd values (1, '12:00:01', '1 day', 1.5)")
        conn.exec_driver_sql(f"create table {schema}.vault (id int, note text)")
        conn.exec_driver_sql(f"create table {schema}.closed (id int, note text)")
        conn.exec_driver_sql(f"insert into {schema}.vault values (1, 'secret')")
        conn.exec_driver_sql(f"insert into {schema}.closed values (1, 'kept in')")
    _fill(pg_engine, f"{schema}.wide", 1, ROWS)
    yield schema
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"drop schema {schema} cascade")


@pytest.fixture
def wh(wide: str, tmp_path: Path) -> Iterator[ldw.Warehouse]:
    policies = {f"pg.{wide}.*": {}, f"pg.{wide}.vault": {"memory_only": True},
                f"pg.{wide}.closed": {"export": "deny"}}
    warehouse = ldw.connect(in_process=True, shm_dir=str(tmp_path / "shm"),
                            spill_dir=str(tmp_path / "spill"), memory_limit="1GiB",
                            config={"sources": {"pg": {"url": POSTGRES_URL}},
                                    "policies": policies})
    yield warehouse
    warehouse.close()


def plain(value: object) -> object:
    """A value as both libraries give it back (a UUID as its 16 bytes)."""
    return value.bytes if isinstance(value, uuid.UUID) else value


def rows_of(table: pa.Table) -> list[dict]:
    rows = [{k: plain(v) for k, v in row.items()} for row in table.to_pylist()]
    return sorted(rows, key=lambda row: row["id"])


def read_delta(path: Path, version: int | None = None) -> pa.Table:
    return DeltaTable(path, version=version).to_pyarrow_table()


def iceberg_table(result: TableExportResult):
    catalog = SqlCatalog("ldw", uri=result.catalog)
    return catalog.load_table(result.table)


def read_iceberg(result: TableExportResult, snapshot_id: int | None = None) -> pa.Table:
    return iceberg_table(result).scan(snapshot_id=snapshot_id).to_arrow()


def delta_lineage(path: Path) -> list[dict]:
    """The lineage of every commit, newest first."""
    return [json.loads(commit[LINEAGE]) for commit in DeltaTable(path).history()]


def iceberg_lineage(result: TableExportResult) -> list[dict]:
    """The lineage of every snapshot, oldest first."""
    return [json.loads(s.summary[LINEAGE]) for s in iceberg_table(result).snapshots()]


def read_back(result: TableExportResult) -> pa.Table:
    return read_delta(result.path) if result.format == "delta" else read_iceberg(result)


def check_lineage(lineage: dict, ds: ldw.Dataset, user: str) -> None:
    info = ds.info()
    assert set(lineage) >= LINEAGE_FIELDS
    assert lineage["snapshot"] == info["version"]
    assert lineage["sql"] == info["source_sql"] and lineage["sql"]
    assert lineage["source"] == "pg" and lineage["policy"] == info["policy"]
    assert lineage["exported_by"] == user
    when = dt.datetime.fromisoformat(lineage["exported_at"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 3600


def assert_private(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path}: {oct(mode)}"


# -- round trips over every column type -----------------------------------------------------

def test_delta_round_trip_keeps_every_row_and_type(wh: ldw.Warehouse, wide: str,
                                                   tmp_path: Path) -> None:
    ds = wh.map("wide", f"pg.{wide}.wide").cache()
    expected = ds.to_arrow()
    result = ds.export(tmp_path / "lake" / "wide", format="delta")
    assert isinstance(result, TableExportResult)
    assert (result.format, result.mode, result.version, result.rows) == ("delta", "create", 0,
                                                                        ROWS)
    back = read_delta(result.path)
    assert rows_of(back) == rows_of(expected)
    types = {f.name: f.type for f in back.schema}
    assert types["num"] == pa.decimal128(12, 2) and types["big"] == pa.decimal128(38, 6)
    assert types["ts"] == pa.timestamp("us") and types["tstz"] == pa.timestamp("us", "UTC")
    assert types["dt"] == pa.date32() and types["by"] == pa.binary()
    assert types["b"] == pa.bool_() and types["si"] == pa.int16()
    assert types["arr"] == pa.list_(pa.field("element", pa.int32()))
    assert back.column("j").to_pylist()[0] == '{"g": 1}'
    assert sum(back.column(name).null_count for name in back.column_names) \
        == (len(back.column_names) - 1) * (ROWS // 7)
    (lineage,) = delta_lineage(result.path)
    check_lineage(lineage, ds, wh._backend.user)
    assert_private(result.path)
    assert pl.read_delta(str(result.path)).height == ROWS             # another reader


@pytest.mark.filterwarnings("ignore:Iceberg scan planning")   # polars without polars_iceberg
def test_iceberg_round_trip_keeps_every_row_and_type(wh: ldw.Warehouse, wide: str,
                                                     tmp_path: Path) -> None:
    ds = wh.map("wide", f"pg.{wide}.wide").cache()
    expected = ds.to_arrow()
    result = ds.export(tmp_path / "lake" / "wide", format="iceberg")
    assert (result.format, result.mode, result.rows) == ("iceberg", "create", ROWS)
    assert result.table == "ldw.wide"
    assert result.catalog == f"sqlite:///{tmp_path}/lake/wide/_ldw_catalog.db"
    table = iceberg_table(result)
    assert table.current_snapshot().snapshot_id == result.version
    assert table.metadata_location == result.metadata_location
    back = read_iceberg(result)
    assert rows_of(back) == rows_of(expected)
    fields = {f.name: str(f.field_type) for f in table.schema().fields}
    assert fields["num"] == "decimal(12, 2)" and fields["big"] == "decimal(38, 6)"
    assert fields["ts"] == "timestamp" and fields["tstz"] == "timestamptz"
    assert fields["dt"] == "date" and fields["by"] == "binary" and fields["u"] == "uuid"
    assert fields["si"] == "int" and fields["j"] == "string" and fields["arr"] == "list<int>"
    (lineage,) = iceberg_lineage(result)
    check_lineage(lineage, ds, wh._backend.user)
    assert_private(result.path)
    assert pl.scan_iceberg(result.metadata_location).collect().height == ROWS


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_a_second_export_adds_a_commit_and_time_travel_reads_the_first(
        wh: ldw.Warehouse, wide: str, pg_engine, tmp_path: Path, fmt: str) -> None:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {wide}.grow_{fmt} as "
                             f"select * from {wide}.wide where id <= 100")
    ds = wh.map("grow", f"pg.{wide}.grow_{fmt}").cache()
    target = tmp_path / "grow"
    first = ds.export(target, format=fmt)
    first_rows = rows_of(read_back(first))
    with pytest.raises(ldw.ExportError, match="mode='append' or mode='overwrite'"):
        ds.export(target, format=fmt)                     # the default mode refuses
    _fill(pg_engine, f"{wide}.grow_{fmt}", 101, 150)
    ds.refresh()
    second = ds.export(target, format=fmt, mode="append")
    assert (second.mode, second.rows) == ("append", 150)
    assert second.version != first.version
    assert len(read_back(second)) == 250                  # 100 + 150: appended
    third = ds.export(target, format=fmt, overwrite=True)   # overwrite=True is mode overwrite
    assert third.mode == "overwrite" and len(read_back(third)) == 150
    assert rows_of(read_back(third)) == rows_of(ds.to_arrow())
    if fmt == "delta":
        assert (first.version, second.version, third.version) == (0, 1, 2)
        assert rows_of(read_delta(target, version=0)) == first_rows
        assert len(read_delta(target, version=1)) == 250
        lineage = delta_lineage(target)[::-1]
    else:
        assert rows_of(read_iceberg(third, first.version)) == first_rows
        assert len(read_iceberg(third, second.version)) == 250
        lineage = iceberg_lineage(third)
        # the overwrite is one commit of two snapshots (delete, append), both with lineage
        assert [s.snapshot_id for s in iceberg_table(third).snapshots()][-1] == third.version
    versions = [entry["snapshot"] for entry in lineage]   # ldw's version of each commit
    assert versions[0] != ds.info()["version"]             # before the refresh
    assert set(versions[1:]) == {ds.info()["version"]}
    assert_private(target)


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_overwrite_with_other_columns_replaces_the_schema(wh: ldw.Warehouse, wide: str,
                                                          tmp_path: Path, fmt: str) -> None:
    target = tmp_path / "t"
    wh.map("narrow", f"pg.{wide}.wide", columns=["id", "t", "num"]).export(target, format=fmt)
    other = wh.map("other", f"pg.{wide}.wide", columns=["id", "d", "num"])
    with pytest.raises(ldw.ExportError):
        other.export(target, format=fmt, mode="append")   # appending other columns: refused
    result = other.export(target, format=fmt, mode="overwrite")
    back = read_back(result)
    assert sorted(back.column_names) == ["d", "id", "num"]
    assert rows_of(back) == rows_of(other.to_arrow())
    if fmt == "delta":
        assert read_delta(target, version=0).column_names == ["id", "t", "num"]


def test_delta_partitions_and_iceberg_refuses_them(wh: ldw.Warehouse, wide: str,
                                                   tmp_path: Path) -> None:
    ds = wh.map("wide", f"pg.{wide}.wide", columns=["id", "c", "num"])
    result = ds.export(tmp_path / "parts", format="delta", partition_by=["c"])
    assert DeltaTable(result.path).metadata().partition_columns == ["c"]
    assert sorted(p.name for p in result.path.iterdir() if p.name.startswith("c="))[:2] \
        == ["c=__HIVE_DEFAULT_PARTITION__", "c=c0"]
    assert rows_of(read_delta(result.path)) == rows_of(ds.to_arrow())
    with pytest.raises(ldw.ConfigError, match="not partitioned"):
        ds.export(tmp_path / "ice", format="iceberg", partition_by=["c"])
    assert not (tmp_path / "ice").exists()


# -- types the formats do not have -------------------------------------------------------------

def test_types_without_a_counterpart_are_refused_by_name(wh: ldw.Warehouse, wide: str,
                                                         tmp_path: Path) -> None:
    odd = f"pg.{wide}.odd"
    with pytest.raises(ldw.UnsupportedType, match="column 'tm'.*Delta Lake.*time-of-day"):
        wh.map("a", odd, columns=["id", "tm"]).export(tmp_path / "a", format="delta")
    result = wh.map("b", odd, columns=["id", "tm"]).export(tmp_path / "b", format="iceberg")
    assert read_iceberg(result).column("tm").to_pylist() == [dt.time(12, 0, 1)]
    for fmt in ("delta", "iceberg"):
        with pytest.raises(ldw.UnsupportedType, match="column 'iv'.*interval"):
            wh.map("c", odd, columns=["id", "iv"]).export(tmp_path / "c", format=fmt)
        with pytest.raises(ldw.UnsupportedType, match="column 'huge'.*38 digits"):
            wh.map("d", odd, columns=["id", "huge"]).export(tmp_path / "d", format=fmt)
    assert not any((tmp_path / name).exists() for name in "acd")


UNSIGNED = pa.table({
    "id": pa.array([1, 2, 3], pa.int64()),
    "u8": pa.array([0, 255, None], pa.uint8()),
    "u16": pa.array([0, 65535, None], pa.uint16()),
    "u32": pa.array([0, 2**32 - 1, None], pa.uint32()),
    "u64": pa.array([0, 2**64 - 1, None], pa.uint64()),
    "f16": pa.array([0.5, None, 1.0], pa.float16()),
    "berlin": pa.array([dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC), None, None],
                       pa.timestamp("ms", "Europe/Berlin")),
    "dict": pa.array(["a", "b", None]).dictionary_encode(),
    "view": pa.array(["x", None, "z"], pa.string_view()),
    "d256": pa.array([Decimal("1.5"), None, Decimal("-2.25")], pa.decimal256(20, 2)),
    "nested": pa.array([{"k": [1, 2]}, None, {"k": []}],
                       pa.struct([("k", pa.list_(pa.uint32()))])),
})


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_arrow_types_are_widened_exactly(tmp_path: Path, fmt: str) -> None:
    result = export_table(UNSIGNED, tmp_path / "u", format=fmt, manifest={"who": "test"})
    back = read_back(result).sort_by("id")
    assert back.column("u64").to_pylist() == [Decimal(0), Decimal(2**64 - 1), None]
    assert back.column("u32").type == pa.int64()
    assert back.column("u32").to_pylist() == [0, 2**32 - 1, None]
    assert back.column("u16").to_pylist() == [0, 65535, None]
    assert back.column("u8").to_pylist() == [0, 255, None]
    assert back.column("f16").to_pylist() == [0.5, None, 1.0]
    assert back.column("berlin").type == pa.timestamp("us", "UTC")
    assert back.column("berlin")[0].as_py() == dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC)
    assert back.column("dict").to_pylist() == ["a", "b", None]
    assert back.column("view").to_pylist() == ["x", None, "z"]
    assert back.column("d256").to_pylist() == [Decimal("1.50"), None, Decimal("-2.25")]
    assert back.column("nested").to_pylist() == [{"k": [1, 2]}, None, {"k": []}]


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_nanoseconds_are_refused_not_dropped(tmp_path: Path, fmt: str) -> None:
    table = pa.table({"ts": pa.array([1_000, 1_001], pa.timestamp("ns"))})
    with pytest.raises(ldw.ExportError, match="would lose data"):
        export_table(table, tmp_path / "ns", format=fmt, manifest={})
    assert not (tmp_path / "ns").exists()
    assert [p.name for p in tmp_path.iterdir()] == []   # no temp folder left either
    exact = pa.table({"ts": pa.array([1_000, 2_000], pa.timestamp("ns"))})
    result = export_table(exact, tmp_path / "us", format=fmt, manifest={})
    assert read_back(result).column("ts").to_pylist() == [
        dt.datetime(1970, 1, 1, 0, 0, 0, 1), dt.datetime(1970, 1, 1, 0, 0, 0, 2)]


# -- arguments and targets ----------------------------------------------------------------------

def test_modes_and_formats_are_checked(tmp_path: Path) -> None:
    table = pa.table({"id": [1, 2]})
    with pytest.raises(ldw.ConfigError, match="cannot be appended"):
        export_table(table, tmp_path / "p", manifest={}, mode="append")
    with pytest.raises(ldw.ConfigError, match="unknown export format 'orc'"):
        export_table(table, tmp_path / "p", manifest={}, format="orc")
    with pytest.raises(ldw.ConfigError, match="unknown export mode 'merge'"):
        export_table(table, tmp_path / "p", manifest={}, format="delta", mode="merge")
    with pytest.raises(ldw.ConfigError, match="contradicts"):
        export_table(table, tmp_path / "p", manifest={}, format="delta", mode="append",
                     overwrite=True)
    assert not (tmp_path / "p").exists()
    # append to a path that does not exist yet creates the table
    assert export_table(table, tmp_path / "d", manifest={}, format="delta",
                        mode="append").mode == "create"


def test_a_table_is_never_mistaken_for_another_export(tmp_path: Path) -> None:
    table = pa.table({"id": [1, 2]})
    parquet = export_table(table, tmp_path / "parquet", manifest={}).path
    delta = export_table(table, tmp_path / "delta", manifest={}, format="delta").path
    iceberg = export_table(table, tmp_path / "iceberg", manifest={}, format="iceberg").path
    (tmp_path / "plain").mkdir()
    with pytest.raises(ldw.ExportError, match="a Parquet export"):
        export_table(table, parquet, manifest={}, format="delta", mode="append")
    with pytest.raises(ldw.ExportError, match="in the Delta Lake table format"):
        export_table(table, delta, manifest={}, format="iceberg", mode="overwrite")
    with pytest.raises(ldw.ExportError, match="an ldw export in the Iceberg table format"):
        export_table(table, iceberg, manifest={}, overwrite=True)      # Parquet over a table
    with pytest.raises(ldw.ExportError, match="not a table exported by ldw"):
        export_table(table, tmp_path / "plain", manifest={}, format="delta", mode="append")
    assert len(read_delta(delta)) == 2 and DeltaTable(delta).version() == 0
    (problem,) = ldw.verify_export(iceberg).problems
    assert "an ldw export in the Iceberg table format" in problem.detail
    assert not list((tmp_path / "plain").iterdir())
    with pytest.raises(ldw.AccessDenied, match="of 'alice'"):
        export_table(table, export_table(table, tmp_path / "a", manifest={}, format="delta",
                                         owner="alice").path,
                     manifest={}, format="delta", mode="append", owner="bob")


def test_a_failing_source_keeps_its_error_and_publishes_nothing(tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.int64())])

    def dying():
        yield pa.record_batch([pa.array([1, 2])], schema=schema)
        raise ConnectionResetError("source went away")

    for fmt in ("delta", "iceberg"):
        with pytest.raises(ConnectionResetError, match="source went away"):
            export_table(dying(), tmp_path / fmt, schema=schema, manifest={}, format=fmt)
        assert not (tmp_path / fmt).exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_ctrl_c_commits_nothing(tmp_path: Path, fmt: str) -> None:
    """An interrupt (here raised where Ctrl-C lands: in the caller's thread, between progress
    reports) stops the writer: a new table leaves nothing, an existing one keeps its commits."""
    schema = pa.schema([("id", pa.int64())])

    def slow():
        for i in range(400):
            time.sleep(0.01)
            yield pa.record_batch([pa.array([i])], schema=schema)

    def interrupt(progress) -> None:
        if progress.rows and not progress.done:
            raise KeyboardInterrupt

    target = tmp_path / "t"
    with pytest.raises(KeyboardInterrupt):
        export_table(slow(), target, schema=schema, manifest={}, format=fmt,
                     progress=interrupt)
    assert list(tmp_path.iterdir()) == []
    first = export_table(pa.table({"id": [1, 2]}), target, manifest={}, format=fmt)
    with pytest.raises(KeyboardInterrupt):
        export_table(slow(), target, schema=schema, manifest={}, format=fmt, mode="append",
                     progress=interrupt)
    assert len(read_back(first)) == 2
    if fmt == "delta":
        assert DeltaTable(target).version() == 0
    else:
        assert [s.snapshot_id for s in iceberg_table(first).snapshots()] == [first.version]


def test_an_iceberg_export_holds_one_data_file_of_the_stream(tmp_path: Path) -> None:
    """pyiceberg's own append takes a whole stream into its thread pool at once; ldw writes
    one data file (``write.target-file-size-bytes``, here 256 KiB) at a time, so converted
    batches (uint32 widened to int64) are not queued in memory however slowly the files are
    written (gzip on random numbers)."""
    import numpy as np

    schema = pa.schema([("x", pa.uint32())])
    first = export_table(pa.table({"x": pa.array([0], pa.uint32())}), tmp_path / "t",
                         manifest={}, format="iceberg")
    with iceberg_table(first).transaction() as tx:
        tx.set_properties({"write.target-file-size-bytes": str(2**18),
                           "write.parquet.compression-codec": "gzip"})
    noise = np.random.default_rng(16).integers(0, 2**32, 2**15, dtype=np.uint32)
    allocated = []

    def fresh():
        for _ in range(16):   # 4 MiB once widened to int64
            allocated.append(pa.total_allocated_bytes())
            yield pa.record_batch([pa.array(noise)], schema=schema)

    result = export_table(fresh(), tmp_path / "t", schema=schema, manifest={},
                          format="iceberg", mode="append")
    assert len(read_iceberg(first)) == 1 + 16 * 2**15
    assert max(allocated) < 16 * 2**20     # queued whole: 34 MiB
    snapshot = iceberg_table(first).current_snapshot()       # one snapshot, 16 files
    assert snapshot.snapshot_id == result.version
    assert snapshot.summary["added-data-files"] == "16"


def test_a_missing_library_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "deltalake", None)     # as if not installed
    with pytest.raises(ldw.ConfigError, match=r"pip install 'ldw\[export\]'"):
        export_table(pa.table({"id": [1]}), tmp_path / "d", manifest={}, format="delta")


def test_progress_is_reported(tmp_path: Path) -> None:
    seen = []
    table = pa.table({"id": list(range(10_000))})
    export_table(table, tmp_path / "d", manifest={}, format="delta", progress=seen.append)
    assert seen[-1].done and seen[-1].rows == 10_000


# -- governance -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_memory_only_and_export_denied_data_are_refused(wh: ldw.Warehouse, wide: str,
                                                        tmp_path: Path, fmt: str) -> None:
    secret = wh.map("secret", f"pg.{wide}.vault").cache()
    assert secret.info()["memory_only"]
    closed = wh.map("closed", f"pg.{wide}.closed").cache()
    assert closed.info()["export"] == "deny"
    flagged = wh.map("flagged", f"pg.{wide}.wide", memory_only=True).cache()
    for ds, why in ((secret, "memory-only"), (closed, "denies export"),
                    (flagged, "memory-only")):
        with pytest.raises(ldw.PolicyViolation, match=why):
            ds.export(tmp_path / ds.name, format=fmt)
        assert not (tmp_path / ds.name).exists()
    # the same for a table that already exists: no commit is added
    wh.map("fine", f"pg.{wide}.wide", columns=["id"]).export(tmp_path / "t", format=fmt)
    with pytest.raises(ldw.PolicyViolation):
        closed.export(tmp_path / "t", format=fmt, mode="append")
    denied = [r for r in wh.audit(limit=50).iter_rows(named=True)
              if r["action"].startswith("export") and r["outcome"] == "deny"]
    assert {r["dataset"].split("/")[-1] for r in denied} == {"secret", "closed", "flagged"}
    assert len(denied) == 4 and all("PolicyViolation" in r["detail"] for r in denied)


# -- a real server: confinement, owners, CLI, magics ------------------------------------------

@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ldw-export16-", dir="/tmp"))
    (folder / "shared").mkdir()
    (folder / "elsewhere").mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server(base: Path, wide: str) -> Iterator[ServerHandle]:
    (base / "server").mkdir()
    roots = os.pathsep.join([f"{base}/exports/{{user}}", f"{base}/shared"])
    policies = (f'[policies."pg.{wide}.*"]\n[policies."pg.{wide}.vault"]\nmemory_only = true\n'
                f'[policies."pg.{wide}.closed"]\nexport = "deny"\n')
    handle = ServerHandle(base / "server", export_roots=roots, extra_toml=policies).start()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def users(server: ServerHandle, wide: str) -> dict[str, ldw.Warehouse]:
    out = {}
    for name in ("alice", "bob"):
        warehouse = server.remote(name)
        warehouse.map("wide", f"pg.{wide}.wide").cache()
        out[name] = warehouse
    return out


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_a_remote_export_lands_in_the_roots_and_reads_back(
        users: dict[str, ldw.Warehouse], base: Path, fmt: str) -> None:
    ds = users["alice"].dataset("wide")
    result = ds.export(f"lake/{fmt}", format=fmt)
    assert isinstance(result, TableExportResult)
    assert result.path == base / "exports" / "alice" / "lake" / fmt
    assert rows_of(read_back(result)) == rows_of(ds.to_arrow())
    again = ds.export(f"lake/{fmt}", format=fmt, mode="append")
    assert again.mode == "append" and len(read_back(again)) == 2 * ROWS
    lineage = delta_lineage(result.path)[0] if fmt == "delta" else iceberg_lineage(again)[-1]
    check_lineage(lineage, ds, "alice")
    assert_private(result.path)
    records = [r for r in users["alice"].audit(limit=10).iter_rows(named=True)
               if r["action"] == "export" and r["outcome"] == "allow"]
    assert f"as a {fmt} table" in records[0]["detail"]


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
@pytest.mark.parametrize("path", ["{base}/elsewhere/t", "/tmp/ldw-export16-probe-{hex}",
                                  "../bob/t", "{base}/shared/../elsewhere/t",
                                  "{base}/shared/.t.ldw-tmp-0123"])
def test_a_path_outside_the_roots_is_refused(users: dict[str, ldw.Warehouse], base: Path,
                                             fmt: str, path: str) -> None:
    path = path.format(base=base, hex=secrets.token_hex(4))
    with pytest.raises(ldw.AccessDenied, match="export roots|refused"):
        users["alice"].dataset("wide").export(path, format=fmt)
    assert not list((base / "elsewhere").iterdir())
    assert not any(p.name.startswith("ldw-export16-probe") for p in Path("/tmp").iterdir())


@pytest.mark.parametrize("fmt", ["delta", "iceberg"])
def test_another_owners_table_is_never_written(users: dict[str, ldw.Warehouse], base: Path,
                                               server: ServerHandle, wide: str,
                                               fmt: str) -> None:
    shared = base / "shared" / f"report-{fmt}"
    users["alice"].dataset("wide").export(shared, format=fmt)
    before = sorted(p.relative_to(shared) for p in shared.rglob("*"))
    for mode in ("append", "overwrite"):
        with pytest.raises(ldw.AccessDenied, match="alice"):
            users["bob"].dataset("wide").export(shared, format=fmt, mode=mode)
    with pytest.raises(ldw.AccessDenied, match="an export cannot hold another"):
        users["bob"].dataset("wide").export(shared / "inside", format=fmt)
    assert sorted(p.relative_to(shared) for p in shared.rglob("*")) == before
    # memory-only and export-denied data are refused remotely too
    for name in ("vault", "closed"):
        ds = users["bob"].map(name, f"pg.{wide}.{name}")
        with pytest.raises(ldw.PolicyViolation):
            ds.export(f"{name}-{fmt}", format=fmt)
        assert not (base / "exports" / "bob" / f"{name}-{fmt}").exists()


def test_the_cli_exports_tables(server: ServerHandle, wide: str, base: Path,
                                monkeypatch) -> None:
    local = server.local()
    ds = local.map("mine", f"pg.{wide}.wide", columns=["id", "num", "tstz"]).cache()
    expected = rows_of(ds.to_arrow())
    out = server.cli("export", "mine", str(base / "cli-delta"), "--format", "delta").stdout
    assert f"exported {ROWS:,} rows to the delta table {base / 'cli-delta'}" in out
    assert "create, version 0" in out
    out = server.cli("export", "mine", str(base / "cli-delta"), "--format", "delta",
                     "--mode", "append").stdout
    assert "append, version 1" in out
    assert DeltaTable(base / "cli-delta").version() == 1
    assert rows_of(read_delta(base / "cli-delta", version=0)) == expected
    out = server.cli("export", "mine", str(base / "cli-ice"), "--format", "iceberg").stdout
    assert f"catalog sqlite:///{base}/cli-ice/_ldw_catalog.db, table ldw.cli_ice" in out
    catalog = SqlCatalog("ldw", uri=f"sqlite:///{base}/cli-ice/_ldw_catalog.db")
    assert rows_of(catalog.load_table("ldw.cli_ice").scan().to_arrow()) == expected
    refused = server.cli("export", "mine", str(base / "cli-ice"), "--format", "iceberg",
                         check=False)
    assert refused.returncode != 0 and "already exists" in refused.stderr


def test_the_magic_exports_tables(shell, magics, lite_config,  # noqa: F811
                                  tmp_path: Path) -> None:
    """``%ldw export --format/--mode`` through a real IPython shell (SQLite source)."""
    connect(shell, lite_config)
    run(shell, "%ldw map items = lite.items")
    target = tmp_path / "lake" / "items"
    first = run(shell, f"%ldw export items {target} --format delta").result
    assert (first.format, first.mode, first.rows) == ("delta", "create", 1000)
    second = run(shell, f"%ldw export items {target} --format delta --mode append").result
    assert (second.mode, second.version) == ("append", 1)
    assert len(read_delta(target)) == 2000 and len(read_delta(target, version=0)) == 1000
    assert "already exists" in usage_error(shell, f"%ldw export items {target} --format delta")
    ice = run(shell, f"%ldw export items {tmp_path / 'ice'} --format iceberg").result
    assert sorted(read_iceberg(ice).column("id").to_pylist()) == list(range(1, 1001))
    assert "invalid choice" in usage_error(shell, f"%ldw export items {target} --format orc")


def test_a_table_export_result_reads_as_path_format_mode_and_size(tmp_path):
    from ldw.export import TableExportResult

    result = TableExportResult(tmp_path / "t", "delta", "append", 3, 1_500_000, 2 << 20, 1.25)
    text = repr(result)
    assert text.startswith(f"exported {tmp_path / 't'} (delta, append, version 3): ")
    assert "1,500,000 rows" in text and "2.0 MiB" in text and "TableExportResult(" not in text
    assert "delta, append, version 3" in result._repr_html_()
