"""What ``to_arrow()``, ``to_polars()``, ``to_pandas()`` and DuckDB get from the cache (issue 16,
items 1 and 4): types every Arrow consumer handles, and no copies where the layouts allow.

Every type family of ``test_types_postgres`` goes through one wide PostgreSQL table (ADBC), is
cached, and the pyarrow operations a user reaches for first run on ``to_arrow()``: ``take``,
``filter``, ``sort_by``, joins with a payload and comparisons with a scalar.
"""

from __future__ import annotations

import os

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from test_types_postgres import CASES

from ldw import layout
from ldw.layout import standard_schema, standard_table, standard_type
from ldw.storage.align import DecimalAligner

ROWS = max(len(case.rows) for case in CASES) + 1  # the last row is all NULL


def _no_views(arrow_type: pa.DataType) -> bool:
    return "view" not in str(arrow_type)


@pytest.fixture
def wide(pg_engine, pg_schema, pg_wh):
    """Every type family as one column ``c_<id>`` of ``t``, cached."""
    columns = [(f"c_{case.id}", case.sql_type.format(schema=pg_schema)) for case in CASES]
    with pg_engine.begin() as conn:
        for case in CASES:
            for ddl in case.setup:
                conn.exec_driver_sql(ddl.format(schema=pg_schema))
        conn.exec_driver_sql(f"create table {pg_schema}.t (id int primary key, "
                             + ", ".join(f"{c} {t}" for c, t in columns) + ")")
        values = ", ".join(f"cast(%s as {t})" for _, t in columns)
        rows = [(i, *[case.rows[i][0] if i < len(case.rows) else None for case in CASES])
                for i in range(ROWS)]
        conn.exec_driver_sql(f"insert into {pg_schema}.t values (%s, {values})", rows)
    return pg_wh.map("wide", f"pg.{pg_schema}.t").cache()


def _outcome(call):
    """What an operation gives: its result, or the kind of error pyarrow raised."""
    try:
        return call()
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        return type(exc)


def _values(data) -> str:
    """Values to compare (NaN equal to NaN)."""
    return repr(data.to_pylist())


def _same_or_same_refusal(mine, theirs, name: str) -> None:
    """``mine`` equals ``theirs``; where pyarrow refuses the reference type too, the same way."""
    if isinstance(theirs, type):  # an operation pyarrow never supported for this type
        assert mine == theirs, name
    else:
        assert not isinstance(mine, type), (name, mine)
        assert _values(mine) == _values(theirs), name


def _check_column(got: pa.Table, ref: pa.Table, name: str) -> None:
    rows = got.num_rows
    order = list(range(rows))[::-1]
    keep = pa.array([i % 2 == 0 for i in range(rows)])
    assert _values(got.take(order).column(name)) == _values(ref.take(order).column(name))
    assert _values(pc.take(got, pa.array(order)).column(name)) == \
        _values(ref.take(order).column(name))
    assert _values(got.filter(keep).column(name)) == _values(ref.filter(keep).column(name))
    assert _values(got.sort_by([("id", "descending")]).column(name)) == \
        _values(ref.take(order).column(name))
    other = pa.table({"id": pa.array(range(rows), pa.int32()),
                      "tag": pa.array([f"t{i}" for i in range(rows)], pa.large_string())})
    _same_or_same_refusal(_outcome(lambda: got.join(other, "id").sort_by("id").column(name)),
                          _outcome(lambda: ref.join(other, "id").sort_by("id").column(name)),
                          name)
    sample = got.column(name)[0]
    _same_or_same_refusal(_outcome(lambda: pc.equal(got.column(name), sample)),
                          _outcome(lambda: pc.equal(ref.column(name), sample)), name)
    _same_or_same_refusal(_outcome(lambda: got.sort_by(name).column(name)),
                          _outcome(lambda: ref.sort_by(name).column(name)), name)


@pytest.mark.postgres
def test_to_arrow_works_with_pyarrow_for_every_type(wide):
    table = wide.to_arrow()
    assert table.num_rows == ROWS
    assert all(_no_views(f.type) for f in table.schema), table.schema
    assert table.schema == wide.schema                        # as known at map time
    # the reference: the same data in the types pyarrow has always handled
    reference = table.cast(pa.schema([f.with_type(pa.large_string() if f.type == pa.string()
                                                  else pa.large_binary() if f.type == pa.binary()
                                                  else f.type) for f in table.schema]))
    for name in table.column_names[1:]:
        _check_column(table.select(["id", name]), reference.select(["id", name]), name)


@pytest.mark.postgres
def test_strings_filter_compare_and_join_as_a_pyarrow_user_expects(wide):
    table = wide.to_arrow()
    text = table.column("c_varchar")
    assert text.type == pa.string() and table.column("c_bytea").type == pa.binary()
    hits = table.filter(pc.equal(text, "ab "))
    assert hits["id"].to_pylist() == [0]
    assert table.filter(pc.field("c_char_5") == "abcde")["id"].to_pylist() == [1]
    assert table.sort_by("c_varchar")["c_varchar"].to_pylist()[:2] == ["", "0123456789"]
    names = pa.table({"c_varchar": pa.array(["ab ", "é😀 x"]), "n": pa.array([1, 2])})
    joined = table.select(["id", "c_varchar", "c_text"]).join(names, "c_varchar",
                                                             join_type="inner")
    assert sorted(joined["n"].to_pylist()) == [1, 2]          # string key, string payload
    assert sorted(joined["c_text"].to_pylist()) == [" ", "héllo wörld 😀🎉"]


@pytest.mark.postgres
def test_pandas_and_duckdb_read_what_to_arrow_returns(wide):
    table = wide.to_arrow()
    frame = wide.to_pandas()
    assert len(frame) == ROWS and frame["c_varchar"].tolist()[:2] == ["ab ", ""]
    assert frame["c_bytea"].tolist()[0] == b"\x00"
    con = duckdb.connect()
    con.register("t", table.select(["id", "c_varchar", "c_bytea", "c_numeric_10_2"]))
    assert con.sql("select id from t where c_varchar = 'ab '").fetchall() == [(0,)]
    assert con.sql("select count(*) from t where c_numeric_10_2 > 0").fetchall() == [(2,)]


def _rss_anon() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon")


@pytest.mark.postgres
def test_to_polars_maps_strings_and_decimals_without_copies(pg_engine, pg_schema, pg_wh):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.big as select i as id, "
                             "(i * 1.25)::numeric(15, 2) as price, "
                             "mod(i, 7)::numeric(12, 3) as qty, "
                             "repeat('x', 40 + mod(i, 9)) || i as note "
                             "from generate_series(1, 400000) i")
    ds = pg_wh.map("big", f"pg.{pg_schema}.big").cache()
    cached = ds._cached()
    for name in ("price", "qty"):  # every decimal buffer at a 16-byte address in the mapping
        assert {c.buffers()[1].address % 16 for c in cached.column(name).chunks} == {0}
    data_bytes = cached.nbytes
    before = _rss_anon()
    frame = ds.to_polars()
    grown = _rss_anon() - before
    assert frame.height == 400_000 and frame["price"].dtype == pl.Decimal(15, 2)
    assert grown < data_bytes / 20, (grown, data_bytes)        # no column was copied
    chunk = frame["price"].get_chunks()[1].to_arrow()
    assert chunk.buffers()[1].address in {c.buffers()[1].address
                                          for c in cached.column("price").chunks}
    assert frame["note"].str.starts_with("xxxx").all()


def test_the_aligner_aligns_decimals_between_other_columns(tmp_path):
    def batch(n: int) -> pa.RecordBatch:
        return pa.record_batch({
            "k": pa.array(range(n), pa.int32()),
            "s": pa.array([f"v{i}" * (i % 5) for i in range(n)], pa.string_view()),
            "d": pa.array(range(n), pa.int32()).cast(pa.decimal128(15, 2)),
            "b": pa.array([i % 3 == 0 for i in range(n)]),
            "e": pa.array([None if i % 4 == 0 else i for i in range(n)],
                          pa.int32()).cast(pa.decimal128(20, 4)),
        })
    batches = [batch(1000 - 7 * i) for i in range(12)]
    path = tmp_path / "v.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batches[0].schema) as w:
        aligner = DecimalAligner(sink, batches[0].schema)
        padded = 0
        for b in batches:
            metadata = aligner.metadata(b)
            padded += metadata is not None
            w.write_batch(b, custom_metadata=metadata)
    assert padded > 0  # without it some batches were misaligned
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    assert table.equals(pa.Table.from_batches(batches))
    d_aligned = [c.buffers()[1].address % 16 == 0 for c in table.column("d").chunks]
    assert all(d_aligned)
    assert os.path.getsize(path) < sum(b.nbytes for b in batches) * 1.1


def test_standard_schema_replaces_views_at_every_depth():
    schema = pa.schema([("a", pa.string_view()), ("b", pa.list_(pa.binary_view())),
                        ("c", pa.struct([("x", pa.string_view()), ("y", pa.int8())])),
                        ("d", pa.map_(pa.string_view(), pa.large_list(pa.string_view()))),
                        ("e", pa.decimal128(5, 2))])
    out = standard_schema(schema)
    assert all(_no_views(f.type) for f in out)
    assert out.field("a").type == pa.string()
    assert out.field("b").type == pa.list_(pa.binary())
    assert standard_type(pa.string_view(), large=True) == pa.large_string()
    assert out.field("e").type == pa.decimal128(5, 2)


def test_a_batch_over_the_offset_limit_becomes_large_string(monkeypatch):
    monkeypatch.setattr(layout, "OFFSET_LIMIT", 10_000)  # stands in for 2 GiB
    small = pa.chunked_array([pa.array(["y" * 20] * 10, pa.string_view())])
    big = pa.chunked_array([pa.array(["x" * 100] * 10, pa.string_view()),
                            pa.array(["x" * 100] * 101, pa.string_view())])
    out = standard_table(pa.table({"s": small, "n": pa.array(range(10))}))
    assert out.schema.field("s").type == pa.string()
    out = standard_table(pa.table({"b": big}))
    assert out.schema.field("b").type == pa.large_string()
    assert out.column("b").to_pylist() == ["x" * 100] * 111
    assert pa.types.is_large_string(standard_table(pa.table({"l": pa.array(
        [["a"]], pa.list_(pa.string_view()))})).schema.field("l").type.value_type)
