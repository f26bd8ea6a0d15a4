"""Governance of ``sql=`` mappings: relations resolved, functions allow-listed, reads read-only.

Regression tests for the red-team findings of issue 12 (F1 CTE shadowing, F2 functions reading a
relation named in a string, F5 the source's own name resolution, F10 writes through sql=), and a
generated-SQL test: hypothesis composes CTEs, nested scopes, subqueries, set operations, case and
quoting variants and function calls over canary tables, and no canary value may ever appear in a
result or a cache file, for every policy shape.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import MYSQL_URL, POSTGRES_URL, ServerHandle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ldw
from ldw.config import _user

HIDDEN = "HIDDENROWCANARY"    # name of rows the row filter hides
EMAIL = "EMAILCANARY"         # redacted in visible rows
SSN = "SSNCANARY"             # nulled in visible rows
PAYROLL = "PAYROLLCANARY"     # a table no policy allows
SECRET = "MEMONLYCANARY"      # a memory-only, export-denied table readable by analysts
CANARIES = (HIDDEN, EMAIL, SSN, PAYROLL)
ROWS = 40

# Policy shapes over the customers table; payroll is never allowed, vault is memory-only.
SHAPES = {
    "filter+masks": """
allow_roles = ["analyst"]
columns.email = { mask = "redact" }
columns.ssn = { mask = "null" }
row_filter.analyst = "region = 'EMEA'"
""",
    "masks only": """
columns.email = { mask = "redact" }
columns.ssn = { mask = "null" }
columns.name = { mask = "redact" }
""",
    "filter only": """
allow_roles = ["analyst"]
row_filter.analyst = "region = 'EMEA'"
columns.email = { mask = "partial", keep = 2 }
columns.ssn = { mask = "redact" }
""",
    "max rows": """
allow_roles = ["analyst"]
max_rows = 0
""",
}


def _policies(source: str, schema: str, shape: str) -> dict:
    import tomllib

    customers = tomllib.loads(SHAPES[shape])
    return {
        f"{source}.{schema}.customers": customers,
        f"{source}.{schema}.vault": {"allow_roles": ["analyst"], "memory_only": True,
                                     "export": "deny"},
    }


def _rows() -> list[tuple]:
    rows = []
    for i in range(1, ROWS + 1):
        hidden = i % 4 == 0
        rows.append((i, f"{HIDDEN}-{i}" if hidden else f"visible-{i}",
                     f"{EMAIL}-{i}", f"{SSN}-{i}", "APAC" if hidden else "EMEA"))
    return rows


def _fill(engine, qualified: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"create table {qualified}.customers (id int primary key, "
                             "name varchar(40), email varchar(40), ssn varchar(40), "
                             "region varchar(8))")
        conn.exec_driver_sql(f"create table {qualified}.payroll (id int, salary varchar(40))")
        conn.exec_driver_sql(f"create table {qualified}.vault (id int, note varchar(40))")
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.executemany(f"insert into {qualified}.customers values (%s, %s, %s, %s, %s)",
                           _rows())
        cursor.execute(f"insert into {qualified}.payroll values (1, '{PAYROLL}-1')")
        cursor.execute(f"insert into {qualified}.vault values (1, '{SECRET}')")


@pytest.fixture(scope="module")
def pg_canary(pg_engine):
    schema = f"ldw_g_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
    _fill(pg_engine, schema)
    yield schema
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"drop schema {schema} cascade")


@pytest.fixture(scope="module")
def my_canary(mysql_engine):
    db = f"ldw_g_{uuid.uuid4().hex[:8]}"
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(f"create database {db}")
    _fill(mysql_engine, db)
    yield db
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(f"drop database {db}")


def _warehouse(tmp: Path, source: str, schema: str, shape: str, *,
               memory_limit: str = "1GiB") -> ldw.Warehouse:
    url = POSTGRES_URL if source == "pg" else MYSQL_URL
    # search_path puts the canary schema first, so unqualified names resolve to its tables
    if source == "pg":
        url += f"?options=-csearch_path%3D{schema}"
    else:
        url = url.rsplit("/", 1)[0] + f"/{schema}"
    config = {"sources": {source: {"url": url}},
              "policies": _policies(source, schema, shape),
              "users": {_user(): {"roles": ["analyst"]}}}
    # a small memory limit makes versions spill, so spill files are searched for canaries too
    return ldw.connect(in_process=True, config=config, shm_dir=str(tmp / "shm"),
                       spill_dir=str(tmp / "spill"), memory_limit=memory_limit)


def _text(table: pa.Table) -> str:
    return " ".join(str(v) for column in table.columns for v in column.to_pylist())


def _assert_clean(table: pa.Table, where: str) -> None:
    text = _text(table)
    found = [c for c in CANARIES if c in text]
    assert not found, f"{where} leaks {found}: {text[:300]}"


def _assert_files_clean(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found = [c for c in CANARIES if c.encode() in data]
            assert not found, f"{path} leaks {found}"


@pytest.fixture
def pg_wh_governed(tmp_path, pg_canary):
    wh = _warehouse(tmp_path, "pg", pg_canary, "filter+masks")
    yield wh
    wh.close()


# -- F1: a CTE named after a table ---------------------------------------------------------
F1_ATTACKS = [
    "WITH customers AS (SELECT * FROM customers) SELECT * FROM customers",
    "WITH customers AS (SELECT * FROM {s}.customers) SELECT * FROM customers",
    "SELECT c.* FROM (WITH customers AS (SELECT 1 AS x) SELECT x FROM customers) q, customers c",
    "WITH x AS (SELECT 1 AS a), customers AS (SELECT * FROM customers) "
    "SELECT * FROM customers",
    "WITH a AS (WITH customers AS (SELECT * FROM customers) SELECT * FROM customers) "
    "SELECT * FROM a",
    "SELECT * FROM customers WHERE id IN (WITH customers AS (SELECT 1 AS id) "
    "SELECT id FROM customers) OR true",
]


@pytest.mark.postgres
@pytest.mark.parametrize("attack", F1_ATTACKS)
def test_f1_a_cte_named_after_a_table_reads_the_policy_view(pg_wh_governed, pg_canary,
                                                            attack):
    ds = pg_wh_governed.map("f1", sql=attack.format(s=pg_canary), source="pg")
    data = ds.to_arrow()
    _assert_clean(data, attack)
    record = pg_wh_governed._engine.dataset(_user(), "f1")
    assert f"pg.{pg_canary}.customers" in record.policy_tables  # the dataset carries its policy


@pytest.mark.postgres
@pytest.mark.parametrize("attack", [
    "WITH payroll AS (SELECT * FROM payroll) SELECT * FROM payroll",
    "WITH pg_authid AS (SELECT * FROM pg_authid) SELECT * FROM pg_authid",
    "SELECT * FROM (WITH payroll AS (SELECT 1 AS x) SELECT x FROM payroll) q, payroll p",
])
def test_f1_unpolicied_and_system_tables_stay_denied_behind_a_cte(pg_wh_governed, attack):
    with pytest.raises(ldw.AccessDenied):
        pg_wh_governed.map("f1", sql=attack, source="pg").to_arrow()


@pytest.mark.postgres
def test_f1_memory_only_and_export_deny_survive_a_cte(pg_wh_governed, tmp_path):
    ds = pg_wh_governed.map("v", sql="WITH vault AS (SELECT * FROM vault) SELECT * FROM vault",
                            source="pg")
    info = ds.info()
    assert info["memory_only"] and info["export"] == "deny"
    with pytest.raises(ldw.PolicyViolation):
        ds.export(tmp_path / "out")


# -- F2: functions that read a relation named in a string, and other non-allow-listed calls --
@pytest.mark.postgres
@pytest.mark.parametrize("attack", [
    "SELECT table_to_xml('{s}.payroll', true, false, '') AS x",
    "SELECT schema_to_xml('{s}', true, false, '') AS x",
    "SELECT query_to_xml_and_xmlschema('select * from {s}.customers', true, false, '') AS x",
    "SELECT * FROM ts_stat('SELECT to_tsvector(salary) FROM {s}.payroll')",
    "SELECT current_setting('data_directory') AS x",
    "SELECT * FROM pg_ls_waldir()",
    "SELECT pg_catalog.table_to_xml('{s}.payroll', true, false, '') AS x",
    "SELECT set_config('search_path', 'pg_catalog', false) AS x",
    "SELECT nextval('some_seq') AS x",
    "SELECT pg_sleep_for('1 second') AS x",
    "SELECT lo_from_bytea(0, 'x') AS x",
    "SELECT id FROM customers WHERE xmlexists('//x' PASSING BY REF table_to_xml("
    "'{s}.payroll', true, false, ''))",
    "SELECT 'pg_authid'::regclass AS x",
    "SELECT public.lower(name) AS x FROM customers",
    "SELECT name FROM customers WHERE name OPERATOR(pg_catalog.=) 'x'",
])
def test_f2_only_allow_listed_functions_run(pg_wh_governed, pg_canary, attack):
    with pytest.raises(ldw.LdwError) as caught:
        pg_wh_governed.map("f2", sql=attack.format(s=pg_canary), source="pg").to_arrow()
    assert not isinstance(caught.value, ldw.SourceError), "refused before the source ran it"
    assert PAYROLL not in str(caught.value)


@pytest.mark.postgres
def test_f2_ordinary_sql_still_works(pg_wh_governed):
    ds = pg_wh_governed.map(
        "ok", source="pg",
        sql="SELECT region, count(*) AS n, max(length(name)) AS l, "
            "string_agg(upper(region), ',') AS r, sum(CASE WHEN id > 5 THEN 1 ELSE 0 END) AS k, "
            "md5(region) AS h, round(avg(id)::numeric, 2) AS a, date_trunc('day', now()) AS d "
            "FROM customers GROUP BY region")
    data = ds.to_arrow()
    assert data["region"].to_pylist() == ["EMEA"] and data["n"].to_pylist() == [30]


# -- F5: the source's own name resolution ----------------------------------------------------
@pytest.mark.postgres
@pytest.mark.parametrize("query", [
    "SELECT * FROM CUSTOMERS", "SELECT * FROM Customers c", "SELECT * FROM {S}.CUSTOMERS",
    'SELECT * FROM "customers"', 'SELECT * FROM {s}."customers" AS c',
])
def test_f5_case_folding_resolves_to_the_governed_table(pg_wh_governed, pg_canary, query):
    data = pg_wh_governed.map("f5", source="pg", sql=query.format(
        s=pg_canary, S=pg_canary.upper())).to_arrow()
    _assert_clean(data, query)
    assert data.num_rows == ROWS * 3 // 4


@pytest.mark.postgres
@pytest.mark.parametrize("query", [
    "SELECT * FROM pg_shadow", "SELECT * FROM pg_stats", "SELECT * FROM pg_stat_activity",
    "SELECT * FROM pg_hba_file_rules", "SELECT * FROM PG_CATALOG.PG_AUTHID",
    "SELECT * FROM information_schema.tables", "SELECT * FROM pg_toast.pg_toast_2619",
    'SELECT * FROM "pg_catalog"."pg_user"',
])
def test_f5_system_catalogs_are_always_denied(pg_wh_governed, query):
    with pytest.raises(ldw.AccessDenied):
        pg_wh_governed.map("f5", source="pg", sql=query).to_arrow()


@pytest.mark.postgres
def test_f5_a_quoted_name_that_does_not_fold_is_not_the_table(pg_wh_governed):
    with pytest.raises(ldw.SourceError, match="no table or view"):
        pg_wh_governed.map("f5", source="pg", sql='SELECT * FROM "CUSTOMERS"')


@pytest.mark.postgres
def test_f5_a_system_table_is_denied_as_a_table_mapping_too(pg_wh_governed):
    with pytest.raises(ldw.AccessDenied):
        pg_wh_governed.map("f5", "pg.pg_catalog.pg_authid")


@pytest.mark.mysql
@pytest.mark.parametrize("query", [
    "SELECT * FROM mysql.user", "SELECT * FROM information_schema.processlist",
    "SELECT * FROM performance_schema.threads", "SELECT * FROM MYSQL.user",
    "WITH user AS (SELECT * FROM mysql.user) SELECT * FROM user",
])
def test_f5_mariadb_system_schemas_are_denied(tmp_path, my_canary, query):
    wh = _warehouse(tmp_path, "my", my_canary, "filter+masks")
    try:
        with pytest.raises(ldw.AccessDenied):
            wh.map("f5", source="my", sql=query).to_arrow()
    finally:
        wh.close()


@pytest.mark.mysql
def test_f1_f5_mariadb_cte_and_names_resolve_to_the_policy_view(tmp_path, my_canary):
    wh = _warehouse(tmp_path, "my", my_canary, "filter+masks")
    try:
        for query in ["WITH customers AS (SELECT * FROM customers) SELECT * FROM customers",
                      f"SELECT c.* FROM {my_canary}.customers c",
                      "SELECT * FROM (SELECT * FROM customers) q"]:
            data = wh.map("m", source="my", sql=query).to_arrow()
            _assert_clean(data, query)
            assert data.num_rows == ROWS * 3 // 4
        with pytest.raises(ldw.AccessDenied):
            wh.map("p", source="my", sql="SELECT * FROM payroll")
        with pytest.raises(ldw.InvalidMapping):
            wh.map("p", source="my", sql="SELECT load_file('/etc/passwd') AS x")
    finally:
        wh.close()


# -- F10: every source read is read-only -----------------------------------------------------
@pytest.mark.postgres
def test_f10_source_connections_refuse_writes(pg_wh_governed, pg_engine, pg_canary):
    """Even a write that got past the allow-list would fail: every ldw connection to the
    source, control (psycopg) and reads (ADBC), runs READ ONLY transactions."""
    import adbc_driver_postgresql.dbapi as adbc_pg
    import sqlalchemy as sa

    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create sequence if not exists {pg_canary}.seq")
    write = f"select nextval('{pg_canary}.seq')"
    connector = pg_wh_governed._engine.connector("pg")
    with connector.engine.connect() as conn, pytest.raises(sa.exc.DBAPIError,
                                                          match="read-only transaction"):
        conn.exec_driver_sql(write)
    with adbc_pg.connect(connector._libpq_uri(), autocommit=True) as conn, \
            conn.cursor() as cursor, pytest.raises(Exception, match="read-only transaction"):
        cursor.execute(write)
        cursor.fetchall()  # ADBC reports the failed COPY when its rows are read
    with pytest.raises(ldw.InvalidMapping, match="nextval"):
        pg_wh_governed.map("w", source="pg", sql=f"SELECT {write[7:]} AS n")
    with pg_engine.connect() as conn:
        assert conn.exec_driver_sql(f"select last_value from {pg_canary}.seq").scalar() == 1
        assert not conn.exec_driver_sql(f"select is_called from {pg_canary}.seq").scalar()


@pytest.mark.postgres
def test_f10_lazy_and_head_are_read_only_too(pg_wh_governed):
    ds = pg_wh_governed.map("l", source="pg", sql="SELECT id, region FROM customers")
    assert ds.head(3).height == 3
    assert ds.lazy().filter(ldw.client.pl.col("id") < 5).collect().height == 3


# -- one Flight round trip of the F1 attack --------------------------------------------------
@pytest.mark.postgres
def test_f1_over_flight(tmp_path, pg_canary):
    extra = f"""
[policies."pg.{pg_canary}.customers"]
allow_roles = ["analyst"]
columns.email = {{ mask = "redact" }}
row_filter.analyst = "region = 'EMEA'"
"""
    server = ServerHandle(tmp_path, extra_toml=extra).start()
    try:
        alice = server.remote("alice", "analyst")
        ds = alice.map("f1", source="pg", sql=f"WITH customers AS (SELECT * FROM "
                                              f"{pg_canary}.customers) SELECT * FROM customers")
        data = ds.to_arrow()
        assert data.num_rows == ROWS * 3 // 4
        assert HIDDEN not in _text(data) and EMAIL not in _text(data)
        with pytest.raises(ldw.AccessDenied):
            alice.map("p", source="pg", sql=f"WITH payroll AS (SELECT * FROM "
                                            f"{pg_canary}.payroll) SELECT * FROM payroll")
    finally:
        server.stop()


# -- generated SQL: no canary ever reaches a result or a cache file ---------------------------
_TABLE_SPELLINGS = ["customers", "CUSTOMERS", "Customers", '"customers"', "{s}.customers",
                    '{s}."customers"', "{S}.CUSTOMERS"]
_FORBIDDEN = ["payroll", "pg_authid", "pg_stats", "pg_catalog.pg_user"]
_EXPRESSIONS = ["name", "email", "ssn", "region", "upper(name)", "lower(email)",
                "coalesce(ssn, email)", "concat(name, email)", "length(ssn)",
                "CASE WHEN region = 'APAC' THEN name ELSE email END", "md5(name)",
                "substring(email from 1 for 30)", "name || ssn"]


@st.composite
def _relation(draw, depth: int = 0) -> str:
    """A FROM item: a spelling of a table, a CTE shadowing it, a derived table, ..."""
    choice = draw(st.integers(0, 5 if depth < 2 else 1))
    table = draw(st.sampled_from(_TABLE_SPELLINGS + _FORBIDDEN[:1]))
    if choice <= 1:
        return table
    inner = draw(_query(depth + 1))
    if choice == 2:
        return f"({inner}) AS d{depth}"
    name = draw(st.sampled_from(["customers", "CUSTOMERS", '"customers"', "payroll", "q"]))
    if choice == 3:  # a CTE in a nested scope, then the table itself
        return f"(WITH {name} AS ({inner}) SELECT * FROM {name}) AS w{depth}"
    if choice == 4:
        return f"(SELECT * FROM {table} UNION ALL SELECT * FROM {table}) AS u{depth}"
    return f"(SELECT * FROM {table} WHERE id IN (SELECT id FROM {table})) AS s{depth}"


@st.composite
def _query(draw, depth: int = 0) -> str:
    source = draw(_relation(depth))
    if draw(st.booleans()):
        return f"SELECT * FROM {source}"
    columns = draw(st.lists(st.sampled_from(_EXPRESSIONS), min_size=1, max_size=3))
    select = ", ".join(f"{c} AS c{i}" for i, c in enumerate(columns))
    where = draw(st.sampled_from(["", " WHERE true", " WHERE region <> 'x'",
                                  " WHERE id > 0 OR id IS NULL"]))
    return f"SELECT {select} FROM {source}{where}"


@st.composite
def _statement(draw) -> str:
    body = draw(_query())
    if draw(st.booleans()):
        name = draw(st.sampled_from(["customers", "Customers", '"customers"', "payroll",
                                     "x"]))
        inner = draw(_query(1))
        recursive = draw(st.sampled_from(["", "RECURSIVE "]))
        return f"WITH {recursive}{name} AS ({inner}) {body}"
    if draw(st.booleans()):
        return f"{body} UNION ALL {draw(_query(1))}"
    return body


def _generated_sql_check(folder: Path, source: str, schema: str, shape: str,
                         examples: int) -> None:
    wh = _warehouse(folder, source, schema, shape, memory_limit="8KiB")
    seen = {"ran": 0, "refused": 0}
    exported: list[str] = []

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(_statement())
    def check(sql: str) -> None:
        sql = sql.format(s=schema, S=schema.upper())
        if source == "my":
            sql = sql.replace('"', "`")
        try:
            ds = wh.map(f"g{seen['ran'] + seen['refused']}", source=source, sql=sql)
            data = ds.to_arrow()
        except ldw.LdwError:
            seen["refused"] += 1
            return
        seen["ran"] += 1
        _assert_clean(data, sql)
        if len(exported) < 5 and data.num_rows:
            exported.append(ds.name)
            ds.export(folder / "exports" / ds.name, compression="none")

    try:
        check()
        states = wh.datasets()["state"].to_list()
        _assert_files_clean(folder)  # cache versions, spill files and exports
    finally:
        wh.close()
    assert seen["ran"] > 0, seen  # the generator reaches real queries, not only refusals
    if shape != "max rows":  # (no rows: nothing big enough to spill)
        assert "spilled" in states, states  # spill files were searched too


@pytest.mark.postgres
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_generated_sql_never_returns_a_canary(tmp_path_factory, pg_canary, shape):
    _generated_sql_check(tmp_path_factory.mktemp("gen"), "pg", pg_canary, shape, 60)


@pytest.mark.mysql
@pytest.mark.parametrize("shape", ["filter+masks", "masks only"])
def test_generated_sql_never_returns_a_canary_on_mariadb(tmp_path_factory, my_canary, shape):
    _generated_sql_check(tmp_path_factory.mktemp("gen"), "my", my_canary, shape, 40)


@pytest.mark.mysql
def test_f10_mariadb_connections_are_read_only(tmp_path, my_canary):
    import sqlalchemy as sa

    wh = _warehouse(tmp_path, "my", my_canary, "filter+masks")
    try:
        connector = wh._engine.connector("my")
        with connector.engine.connect() as conn, pytest.raises(sa.exc.DBAPIError,
                                                              match="READ ONLY"):
            conn.exec_driver_sql("insert into payroll values (2, 'x')")
    finally:
        wh.close()


@pytest.mark.postgres
def test_generated_sql_over_flight_never_sends_a_canary(tmp_path, pg_canary):
    """The same generator through a real server: the raw Flight bytes and the server's cache
    and export files never hold a canary."""
    from test_governance import _Recorder

    policies = _policies("pg", pg_canary, "filter+masks")
    lines = []
    for table, policy in policies.items():
        lines.append(f'[policies."{table}"]')
        for key, value in policy.items():
            if key == "columns":
                lines += [f'columns.{c} = {{ mask = "{m["mask"]}" }}' for c, m in value.items()]
            elif key == "row_filter":
                lines += [f'row_filter.{r} = "{f}"' for r, f in value.items()]
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    server = ServerHandle(tmp_path, extra_toml="\n".join(lines),
                          export_roots=tmp_path / "exports").start()
    recorder = _Recorder(server.flight)
    alice = ldw.connect(recorder.address, token=server.token("alice", "analyst"))
    seen = {"ran": 0, "refused": 0}

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(_statement())
    def check(sql: str) -> None:
        sql = sql.format(s=pg_canary, S=pg_canary.upper())
        name = f"g{seen['ran'] + seen['refused']}"
        try:
            data = alice.map(name, source="pg", sql=sql).to_arrow()
        except ldw.LdwError:
            seen["refused"] += 1
            return
        seen["ran"] += 1
        _assert_clean(data, sql)
        if seen["ran"] <= 3:
            alice.dataset(name).export(name, compression="none")

    try:
        check()
        recorder.close()
        data = bytes(recorder.received)
        assert not [c for c in CANARIES if c.encode() in data], "the Flight stream leaks"
        _assert_files_clean(server.shm)
        _assert_files_clean(tmp_path / "exports")
    finally:
        server.stop()
    assert seen["ran"] > 0, seen


# -- SQL over source tables named in wh.sql (the logical layer): the same policy view ----------
def _sourced(statement: str, schema: str, source: str) -> str:
    """``statement`` with every table that is not a CTE named ``source.schema.table``."""
    import sqlglot
    from sqlglot import exp

    from ldw.sql.validate import visible_ctes

    def qualify(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier) \
                and node.name.lower() not in visible_ctes(node):
            db = node.args.get("db") or exp.to_identifier(schema)
            return exp.Table(this=node.this.copy(), db=db.copy(),
                             catalog=exp.to_identifier(source),
                             alias=node.args.get("alias") or exp.TableAlias(
                                 this=node.this.copy()))
        return node
    dialect = "postgres" if source == "pg" else "mysql"
    return sqlglot.parse_one(statement, read=dialect).transform(qualify).sql("duckdb")


@pytest.mark.postgres
def test_sql_over_a_source_table_reads_the_policy_view(pg_wh_governed, pg_canary):
    wh = pg_wh_governed
    data = wh.sql(f"SELECT * FROM pg.{pg_canary}.customers").to_arrow()
    assert data.num_rows == ROWS * 3 // 4  # the row filter ran at the source
    _assert_clean(data, "SELECT *")
    for condition in (f"name LIKE '{HIDDEN}%'", f"email = '{EMAIL}-1'",
                      f"email LIKE '{EMAIL}%'", "region = 'APAC'", f"ssn = '{SSN}-1'"):
        query = f"SELECT id FROM pg.{pg_canary}.customers WHERE {condition}"
        assert wh.sql(query).height == 0, condition  # conditions see the masked, filtered view
    with pytest.raises(ldw.AccessDenied):
        wh.sql(f"SELECT * FROM pg.{pg_canary}.payroll")
    with pytest.raises(ldw.AccessDenied):
        wh.sql("SELECT * FROM pg.pg_catalog.pg_authid")
    with pytest.raises(ldw.AccessDenied):  # a CTE does not hide a denied table
        wh.sql(f"WITH c AS (SELECT * FROM pg.{pg_canary}.payroll) SELECT * FROM c")
    audit = wh.audit(limit=50)
    sql_rows = audit.filter(audit["action"] == "sql")
    assert any(f"pg.{pg_canary}.customers" in (d or "") and "SELECT" in (d or "")
               for d in sql_rows["detail"].to_list())
    _assert_files_clean(Path(wh._engine.settings.shm_dir))  # nothing was cached on the way


@pytest.mark.postgres
def test_sql_over_a_source_table_never_compares_raw_values_of_a_hashed_column(
        tmp_path, pg_canary):
    config = {"sources": {"pg": {"url": POSTGRES_URL}},
              "policies": {f"pg.{pg_canary}.customers": {"columns": {"email": {
                  "mask": "hash"}}}},
              "users": {_user(): {"roles": ["analyst"]}}}
    wh = ldw.connect(in_process=True, config=config, shm_dir=str(tmp_path / "shm"),
                     spill_dir=str(tmp_path / "spill"))
    try:
        table = f"pg.{pg_canary}.customers"
        hashed = wh.sql(f"SELECT email FROM {table} WHERE id = 1")["email"].item()
        assert EMAIL not in hashed
        query = f"SELECT id FROM {table} WHERE email = '{hashed}' OR email = '{EMAIL}-2'"
        assert wh.sql(query)["id"].to_list() == [1]  # compared after hashing
        plan = wh.explain(query)
        (relation,) = plan.relations
        assert relation["pushed"] == [] and relation["not_pushed"]
        assert all(EMAIL not in sql and hashed not in sql for sql in relation["sql"])
    finally:
        wh.close()


def _generated_wh_sql_check(folder: Path, source: str, schema: str, shape: str,
                            examples: int) -> None:
    wh = _warehouse(folder, source, schema, shape)
    seen = {"ran": 0, "refused": 0}

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(_statement())
    def check(sql: str) -> None:
        sql = sql.format(s=schema, S=schema.upper())
        try:
            query = _sourced(sql if source == "pg" else sql.replace('"', "`"), schema, source)
            data = wh.sql(query).to_arrow()
        except (ldw.LdwError, ValueError):  # refused, or not valid in DuckDB's dialect
            seen["refused"] += 1
            return
        seen["ran"] += 1
        _assert_clean(data, query)

    try:
        check()
        _assert_files_clean(folder)  # nothing cached, nothing spilled
    finally:
        wh.close()
    assert seen["ran"] > 0, seen


@pytest.mark.postgres
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_generated_sql_over_source_tables_never_returns_a_canary(tmp_path_factory, pg_canary,
                                                                 shape):
    _generated_wh_sql_check(tmp_path_factory.mktemp("gen"), "pg", pg_canary, shape, 40)


@pytest.mark.mysql
def test_generated_sql_over_mariadb_tables_never_returns_a_canary(tmp_path_factory, my_canary):
    _generated_wh_sql_check(tmp_path_factory.mktemp("gen"), "my", my_canary, "filter+masks", 30)
