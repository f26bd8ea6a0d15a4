"""A connector owns its dialect: error codes, cancel statement, sqlglot name and mask SQL are
read from the connector class, so a new dialect is one connector class plus its registration.

The fake dialect here runs over SQLite and changes each fact, then shows that error
classification, cancelling by tag and parsing follow the class, not the URL's dialect name.
"""

import dataclasses
import sqlite3

import pyarrow as pa
import pytest
import sqlalchemy as sa
from conftest import make_warehouse
from sqlalchemy.dialects import postgresql

import ldw
from ldw.config import SourceConfig
from ldw.connectors import REGISTRY, Connector, connector_for
from ldw.connectors.dialect import CancelByTag
from ldw.connectors.generic import GenericConnector
from ldw.connectors.postgres import POSTGRES
from ldw.connectors.sqlite import SQLITE, SQLiteConnector
from ldw.errors import InvalidMapping, SourceError, SourceTimeout, SourceUnavailable
from ldw.governance.masks import HashMask, PartialMask, mask_batches, masked_schema
from ldw.planner import Mapping, plan_mapping

SQLITE_ERROR = 1  # the result code of "no such table"


class FakeConnector(SQLiteConnector):
    """SQLite's rows, another dialect's facts."""

    dialect = dataclasses.replace(
        SQLITE, name="fake", sqlglot="postgres",
        unavailable_codes=frozenset({SQLITE_ERROR}),
        cancel=CancelByTag("select 7 as id where :pattern like '%ldw:%'", "select {id} * 6"))


class SlowFakeConnector(SQLiteConnector):
    dialect = dataclasses.replace(SQLITE, name="slow", timeout_codes=frozenset({SQLITE_ERROR}))


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "fake.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table items (id integer primary key, name text)")
        conn.executemany("insert into items values (?, ?)", [(1, "a"), (2, "bb"), (3, None)])
    return path


def _source(path, **options) -> SourceConfig:
    return SourceConfig("lite", sa.make_url(f"sqlite:///{path}"), options=options)


def _missing_table(connector: Connector) -> None:
    with connector.guard("probing"), connector.engine.connect() as conn:
        conn.exec_driver_sql("select * from nowhere")


def test_error_classification_follows_the_connector_class(db):
    with pytest.raises(SourceError) as plain:
        _missing_table(SQLiteConnector(_source(db)))
    assert not isinstance(plain.value, SourceUnavailable | SourceTimeout)
    with pytest.raises(SourceUnavailable, match="no such table"):
        _missing_table(FakeConnector(_source(db)))
    with pytest.raises(SourceTimeout, match="no such table"):
        _missing_table(SlowFakeConnector(_source(db)))


def test_cancel_by_tag_runs_the_connector_class_statements(db):
    connector = FakeConnector(_source(db))
    seen = []
    sa.event.listen(connector.engine, "before_cursor_execute",
                    lambda _c, _cur, statement, *_: seen.append(statement))
    connector.cancel_tagged("ldw:abc")
    assert any(s.startswith("select 7 as id") for s in seen)
    assert "select 7 * 6" in seen
    connector.close()
    seen.clear()
    plain = SQLiteConnector(_source(db))  # SQLite itself has no cancel by tag
    sa.event.listen(plain.engine, "before_cursor_execute",
                    lambda _c, _cur, statement, *_: seen.append(statement))
    plain.cancel_tagged("ldw:abc")
    plain.close()
    assert seen == []


def test_parsing_uses_the_connector_class_sqlglot_dialect(db):
    where = "`name` = 'a'"  # backtick quoting: SQLite's, not PostgreSQL's
    plain, fake = SQLiteConnector(_source(db)), FakeConnector(_source(db))
    assert (plain.sqlglot_dialect, fake.sqlglot_dialect) == ("sqlite", "postgres")
    plan_mapping(plain, Mapping("x", "lite", None, "items", where=where))
    with pytest.raises(InvalidMapping):
        plan_mapping(fake, Mapping("x", "lite", None, "items", where=where))
    with pytest.raises(InvalidMapping):
        plan_mapping(fake, Mapping("x", "lite", sql="select `name` from items"))


def test_a_registered_connector_is_used_and_lends_its_dialect_to_the_generic_path(
        db, shm_dir, monkeypatch):
    monkeypatch.setitem(REGISTRY, "sqlite", FakeConnector)
    assert type(connector_for(_source(db))) is FakeConnector
    generic = connector_for(_source(db, transport="dbapi"))
    assert type(generic) is GenericConnector and generic.dialect is FakeConnector.dialect
    wh = make_warehouse(shm_dir, lite={"url": f"sqlite:///{db}"})
    try:
        with pytest.raises(ldw.LdwError):
            wh.map("x", "lite.items", where="`name` = 'a'")
        assert wh.map("y", "lite.items", where="name = 'a'").to_polars().height == 1
    finally:
        wh.close()


def test_the_generic_path_reads_a_family_it_has_no_connector_for(db):
    assert connector_for(_source(db, transport="dbapi")).dialect is SQLITE
    duck = SourceConfig("d", sa.make_url("duckdb:///x.db"))
    assert GenericConnector(duck).sqlglot_dialect == "duckdb"


def test_an_incomplete_connector_cannot_be_instantiated(db):
    class Incomplete(Connector):
        def plan_columns(self, statement):
            return []

    with pytest.raises(TypeError, match="abstract"):
        Incomplete(_source(db))


def test_capabilities_are_class_attributes():
    from ldw.connectors.mysql import MySQLConnector
    from ldw.connectors.postgres import PostgresConnector

    assert PostgresConnector.supports_distributed_reads
    assert not (MySQLConnector.supports_distributed_reads
                or SQLiteConnector.supports_distributed_reads
                or GenericConnector.supports_distributed_reads)


def test_mask_sql_asks_the_connector_dialect():
    column = sa.column("phone", sa.String)
    mask = PartialMask(keep=2)
    on_pg = str(mask.sql(column, POSTGRES).compile(dialect=postgresql.dialect()))
    on_lite = str(mask.sql(column, SQLITE).compile(dialect=sa.dialects.sqlite.dialect()))
    assert "char_length" in on_pg and "right" in on_pg and "concat" in on_pg
    assert "length(phone)" in on_lite and "substr" in on_lite and "||" in on_lite
    assert HashMask().sql(column, POSTGRES) is None


def test_masks_in_arrow_say_their_result_type_and_apply_to_batches():
    masks = {"phone": HashMask(), "name": PartialMask()}
    schema = pa.schema([("phone", pa.int64()), ("name", pa.string())])
    assert masked_schema(schema, masks) == pa.schema([("phone", pa.string()),
                                                      ("name", pa.string())])
    batch = pa.record_batch([pa.array([1, 1, None]), pa.array(["a", "b", "c"])], schema=schema)
    (out,) = mask_batches([batch], masks, b"k" * 32)
    phones = out.column("phone").to_pylist()
    assert phones[0] == phones[1] and len(phones[0]) == 64 and phones[2] is None
    assert out.column("name").to_pylist() == ["a", "b", "c"]  # masked in SQL, not here
    assert list(mask_batches([batch], {"name": PartialMask()}, None)) == [batch]
