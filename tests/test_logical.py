"""The logical layer: SQL that names source tables and reads lazily (ldw.engine.federation).

TPC-H SF0.1 straight from PostgreSQL (and with customer and orders from MariaDB) must give
PostgreSQL's answers; a selective query over an uncached dataset reads only what it needs and
leaves the dataset uncached; a query over cached datasets sends nothing to a source; explain
shows what each source is sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pyarrow as pa
import pytest
import sqlglot
from conftest import MYSQL_URL, POSTGRES_URL

import ldw
from ldw import tpch
from ldw.sql import referenced_datasets


def _engine(wh: ldw.Warehouse):
    return wh._engine


def _expected(pg_conn: psycopg.Connection, text: str) -> list[tuple]:
    with pg_conn.cursor() as cur:
        cur.execute(text)
        return cur.fetchall()


@pytest.fixture(scope="module")
def fed_wh(tpch_pg: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ldw.Warehouse]:
    shm = tmp_path_factory.mktemp("fed-shm")
    wh = ldw.connect(in_process=True, shm_dir=str(shm), spill_dir=f"{shm}-spill",
                     memory_limit="2GiB",
                     config={"sources": {"pg": {"url": POSTGRES_URL}, "my": {"url": MYSQL_URL}}})
    yield wh
    wh.close()


@pytest.fixture(scope="module")
def tpch_my(mysql_engine, tpch_arrow: dict[str, pa.Table]) -> Iterator[str]:
    """customer and orders of SF0.1 in a fresh MariaDB database."""
    db = f"ldw_tpch_{uuid.uuid4().hex[:8]}"
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(f"create database {db}")
    try:
        for table in ("customer", "orders"):
            columns = ", ".join(f"{name} {kind}" for name, kind in tpch.TABLES[table])
            data = tpch_arrow[table]
            rows = list(zip(*(c.to_pylist() for c in data.columns), strict=True))
            marks = ", ".join(["%s"] * data.num_columns)
            with mysql_engine.begin() as conn:
                conn.exec_driver_sql(f"create table {db}.{table} ({columns}, "
                                     f"primary key ({tpch.TABLES[table][0][0]}))")
                cursor = conn.connection.dbapi_connection.cursor()
                for start in range(0, len(rows), 20_000):
                    cursor.executemany(f"insert into {db}.{table} values ({marks})",
                                       rows[start:start + 20_000])
        yield db
    finally:
        with mysql_engine.begin() as conn:
            conn.exec_driver_sql(f"drop database {db}")


@pytest.mark.postgres
@pytest.mark.parametrize("number", tpch.NUMBERS, ids=[f"q{n:02d}" for n in tpch.NUMBERS])
def test_tpch_over_source_tables_matches_postgres(number: int, fed_wh: ldw.Warehouse,
                                                   tpch_pg: str, pg_conn) -> None:
    text = tpch.query(number)
    query = tpch.on_sources(text, {t: f"pg.{tpch_pg}" for t in tpch.TABLES})
    before = len(fed_wh.datasets())
    result = fed_wh.sql(query)
    assert result.height > 0
    difference = tpch.compare_results(_expected(pg_conn, text), result.rows(),
                                      order_by=tpch.order_by_columns(text))
    assert difference is None, f"Q{number}: {difference}"
    assert len(fed_wh.datasets()) == before  # an implicit mapping leaves no dataset behind


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("number", tpch.NUMBERS, ids=[f"q{n:02d}" for n in tpch.NUMBERS])
def test_tpch_across_mariadb_and_postgres_matches_postgres(number: int, fed_wh: ldw.Warehouse,
                                                           tpch_pg: str, tpch_my: str,
                                                           pg_conn) -> None:
    text = tpch.query(number)
    where = {t: f"pg.{tpch_pg}" for t in tpch.TABLES}
    where.update(customer=f"my.{tpch_my}", orders=f"my.{tpch_my}")
    query = tpch.on_sources(text, where)
    result = fed_wh.sql(query)
    difference = tpch.compare_results(_expected(pg_conn, text), result.rows(),
                                      order_by=tpch.order_by_columns(text))
    assert difference is None, f"Q{number}: {difference}"
    if {"customer", "orders"} & set(referenced_datasets(text)):
        plan = fed_wh.explain(query)
        assert "my" in {r["source"] for r in plan.relations}


@pytest.mark.postgres
def test_a_selective_query_reads_only_what_it_needs_and_caches_nothing(
        fed_wh: ldw.Warehouse, tpch_pg: str, pg_conn) -> None:
    li = fed_wh.map("li", f"pg.{tpch_pg}.lineitem")
    log = _engine(fed_wh).query_log
    sent = log.total
    text = "SELECT count(*) AS n, sum(l_quantity) AS q FROM {} WHERE l_orderkey < 100"
    result = fed_wh.sql(text.format("li"))
    assert result.rows() == _expected(pg_conn, text.format("lineitem"))
    assert li.info()["state"] == "mapped"  # no ingestion as a side effect
    assert log.total == sent + 1
    source, sql = log[-1]
    assert source == "pg" and "WHERE" in sql and "l_orderkey < 100" in sql
    assert "l_comment" not in sql and "l_shipmode" not in sql  # only the needed columns
    plan = fed_wh.explain("SELECT count(*) FROM li WHERE l_orderkey < 100")
    (relation,) = plan.relations
    assert relation["read"] == "source" and relation["columns"] == ["l_orderkey"]
    assert relation["pushed"] == ["l_orderkey < 100"]
    assert relation["estimated_rows"] is not None and relation["estimated_rows"] < 10_000
    assert "l_orderkey < 100" in relation["sql"][0]
    assert "pg" in str(plan) and "whole-query pushdown: not taken" in str(plan)


@pytest.mark.postgres
def test_a_query_over_cached_datasets_sends_nothing_to_a_source(
        fed_wh: ldw.Warehouse, tpch_pg: str, pg_conn) -> None:
    for table in ("nation", "region", "supplier"):
        fed_wh.map(table, f"pg.{tpch_pg}.{table}").cache()
    log = _engine(fed_wh).query_log
    sent = log.total
    text = ("SELECT r_name, count(*) AS n FROM supplier JOIN nation ON s_nationkey = "
            "n_nationkey JOIN region ON n_regionkey = r_regionkey GROUP BY r_name ORDER BY 1")
    result = fed_wh.sql(text)
    assert log.total == sent  # zero source queries
    assert tpch.compare_results(_expected(pg_conn, text), result.rows(), order_by=[0]) is None
    plan = fed_wh.explain(text)
    assert {r["read"] for r in plan.relations} == {"cache"}
    assert all(r["sql"] == [] for r in plan.relations)
    assert log.total == sent


@pytest.mark.postgres
def test_cache_true_caches_the_datasets_first(fed_wh: ldw.Warehouse, tpch_pg: str) -> None:
    part = fed_wh.map("part_c", f"pg.{tpch_pg}.part")
    fed_wh.sql("SELECT count(*) FROM part_c WHERE p_size = 1")
    assert part.info()["state"] == "mapped"
    n = fed_wh.sql("SELECT count(*) AS n FROM part_c WHERE p_size = 1", cache=True)["n"].item()
    assert part.info()["state"] == "cached" and n > 0
    log = _engine(fed_wh).query_log
    sent = log.total
    assert fed_wh.sql("SELECT count(*) AS n FROM part_c WHERE p_size = 1")["n"].item() == n
    assert log.total == sent


@pytest.mark.postgres
def test_mixing_cached_datasets_and_source_tables(fed_wh: ldw.Warehouse, tpch_pg: str,
                                                  pg_conn) -> None:
    fed_wh.map("nation_m", f"pg.{tpch_pg}.nation").cache()
    text = ("SELECT n_name, count(*) AS n FROM nation_m JOIN pg.{s}.customer c "
            "ON c.c_nationkey = n_nationkey WHERE c.c_acctbal > 9000 GROUP BY 1 ORDER BY 1")
    result = fed_wh.sql(text.format(s=tpch_pg))
    expected = _expected(pg_conn, text.replace("nation_m", "nation").replace("pg.{s}.", ""))
    assert tpch.compare_results(expected, result.rows(), order_by=[0]) is None
    plan = fed_wh.explain(text.format(s=tpch_pg), analyze=True)
    reads = {r["relation"]: r for r in plan.relations}
    assert reads["nation_m"]["read"] == "cache"
    customer = reads[f"pg.{tpch_pg}.customer"]
    assert customer["read"] == "source" and customer["pushed"] == ["c_acctbal > 9000"]
    assert customer["rows"] == sum(n for _, n in expected)  # only the rows the query keeps
    assert plan["rows"] == len(expected)


@pytest.mark.postgres
def test_names_fold_as_the_source_folds_them(fed_wh: ldw.Warehouse, tpch_pg: str) -> None:
    assert fed_wh.sql(f"SELECT count(*) AS n FROM pg.{tpch_pg}.REGION")["n"].item() == 5
    with pytest.raises(ldw.LdwError, match="REGION"):
        fed_wh.sql(f'SELECT count(*) FROM pg.{tpch_pg}."REGION"')


@pytest.mark.postgres
def test_errors_name_what_is_wrong(fed_wh: ldw.Warehouse, tpch_pg: str) -> None:
    with pytest.raises(ldw.UnknownSource, match="'nosuch' is not a configured source"):
        fed_wh.sql("SELECT * FROM nosuch.public.t")
    with pytest.raises(ldw.UnknownTable, match="no table"):
        fed_wh.sql(f"SELECT * FROM pg.{tpch_pg}.nothing_here")
    with pytest.raises(ldw.AccessDenied, match="catalog"):
        fed_wh.sql("SELECT * FROM pg.pg_catalog.pg_authid")
    with pytest.raises(ldw.InvalidMapping, match="not allowed"):
        fed_wh.sql(f"SELECT * FROM pg.{tpch_pg}.region, read_csv('/etc/passwd')")


@pytest.mark.postgres
def test_a_self_join_reads_the_table_once_with_both_conditions(fed_wh: ldw.Warehouse,
                                                               tpch_pg: str, pg_conn) -> None:
    text = ("SELECT a.n_name AS a_name, b.n_name AS b_name FROM pg.{s}.nation a "
            "JOIN pg.{s}.nation b ON a.n_regionkey = b.n_regionkey "
            "WHERE a.n_nationkey = 1 AND b.n_nationkey > 20 ORDER BY 2")
    log = _engine(fed_wh).query_log
    sent = log.total
    result = fed_wh.sql(text.format(s=tpch_pg))
    assert log.total == sent + 1
    assert "OR" in log[-1][1]
    expected = _expected(pg_conn, text.replace("pg.{s}.", ""))
    assert tpch.compare_results(expected, result.rows(), order_by=[1]) is None and expected


@pytest.mark.postgres
def test_outer_joins_do_not_lose_rows(fed_wh: ldw.Warehouse, tpch_pg: str, pg_conn) -> None:
    text = ("SELECT c_custkey, o_orderkey FROM pg.{s}.customer LEFT JOIN pg.{s}.orders "
            "ON o_custkey = c_custkey AND o_orderkey < 40 "
            "WHERE c_custkey < 20 AND o_orderkey IS NULL ORDER BY 1")
    result = fed_wh.sql(text.format(s=tpch_pg))
    expected = _expected(pg_conn, text.replace("pg.{s}.", ""))
    assert result.rows() == expected and len(expected) > 0
    plan = fed_wh.explain(text.format(s=tpch_pg))
    orders = next(r for r in plan.relations if r["relation"].endswith("orders"))
    assert orders["pushed"] == ["o_orderkey < 40"]  # from ON, never the IS NULL from WHERE


@pytest.mark.postgres
def test_derived_datasets_are_read_lazily_too(fed_wh: ldw.Warehouse, tpch_pg: str) -> None:
    fed_wh.map("region_d", f"pg.{tpch_pg}.region")
    derived = fed_wh.sql("SELECT r_regionkey, upper(r_name) AS name FROM region_d",
                         name="regions_upper")
    derived.evict()
    assert fed_wh.sql("SELECT count(*) AS n FROM regions_upper")["n"].item() == 5
    assert derived.info()["state"] != "cached"


# -- the analysis alone (no database) -------------------------------------------------------------
def _needs(query: str, **relations: list[str]) -> dict[str, object]:
    """What ``query`` over relations named ldw_r0, ldw_r1, ... needs from each."""
    from ldw.logical.analyze import analyze

    tree = sqlglot.parse_one(query, read="duckdb")
    found = analyze(tree, list(relations.values()))
    return {name: (n.columns, [[c.sql("duckdb") for c in o] for o in n.occurrences], n.limit)
            for name, n in zip(relations, found, strict=True)}


def test_analysis_pushes_only_what_cannot_change_the_result() -> None:
    cols = ["a", "b", "c"]
    # a WHERE on the padded side of a LEFT JOIN is not pushed; the join's own condition is
    got = _needs("SELECT x.a FROM ldw_r0 x LEFT JOIN ldw_r1 y ON x.a = y.a AND y.b > 1 "
                 "WHERE y.c IS NULL AND x.b = 2", r0=cols, r1=cols)
    assert got["r0"][1] == [["b = 2"]]
    assert got["r1"][1] == [["b > 1"]]
    # RIGHT and FULL joins push nothing in their scope
    got = _needs("SELECT 1 FROM ldw_r0 x FULL JOIN ldw_r1 y ON x.a = y.a WHERE x.b = 1",
                 r0=cols, r1=cols)
    assert got["r0"][1] == [[]] and got["r1"][1] == [[]]
    # a condition over two relations is not pushed, but what each OR branch implies is
    got = _needs("SELECT 1 FROM ldw_r0 x, ldw_r1 y WHERE (x.a = 1 AND y.b = 2) OR "
                 "(x.a = 3 AND y.c = 4)", r0=cols, r1=cols)
    assert got["r0"][1] == [["a = 1 OR a = 3"]] and got["r1"][1] == [["b = 2 OR c = 4"]]
    # conditions with subqueries or aggregates stay in DuckDB
    got = _needs("SELECT 1 FROM ldw_r0 WHERE a IN (SELECT a FROM ldw_r1) AND b > 0",
                 r0=cols, r1=cols)
    assert got["r0"][1] == [["b > 0"]] and got["r1"][1] == [[]]


def test_analysis_columns_and_limits() -> None:
    cols = ["a", "b", "c", "d"]
    assert _needs("SELECT b FROM ldw_r0 WHERE c > 1", r0=cols)["r0"][0] == ["b", "c"]
    assert _needs("SELECT * FROM ldw_r0", r0=cols)["r0"][0] == cols
    assert _needs("SELECT count(*) FROM ldw_r0", r0=cols)["r0"][0] == ["a"]  # one, to count
    assert _needs("SELECT * EXCLUDE (a) FROM ldw_r0", r0=cols)["r0"][0] in (cols, ["b", "c", "d"])
    # EXISTS needs no columns of its select list
    got = _needs("SELECT a FROM ldw_r0 x WHERE EXISTS (SELECT * FROM ldw_r1 y WHERE y.b = x.a)",
                 r0=cols, r1=cols)
    assert got["r1"][0] == ["b"]
    assert _needs("SELECT a FROM ldw_r0 LIMIT 5", r0=cols)["r0"][2] == 5
    assert _needs("SELECT a FROM ldw_r0 ORDER BY b LIMIT 5", r0=cols)["r0"][2] is None
    assert _needs("SELECT a FROM ldw_r0 WHERE b = 1 LIMIT 5", r0=cols)["r0"][2] is None
    assert _needs("SELECT DISTINCT a FROM ldw_r0 LIMIT 5", r0=cols)["r0"][2] is None


def test_conjuncts_keep_negation_and_refuse_what_has_no_equivalent() -> None:
    from ldw.logical.conjuncts import to_predicate

    def p(text: str):
        return to_predicate(sqlglot.parse_one(text, read="duckdb"))

    assert p("a NOT LIKE 'x%'") == {"op": "not", "args": [
        {"op": "like", "args": [{"col": "a"}, {"lit": "x%", "type": "str"}]}]}
    assert p("a NOT IN (1, 2)")["op"] == "not"
    assert p("5 < a") == {"op": "gt", "args": [{"col": "a"}, {"lit": 5, "type": "int"}]}
    assert p("a <= 0.07") == {"op": "le", "args": [{"col": "a"},
                                                   {"lit": "0.07", "type": "decimal"}]}
    assert p("a = DATE '2020-01-01'")["args"][1] == {"lit": "2020-01-01", "type": "date"}
    assert p("a + 1 > 2") is None and p("lower(a) = 'x'") is None
    assert p("a LIKE 'x' ESCAPE '!'") is None


@pytest.mark.postgres
def test_a_big_table_is_read_in_page_ranges_from_one_snapshot(fed_wh: ldw.Warehouse,
                                                              tpch_pg: str, pg_conn) -> None:
    import os

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: a table is read by one reader")
    text = "SELECT count(*) AS n, sum(l_quantity) AS q, max(l_comment) AS c FROM {}"
    plan = fed_wh.explain(text.format(f"pg.{tpch_pg}.lineitem"), analyze=True)
    (relation,) = plan.relations
    assert len(relation["sql"]) >= 2 and all("ctid" in sql for sql in relation["sql"])
    result = fed_wh.sql(text.format(f"pg.{tpch_pg}.lineitem"))
    assert tpch.compare_results(_expected(pg_conn, text.format("lineitem")),
                                result.rows()) is None


@pytest.mark.postgres
def test_a_changed_table_definition_is_planned_again(fed_wh: ldw.Warehouse, pg_engine,
                                                     pg_schema: str) -> None:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.t (id int, v int)")
        conn.exec_driver_sql(f"insert into {pg_schema}.t values (1, 10), (2, 20)")
    query = f"SELECT * FROM pg.{pg_schema}.t ORDER BY id"
    assert fed_wh.sql(query).columns == ["id", "v"]
    assert fed_wh.sql(query).columns == ["id", "v"]  # planned from the kept definition
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"alter table {pg_schema}.t add column w text default 'x'")
        conn.exec_driver_sql(f"alter table {pg_schema}.t alter column v type numeric(10,1)")
    result = fed_wh.sql(query)
    assert result.columns == ["id", "v", "w"] and result["w"].to_list() == ["x", "x"]
    assert str(result["v"].dtype).startswith("Decimal")
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"drop table {pg_schema}.t")
        conn.exec_driver_sql(f"create table {pg_schema}.t (id int, v text)")
        conn.exec_driver_sql(f"insert into {pg_schema}.t values (3, 'three')")
    assert fed_wh.sql(query).rows() == [(3, "three")]


@pytest.mark.postgres
def test_a_join_to_a_filtered_small_relation_filters_the_big_one_at_its_source(
        fed_wh: ldw.Warehouse, tpch_pg: str, pg_conn) -> None:
    text = ("SELECT count(*) AS n, sum(l_quantity) AS q FROM {s}lineitem, {s}part, {s}partsupp "
            "WHERE p_partkey = l_partkey AND ps_partkey = l_partkey AND ps_suppkey = l_suppkey "
            "AND p_name LIKE '%green%'")
    query = text.format(s=f"pg.{tpch_pg}.")
    assert tpch.compare_results(_expected(pg_conn, text.format(s="")),
                                fed_wh.sql(query).rows()) is None
    plan = fed_wh.explain(query, analyze=True)
    reads = {r["relation"].rsplit(".", 1)[1]: r for r in plan.relations}
    assert any(p.startswith("l_partkey IN (") and "keys of" in p
               for p in reads["lineitem"]["pushed"])
    assert any(p.startswith("ps_partkey IN (") for p in reads["partsupp"]["pushed"])  # a=b=c
    sent = reads["lineitem"]["sql"][0]
    assert "= ANY('{" in sent and "::integer[])" in sent
    assert reads["lineitem"]["rows"] < 100_000  # of about 600,000


def test_analysis_finds_equi_joins_semi_joins_and_their_closure() -> None:
    from ldw.logical.analyze import analyze

    def joins(query: str, n: int) -> list[list[tuple]]:
        found = analyze(sqlglot.parse_one(query, read="duckdb"), [["a", "b"]] * n)
        return [sorted(need.joins) for need in found]

    got = joins("SELECT 1 FROM ldw_r0 x, ldw_r1 y, ldw_r2 z WHERE x.a = y.a AND y.a = z.b", 3)
    assert got[0] == [("a", 1, "a"), ("a", 2, "b")]  # x.a = z.b by transitivity
    got = joins("SELECT 1 FROM ldw_r0 x LEFT JOIN ldw_r1 y ON x.a = y.a", 2)
    assert got == [[], []]  # an outer join's partner may be missing
    got = joins("SELECT 1 FROM ldw_r0 x WHERE x.b IN (SELECT y.a FROM ldw_r1 y WHERE y.b > 1)", 2)
    assert got[0] == [("b", 1, "a")]
    got = joins("SELECT 1 FROM ldw_r0 x WHERE x.b NOT IN (SELECT y.a FROM ldw_r1 y)", 2)
    assert got[0] == []
    # read twice: only a partner both occurrences need counts
    got = joins("SELECT 1 FROM ldw_r0 x, ldw_r1 y WHERE x.a = y.a AND x.b > "
                "(SELECT max(z.b) FROM ldw_r0 z WHERE z.a = y.a)", 2)
    assert got[0] == [("a", 1, "a")]
    got = joins("SELECT 1 FROM ldw_r0 x, ldw_r1 y WHERE x.a = y.a UNION ALL "
                "SELECT 1 FROM ldw_r0 z", 2)
    assert got[0] == []


def test_integer_sets_compile_to_digits_in_the_column_type() -> None:
    import sqlalchemy as sa
    from sqlalchemy.dialects import mysql, postgresql

    from ldw.logical.dynamic import IntegerSet, integer_type

    table = sa.Table("t", sa.MetaData(), sa.Column("i", sa.Integer), sa.Column("b", sa.BigInteger))
    assert integer_type(table.c.i) == "integer" and integer_type(table.c.b) == "bigint"
    assert integer_type(sa.cast(table.c.i, sa.Numeric)) is None
    condition = IntegerSet(table.c.i, [3, 1, 2**40], "integer")  # 2**40 cannot match an int4
    text = str(sa.select(table.c.i).where(condition).compile(dialect=postgresql.dialect()))
    assert "t.i = ANY('{3,1}'::integer[])" in text
    assert "t.i IN (3, 1)" in str(sa.select(table.c.i).where(condition).compile(
        dialect=mysql.dialect()))
    assert "1 = 0" in str(IntegerSet(table.c.i, [], "integer").compile())
    with pytest.raises(TypeError):
        IntegerSet(table.c.i, ["1; drop table t"], "integer")


@pytest.mark.postgres
def test_datasets_are_also_named_in_the_ldw_catalog(fed_wh: ldw.Warehouse, tpch_pg: str) -> None:
    from ldw.config import _user

    fed_wh.map("region_l", f"pg.{tpch_pg}.region")
    query = f"SELECT count(*) AS n FROM ldw.{_user()}.region_l"
    assert fed_wh.sql(query)["n"].item() == 5  # as Flight SQL clients spell it
    with pytest.raises(ldw.UnknownDataset):
        fed_wh.sql("SELECT * FROM ldw.nobody.region_l")
