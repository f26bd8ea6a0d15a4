"""Flight SQL on the server's Flight address, driven by the real ADBC Flight SQL driver (issue 16,
item 2): queries and prepared statements over the same SQL as ``wh.sql``, listings of what the
user may read, server facts, and the same tokens, revocation, masks, refusals and audit as ldw's
own client.
"""

from __future__ import annotations

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as fl
import pytest
from conftest import ServerHandle
from google.protobuf import any_pb2

import ldw
from ldw.flightsql import _like, _sql_info
from ldw.flightsql_proto import pack, unpack

PHONE = "+41-555-CANARY-0"  # masked by policy: must never reach a Flight SQL client


@pytest.fixture
def server(tmp_path, pg_engine, pg_schema):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.customer (id int primary key, "
                             "name text, phone text, balance numeric(12, 2))")
        conn.exec_driver_sql(
            f"insert into {pg_schema}.customer values (1, 'Ann', '{PHONE}1', 10.50), "
            f"(2, 'Bo', '{PHONE}2', 20), (3, NULL, '{PHONE}3', NULL)")
    policy = (f'[policies."pg.{pg_schema}.customer"]\nallow_roles = ["analyst"]\n'
              'columns.phone = { mask = "hash" }\n')
    handle = ServerHandle(tmp_path, extra_toml=policy).start()
    yield handle
    handle.stop()


def _connect(server: ServerHandle, token: str) -> flightsql.Connection:
    return flightsql.connect(server.flight, autocommit=True, db_kwargs={
        adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: f"Bearer {token}"})


def _query(conn: flightsql.Connection, sql: str) -> pa.Table:
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetch_arrow_table()


@pytest.fixture
def alice(server, pg_schema):
    """alice's token, her ldw client and her cached dataset ``c`` over the customer table."""
    token = server.token("alice", "analyst")
    wh = ldw.connect(server.flight, token=token)
    wh.map("c", f"pg.{pg_schema}.customer").cache()
    return token, wh


@pytest.mark.postgres
def test_a_query_and_a_prepared_statement_give_what_wh_sql_gives(server, alice):
    token, wh = alice
    sql = "SELECT id, name, phone, balance FROM c ORDER BY id"
    expected = wh.sql(sql).to_arrow()
    with _connect(server, token) as conn:
        got = _query(conn, sql)
        assert got.to_pylist() == expected.to_pylist()
        assert got.schema.field("name").type == pa.string()
        assert got.schema.field("balance").type == pa.decimal128(12, 2)
        assert all(PHONE not in (v or "") for v in got["phone"].to_pylist())  # masked
        with conn.cursor() as cursor:
            cursor.adbc_prepare("SELECT count(*) AS n FROM c WHERE balance > 15")
            cursor.execute("SELECT count(*) AS n FROM c WHERE balance > 15")
            assert cursor.fetchall() == [(1,)]
            cursor.execute("SELECT count(*) AS n FROM c WHERE balance > 15")  # again
            assert cursor.fetchall() == [(1,)]
    audited = wh.audit(limit=50)
    assert "SELECT id, name, phone, balance FROM c ORDER BY id" in audited["sql"].to_list()


@pytest.mark.postgres
def test_listings_show_what_the_user_may_read(server, alice):
    token, wh = alice
    bob_token = server.token("bob", "analyst")
    with _connect(server, bob_token) as bob:
        objects = bob.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = [t["table_name"] for c in objects for s in c["catalog_db_schemas"] or []
                  for t in s["db_schema_tables"] or []]
        assert "c" not in tables                                 # not shared with bob
    wh.dataset("c").share("bob")
    with _connect(server, bob_token) as bob:
        objects = bob.adbc_get_objects(depth="tables").read_all().to_pylist()
        assert [c["catalog_name"] for c in objects] == ["ldw"]
        schemas = {s["db_schema_name"]: [t["table_name"] for t in s["db_schema_tables"]]
                   for s in objects[0]["catalog_db_schemas"]}
        assert schemas == {"alice": ["c"]}
        schema = bob.adbc_get_table_schema("c", catalog_filter="ldw", db_schema_filter="alice")
        assert schema.names == ["id", "name", "phone", "balance"]
        assert schema.field("name").type == pa.string()
        assert _query(bob, 'SELECT count(*) AS n FROM "alice/c"')["n"].to_pylist() == [3]
        assert bob.adbc_get_table_types() == ["TABLE"]
        info = bob.adbc_get_info()
        assert info["vendor_name"] == "ldw" and info["vendor_arrow_version"] == pa.__version__


@pytest.mark.postgres
def test_wrong_and_revoked_tokens_are_refused(server, alice):
    token, _wh = alice
    with _connect(server, "not-a-token") as conn, \
            pytest.raises(adbc_driver_manager.Error, match="(?i)unauthenticated|token"):
        _query(conn, "SELECT 1 AS x")
    with _connect(server, token) as conn:
        assert _query(conn, "SELECT count(*) AS n FROM c")["n"].to_pylist() == [3]
        server.cli("user", "revoke", "alice")
        with pytest.raises(adbc_driver_manager.Error, match="(?i)unauthenticated|token"):
            _query(conn, "SELECT count(*) AS n FROM c")


@pytest.mark.postgres
def test_a_dataset_not_shared_is_refused_and_audited(server, alice, pg_schema):
    _token, _wh = alice
    bob_token = server.token("bob", "analyst")
    with _connect(server, bob_token) as bob:
        with pytest.raises(adbc_driver_manager.Error, match="alice/c"):
            _query(bob, 'SELECT * FROM "alice/c"')
        with bob.cursor() as cursor, \
                pytest.raises(adbc_driver_manager.Error, match="read-only"):
            cursor.adbc_statement.set_sql_query("CREATE TABLE x (a int)")
            cursor.adbc_statement.execute_update()
        with bob.cursor() as cursor, \
                pytest.raises(adbc_driver_manager.Error, match="bound parameters"):
            cursor.execute("SELECT ? AS x", (1,))
        with bob.cursor() as cursor, \
                pytest.raises(adbc_driver_manager.Error, match="(?i)InvalidMapping|syntax|parse"):
            cursor.execute("SELEC 1")
    denials = server.local().audit(user="bob", limit=20)
    assert "deny" in denials["outcome"].to_list()


def test_flight_sql_messages_round_trip_and_garbage_is_refused():
    data = pack("CommandGetTables", catalog="ldw", table_types=["TABLE"], include_schema=True)
    name, message = unpack(data)
    assert name == "CommandGetTables" and message.catalog == "ldw" and message.include_schema
    assert not message.HasField("db_schema_filter_pattern")
    assert unpack(b"\xff\x00garbage") is None
    other = any_pb2.Any(type_url="type.googleapis.com/evil.Command", value=b"")
    assert unpack(other.SerializeToString()) is None


def test_like_patterns_and_server_facts():
    assert _like("al%").fullmatch("alice") and not _like("al%").fullmatch("bob")
    assert _like("a_c").fullmatch("abc") and not _like("a_c").fullmatch("abbc")
    assert _like(r"a\_c").fullmatch("a_c") and not _like(r"a\_c").fullmatch("abc")
    assert _like("a.c").fullmatch("a.c") and not _like("a.c").fullmatch("abc")
    facts = _sql_info([]).to_pylist()
    values = {row["info_name"]: row["value"] for row in facts}
    assert values[0] == "ldw" and values[3] is True and values[504] == '"'
    assert _sql_info([504, 99999]).to_pylist() == [{"info_name": 504, "value": '"'}]


@pytest.mark.postgres
def test_a_share_revoked_after_the_query_was_planned_stops_its_ticket(server, alice):
    _token, wh = alice
    bob_token = server.token("bob", "analyst")
    wh.dataset("c").share("bob")
    client = fl.FlightClient(server.flight.replace("grpc://", "grpc+tcp://"))
    options = fl.FlightCallOptions(headers=[(b"authorization", f"Bearer {bob_token}".encode())])
    command = fl.FlightDescriptor.for_command(
        pack("CommandStatementQuery", query='SELECT id, phone FROM "alice/c"'))
    info = client.get_flight_info(command, options=options)
    assert info.schema.names == ["id", "phone"]
    wh.dataset("c").unshare("bob")
    with pytest.raises(fl.FlightError, match="(?i)shared|revoked|denied"):
        client.do_get(info.endpoints[0].ticket, options=options).read_all()
    info = client.get_flight_info(
        fl.FlightDescriptor.for_command(pack("CommandGetTables")), options=options)
    listed = client.do_get(info.endpoints[0].ticket, options=options).read_all()
    assert listed.num_rows == 0                                   # nothing left to list


@pytest.fixture
def listing_server(tmp_path, pg_engine, pg_schema):
    """A server whose Flight SQL listings include source tables (``flight_sql_sources``):
    ``customer`` readable by analysts (phone masked), ``payroll`` by nobody."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.customer (id int primary key, "
                             "phone text)")
        conn.exec_driver_sql(f"insert into {pg_schema}.customer values (1, '{PHONE}1')")
        conn.exec_driver_sql(f"create table {pg_schema}.payroll (id int, salary int)")
    policy = (f'[policies."pg.{pg_schema}.customer"]\nallow_roles = ["analyst"]\n'
              'columns.phone = { mask = "hash" }\n'
              f'[policies."pg.{pg_schema}.payroll"]\nallow_roles = ["hr"]\n')
    handle = ServerHandle(tmp_path, extra_toml=policy, flight_sql_sources=True).start()
    yield handle
    handle.stop()


@pytest.mark.postgres
def test_source_tables_are_listed_as_the_policies_allow(listing_server, pg_schema):
    token = listing_server.token("carol", "analyst")
    with _connect(listing_server, token) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        listed = {(c["catalog_name"], s["db_schema_name"], t["table_name"])
                  for c in objects for s in c["catalog_db_schemas"] or []
                  for t in s["db_schema_tables"] or []}
        assert ("pg", pg_schema, "customer") in listed
        assert ("pg", pg_schema, "payroll") not in listed            # denied to analysts
        assert {c["catalog_name"] for c in objects} >= {"ldw", "pg"}
        schema = conn.adbc_get_table_schema("customer", catalog_filter="pg",
                                            db_schema_filter=pg_schema)
        assert schema.names == ["id", "phone"]
        assert schema.field("phone").type == pa.string()             # the masked (hashed) type
        got = _query(conn, f"SELECT id, phone FROM pg.{pg_schema}.customer")
        assert got["id"].to_pylist() == [1]
        assert PHONE not in (got["phone"][0].as_py() or "")           # masked
        assert set(conn.adbc_get_table_types()) == {"TABLE", "VIEW"}
    hr = listing_server.token("dave", "hr")
    with _connect(listing_server, hr) as conn:
        objects = conn.adbc_get_objects(depth="tables", catalog_filter="pg").read_all()
        listed = {t["table_name"] for c in objects.to_pylist()
                  for s in c["catalog_db_schemas"] or [] for t in s["db_schema_tables"] or []}
        assert "payroll" in listed and "customer" not in listed


def test_source_listing_is_off_unless_configured():
    from ldw.config import load_settings

    assert load_settings({"server": {}}).flight_sql_sources is False
    assert load_settings({"server": {"flight_sql_sources": True}}).flight_sql_sources is True
    with pytest.raises(ldw.ConfigError, match="true or false"):
        load_settings({"server": {"flight_sql_sources": "maybe"}})
