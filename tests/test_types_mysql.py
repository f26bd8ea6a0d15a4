"""MySQL/MariaDB type map, value by value against the real server, with NULLs and extremes.

Every case creates one utf8mb4 table ``(id int, v <type>)`` in a fresh database, inserts Python
values (bound by PyMySQL in a UTC session) plus a NULL row, reads it back through ldw and compares
each value with what was inserted. Both transports are checked on the same server: ``my``
(ConnectorX, the default) and ``my_dbapi`` (the generic DBAPI path, PyMySQL), whose types may
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
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from conftest import make_warehouse

import ldw

pytestmark = pytest.mark.mysql

UTC = dt.UTC
SOURCES = ("my", "my_dbapi")


def f32(x: float) -> float:
    """The double a FLOAT value reads back as through an Arrow float32 column."""
    return struct.unpack("f", struct.pack("f", x))[0]


def same(*values: Any) -> list[tuple[Any, Any]]:
    """Rows whose value reads back exactly as inserted."""
    return [(v, v) for v in values]


def td(hours: int = 0, minutes: int = 0, seconds: int = 0, microseconds: int = 0,
       sign: int = 1) -> dt.timedelta:
    return sign * dt.timedelta(hours=hours, minutes=minutes, seconds=seconds,
                               microseconds=microseconds)


@dataclass(frozen=True)
class Doc:
    """An expected JSON document (``Doc(None)`` is JSON null, not SQL NULL)."""

    value: Any


def json_equal(got: Any, expected: Any) -> bool:
    if expected is None:
        return got is None
    return isinstance(got, str) and json.loads(got) == expected.value


def _exact(got: Any, expected: Any) -> bool:
    if expected is None or got is None:
        return got is None and expected is None
    if isinstance(expected, float) and math.copysign(1, expected) != math.copysign(1, got):
        return False  # -0.0 must stay negative
    return type(got) is type(expected) and got == expected


@dataclass
class Case:
    """One type family: the column type, (inserted, expected) rows and per-path expectations."""

    id: str
    sql_type: str
    rows: list[tuple[Any, Any]]
    arrow: pa.DataType
    note: str | None = None  # a substring of the ConnectorX path's note; None: no note at all
    dbapi_arrow: pa.DataType | None = None  # None: same as ``arrow``
    dbapi_expected: list[Any] | None = None  # None: same as the ConnectorX path
    dbapi_note: str | None = None
    dbapi_same_note: bool = False
    equal: Any = None  # comparator (got, expected) -> bool; None: exact, same Python type
    dbapi_wall_clock: bool = False  # DBAPI values are naive wall-clock times of the session zone
    xfail: dict[str, str] = field(default_factory=dict)  # source -> reason (connector bug)


def dec(text: str) -> tuple[Decimal, Decimal]:
    return Decimal(text), Decimal(text)


D65_30 = "9" * 35 + "." + "9" * 30
D38_20 = "9" * 18 + "." + "9" * 20
D28_10 = "9" * 18 + "." + "9" * 10
TIME_MIN = td(838, 59, 59, sign=-1)
TIME_MAX = td(838, 59, 59, 999999)
UUIDS = ["00000000-0000-0000-0000-000000000000", "123e4567-e89b-12d3-a456-426614174000",
         "ffffffff-ffff-ffff-ffff-ffffffffffff"]
DOC = {"a": [1, 2.5, None, True], "b": "é 😀", "nested": {"k": []}}

CASES = [
    Case("tinyint", "tinyint", same(-128, 127, 0), pa.int8(), dbapi_arrow=pa.int32()),
    Case("tinyint_unsigned", "tinyint unsigned", same(0, 255), pa.uint8(),
         dbapi_arrow=pa.uint32()),
    Case("smallint", "smallint", same(-(2**15), 2**15 - 1), pa.int16()),
    Case("smallint_unsigned", "smallint unsigned", same(0, 2**16 - 1), pa.uint16()),
    Case("mediumint", "mediumint", same(-(2**23), 2**23 - 1), pa.int32()),
    Case("mediumint_unsigned", "mediumint unsigned", same(0, 2**24 - 1), pa.uint32()),
    Case("int", "int", same(-(2**31), 2**31 - 1), pa.int32()),
    Case("int_unsigned", "int unsigned", same(0, 2**32 - 1), pa.uint32()),
    Case("bigint", "bigint", same(-(2**63), 2**63 - 1, 0), pa.int64()),
    Case("bigint_unsigned", "bigint unsigned", same(0, 2**64 - 1, 2**63), pa.uint64()),
    Case("decimal_10_3", "decimal(10,3)",
         [dec("-9999999.999"), dec("9999999.999"), dec("0.000"), dec("-0.001"),
          (Decimal("1.5"), Decimal("1.500"))], pa.decimal128(10, 3)),
    Case("decimal_28_10", "decimal(28,10)",
         [dec(D28_10), dec("-" + D28_10), dec("0.0000000001"), dec("0E-10")],
         pa.decimal128(28, 10)),
    Case("decimal_38_20", "decimal(38,20)",
         [dec(D38_20), dec("-" + D38_20), dec("0.00000000000000000001"),
          (Decimal("-1"), Decimal("-1." + "0" * 20))], pa.decimal128(38, 20)),
    Case("decimal_65_30", "decimal(65,30)",
         [dec(D65_30), dec("-" + D65_30), dec("1E-30"),
          (Decimal("1.5"), Decimal("1.5" + "0" * 29))], pa.decimal256(65, 30)),
    Case("decimal_unsigned", "decimal(10,2) unsigned", same(Decimal("99999999.99"),
                                                            Decimal("0.00")),
         pa.decimal128(10, 2)),
    Case("float", "float",
         [(3.4e38, f32(3.4e38)), (1.5, 1.5), (-1.17549e-38, f32(-1.17549e-38)), (0.1, f32(0.1))],
         pa.float32(), dbapi_arrow=pa.float64(),
         # PyMySQL reads FLOAT from its text form: the shortest decimal, as a double
         dbapi_expected=[3.4e38, 1.5, -1.17549e-38, 0.1, None]),
    Case("double", "double",
         # (no -0.0: MariaDB itself stores it as 0)
         same(1.7976931348623157e308, -2.2250738585072014e-308, 5e-324, 0.1),
         pa.float64()),
    Case("bool", "bool", [(True, 1), (False, 0), (2, 2)], pa.int8(), dbapi_arrow=pa.int32()),
    Case("bit_8", "bit(8)", [(0b10000001, b"\x81"), (0, b"\x00"), (255, b"\xff")],
         pa.binary(), note="BIT as big-endian bytes", dbapi_same_note=True),
    Case("bit_64", "bit(64)", [(2**64 - 1, b"\xff" * 8), (1, b"\x00" * 7 + b"\x01"),
                               (2**63, b"\x80" + b"\x00" * 7)],
         pa.binary(), note="BIT as big-endian bytes", dbapi_same_note=True),
    Case("char_5", "char(5)", [("ab", "ab"), ("ab   ", "ab"), ("héllo", "héllo"), ("", "")],
         # MariaDB itself strips CHAR padding on read; the generic path also trims (and says so)
         pa.string(), dbapi_note="trailing blanks trimmed"),
    Case("varchar", "varchar(20)", same("ab ", "😀 é", "", "x" * 20), pa.string()),
    Case("text", "text", same("😀 héllo", "", "line\nbreak\ttab", "y" * 60_000), pa.string()),
    Case("blob", "blob", same(b"\x00\xff", b"", b"\x00", bytes(range(256))), pa.binary()),
    Case("varbinary", "varbinary(10)", same(b"\x00\xff\x00", b""), pa.binary()),
    Case("binary_4", "binary(4)", [(b"\x00\xff", b"\x00\xff\x00\x00"), (b"", b"\x00" * 4)],
         pa.binary()),  # BINARY(n) is padded with 0x00 by the server, and kept
    Case("date", "date", same(dt.date(1000, 1, 1), dt.date(9999, 12, 31), dt.date(2000, 2, 29)),
         pa.date32()),
    Case("time_6", "time(6)",
         [("-838:59:59", TIME_MIN), ("838:59:59.999999", TIME_MAX), ("00:00:00", td()),
          ("-00:00:01.5", td(seconds=1, microseconds=500000, sign=-1)),
          ("23:59:59.000001", td(23, 59, 59, 1)), ("-01:00:00", td(1, sign=-1)),
          ("24:00:00", td(24)), ("-00:00:00.000001", td(microseconds=1, sign=-1))],
         pa.duration("us"), note="TIME is a signed duration", dbapi_same_note=True),
    Case("time_0", "time", [("-838:59:59", TIME_MIN), ("838:59:59", td(838, 59, 59)),
                            ("12:00:00", td(12)), ("-01:00:00", td(1, sign=-1))],
         pa.duration("us"), note="TIME is a signed duration", dbapi_same_note=True),
    Case("datetime_6", "datetime(6)",
         same(dt.datetime(1000, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59, 999999),
              dt.datetime(2024, 1, 2, 3, 4, 5, 123456)), pa.timestamp("us")),
    Case("timestamp_6", "timestamp(6) null",
         [("1970-01-01 00:00:01", dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)),
          ("2038-01-19 03:14:07.999999",
           dt.datetime(2038, 1, 19, 3, 14, 7, 999999, tzinfo=UTC)),
          ("2024-06-01 12:00:00.5", dt.datetime(2024, 6, 1, 12, 0, 0, 500000, tzinfo=UTC))],
         pa.timestamp("us", tz="UTC"),
         equal=lambda got, exp: (got is None and exp is None) or (
             got.utcoffset() == dt.timedelta(0) and got == exp),
         # the generic path reflects TIMESTAMP without a time zone: naive wall-clock values of
         # the session time zone (the server's default, not forced to UTC)
         dbapi_arrow=pa.timestamp("us"), dbapi_wall_clock=True,
         dbapi_expected=[dt.datetime(1970, 1, 1, 0, 0, 1),
                         dt.datetime(2038, 1, 19, 3, 14, 7, 999999),
                         dt.datetime(2024, 6, 1, 12, 0, 0, 500000), None]),
    Case("year", "year", same(1901, 2155, 0, 2024), pa.int16(),
         dbapi_arrow=pa.string(), dbapi_note="kept as its text form",
         dbapi_expected=["1901", "2155", "0000", "2024", None]),
    Case("json", "json", [(json.dumps(DOC), Doc(DOC)), ("null", Doc(None)), ("[]", Doc([]))],
         pa.string(), equal=json_equal),  # MariaDB JSON is LONGTEXT with a json_valid check
    Case("enum", "enum('x','yé','')", same("x", "yé", ""), pa.string()),
    Case("set", "set('a','b','c')", same("a,c", "", "a,b,c", "b"), pa.string()),
    Case("uuid", "uuid", same(*UUIDS), pa.string()),
]


def _create(engine, db: str, table: str, sql_type: str, values: list[Any],
            time_zone: str = "+00:00") -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"create table {db}.{table} (id int primary key, v {sql_type}) "
                             "default charset utf8mb4")
        conn.exec_driver_sql(f"set time_zone = '{time_zone}'")
        conn.exec_driver_sql(f"insert into {db}.{table} (id, v) values (%s, %s)",
                             list(enumerate(values)))
        conn.exec_driver_sql("set time_zone = default")


def _params():
    for case in CASES:
        for source in SOURCES:
            marks = [pytest.mark.xfail(strict=True, reason=case.xfail[source])] \
                if source in case.xfail else []
            yield pytest.param(case, source, id=f"{case.id}-{source}", marks=marks)


@pytest.mark.parametrize(("case", "source"), list(_params()))
def test_type_roundtrip(case: Case, source: str, mysql_engine, mysql_db, mysql_wh):
    rows = [*case.rows, (None, None)]  # every family also reads a NULL back
    _create(mysql_engine, mysql_db, "t", case.sql_type, [inserted for inserted, _ in rows])
    dbapi = source == "my_dbapi"
    arrow = (case.dbapi_arrow or case.arrow) if dbapi else case.arrow
    expected = case.dbapi_expected if dbapi and case.dbapi_expected is not None else [
        exp for _, exp in rows]
    note = (case.note if case.dbapi_same_note else case.dbapi_note) if dbapi else case.note
    equal = case.equal if case.equal and not (dbapi and case.dbapi_expected) else _exact
    if dbapi and case.dbapi_wall_clock:
        with mysql_engine.connect() as conn:  # a session like the generic connector's
            offset = conn.exec_driver_sql(
                "select timestampdiff(second, utc_timestamp(), now())").scalar_one()
        expected = [None if e is None else e + dt.timedelta(seconds=offset) for e in expected]

    ref = f"{source}.{mysql_db}.t"
    ds = mysql_wh.map(f"types_{case.id}", ref)
    assert ds.schema.field("v").type == arrow  # known before any row moves

    lossy = ds.info()["lossy"]
    if note is None:
        assert "v" not in lossy, lossy
    else:
        assert note in lossy.get("v", ""), lossy

    described = {r["name"]: r for r in mysql_wh.describe(ref).to_dicts()}
    assert described["v"]["arrow_type"] == str(arrow)
    assert (described["v"]["note"] or None) == lossy.get("v")

    table = ds.to_arrow()
    assert table.schema.field("v").type == arrow  # to_arrow() gives the type ds.schema says
    by_id = dict(zip(table.column("id").to_pylist(), table.column("v").to_pylist(), strict=True))
    assert sorted(by_id) == list(range(len(rows)))
    got = [by_id[i] for i in range(len(rows))]
    mismatches = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected, strict=True))
                  if not equal(g, e)]
    assert not mismatches, f"(row, got, expected): {mismatches}"


def test_timestamp_is_the_instant_whatever_the_writer_session(mysql_engine, mysql_db,
                                                              mysql_wh):
    """Written as 14:00 in a '+02:00' session, a TIMESTAMP reads back as 12:00 UTC."""
    _create(mysql_engine, mysql_db, "t", "timestamp(6) null", ["2024-06-01 14:00:00.000001"],
            time_zone="+02:00")
    table = mysql_wh.map("ts", f"my.{mysql_db}.t").to_arrow()
    assert table.schema.field("v").type == pa.timestamp("us", tz="UTC")
    instant = dt.datetime(2024, 6, 1, 12, 0, 0, 1, tzinfo=UTC)
    assert table.column("v").to_pylist() == [instant]
    assert table.column("v").cast(pa.int64()).to_pylist() == [
        (instant - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)]


@pytest.mark.filterwarnings("ignore:Did not recognize type 'inet6'")
def test_describe_names_mariadb_source_types(mysql_engine, mysql_db, mysql_wh):
    """describe shows the reflected source type next to the Arrow type and the note."""
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create table {mysql_db}.t (b bool, u bigint unsigned, t time(6), "
            "y year, j json, w uuid, i inet6) default charset utf8mb4")
    rows = {r["name"]: r for r in mysql_wh.describe(f"my.{mysql_db}.t").to_dicts()}
    assert rows["b"]["source_type"].upper().startswith("TINYINT(1)")
    assert rows["b"]["arrow_type"] == "int8"
    assert rows["u"]["arrow_type"] == "uint64"
    assert rows["t"]["arrow_type"] == "duration[us]" and "signed duration" in rows["t"]["note"]
    assert rows["y"]["arrow_type"] == "int16"
    assert rows["j"]["arrow_type"] == "string"
    assert rows["w"]["arrow_type"] == "string"
    assert rows["i"]["arrow_type"] == "string"  # inet6: SQLAlchemy cannot reflect it


@pytest.mark.parametrize("source", SOURCES)
def test_a_failing_query_is_a_source_error_not_unavailable(source, mysql_wh):
    """A query the server fails mid-stream is SourceError: the source is still reachable."""
    ds = mysql_wh.map("sub", source=source,
                      sql="select seq, (select 1 union select seq) as r from seq_1_to_5000")
    with pytest.raises(ldw.SourceError, match=rf"^source '{source}'.*more than 1 row") as info:
        ds.to_arrow()
    assert not isinstance(info.value, ldw.SourceUnavailable)


@pytest.mark.parametrize("transport", ["connectorx", "dbapi"])
def test_an_unreachable_source_is_unavailable(transport, shm_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = {"transport": "dbapi"} if transport == "dbapi" else {}
    wh = make_warehouse(shm_dir, gone={"url": f"mysql://root@127.0.0.1:{port}/test", **options})
    try:
        with pytest.raises(ldw.SourceUnavailable, match="^source 'gone'"):
            wh.map("t", "gone.test.t")
    finally:
        wh.close()


def test_unrepresentable_driver_values_raise_on_the_generic_path(mysql_engine, mysql_db,
                                                                 mysql_wh):
    """A zero DATE has no date32 value: PyMySQL hands over its text, and the read says so."""
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql("set session sql_mode = ''")
        conn.exec_driver_sql(f"create table {mysql_db}.t (id int primary key, v date)")
        conn.exec_driver_sql(f"insert into {mysql_db}.t values (1, '2024-01-02'), "
                             "(2, '0000-00-00'), (3, null)")
        conn.exec_driver_sql("set session sql_mode = default")
    ds = mysql_wh.map("zero", f"my_dbapi.{mysql_db}.t")
    with pytest.raises(ldw.UnsupportedType,
                       match=r"^source 'my_dbapi': column 'v' \(DATE\) holds '0000-00-00'"):
        ds.to_arrow()
