"""PostgreSQL type map, value by value against the real server, with NULLs and extremes.

Every case creates one table ``(id int, v <type>)`` in a fresh schema, inserts Python values
(bound by psycopg, cast to the column type on the server) plus a NULL row, reads it back through
ldw and compares each value with what was inserted. Both transports are checked on the same
server: ``pg`` (ADBC, the default) and ``pg_dbapi`` (the generic DBAPI path), whose types may
differ where docs/type-map.md says so; values may not. The Arrow type of each column is checked
in ``ds.schema`` (known before reading), in the cached table (strings/binaries as views) and in
``wh.describe``; type notes in ``ds.info()["lossy"]``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from conftest import make_warehouse

import ldw

pytestmark = pytest.mark.postgres

UTC = dt.UTC
SOURCES = ("pg", "pg_dbapi")


def f32(x: float) -> float:
    """The double a float4 value reads back as through an Arrow float32 column."""
    return struct.unpack("f", struct.pack("f", x))[0]


def mdn(months: int, days: int, nanoseconds: int) -> pa.MonthDayNano:
    return pa.MonthDayNano([months, days, nanoseconds])


def same(*values: Any) -> list[tuple[Any, Any]]:
    """Rows whose value reads back exactly as inserted."""
    return [(v, v) for v in values]


@dataclass(frozen=True)
class Doc:
    """An expected JSON document (``Doc(None)`` is JSON null, not SQL NULL)."""

    value: Any


def json_equal(got: Any, expected: Any) -> bool:
    if expected is None:
        return got is None
    return isinstance(got, str) and json.loads(got) == expected.value


@dataclass
class Case:
    """One type family: the column type, (inserted, expected) rows and per-path expectations."""

    id: str
    sql_type: str  # may name {schema} (for a type created in the test schema)
    rows: list[tuple[Any, Any]]
    arrow: pa.DataType
    note: str | None = None  # a substring of the ADBC path's note; None: no note at all
    dbapi_arrow: pa.DataType | None = None  # None: same as ``arrow``
    dbapi_expected: list[Any] | None = None  # None: same as the ADBC path
    dbapi_note: str | None = None
    dbapi_same_note: bool = False  # the DBAPI path carries the same note as ADBC
    equal: Any = None  # comparator (got, expected) -> bool; None: exact, same Python type
    setup: list[str] = field(default_factory=list)  # DDL run before the table is created
    xfail: dict[str, str] = field(default_factory=dict)  # source -> reason (connector bug)


def _exact(got: Any, expected: Any) -> bool:
    if expected is None or got is None:
        return got is None and expected is None
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(expected, float) and math.copysign(1, expected) != math.copysign(1, got):
        return False  # -0.0 must stay negative
    return type(got) is type(expected) and got == expected


I16, I32, I64 = 2**15, 2**31, 2**63
NINES_38 = "9" * 28 + "." + "9" * 10  # Decimal negation would round to 28 digits: use text
NINES_50_5 = "9" * 45 + "." + "9" * 5
UUIDS = [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1),
         uuid.UUID("123e4567-e89b-12d3-a456-426614174000")]
DOC = {"a": [1, 2.5, None, True], "b": "é 😀", "nested": {"k": []}}

CASES = [
    Case("smallint", "smallint", same(-I16, I16 - 1, 0), pa.int16()),
    Case("integer", "integer", same(-I32, I32 - 1, 0), pa.int32()),
    Case("bigint", "bigint", same(-I64, I64 - 1, 0), pa.int64()),
    Case("numeric_10_2", "numeric(10,2)",
         same(Decimal("-99999999.99"), Decimal("0.00"), Decimal("99999999.99"),
              Decimal("-0.01"), Decimal("12345.60")), pa.decimal128(10, 2)),
    # p <= 18 travels as a scaled int8 on the ADBC path, p > 18 as text: both sides of the edge
    Case("numeric_18_0", "numeric(18,0)", same(Decimal("9" * 18), Decimal("-" + "9" * 18)),
         pa.decimal128(18, 0)),
    Case("numeric_18_6", "numeric(18,6)",
         same(Decimal("9" * 12 + "." + "9" * 6), Decimal("-" + "9" * 12 + "." + "9" * 6),
              Decimal("0.000001")), pa.decimal128(18, 6)),
    Case("numeric_18_18", "numeric(18,18)",
         same(Decimal("0." + "9" * 18), Decimal("-0." + "9" * 18), Decimal("1E-18")),
         pa.decimal128(18, 18)),
    Case("numeric_19_2", "numeric(19,2)",
         same(Decimal("9" * 17 + ".99"), Decimal("-" + "9" * 17 + ".99")),
         pa.decimal128(19, 2)),
    Case("numeric_5_5", "numeric(5,5)", same(Decimal("0.99999"), Decimal("-0.99999")),
         pa.decimal128(5, 5)),
    Case("numeric_38_0", "numeric(38,0)",
         same(Decimal("9" * 38), Decimal("-" + "9" * 38), Decimal("0")), pa.decimal128(38, 0)),
    Case("numeric_38_10", "numeric(38,10)",
         same(Decimal(NINES_38), Decimal("-" + NINES_38), Decimal("0.0000000001"),
              Decimal("0E-10")),
         pa.decimal128(38, 10)),
    Case("numeric_50_5", "numeric(50,5)",
         same(Decimal(NINES_50_5), Decimal("-" + NINES_50_5), Decimal("1.50000"),
              Decimal("0.00000")),
         pa.decimal256(50, 5)),
    Case("numeric_unbounded", "numeric",
         [(Decimal("1.50"), "1.50"), (Decimal("-123456789012345678901234567890.123456789"),
                                      "-123456789012345678901234567890.123456789"),
          (Decimal("0"), "0"), (Decimal("1E-30"), "0.000000000000000000000000000001"),
          (Decimal("-0.000"), "0.000"), (Decimal("1" + "0" * 130), "1" + "0" * 130)],
         pa.string(), note="unbounded NUMERIC kept as exact decimal text",
         dbapi_note="unbounded NUMERIC: kept as its text form"),
    Case("real", "real",
         [(float("nan"), float("nan")), (float("inf"), float("inf")),
          (float("-inf"), float("-inf")), (3.4e38, f32(3.4e38)), (1.5, 1.5),
          (-1.17549e-38, f32(-1.17549e-38)), (0.1, f32(0.1)), (-0.0, -0.0)],
         pa.float32(), dbapi_arrow=pa.float64(),
         # psycopg reads float4 as text: the shortest decimal, as a double
         dbapi_expected=[float("nan"), float("inf"), float("-inf"), 3.4e38, 1.5, -1.17549e-38,
                         0.1, -0.0, None]),
    Case("double", "double precision",
         same(float("nan"), float("inf"), float("-inf"), 1.7976931348623157e308,
              -2.2250738585072014e-308, 5e-324, 0.1, -0.0), pa.float64()),
    Case("boolean", "boolean", same(True, False), pa.bool_()),
    Case("char_5", "char(5)",
         [("ab", "ab"), ("abcde", "abcde"), ("", ""), (" a", " a"), ("é😀", "é😀")],
         pa.string(), note="trailing blanks trimmed", dbapi_same_note=True),
    Case("varchar", "varchar(10)", same("ab ", "", "é😀 x", "0123456789"), pa.string()),
    Case("text", "text", same("héllo wörld 😀🎉", "", " ", "line\nbreak\ttab", "x" * 100_000),
         pa.string()),
    Case("bytea", "bytea", same(b"\x00", b"", b"\x00\xff\x00", bytes(range(256))),
         pa.binary()),
    Case("date", "date", same(dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(1970, 1, 1),
                              dt.date(2000, 2, 29)), pa.date32()),
    Case("time", "time", same(dt.time(23, 59, 59, 999999), dt.time(0, 0), dt.time(12, 0, 0, 1)),
         pa.time64("us")),
    Case("timestamp", "timestamp",
         same(dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
              dt.datetime(2024, 1, 2, 3, 4, 5, 123456), dt.datetime(1969, 12, 31, 23, 59, 59,
                                                                    999999)),
         pa.timestamp("us")),
    Case("timestamptz", "timestamptz",
         [("2024-01-02 03:04:05.123456+02", dt.datetime(2024, 1, 2, 1, 4, 5, 123456, tzinfo=UTC)),
          (dt.datetime(2024, 6, 1, 7, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
           dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC)),
          ("0001-01-01 00:00:00+00", dt.datetime(1, 1, 1, tzinfo=UTC)),
          ("9999-12-31 23:59:59.999999+00",
           dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))],
         pa.timestamp("us", tz="UTC"),
         equal=lambda got, exp: (got is None and exp is None) or (
             got.utcoffset() == dt.timedelta(0) and got == exp)),
    Case("interval", "interval",
         [("1 year 2 months 3 days 04:05:06.789", mdn(14, 3, 14_706_789_000_000)),
          ("-1 month -2 days -00:00:00.000001", mdn(-1, -2, -1000)),
          ("178000000 years", mdn(2_136_000_000, 0, 0)),
          ("2562047 hours", mdn(0, 0, 2_562_047 * 3600 * 10**9)),
          ("0", mdn(0, 0, 0))],
         pa.month_day_nano_interval(), note="interval as month_day_nano",
         dbapi_arrow=pa.string(), dbapi_note="kept as its text form",
         # the DBAPI path keeps PostgreSQL's own text form (IntervalStyle 'postgres')
         dbapi_expected=["1 year 2 mons 3 days 04:05:06.789", "-1 mons -2 days -00:00:00.000001",
                         "178000000 years", "2562047:00:00", "00:00:00", None]),
    # the generic path reads the canonical text form (CAST(v AS text))
    Case("uuid", "uuid", same(*UUIDS), pa.uuid(),
         dbapi_arrow=pa.string(), dbapi_expected=[str(u) for u in UUIDS] + [None]),
    # json: the document exactly as written, on both paths (the generic path reads the text,
    # not SQLAlchemy's parsed objects)
    Case("json", "json",
         [(json.dumps(DOC), Doc(DOC)), ("null", Doc(None)), ("[]", Doc([])),
          ('{"b": 1,  "a": [1.50, 1e2]}', '{"b": 1,  "a": [1.50, 1e2]}')],
         pa.json_(), equal=lambda got, exp: got == exp if isinstance(exp, str) else json_equal(
             got, exp)),
    Case("jsonb", "jsonb", [(json.dumps(DOC), Doc(DOC)), ("[]", Doc([])), ('"x"', Doc("x")),
                            ('{"b": 1,  "a": [1.50]}', '{"a": [1.50], "b": 1}')],
         pa.json_(), equal=lambda got, exp: got == exp if isinstance(exp, str) else json_equal(
             got, exp)),
    Case("int_array", "int[]", same([1, None, -I32], [], [None]), pa.list_(pa.int32()),
         dbapi_arrow=pa.string(), dbapi_note="kept as its text form",
         dbapi_expected=["{1,NULL,-2147483648}", "{}", "{NULL}", None]),
    Case("text_array", "text[]", same(["a", None, "b c", "é😀", ""], []),
         pa.list_(pa.string()),
         dbapi_arrow=pa.string(), dbapi_note="kept as its text form",
         dbapi_expected=['{a,NULL,"b c",é😀,""}', "{}", None]),
    # types ADBC does not know arrive as their binary COPY bytes: read as the server's text
    # (CAST(inet AS text) always shows the netmask)
    Case("inet", "inet", [("10.0.0.1/8", "10.0.0.1/8"), ("::1", "::1/128"),
                          ("192.168.0.1", "192.168.0.1/32")], pa.string(),
         note="PostgreSQL inet kept as its text form", dbapi_note="kept as its text form"),
    Case("timetz", "timetz", same("12:00:00+02", "23:59:59.999999-05:30"), pa.string(),
         note="PostgreSQL timetz kept as its text form",
         dbapi_note="time with time zone kept as its text form"),
    Case("numeric_array", "numeric[]",
         [([Decimal("1.50"), Decimal("NaN"), None], ["1.50", "NaN", None]), ([], [])],
         pa.list_(pa.string()), note="numeric[] elements kept as their text form",
         dbapi_arrow=pa.string(), dbapi_note="kept as its text form",
         dbapi_expected=["{1.50,NaN,NULL}", "{}", None]),
    Case("enum", "{schema}.mood", same("sad", "happy", "ünïcode 😀"), pa.string(),
         setup=["create type {schema}.mood as enum ('sad', 'happy', 'ünïcode 😀')"]),
]


def _create(engine, schema: str, table: str, sql_type: str, values: list[Any],
            setup: list[str] = ()) -> None:
    sql_type = sql_type.format(schema=schema)
    with engine.begin() as conn:
        for ddl in setup:
            conn.exec_driver_sql(ddl.format(schema=schema))
        conn.exec_driver_sql(f"create table {schema}.{table} (id int primary key, v {sql_type})")
        conn.exec_driver_sql(
            f"insert into {schema}.{table} (id, v) values (%s, cast(%s as {sql_type}))",
            list(enumerate(values)))


def _params():
    for case in CASES:
        for source in SOURCES:
            marks = [pytest.mark.xfail(strict=True, reason=case.xfail[source])] \
                if source in case.xfail else []
            yield pytest.param(case, source, id=f"{case.id}-{source}", marks=marks)


@pytest.mark.parametrize(("case", "source"), list(_params()))
def test_type_roundtrip(case: Case, source: str, pg_engine, pg_schema, pg_wh):
    rows = [*case.rows, (None, None)]  # every family also reads a NULL back
    _create(pg_engine, pg_schema, "t", case.sql_type, [inserted for inserted, _ in rows],
            case.setup)
    dbapi = source == "pg_dbapi"
    arrow = (case.dbapi_arrow or case.arrow) if dbapi else case.arrow
    expected = case.dbapi_expected if dbapi and case.dbapi_expected is not None else [
        exp for _, exp in rows]
    note = (case.note if case.dbapi_same_note else case.dbapi_note) if dbapi else case.note
    equal = case.equal if case.equal and not (dbapi and case.dbapi_expected) else _exact

    ref = f"{source}.{pg_schema}.t"
    ds = pg_wh.map(f"types_{case.id}", ref)
    assert ds.schema.field("v").type == arrow  # known before any row moves

    lossy = ds.info()["lossy"]
    if note is None:
        assert "v" not in lossy, lossy
    else:
        assert note in lossy.get("v", ""), lossy

    described = {r["name"]: r for r in pg_wh.describe(ref).to_dicts()}
    assert described["v"]["arrow_type"] == str(arrow)
    assert (described["v"]["note"] or None) == lossy.get("v")

    table = ds.to_arrow()
    assert table.schema.field("v").type == arrow  # to_arrow() gives the type ds.schema says
    by_id = dict(zip(table.column("id").to_pylist(), table.column("v").to_pylist(), strict=True))
    assert sorted(by_id) == list(range(len(rows)))
    got = [by_id[i] for i in range(len(rows))]
    assert len(got) == len(expected)
    mismatches = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected, strict=True))
                  if not equal(g, e)]
    assert not mismatches, f"(row, got, expected): {mismatches}"


def test_timestamptz_is_the_utc_instant(pg_engine, pg_schema, pg_wh):
    """A value written as '+02' reads back as the same instant, labelled UTC, on both paths."""
    _create(pg_engine, pg_schema, "t", "timestamptz", ["2024-03-10 12:00:00.000001+02"])
    instant = dt.datetime(2024, 3, 10, 10, 0, 0, 1, tzinfo=UTC)
    for source in SOURCES:
        table = pg_wh.map(f"tz_{source}", f"{source}.{pg_schema}.t").to_arrow()
        assert table.schema.field("v").type == pa.timestamp("us", tz="UTC")
        assert table.column("v").to_pylist() == [instant]
        assert table.column("v").cast(pa.int64()).to_pylist() == [
            (instant - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)]


@pytest.mark.parametrize("source", SOURCES)
def test_unbounded_numeric_special_values_keep_postgres_text(source, pg_engine, pg_schema,
                                                             pg_wh):
    _create(pg_engine, pg_schema, "t", "numeric", ["NaN", "Infinity", "-Infinity", "1.50"])
    table = pg_wh.map("special", f"{source}.{pg_schema}.t").to_arrow()
    assert table.column("v").to_pylist() == ["NaN", "Infinity", "-Infinity", "1.50"]


@pytest.mark.parametrize(("sql_type", "source"), [
    pytest.param(t, s, id=f"{t}-{s}")
    for t in ("numeric(10,2)", "numeric(30,2)") for s in SOURCES])
def test_numeric_nan_raises_unsupported_type(sql_type, source, pg_engine, pg_schema, pg_wh):
    """NaN has no decimal128 value: the read fails naming source, column, type and value."""
    _create(pg_engine, pg_schema, "t", sql_type, [Decimal("1.50"), Decimal("NaN"), None])
    ds = pg_wh.map("nan", f"{source}.{pg_schema}.t")
    precision = int(sql_type[8:10])
    assert ds.schema.field("v").type == pa.decimal128(precision, 2)
    with pytest.raises(ldw.UnsupportedType,
                       match=rf"^source '{source}': column 'v' \(numeric\({precision},2\)\) "
                             r"holds NaN.*sql="):
        ds.to_arrow()
    assert ds.state == "failed"


# kind -> (column type, a value Arrow's type for it cannot hold, a value it can)
SPECIAL = {
    "time_24h": ("time", "24:00:00", "23:59:59.999999"),
    "timestamp_infinity": ("timestamp", "infinity", "2024-01-02 03:04:05"),
    "timestamp_minus_infinity": ("timestamp", "-infinity", "0001-01-01 00:00:00"),
    "timestamptz_infinity": ("timestamptz", "infinity", "2024-01-02 03:04:05+00"),
    "date_infinity": ("date", "infinity", "9999-12-31"),
    "date_minus_infinity": ("date", "-infinity", "0001-01-01"),
}
# On the ADBC path arrays of these types are lists of the same Arrow types (the generic path
# reads arrays as PostgreSQL's text, which holds these values exactly).
SPECIAL_ARRAYS = {
    "time_array_24h": ("time[]", ["12:00:00", "24:00:00"], ["12:00:00"]),
    "timestamp_array_infinity": ("timestamp[]", ["2024-01-01 00:00:00", "infinity"], []),
    "date_array_minus_infinity": ("date[]", ["-infinity"], ["2024-01-01"]),
}


@pytest.mark.parametrize(("kind", "source"), [
    pytest.param(kind, source, id=f"{kind}-{source}") for kind in SPECIAL for source in SOURCES]
    + [pytest.param(kind, "pg", id=f"{kind}-pg") for kind in SPECIAL_ARRAYS])
def test_values_without_an_arrow_equivalent_raise(kind, source, pg_engine, pg_schema, pg_wh):
    """PostgreSQL values that the Arrow type cannot hold must raise, never come back changed."""
    sql_type, value, fine = SPECIAL.get(kind) or SPECIAL_ARRAYS[kind]
    _create(pg_engine, pg_schema, "t", sql_type, [fine, value, None])
    ds = pg_wh.map("special", f"{source}.{pg_schema}.t")
    with pytest.raises(ldw.UnsupportedType, match=rf"^source '{source}': column 'v' .*sql="):
        ds.to_arrow().column("v").to_pylist()
    assert ds.state == "failed"
    # the same column without the offending row reads exactly
    where = "id <> 1"
    table = pg_wh.map("special_ok", f"{source}.{pg_schema}.t", where=where).to_arrow()
    assert table.num_rows == 2


@pytest.mark.parametrize(("sql_type", "value", "unix"), [
    ("date", "0044-03-15 BC", -735_160),  # days since 1970-01-01 (as PostgreSQL counts)
    ("timestamp", "10000-01-01 00:00:00", 253_402_300_800_000_000),  # microseconds
])
def test_values_python_cannot_hold(sql_type, value, unix, pg_engine, pg_schema, pg_wh):
    """Arrow holds BC dates and year 10000; Python does not. ADBC reads them exactly; on the
    generic path (values pass through Python) they raise UnsupportedType naming the value."""
    _create(pg_engine, pg_schema, "t", sql_type, [value])
    table = pg_wh.map("far", f"pg.{pg_schema}.t").to_arrow()
    width = pa.int32() if sql_type == "date" else pa.int64()
    assert table.column("v").cast(width).to_pylist() == [unix]
    ds = pg_wh.map("far_dbapi", f"pg_dbapi.{pg_schema}.t")
    with pytest.raises(ldw.UnsupportedType, match=rf"^source 'pg_dbapi': column 'v' .*{value}"):
        ds.to_arrow()


def test_interval_beyond_int64_nanoseconds_raises(pg_engine, pg_schema, pg_wh):
    """An interval whose time part overflows int64 nanoseconds is refused by the driver."""
    _create(pg_engine, pg_schema, "t", "interval", ["2562047788 hours"])
    ds = pg_wh.map("huge", f"pg.{pg_schema}.t")
    with pytest.raises(ldw.SourceError, match="overflow"):
        ds.to_arrow()


def test_polars_reads_interval_as_struct(pg_engine, pg_schema, pg_wh):
    """to_polars works on the ADBC types (intervals become a months/days/nanoseconds struct)."""
    _create(pg_engine, pg_schema, "t", "interval", ["1 mon 2 days 00:00:03"])
    frame = pg_wh.map("iv", f"pg.{pg_schema}.t").to_polars()
    assert frame["v"].to_list() == [{"months": 1, "days": 2, "nanoseconds": 3 * 10**9}]


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("source", SOURCES)
def test_a_failing_query_is_a_source_error_not_unavailable(source, pg_wh):
    """A query the server fails mid-stream is SourceError: the source is still reachable."""
    ds = pg_wh.map("div", source=source,
                   sql="select i, 1 / (i - 150000) as q from generate_series(1, 200000) i")
    with pytest.raises(ldw.SourceError, match=rf"^source '{source}'.*division by zero") as info:
        ds.to_arrow()
    assert not isinstance(info.value, ldw.SourceUnavailable)


@pytest.mark.parametrize("transport", ["adbc", "dbapi"])
def test_an_unreachable_source_is_unavailable(transport, shm_dir):
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/test"
    wh = make_warehouse(shm_dir, gone={"url": url, "transport": transport})
    try:
        with pytest.raises(ldw.SourceUnavailable, match="^source 'gone'"):
            wh.map("t", "gone.public.t")
    finally:
        wh.close()


def test_a_terminated_backend_is_unavailable(pg_engine, pg_wh):
    """The server ending the session mid-read (SQLSTATE 57P01) is SourceUnavailable."""
    marker = f"ldw_term_{uuid.uuid4().hex[:8]}"
    ds = pg_wh.map("slow", source="pg", sql=f"select i as {marker} from "
                   "generate_series(1, 300000000) i where i % 100000000 = 0")

    def terminate() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with pg_engine.connect() as conn:
                killed = conn.exec_driver_sql(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity "
                    "where query like %(p)s and pid <> pg_backend_pid() "
                    "and query not like '%%pg_stat_activity%%' and state = 'active' "
                    "and query not ilike 'explain%%'",  # the read, not a row estimate
                    {"p": f"%{marker}%"}).scalar_one()
            if killed:
                return
            time.sleep(0.05)

    killer = threading.Thread(target=terminate)
    killer.start()
    try:
        with pytest.raises(ldw.SourceUnavailable, match="^source 'pg'.*terminating connection"):
            ds.to_arrow()
    finally:
        killer.join()
