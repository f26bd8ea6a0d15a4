"""Side channels: a user predicate that would fail on rows a row filter hides must behave the
same whether those rows exist or not, and errors never echo hidden values.

Without a fence, PostgreSQL flattens the policy view into the outer query and evaluates the
cheaper qual first: the user's ``100 / amount > 1`` runs on hidden rows (``amount = 0``) before
the row filter, and "division by zero" tells the user that a hidden row with 0 exists.
"""

from __future__ import annotations

import pytest
from conftest import POSTGRES_URL

import ldw

HIDDEN = "SIDECHANNEL-CANARY-77"


def _connect(shm_dir: str) -> ldw.Warehouse:
    from ldw.config import _user  # the in-process caller is this OS user

    return ldw.connect(in_process=True, shm_dir=shm_dir, spill_dir=f"{shm_dir}-spill",
                       memory_limit="1GiB", config={
                           "sources": {"pg": {"url": POSTGRES_URL}},
                           "policies": {"pg.*.acct": {
                               "allow_roles": ["analyst"],
                               # costlier than the user's predicate, so evaluated after it
                               "row_filter": {"analyst": "lower(upper(region)) = 'eu'"}}},
                           "users": {_user(): {"roles": ["analyst"]}}})


@pytest.fixture
def acct(pg_engine, pg_schema) -> str:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.acct (id int, region text, "
                             "amount int, code text)")
        conn.exec_driver_sql(f"insert into {pg_schema}.acct select g, 'EU', 1 + mod(g, 50), "
                             "mod(g, 9)::text from generate_series(1, 5000) g")
        conn.exec_driver_sql(f"insert into {pg_schema}.acct select g, 'US', 0, "
                             f"'{HIDDEN}' from generate_series(5001, 5100) g")
    return f"{pg_schema}.acct"


def _remove_hidden_rows(pg_engine, table: str) -> None:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"delete from {table} where region = 'US'")


# Each case: (mapping arguments, how to read) — a predicate that fails on a hidden value.
CASES = {
    "division in where": ({"where": "100 / amount > 1"}, "to_arrow"),
    "cast in where": ({"where": "CAST(code AS INTEGER) >= 0"}, "to_arrow"),
    "division in a lazy filter": ({}, "lazy_division"),
    "division in sql=": ({}, "sql_division"),
    "division in SQL over a source table": ({}, "wh_sql_division"),
    "cast in SQL over a source table": ({}, "wh_sql_cast"),
    "comparison on hidden rows in SQL over a source table": ({}, "wh_sql_pushed"),
}


def _read(wh: ldw.Warehouse, table: str, mapping: dict, how: str):
    if how.startswith("wh_sql"):  # the condition is pushed, or runs in DuckDB, never below
        condition = {"wh_sql_division": "100 / amount > 1",  # the row filter's fence
                     "wh_sql_cast": "CAST(code AS INTEGER) >= 0",
                     "wh_sql_pushed": "amount >= 0 AND code <> 'x'"}[how]
        return wh.sql(f"SELECT id FROM pg.{table} WHERE {condition} ORDER BY id").to_arrow()
    if how == "sql_division":
        return wh.map("acct", sql=f"SELECT id FROM {table} WHERE 100 / amount > 1",
                      source="pg").to_arrow()
    ds = wh.map("acct", f"pg.{table}", **mapping)
    if how == "lazy_division":
        import polars as pl

        return ds.lazy().filter((pl.lit(100) // pl.col("amount")) > 1).select("id").collect()
    return ds.to_arrow().select(["id"])


@pytest.mark.postgres
@pytest.mark.parametrize("case", list(CASES))
def test_a_predicate_failing_on_hidden_rows_behaves_as_if_they_did_not_exist(
        case, pg_engine, acct, shm_dir):
    mapping, how = CASES[case]
    wh = _connect(shm_dir)
    try:
        with_hidden = _read(wh, acct, mapping, how)
    except ldw.SourceError as exc:  # must not happen, and must never echo the hidden value
        assert HIDDEN not in str(exc)
        pytest.fail(f"the predicate ran on hidden rows: {exc}")
    finally:
        wh.close()
    _remove_hidden_rows(pg_engine, acct)
    wh = _connect(shm_dir)
    try:
        without_hidden = _read(wh, acct, mapping, how)
    finally:
        wh.close()
    assert with_hidden.num_rows if hasattr(with_hidden, "num_rows") else len(with_hidden)
    assert with_hidden.equals(without_hidden)


@pytest.mark.postgres
def test_an_error_on_a_visible_row_still_reports_without_hidden_values(pg_engine, acct,
                                                                       shm_dir):
    wh = _connect(shm_dir)
    try:
        with pytest.raises(ldw.SourceError) as info:
            wh.map("acct", f"pg.{acct}", where="CAST(region AS INTEGER) > 0").to_arrow()
        assert HIDDEN not in str(info.value) and "'pg'" in str(info.value)
    finally:
        wh.close()
