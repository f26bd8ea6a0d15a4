import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

import ldw
from ldw.predicates import parse_where, validate_select_sql

T = sa.table("t", sa.column("a"), sa.column("o_orderdate"), sa.column("name"))


PG = postgresql.dialect(paramstyle="named")


def sql(expr, dialect=PG) -> str:
    return str(expr.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


@pytest.mark.parametrize(("where", "expected"), [
    ("a > 5", "t.a > 5"),
    ("o_orderdate >= DATE '1995-01-01'", "t.o_orderdate >= '1995-01-01'"),
    ("a IN (1, 2) OR name IS NULL", "t.a IN (1, 2) OR t.name IS NULL"),
    ("a BETWEEN 1 AND 2", "t.a BETWEEN 1 AND 2"),
    ("lower(name) LIKE 'x%'", "lower(t.name) LIKE 'x%'"),
    ("NOT (a = 1)", "NOT (t.a = 1)"),
    ("name = 'it''s'", "t.name = 'it''s'"),
    ("A > -2.5", "t.a > -2.5"),
])
def test_valid_predicates_are_rebuilt(where, expected):
    assert sql(parse_where(where, T.c, dialect="postgresql")) == expected


@pytest.mark.parametrize(("where", "message"), [
    ("1=1; DROP TABLE x", "single expression"),
    ("x') OR ('1'='1", "cannot parse"),
    ("a = (select max(a) from t)", "subqueries"),
    ("a IN (select a from other)", "subquer"),
    ("pg_sleep(10) IS NULL", "not allowed"),
    ("b > 1", "unknown column 'b'"),
    ("other.a > 1", "without a table qualifier"),
    ("a", "not a condition"),
    ("a + 1", "not a condition"),
    ("", "non-empty"),
    ("o_orderdate > DATE 'yesterday'", "not a valid DATE"),
    ("a > 1 -- comment\n; delete from t", "single expression"),
])
def test_invalid_predicates_raise_invalid_mapping(where, message):
    with pytest.raises(ldw.InvalidMapping, match=message):
        parse_where(where, T.c, dialect="postgresql")


def test_values_are_escaped_by_the_dialect_not_pasted():
    # In MySQL's dialect 'x\'' is the string x': it stays one literal, its quote doubled.
    expr = parse_where("name = 'x\\'' OR a = 1", T.c, dialect="mysql")
    assert sql(expr, mysql.dialect(paramstyle="named")) == "t.name = 'x''' OR t.a = 1"


@pytest.mark.parametrize("query", [
    "delete from t", "select * from t for update", "select pg_sleep(5)",
    "with x as (delete from t returning *) select * from x", "select 1; select 2",
    "create table x as select 1", "select * into newtable from t", "select load_file('/etc/x')",
])
def test_sql_must_be_one_read_only_query(query):
    with pytest.raises(ldw.InvalidMapping):
        validate_select_sql(query, dialect="postgresql")


def test_sql_is_regenerated():
    assert validate_select_sql("select a,b from t where a>1", dialect="postgresql") == \
        "SELECT a, b FROM t WHERE a > 1"


@pytest.mark.parametrize(("where", "said"), [
    ("balance >>> 3", "'>' at character 11 needs a value, column or condition after it"),
    ("balance > ", "'>' at character 9 needs a value"),
    ("(balance > 3", "')' expected at character 13"),
    ("balance > 3 and", "'and' at character 13 needs a value"),
    ("balance > 1 1", "unexpected '1' at character 13"),
    ("balance between 1", "BETWEEN needs both bounds"),
    ("name = 'x", "a quote is not closed or a character cannot be read at character 8"),
])
def test_parse_errors_say_what_was_expected_and_where(where: str, said: str) -> None:
    columns = {"balance": sa.column("balance"), "name": sa.column("name")}
    with pytest.raises(ldw.InvalidMapping) as error:
        parse_where(where, columns)
    message = str(error.value)
    assert message.startswith(f"cannot parse where {where!r}: ") and said in message
    assert not any(internal in message for internal in ("sqlglot", "<class", "Required keyword"))


def test_sql_parse_errors_name_the_token_not_sqlglot_internals() -> None:
    from ldw.sql import referenced_datasets

    with pytest.raises(ldw.InvalidMapping, match=r"got 'WHERE' at character 13") as error:
        referenced_datasets("SELECT FROM WHERE (")
    assert "<Token" not in str(error.value)


@pytest.mark.parametrize(("where", "said"), [
    ("balance >> 3", "(at character 1): bitwise right shift ('balance >> 3') is not allowed in a "
                     "where; use comparisons"),
    ("balance > 1 and foo > 3", "(at character 17): unknown column 'foo'"),
    ("balance > 1 or md5(name) = 'x'", "(at character 16): function 'MD5(name)' is not allowed"),
])
def test_validation_errors_say_where_and_what_is_allowed(where: str, said: str) -> None:
    columns = {"balance": sa.column("balance"), "name": sa.column("name")}
    with pytest.raises(ldw.InvalidMapping) as error:
        parse_where(where, columns)
    assert str(error.value).startswith(f"invalid where {where!r} ") and said in str(error.value)
    assert "BITWISE" not in str(error.value)


@pytest.mark.parametrize(("sql", "said"), [
    ("select lo_import('/etc/passwd')", "function lo_import() (at character 8)"),
    ("select id from t for update", "FOR UPDATE/SHARE (at character 8)"),
    ("select pg_catalog.upper(s) from t", "function pg_catalog.upper(s) (at character 8)"),
])
def test_sql_mapping_refusals_say_where(sql: str, said: str) -> None:
    from ldw.governance.allowlist import check_query_nodes
    from ldw.predicates import parse_query

    with pytest.raises(ldw.InvalidMapping, match=r"^sql= may not use ") as error:
        check_query_nodes(parse_query(sql, "postgres"), "postgres")
    assert said in str(error.value)


def test_negated_like_stays_negated() -> None:
    """sqlglot writes ``x NOT LIKE y`` as a Like node with ``negate``; dropping it would turn
    a filter into its opposite."""
    import sqlalchemy as sa

    table = sa.table("t", sa.column("a"))
    assert "NOT LIKE" in str(parse_where("a NOT LIKE 'x%'", table.c, dialect="postgresql"))
    assert "NOT LIKE" in str(parse_where("a NOT ILIKE 'x%'", table.c, dialect="postgresql"))
    assert "NOT LIKE" not in str(parse_where("a LIKE 'x%'", table.c, dialect="postgresql"))
