"""Parquet export: round trips, atomic publication, crash and Ctrl-C cleanup, verification.

Everything runs on real files under tmp_path; crashes are real ``kill -9``s of a subprocess.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from decimal import Decimal
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import ldw
from ldw.export import (
    MANIFEST_NAME,
    ExportError,
    ExportResult,
    ExportVerificationError,
    export_table,
    verify_export,
)

ROOT = Path(__file__).resolve().parents[1]
PROVENANCE = {
    "source": "dwh",
    "sql": "SELECT o_orderkey, o_status FROM sales.orders",
    "snapshot": "00000003-0000001B-1",
    "policy_fingerprint": "sha256:ab12",
    "who": "alice",
    "when": "2026-05-09T10:00:00+00:00",
}


def sample_table(rows: int = 5000) -> pa.Table:
    """Views, decimals, tz timestamps, dates and nulls, in several record batches."""
    berlin = pa.timestamp("us", tz="Europe/Berlin")
    regions = ["EMEA", "APAC", "AMER", "", "a/b=c ü%"]
    columns = {
        "id": pa.array(range(rows), pa.int64()),
        "region": pa.array([None if i % 97 == 0 else regions[i % 5] for i in range(rows)],
                           pa.string_view()),
        "bucket": pa.array([i % 4 for i in range(rows)], pa.int32()),
        "payload": pa.array([None if i % 11 == 0 else f"p{i}".encode() * (i % 5)
                             for i in range(rows)], pa.binary_view()),
        "price": pa.array([None if i % 13 == 0 else Decimal(i * 7) / 100 for i in range(rows)],
                          pa.decimal128(14, 2)),
        "at": pa.array([dt.datetime(2024, 3, 31, 1, 30) + dt.timedelta(minutes=i)
                        for i in range(rows)], berlin),
        "day": pa.array([dt.date(2024, 1, 1) + dt.timedelta(days=i % 9) for i in range(rows)],
                        pa.date32()),
    }
    table = pa.table(columns)
    return pa.Table.from_batches(table.to_batches(max_chunksize=700), table.schema)


def mmapped(table: pa.Table, tmp_path: Path) -> pa.Table:
    """The table as the store serves it: an Arrow IPC file, memory-mapped."""
    file = tmp_path / "cached.arrow"
    with pa.OSFile(str(file), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return ipc.open_file(pa.memory_map(str(file), "r")).read_all()


def plain(table: pa.Table) -> pa.Table:
    """What an export reads back as: views become ordinary string/binary."""
    kinds = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}
    return table.cast(pa.schema([f.with_type(kinds.get(f.type, f.type)) for f in table.schema]))


def read_back(result: ExportResult) -> pa.Table:
    """Read an export with plain pyarrow.dataset, partition types taken from the manifest."""
    manifest = json.loads(result.manifest_path.read_text())
    schema = ipc.read_schema(pa.py_buffer(base64.b64decode(manifest["arrow_schema"])))
    partitioning = None
    if manifest["partitioning"]:
        keys = manifest["partitioning"]["columns"]
        partitioning = pads.partitioning(pa.schema([schema.field(k) for k in keys]),
                                         flavor="hive")
    data = pads.dataset(result.path, format="parquet", partitioning=partitioning).to_table()
    return data.select(schema.names)


def no_temp_dirs(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if ".ldw-tmp-" in p.name]


# -- round trips -------------------------------------------------------------------------------


def test_unpartitioned_round_trip_from_mmapped_table(tmp_path: Path) -> None:
    table = mmapped(sample_table(), tmp_path)
    target = tmp_path / "out" / "orders"     # parents are created
    result = export_table(table, target, manifest=PROVENANCE)

    assert result.path == target and result.rows == table.num_rows
    assert result.manifest_path == target / MANIFEST_NAME
    assert result.bytes == sum(f.bytes for f in result.files) > 0
    assert [f.path for f in result.files] == ["part-0.parquet"]
    # row order is kept, views are ordinary strings/binary, decimals and time zones kept
    back = read_back(result)
    assert back.equals(plain(table))
    file_schema = pq.read_schema(target / "part-0.parquet")
    assert file_schema.field("region").type == pa.string()
    assert file_schema.field("payload").type == pa.binary()
    assert file_schema.field("price").type == pa.decimal128(14, 2)
    assert file_schema.field("at").type == pa.timestamp("us", tz="Europe/Berlin")
    physical = pq.ParquetFile(target / "part-0.parquet").schema
    assert physical.column(1).physical_type == "BYTE_ARRAY"
    assert physical.column(1).logical_type.type == "STRING"
    # polars reads it too (a glob, since the manifest sits beside the data files)
    frame = pl.read_parquet(str(target / "**" / "*.parquet"))
    assert frame.equals(pl.from_arrow(plain(table)))
    assert verify_export(target).ok
    assert no_temp_dirs(target.parent)


def test_partitioned_round_trip(tmp_path: Path) -> None:
    table = sample_table()
    target = tmp_path / "orders"
    result = export_table(table, target, partition_by=["region", "bucket"],
                          manifest=PROVENANCE)

    assert result.rows == table.num_rows
    dirs = sorted(p.name for p in target.iterdir() if p.is_dir())
    assert "region=EMEA" in dirs and "region=__HIVE_DEFAULT_PARTITION__" in dirs
    assert all(f.path.count("/") == 2 and f.path.startswith("region=") for f in result.files)
    assert len(result.files) == 6 * 4          # 5 regions + null, 4 buckets
    assert sum(f.rows for f in result.files) == table.num_rows

    back = read_back(result).sort_by("id")
    assert back.equals(plain(table))
    frame = pl.read_parquet(str(target / "**" / "*.parquet"), hive_partitioning=True,
                            hive_schema={"region": pl.String, "bucket": pl.Int32})
    expected = pl.from_arrow(plain(table))
    assert frame.select(expected.columns).sort("id").equals(expected)
    assert verify_export(target).ok


def test_batches_with_schema_are_streamed(tmp_path: Path) -> None:
    table = sample_table(3000)
    seen: list[ldw.Progress] = []

    def batches():
        yield from table.combine_chunks().to_batches(max_chunksize=500)

    result = export_table(batches(), tmp_path / "x", schema=table.schema,
                          manifest=PROVENANCE, partition_by=["day"], progress=seen.append)
    assert read_back(result).sort_by("id").equals(plain(table))
    assert seen[-1].done and seen[-1].rows == 3000 and seen[-1].bytes > 0
    assert all(not p.done for p in seen[:-1])

    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches())
    again = export_table(reader, tmp_path / "y", manifest=PROVENANCE, compression="snappy")
    assert read_back(again).equals(plain(table))


def test_many_partitions_stay_within_the_memory_budget(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Shuffled keys over more partitions than may stay open: files are closed early and a
    partition continues in its next part file; nothing is lost or duplicated."""
    import ldw.export.parquet

    monkeypatch.setattr(ldw.export.parquet, "_PARTITION_BUFFER", 256 * 1024)
    monkeypatch.setattr(ldw.export.parquet, "_MAX_OPEN_FILES", 4)
    monkeypatch.setattr(ldw.export.parquet, "_FILE_BYTES", 64 * 1024)
    table = sample_table(20_000)
    result = export_table(table, tmp_path / "orders", partition_by=["day", "bucket"],
                          manifest=PROVENANCE)
    folders = {f.path.rsplit("/", 1)[0] for f in result.files}
    assert len(folders) == 9 * 4 and len(result.files) > len(folders)
    assert read_back(result).sort_by("id").equals(plain(table))
    assert verify_export(result.path).ok


def test_empty_export_keeps_the_schema(tmp_path: Path) -> None:
    table = sample_table(0)
    result = export_table(table, tmp_path / "empty", manifest=PROVENANCE)
    assert result.rows == 0 and len(result.files) == 1
    assert pq.read_schema(result.path / result.files[0].path).names == table.schema.names
    assert verify_export(result.path).ok


# -- the target --------------------------------------------------------------------------------


def test_existing_target_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "orders"
    export_table(sample_table(10), target, manifest=PROVENANCE)
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    with pytest.raises(ExportError, match="already exists.*overwrite=True") as info:
        export_table(sample_table(20), target, manifest=PROVENANCE)
    assert isinstance(info.value, ldw.LdwError) and isinstance(info.value, OSError)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert no_temp_dirs(tmp_path)


def test_overwrite_replaces_only_an_earlier_export(tmp_path: Path) -> None:
    target = tmp_path / "orders"
    export_table(sample_table(10), target, manifest=PROVENANCE, partition_by=["region"])
    result = export_table(sample_table(30), target, manifest={"who": "bob"}, overwrite=True)
    assert result.rows == 30 and [f.path for f in result.files] == ["part-0.parquet"]
    assert sorted(p.name for p in target.iterdir()) == [MANIFEST_NAME, "part-0.parquet"]
    assert json.loads(result.manifest_path.read_text())["provenance"] == {"who": "bob"}
    assert verify_export(target).ok
    assert no_temp_dirs(tmp_path)

    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not an ldw export"):
        export_table(sample_table(10), precious, manifest=PROVENANCE, overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert no_temp_dirs(tmp_path)


def test_publishing_without_renameat2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the C library has no renameat2 (not Linux), plain renames publish the export."""
    import ldw.export.atomic

    monkeypatch.setattr(ldw.export.atomic, "_renameat2_fn", None)
    target = tmp_path / "orders"
    export_table(sample_table(10), target, manifest=PROVENANCE)
    with pytest.raises(ExportError, match="already exists"):
        export_table(sample_table(10), target, manifest=PROVENANCE)
    result = export_table(sample_table(20), target, manifest=PROVENANCE, overwrite=True)
    assert result.rows == 20 and verify_export(target).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders"]


def test_failing_source_leaves_nothing_and_keeps_its_error(tmp_path: Path) -> None:
    table = sample_table(2000)

    def dying():
        yield from table.to_batches(max_chunksize=500)[:2]
        raise ldw.SourceUnavailable("source 'dwh' went away")

    with pytest.raises(ldw.SourceUnavailable, match="went away"):
        export_table(dying(), tmp_path / "orders", schema=table.schema, manifest=PROVENANCE)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_fail_before_writing(tmp_path: Path) -> None:
    table = sample_table(10)
    target = tmp_path / "orders"
    cases = [
        ({"partition_by": ["nope"]}, ldw.ConfigError, "not in the data"),
        ({"partition_by": ["price"]}, ldw.ConfigError, "cannot partition by 'price'"),
        ({"compression": "zip"}, ldw.ConfigError, "unknown compression"),
        ({"manifest": {"when": dt.datetime.now()}}, ldw.ConfigError, "JSON values"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            export_table(table, target, **{"manifest": PROVENANCE, **kwargs})
    with pytest.raises(ldw.ConfigError, match="needs schema="):
        export_table(iter(table.to_batches()), target, manifest=PROVENANCE)
    with pytest.raises(ExportError, match="a batch has schema"):
        export_table(iter(table.to_batches()), target, manifest=PROVENANCE,
                     schema=pa.schema([("other", pa.int64())]))
    interval = pa.table({"gap": pa.array([pa.scalar((1, 2, 3), pa.month_day_nano_interval())])})
    with pytest.raises(ldw.UnsupportedType, match="'gap'"):
        export_table(interval, target, manifest=PROVENANCE)
    assert list(tmp_path.iterdir()) == []     # nothing left behind


# -- the manifest and verification --------------------------------------------------------------


def test_manifest_holds_only_what_the_caller_passed(tmp_path: Path) -> None:
    table = sample_table(100)
    result = export_table(table, tmp_path / "orders", manifest=PROVENANCE,
                          partition_by=["bucket"])
    text = result.manifest_path.read_text()
    body = json.loads(text)
    assert set(body) == {"ldw_export", "provenance", "format", "compression", "partitioning",
                         "schema", "arrow_schema", "rows", "bytes", "files", "checksum"}
    assert body["provenance"] == PROVENANCE
    assert body["rows"] == 100 and body["compression"] == "zstd"
    assert body["partitioning"] == {"flavor": "hive", "columns": ["bucket"]}
    assert [f["name"] for f in body["schema"]] == table.schema.names
    assert {f["name"]: f["type"] for f in body["schema"]}["price"] == "decimal128(14, 2)"
    assert [f["path"] for f in body["files"]] == [f.path for f in result.files]
    assert all(set(f) == {"path", "rows", "bytes", "sha256"} for f in body["files"])
    assert body["checksum"].startswith("sha256:")
    # nothing from the environment: no URL, host, absolute path or user name sneaks in
    for leak in ("://", "postgresql", str(tmp_path), os.environ.get("USER") or "\0"):
        assert leak not in text


@pytest.mark.parametrize("damage", ["modified", "truncated", "deleted", "extra", "manifest"])
def test_verify_detects_damage(tmp_path: Path, damage: str) -> None:
    target = tmp_path / "orders"
    result = export_table(sample_table(), target, manifest=PROVENANCE, partition_by=["bucket"])
    victim = target / result.files[1].path
    if damage == "modified":               # same size, one byte flipped
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:-10])
    elif damage == "deleted":
        victim.unlink()
    elif damage == "extra":
        pq.write_table(sample_table(3), target / "bucket=1" / "part-9.parquet")
    elif damage == "manifest":             # a forged entry must not pass the checksum
        body = json.loads(result.manifest_path.read_text())
        body["files"][0]["rows"] += 1
        body["rows"] += 1
        result.manifest_path.write_text(json.dumps(body))

    check = verify_export(target)
    assert not check.ok
    kinds = {p.kind for p in check.problems}
    expected = {"modified": "modified", "truncated": "modified", "deleted": "missing",
                "extra": "extra", "manifest": "manifest"}[damage]
    assert expected in kinds
    if damage == "extra":
        assert [p.path for p in check.problems] == ["bucket=1/part-9.parquet"]
    with pytest.raises(ExportVerificationError, match="failed verification") as info:
        verify_export(target, strict=True)
    assert isinstance(info.value, ExportError) and info.value.problems == check.problems


def test_verify_rejects_what_is_not_an_export(tmp_path: Path) -> None:
    assert [p.kind for p in verify_export(tmp_path / "nowhere").problems] == ["missing"]
    assert [p.kind for p in verify_export(tmp_path).problems] == ["manifest"]


# -- crashes and interrupts (real subprocesses) -------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pyarrow as pa
    from ldw.export import export_table

    target, marker = Path(sys.argv[1]), Path(sys.argv[2])
    schema = pa.schema([("id", pa.int64()), ("k", pa.int32()), ("text", pa.string_view())])

    def written():
        return [f for f in target.parent.glob("." + target.name + ".ldw-tmp-*/**/*.parquet")
                if f.stat().st_size > 0]

    def batches():
        n = 50_000
        keys = pa.array([j % 3 for j in range(n)], pa.int32())
        text = pa.array([f"row-{j}-" + "x" * 40 for j in range(n)], pa.string_view())
        for i in range(1_000_000):
            ids = pa.array(range(i * n, (i + 1) * n), pa.int64())
            yield pa.record_batch([ids, keys, text], schema=schema)
            if not marker.exists() and written():
                marker.write_text("writing")     # Parquet bytes are on disk: half-way
            if marker.exists():
                time.sleep(0.05)                 # keep writing, slowly, until killed

    export_table(batches(), target, schema=schema, partition_by=["k"],
                 manifest={"who": "child"})
""")


def start_child(tmp_path: Path, target: Path) -> tuple[subprocess.Popen[bytes], Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(script), str(target), str(marker)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            _, err = child.communicate()
            pytest.fail(f"export child never got half-way: {err.decode()[-2000:]}")
        time.sleep(0.05)
    return child, marker


def temp_dirs(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}.ldw-tmp-*"))


def test_export_killed_half_way_publishes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "exports" / "orders"
    target.parent.mkdir()
    child, _ = start_child(tmp_path, target)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL

    assert not os.path.lexists(target)
    [stale] = temp_dirs(target)
    assert list(stale.rglob("*.parquet"))          # it really died half-way through
    assert not (stale / MANIFEST_NAME).exists()
    assert not verify_export(stale).ok             # never mistaken for an export
    assert [p.name for p in target.parent.iterdir()] == [stale.name]

    result = export_table(sample_table(100), target, manifest=PROVENANCE)
    assert verify_export(result.path).ok and result.rows == 100
    assert temp_dirs(target) == []                 # the dead writer's leftovers are gone
    assert [p.name for p in target.parent.iterdir()] == ["orders"]


def test_live_export_is_left_alone_and_ctrl_c_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "orders"
    child, _ = start_child(tmp_path, target)
    try:
        [theirs] = temp_dirs(target)
        # another export to the same path does not touch the live writer's directory
        mine = export_table(sample_table(50), target, manifest=PROVENANCE)
        assert temp_dirs(target) == [theirs] and list(theirs.rglob("*.parquet"))
        # Ctrl-C: the child cancels, removes its directory, and exits with KeyboardInterrupt
        os.kill(child.pid, signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode != 0 and b"KeyboardInterrupt" in err
    assert temp_dirs(target) == []
    assert verify_export(target).ok and read_back(mine).num_rows == 50


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs: a real file system that fills up."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("CI=true: the full-disk export test mounts a tmpfs and needs root")
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("partition_by", [None, ["part"]])
def test_a_full_disk_leaves_nothing_and_says_so(small_disk: Path, partition_by) -> None:
    import numpy as np

    rows = 1_000_000  # ~8 MB of random doubles: does not compress, does not fit
    table = pa.table({"x": np.random.default_rng(7).random(rows),
                      "part": pa.array(np.arange(rows) % 3)})
    target = small_disk / "out"
    with pytest.raises(ExportError) as info:
        export_table(table, target, manifest={"dataset": "x"}, partition_by=partition_by)
    message = str(info.value)
    assert "is full" in message and "nothing was published" in message, message
    assert os.listdir(small_disk) == []                   # no target, no temp folder
    small = export_table(table.slice(0, 1000), target, manifest={"dataset": "x"})
    assert verify_export(small.path).ok                   # the space was given back
