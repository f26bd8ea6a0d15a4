"""SQL over datasets (ldw.sql): validation, DuckDB sandbox, Arrow types, TPC-H vs PostgreSQL.

The TPC-H part generates SF0.1 with ``tpchgen-cli``, loads it into a fresh PostgreSQL schema and
into Arrow (char(n) trimmed, decimal128(15, 2), string_view), runs the 22 queries through
:func:`ldw.sql.run_sql` and through PostgreSQL, and compares the results.
"""

from __future__ import annotations

import decimal
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pytest
from conftest import POSTGRES_URL

import ldw
from ldw import tpch
from ldw.sql import SqlEngine, referenced_datasets, run_sql
from ldw.sql.arrow_types import _duckdb_ready
from ldw.sql.run import _connect, _threads

T = pa.table({"k": pa.array(["a", "b", "a"], pa.string_view()), "v": pa.array([1, 2, 3])})


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if DuckDB is ever opened: rejected queries must not run."""
    def refuse(**_: object) -> None:
        raise AssertionError("a rejected query reached DuckDB")

    monkeypatch.setattr("ldw.sql.run._connect", refuse)


# --- validation ----------------------------------------------------------------------------------

REJECTED = [
    # several statements
    ("SELECT * FROM t; SELECT * FROM u", "single query; found 2 statements"),
    ("SELECT * FROM t; DROP TABLE t", "single query; found 2 statements"),
    # DML / DDL
    ("INSERT INTO t VALUES ('x', 1)", "not INSERT"),
    ("UPDATE t SET v = 0", "not UPDATE"),
    ("DELETE FROM t", "not DELETE"),
    ("CREATE TABLE x AS SELECT * FROM t", "not CREATE"),
    ("CREATE MACRO m(a) AS a + 1", "not CREATE"),
    ("DROP TABLE t", "not DROP"),
    ("ALTER TABLE t ADD COLUMN w INTEGER", "not ALTER"),
    ("SELECT * INTO copy_of_t FROM t", "INTO is not allowed"),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "DELETE is not allowed"),
    # COPY, ATTACH, PRAGMA, INSTALL/LOAD, SET and other commands
    ("COPY t TO 'out.csv'", "not COPY"),
    ("COPY (SELECT * FROM t) TO 'out.parquet' (FORMAT parquet)", "not COPY"),
    ("ATTACH 'other.db' AS other", "not ATTACH"),
    ("DETACH other", "not DETACH"),
    ("PRAGMA database_list", "not PRAGMA"),
    ("INSTALL httpfs", "not INSTALL"),
    ("LOAD httpfs", "not LOAD"),
    ("SET enable_external_access = true", "not SET"),
    ("SET VARIABLE x = 1", "not SET"),
    ("RESET threads", "not RESET"),
    ("EXPLAIN SELECT * FROM t", "not EXPLAIN"),
    ("DESCRIBE t", "not DESCRIBE"),
    ("SHOW TABLES", "not SHOW"),
    ("SUMMARIZE t", "not SUMMARIZE"),
    ("CALL pragma_version()", "not CALL"),
    ("CHECKPOINT", "not CHECKPOINT"),
    ("BEGIN TRANSACTION", "read-only query"),
    ("USE memory", "not USE"),
    ("VALUES (1)", "not VALUES"),
    # table functions and functions that read files, the network or settings, or run SQL
    ("SELECT * FROM read_parquet('x.parquet')", "table function read_parquet() is not allowed"),
    ("SELECT * FROM read_csv('/etc/passwd')", "table function read_csv() is not allowed"),
    ("FROM read_csv_auto('x.csv')", "read_csv_auto() is not allowed"),
    ("SELECT * FROM read_json('x.json')", "read_json() is not allowed"),
    ("SELECT * FROM read_text('/etc/hostname')", "read_text() is not allowed"),
    ("SELECT * FROM parquet_scan('x.parquet')", "parquet_scan() is not allowed"),
    ("SELECT * FROM glob('/*')", "glob() is not allowed"),
    ("SELECT * FROM query('SELECT 1')", "query() is not allowed"),
    ("SELECT * FROM query_table('t')", "query_table() is not allowed"),
    ("SELECT * FROM duckdb_settings()", "duckdb_settings() is not allowed"),
    ("SELECT * FROM sqlite_scan('x.db', 't')", "sqlite_scan() is not allowed"),
    ("SELECT * FROM test_all_types()", "test_all_types() is not allowed"),
    ("SELECT * FROM t JOIN read_csv('x.csv') r ON true", "read_csv() is not allowed"),
    ("SELECT * FROM t, LATERAL read_csv('x.csv')", "read_csv() is not allowed"),
    ("SELECT * FROM t WHERE k IN (SELECT * FROM read_csv('x.csv'))", "read_csv() is not allowed"),
    ("SELECT read_text('x')", "function read_text() is not allowed"),
    ("SELECT getenv('HOME')", "function getenv() is not allowed"),
    ("SELECT current_setting('threads')", "function current_setting() is not allowed"),
    ("SELECT getvariable('x')", "function getvariable() is not allowed"),
    ("SELECT system.main.getenv('HOME')", "function getenv() is not allowed"),
    ("SELECT json_execute_serialized_sql('x')", "json_execute_serialized_sql() is not allowed"),
    # qualified names
    ("SELECT * FROM main.t", "qualified name main.t is not allowed"),
    ("SELECT * FROM memory.main.t", "qualified name memory.main.t is not allowed"),
    ("SELECT * FROM system.main.duckdb_tables", "qualified name system.main.duckdb_tables"),
    ("SELECT * FROM information_schema.tables", "qualified name information_schema.tables"),
    ("SELECT * FROM pg_catalog.pg_class", "qualified name pg_catalog.pg_class"),
    ("SELECT * FROM a.b.c.d", "qualified names are not allowed"),
    ("SELECT * FROM main.read_csv('x.csv')", "read_csv() is not allowed"),
    ("SELECT * FROM main.range(3)", "qualified table functions are not allowed"),
    # string literals used as tables
    ("SELECT * FROM 'data.parquet'", "a string literal cannot be used as a table"),
    ("FROM '/etc/passwd'", "a string literal cannot be used as a table"),
    ("SELECT * FROM t JOIN 'other.csv' USING (k)", "a string literal cannot be used as a table"),
    ("SELECT * FROM 'https://example.com/x.parquet'", "a string literal cannot be used"),
    # not SQL at all
    ("", "non-empty query"),
    ("   ", "non-empty query"),
    ("SELECT FROM WHERE (", "cannot parse"),
]


@pytest.mark.parametrize(("query", "message"), REJECTED)
def test_rejected_and_nothing_runs(query: str, message: str, no_engine: None) -> None:
    with pytest.raises(ldw.InvalidMapping, match="sql") as info:
        referenced_datasets(query)
    assert message in str(info.value)
    with pytest.raises(ldw.InvalidMapping) as info:
        run_sql(query, {"t": T, "u": T})
    assert message in str(info.value)


def test_rejection_says_where() -> None:
    query = "SELECT *\nFROM t\n  JOIN read_csv('x.csv') AS r ON true"
    with pytest.raises(ldw.InvalidMapping) as info:
        referenced_datasets(query)
    assert "near line 3, column" in str(info.value)
    assert "x.csv" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_not_a_string(no_engine: None) -> None:
    with pytest.raises(ldw.InvalidMapping, match="non-empty query"):
        referenced_datasets(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("query", "names"), [
    ("SELECT * FROM orders", ["orders"]),
    ("SELECT * FROM orders;", ["orders"]),
    ("SELECT ';' AS semi FROM orders -- a comment; with a semicolon", ["orders"]),
    ("FROM orders SELECT o_orderkey", ["orders"]),
    ("SELECT * FROM customer JOIN orders ON c_custkey = o_custkey JOIN customer c2 USING (x)",
     ["customer", "orders"]),
    ("WITH big AS (SELECT * FROM orders) SELECT * FROM big JOIN lineitem ON true",
     ["orders", "lineitem"]),
    ("WITH a AS (SELECT 1 AS x), b AS (SELECT * FROM a) SELECT * FROM b", []),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) "
     "SELECT * FROM r", []),
    ("WITH orders AS (SELECT * FROM orders) SELECT * FROM orders", ["orders"]),
    ("SELECT * FROM (SELECT * FROM a) s WHERE EXISTS (SELECT 1 FROM b WHERE b.x = s.x) "
     "UNION ALL SELECT * FROM c", ["a", "b", "c"]),
    ('SELECT * FROM "my-data"', ["my-data"]),
    ("SELECT * FROM range(10) r(i) JOIN t ON i = t.v", ["t"]),
    ("SELECT * FROM generate_series(1, 3), unnest([1, 2])", []),
    ("SELECT unnest(l), list_transform(l, x -> x + 1) FROM t", ["t"]),
    ("SELECT * FROM t ASOF JOIN u ON t.v >= u.v", ["t", "u"]),
    ("SELECT * FROM t POSITIONAL JOIN u", ["t", "u"]),
    ("SELECT * FROM t WHERE k GLOB 'a*' AND k SIMILAR TO 'a.*'", ["t"]),
    ("PIVOT t ON k IN ('a', 'b') USING sum(v)", ["t"]),
])
def test_referenced_datasets(query: str, names: list[str]) -> None:
    assert referenced_datasets(query) == names


# --- running -------------------------------------------------------------------------------------


def test_run_sql_join_and_result() -> None:
    names = pa.table({"k": ["a", "b"], "label": ["alpha", "beta"]})
    result = run_sql("SELECT label, sum(v) AS total, count(*) AS n FROM t JOIN names USING (k) "
                     "GROUP BY label ORDER BY label", {"t": T, "names": names})
    assert isinstance(result, pa.Table)
    assert result.to_pydict() == {"label": ["alpha", "beta"], "total": [4, 2], "n": [2, 1]}
    assert result.schema.field("total").type == pa.int64()  # HUGEINT narrowed


def test_huge_sums_stay_exact_decimals() -> None:
    big = pa.table({"v": pa.array([2**62, 2**62, 2**62], pa.int64())})
    result = run_sql("SELECT sum(v) AS s FROM big", {"big": big})
    assert result.column("s").to_pylist() == [decimal.Decimal(3 * 2**62)]


def test_only_given_tables_are_visible() -> None:
    with pytest.raises(ldw.UnknownDataset, match="'secret'"):
        run_sql("SELECT * FROM secret", {"t": T})
    with pytest.raises(ldw.UnknownDataset, match="duckdb_tables"):
        run_sql("SELECT * FROM duckdb_tables", {"t": T})
    with pytest.raises(ldw.UnknownDataset, match="pg_class"):
        run_sql("SELECT * FROM pg_class", {"t": T})


def test_cte_shadows_and_recursion() -> None:
    result = run_sql("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 4) "
                     "SELECT sum(n) AS s FROM r", {})
    assert result.column("s").to_pylist() == [10]
    result = run_sql("WITH t AS (SELECT * FROM t WHERE k = 'a') SELECT count(*) AS n FROM t",
                     {"t": T})
    assert result.column("n").to_pylist() == [2]


def test_pivot() -> None:
    result = run_sql("PIVOT t ON k IN ('a', 'b') USING sum(v)", {"t": T})
    assert result.to_pydict() == {"a": [4], "b": [2]}
    with pytest.raises(ldw.InvalidMapping, match="PIVOT needs the values"):
        run_sql("PIVOT t ON k USING sum(v)", {"t": T})  # DuckDB would run hidden statements


def test_names_differing_only_by_case_are_refused() -> None:
    with pytest.raises(ldw.InvalidMapping, match="case-insensitive"):
        run_sql('SELECT * FROM "T" JOIN t USING (k)', {"t": T, "T": T})


def test_engine_errors_are_wrapped() -> None:
    with pytest.raises(ldw.InvalidMapping, match="nope") as info:
        run_sql("SELECT nope FROM t", {"t": T})
    assert isinstance(info.value.__cause__, duckdb.Error)
    with pytest.raises(ldw.InvalidMapping, match="the query failed"):
        run_sql("SELECT CAST(k AS INTEGER) FROM t", {"t": T})


def test_out_of_memory_is_capacity_exceeded_never_a_spill() -> None:
    n = 1_000_000
    big = pa.table({"s": pa.array([f"key-{i:08d}" for i in range(n)], pa.string_view())})
    with pytest.raises(ldw.CapacityExceeded, match="more memory than allowed") as info:
        run_sql("SELECT s, count(*) AS c FROM big GROUP BY s ORDER BY s", {"big": big},
                memory_limit="16MB", threads=1)
    assert isinstance(info.value.__cause__, duckdb.OutOfMemoryException)
    assert isinstance(info.value, MemoryError)


def test_tables_must_be_arrow() -> None:
    with pytest.raises(TypeError, match="pyarrow.Table"):
        run_sql("SELECT * FROM t", {"t": T.to_pydict()})  # type: ignore[dict-item]


def test_threads_are_bounded() -> None:
    assert _threads(None) == (os.cpu_count() or 1)
    assert _threads(10_000) == (os.cpu_count() or 1)
    assert _threads(1) == 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ldw.ConfigError, match="threads"):
            _threads(bad)  # type: ignore[arg-type]
    assert run_sql("SELECT count(*) AS n FROM t", {"t": T}, threads=1).column("n")[0].as_py() == 3


def test_engine_runs_isolate_their_tables() -> None:
    with SqlEngine(threads=1) as engine:
        assert engine.run("SELECT count(*) AS n FROM t", {"t": T}).column("n").to_pylist() == [3]
        other = engine._cursor()  # another connection to the same database
        try:
            with pytest.raises(duckdb.CatalogException):
                other.sql("SELECT * FROM t").fetchall()
        finally:
            other.close()

        def count(n: int) -> int:
            table = pa.table({"x": list(range(n))})
            return engine.run("SELECT count(*) AS n FROM t", {"t": table}).column("n")[0].as_py()

        with ThreadPoolExecutor(max_workers=4) as pool:
            assert list(pool.map(count, range(1, 17))) == list(range(1, 17))
    with pytest.raises(ldw.InvalidMapping, match="closed"):
        engine.run("SELECT 1 AS one", {})


def test_engine_settings_are_checked() -> None:
    with pytest.raises(ldw.ConfigError, match="engine settings"):
        SqlEngine(memory_limit="lots")
    with SqlEngine(memory_limit="1GiB") as engine:
        assert "memory_limit=1GiB" in repr(engine)


def test_sandbox_blocks_files_settings_and_python_variables(tmp_path: Path) -> None:
    """Even a query that got past validation cannot read files, change settings or see Python."""
    secret_file = tmp_path / "secret.csv"
    secret_file.write_text("a\n42\n")
    leak = pa.table({"x": [42]})  # noqa: F841 - DuckDB would find it by name without the setting
    con = _connect(threads=1, memory_limit=None)
    try:
        with pytest.raises(duckdb.Error, match="disabled"):
            con.sql(f"SELECT * FROM read_csv('{secret_file}')").fetchall()
        with pytest.raises(duckdb.Error, match="disabled"):
            con.sql(f"SELECT * FROM '{secret_file}'").fetchall()
        with pytest.raises(duckdb.Error, match="locked"):
            con.sql("SET enable_external_access = true")
        with pytest.raises(duckdb.Error, match="locked"):
            con.sql("SET temp_directory = '/tmp'")
        with pytest.raises(duckdb.Error):
            con.sql(f"ATTACH '{tmp_path / 'x.db'}'")
        with pytest.raises(duckdb.Error):
            con.sql("INSTALL httpfs")
        with pytest.raises(duckdb.CatalogException):
            con.sql("SELECT * FROM leak").fetchall()
        cursor = con.cursor()  # what SqlEngine.run uses: the same rules hold
        with pytest.raises(duckdb.CatalogException):
            cursor.sql("SELECT * FROM leak").fetchall()
        with pytest.raises(duckdb.Error, match="disabled"):
            cursor.sql(f"SELECT * FROM read_csv('{secret_file}')").fetchall()
        cursor.close()
        settings = dict(con.sql("SELECT name, value FROM duckdb_settings() WHERE name IN "
                                "('threads', 'temp_directory', 'enable_external_access')")
                        .fetchall())
        assert settings == {"threads": "1", "temp_directory": "",
                            "enable_external_access": "false"}  # no spill directory at all
    finally:
        con.close()
    assert not (tmp_path / "x.db").exists()


# --- Arrow types ---------------------------------------------------------------------------------

D = decimal.Decimal


def test_view_strings_and_binaries() -> None:
    table = pa.table({
        "s": pa.array(["alpha", "a string longer than twelve bytes", None, "alpha"],
                      pa.string_view()),
        "b": pa.array([b"\x00\x01", b"binary data longer than twelve", None, b"\x00\x01"],
                      pa.binary_view()),
        "ls": pa.array(["x", "y", "z", "x"], pa.large_string()),
    })
    assert _duckdb_ready(table) is table  # read by DuckDB as is, zero-copy
    result = run_sql("SELECT s, b, ls, count(*) AS n FROM t WHERE s IS NOT NULL "
                     "GROUP BY ALL ORDER BY n DESC, s", {"t": table})
    assert result.to_pylist() == [
        {"s": "alpha", "b": b"\x00\x01", "ls": "x", "n": 2},
        {"s": "a string longer than twelve bytes", "b": b"binary data longer than twelve",
         "ls": "y", "n": 1},
    ]
    found = run_sql("SELECT count(*) AS n FROM t WHERE s = 'a string longer than twelve bytes'",
                    {"t": table})
    assert found.column("n").to_pylist() == [1]


def test_decimals() -> None:
    values = [D("1.25"), None, D("-3.50")]
    table = pa.table({
        "d32": pa.array(values, pa.decimal32(7, 2)),
        "d64": pa.array(values, pa.decimal64(15, 2)),
        "d128": pa.array(values, pa.decimal128(15, 2)),
        "d256": pa.array(values, pa.decimal256(38, 2)),
        "wide": pa.array([D("12345678901234567890123456789012345678.25"), None, D("1.5")],
                         pa.decimal256(40, 2)),
    })
    ready = _duckdb_ready(table)
    assert ready.schema.field("d256").type == pa.decimal128(38, 2)  # exact
    assert ready.schema.field("wide").type == pa.float64()  # beyond DuckDB's 38 digits
    # columns DuckDB reads as they are keep their buffers (no copy)
    assert ready.column("d128").chunk(0).buffers()[1].address == \
        table.column("d128").chunk(0).buffers()[1].address
    result = run_sql("SELECT sum(d32) AS s32, sum(d64) AS s64, sum(d128) AS s128, "
                     "sum(d256) AS s256, max(wide) AS w FROM t", {"t": table})
    row = result.to_pylist()[0]
    assert row["s32"] == row["s64"] == row["s128"] == row["s256"] == D("-2.25")
    assert pa.types.is_decimal(result.schema.field("s128").type)
    assert row["w"] == pytest.approx(1.2345678901234568e37)
    assert table.schema.field("d256").type == pa.decimal256(38, 2)  # input left alone


def test_nested_and_other_types() -> None:
    table = pa.table({
        "h": pa.array([1.5, 2.5], pa.float32()).cast(pa.float16()),
        "dl": pa.array([[D("1.10")], [D("2.20"), None]], pa.list_(pa.decimal256(10, 2))),
        "st": pa.array([{"x": "a"}, {"x": "b"}], pa.struct([("x", pa.string_view())])),
        "dict": pa.array(["p", "q"]).dictionary_encode(),
        "ts": pa.array([0, 86_400_000_000], pa.timestamp("us", tz="UTC")),
        "day": pa.array([0, 1], pa.date32()),
    })
    ready = _duckdb_ready(table)
    assert ready.schema.field("h").type == pa.float32()
    assert ready.schema.field("dl").type == pa.list_(pa.decimal128(10, 2))
    assert ready.schema.field("st").type == table.schema.field("st").type
    result = run_sql("SELECT h, dl[1] AS first, st.x AS x, dict, day FROM t ORDER BY h",
                     {"t": table})
    assert result.to_pydict()["first"] == [D("1.10"), D("2.20")]
    assert result.to_pydict()["x"] == ["a", "b"]
    assert result.to_pydict()["dict"] == ["p", "q"]
    assert result.to_pydict()["h"] == [1.5, 2.5]


def test_chunked_input() -> None:
    chunked = pa.concat_tables([T, T, T])
    assert chunked.column("k").num_chunks == 3
    result = run_sql("SELECT k, sum(v) AS s FROM t GROUP BY k ORDER BY k", {"t": chunked})
    assert result.to_pydict() == {"k": ["a", "b"], "s": [12, 6]}


def test_compare_results() -> None:
    want = [("a  ", D("1.10"), 1), ("b", D("2.00"), 2)]
    assert tpch.compare_results(want, [("b", 2.0, 2), ("a", 1.1, 1)]) is None
    assert tpch.compare_results(want, [("a", 1.1 + 1e-12, 1), ("b", 2.0, 2)], order_by=[0]) is None
    assert "ORDER BY keys" in tpch.compare_results(want, [("b", 2.0, 2), ("a", 1.1, 1)],
                                                   order_by=[0])
    assert "expected row" in tpch.compare_results(want, [("a", 1.2, 1), ("b", 2.0, 2)])
    assert "expected 2 rows, got 1" in tpch.compare_results(want, [("a", 1.1, 1)])
    # rows tying on the ORDER BY keys may come in either order
    tied = [("x", 1), ("y", 1), ("z", 0)]
    assert tpch.compare_results(tied, [("y", 1), ("x", 1), ("z", 0)], order_by=[1]) is None


def test_tpch_queries_are_packaged() -> None:
    texts = tpch.queries()
    assert sorted(texts) == list(range(1, 23))
    assert all(text.lower().lstrip().startswith("-- tpc-h q") for text in texts.values())
    assert tpch.order_by_columns(tpch.query(6)) is None
    assert tpch.order_by_columns(tpch.query(9)) == [0, 1]
    with pytest.raises(ValueError, match="1 to 22"):
        tpch.query(23)


# --- TPC-H at SF0.1 against PostgreSQL -----------------------------------------------------------

def test_tpch_arrow_types(tpch_arrow: dict[str, pa.Table]) -> None:
    lineitem = tpch_arrow["lineitem"]
    assert lineitem.schema.field("l_extendedprice").type == pa.decimal128(15, 2)
    assert lineitem.schema.field("l_shipmode").type == pa.string_view()
    assert lineitem.num_rows > 500_000
    assert not any(v.endswith(" ") for v in tpch_arrow["nation"].column("n_name").to_pylist())


@pytest.mark.postgres
@pytest.mark.parametrize("number", tpch.NUMBERS, ids=[f"q{n:02d}" for n in tpch.NUMBERS])
def test_tpch_query_matches_postgres(number: int, tpch_arrow: dict[str, pa.Table],
                                     pg_conn: psycopg.Connection) -> None:
    text = tpch.query(number)
    names = referenced_datasets(text)
    assert set(names) <= set(tpch.TABLES)
    result = run_sql(text, {name: tpch_arrow[name] for name in names})

    with pg_conn.cursor() as cur:
        cur.execute(text)
        expected = cur.fetchall()
        expected_columns = [column.name for column in cur.description]

    assert result.num_columns == len(expected_columns)
    assert result.num_rows > 0
    actual = list(zip(*(column.to_pylist() for column in result.columns), strict=True))
    difference = tpch.compare_results(expected, actual, order_by=tpch.order_by_columns(text))
    assert difference is None, f"Q{number}: {difference}"


@pytest.fixture(scope="session")
def tpch_wh(tpch_pg: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ldw.Warehouse]:
    """The SF0.1 tables mapped from PostgreSQL through ldw's own connector and cached."""
    shm = tmp_path_factory.mktemp("tpch-shm")
    wh = ldw.connect(in_process=True, config={"sources": {"pg": {"url": POSTGRES_URL}}},
                     shm_dir=str(shm), spill_dir=f"{shm}-spill", memory_limit="4GiB")
    for table in tpch.TABLES:
        wh.map(table, f"pg.{tpch_pg}.{table}").cache()
    yield wh
    wh.close()


@pytest.mark.postgres
@pytest.mark.parametrize("number", tpch.NUMBERS, ids=[f"q{n:02d}" for n in tpch.NUMBERS])
def test_tpch_through_wh_sql_over_cached_datasets(number: int, tpch_wh: ldw.Warehouse,
                                                  pg_conn: psycopg.Connection) -> None:
    text = tpch.query(number)
    result = tpch_wh.sql(text)
    with pg_conn.cursor() as cur:
        cur.execute(text)
        expected = cur.fetchall()
    assert result.height > 0
    difference = tpch.compare_results(expected, result.rows(),
                                      order_by=tpch.order_by_columns(text))
    assert difference is None, f"Q{number}: {difference}"
