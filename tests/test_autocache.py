"""Automatic caching, steps 2 and 3 (issue 18): with ``[server] caching = "auto"`` the plain
source reads SQL makes are kept as slices by benefit (:mod:`ldw.engine.slices`), and a read whose
columns and rows a slice holds (:mod:`ldw.logical.implies`) is answered from it with no source
query; under the table's refresh policy, within ``memory_limit``, per policy fingerprint.
"""

from __future__ import annotations

import getpass
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import POSTGRES_URL, ServerHandle

import ldw
from ldw.logical.implies import implies
from ldw.storage import MEMORY

pytestmark = pytest.mark.postgres


def _connect(tmp: Path, name: str, **settings: object) -> ldw.Warehouse:
    config = {"sources": {"pg": {"url": POSTGRES_URL}}}
    config.update(settings.pop("config", {}))  # type: ignore[arg-type]
    shm = tmp / f"{name}-shm"
    return ldw.connect(in_process=True, config=config, shm_dir=str(shm),
                       spill_dir=str(tmp / f"{name}-spill"),
                       **{"memory_limit": "256MiB", **settings})


def _sent(wh: ldw.Warehouse) -> int:
    return wh._engine.query_log.total  # every query sent to a source, counted by the engine


def _rows(wh: ldw.Warehouse, query: str) -> list[tuple]:
    return sorted(wh.sql(query).rows(), key=repr)


@pytest.fixture
def sales(pg_engine, pg_schema) -> str:
    """1,000 rows: a region, an amount (NULL every 7th), a day in Jan-Feb 2024, a note."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.sales (id int primary key, region text, "
                             "amount int, day date, note text)")
        conn.exec_driver_sql(
            f"insert into {pg_schema}.sales select g, (array['EMEA','APAC','LATAM'])"
            "[mod(g, 3) + 1], case when mod(g, 7) = 0 then null else mod(g, 50) end, "
            "date '2024-01-01' + mod(g, 60), 'n' || g from generate_series(1, 1000) g")
    return f"pg.{pg_schema}.sales"


@pytest.fixture
def pair(tmp_path, sales) -> Iterator[tuple[ldw.Warehouse, ldw.Warehouse]]:
    """An auto-caching warehouse and a manual one (the no-cache run to compare with)."""
    auto, manual = _connect(tmp_path, "auto", caching="auto"), _connect(tmp_path, "manual")
    yield auto, manual
    auto.close()
    manual.close()


def test_the_setting_is_checked_and_manual_by_default(tmp_path, sales):
    with pytest.raises(ldw.ConfigError, match="caching must be"):
        _connect(tmp_path, "bad", caching="sometimes")
    wh = _connect(tmp_path, "default")
    try:
        for _ in range(3):
            wh.sql(f"SELECT sum(amount) AS s FROM {sales} WHERE amount > 10")
        assert wh.status()["slices"] == []  # manual: nothing is kept by itself
        assert wh.explain(f"SELECT sum(amount) FROM {sales} WHERE amount > 10"
                          ).relations[0]["read"] == "source"
    finally:
        wh.close()


def test_an_implied_read_is_answered_from_a_slice_with_no_source_query(pair, sales):
    auto, manual = pair
    first = f"SELECT region, sum(amount) AS s FROM {sales} WHERE amount > 10 GROUP BY 1"
    _rows(auto, first)
    assert auto.status()["slices"] == []  # read once: not kept
    _rows(auto, first)
    (kept,) = auto.status()["slices"]
    assert kept["table"] == sales and kept["columns"] == ["amount", "region"]
    assert kept["conditions"] == ["amount > 10"] and kept["hits"] == 0
    assert kept["rows"] == sum(1 for g in range(1, 1001) if g % 7 and g % 50 > 10)
    assert kept["bytes"] > 0 and auto.status()["used_bytes"] >= kept["bytes"]

    query = f"SELECT count(*) AS n, sum(amount) AS s FROM {sales} " \
            "WHERE amount > 20 AND region = 'EMEA'"
    sent = _sent(auto)
    assert _rows(auto, query) == _rows(manual, query)
    assert _sent(auto) == sent  # zero source queries
    (relation,) = auto.explain(query).relations
    assert relation["read"] == "slice" and relation["sql"] == []
    assert relation["slice"]["slice"] == kept["slice"]
    assert "automatically cached slice" in str(auto.explain(query))
    (after,) = auto.status()["slices"]
    assert after["hits"] == 1 and after["saved_seconds"] > 0


# (query the slice is made of, a query it answers, a query it does not)
CASES = {
    "range": ("amount > 10", "amount BETWEEN 15 AND 30", "amount > 5"),
    "range-bounds": ("amount >= 10", "amount > 10 AND amount <= 12", "amount >= 9.5"),
    "in-list": ("region IN ('EMEA', 'APAC')", "region = 'EMEA'", "region IN ('EMEA', 'LATAM')"),
    "null": ("amount IS NOT NULL", "amount = 7", "amount IS NULL"),
    "comparison-vs-null": ("amount < 40", "amount IN (1, 2, 3)", "amount IS NULL OR amount < 5"),
    "dates": ("day >= DATE '2024-01-10'",
              "day BETWEEN DATE '2024-02-01' AND DATE '2024-02-10'",
              "day > DATE '2024-01-05'"),
    "two-columns": ("amount > 10 AND region = 'APAC'",
                    "region = 'APAC' AND amount > 30 AND day < DATE '2024-02-01'",
                    "amount > 30"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_ranges_in_lists_nulls_and_dates_give_the_no_cache_answers(pair, sales, case):
    auto, manual = pair
    held, implied, not_implied = CASES[case]
    make = f"SELECT region, amount, day FROM {sales} WHERE {held}"
    for _ in range(2):
        auto.sql(make)
    assert len(auto.status()["slices"]) == 1
    for where, from_slice in ((implied, True), (not_implied, False), (held, True)):
        query = (f"SELECT region, count(*) AS n, sum(amount) AS s, min(day) AS d FROM {sales} "
                 f"WHERE {where} GROUP BY region")
        sent = _sent(auto)
        assert _rows(auto, query) == _rows(manual, query), where
        assert (_sent(auto) == sent) is from_slice, where
    # a column the slice does not hold: read from the source
    sent = _sent(auto)
    query = f"SELECT count(note) AS n FROM {sales} WHERE {implied}"
    assert _rows(auto, query) == _rows(manual, query)
    assert _sent(auto) == sent + 1


def test_a_limit_a_self_join_and_a_join_are_answered_right(pair, sales):
    auto, manual = pair
    for _ in range(2):  # every row and column (in another order): serves any read
        auto.sql(f"SELECT note, day, amount, region, id FROM {sales}")
    sent = _sent(auto)
    star = f"SELECT * FROM {sales} WHERE id < 5 ORDER BY id"
    assert auto.sql(star).columns == manual.sql(star).columns == [
        "id", "region", "amount", "day", "note"]
    queries = [star,f"SELECT count(*) AS n FROM (SELECT id FROM {sales} LIMIT 5) t",
               f"SELECT a.id, b.id AS other FROM {sales} a JOIN {sales} b ON a.id = b.id + 1 "
               "WHERE a.amount = 3 AND b.region = 'APAC'",
               f"SELECT region, count(*) AS n FROM {sales} WHERE amount IS NULL GROUP BY 1"]
    for query in queries:
        assert _rows(auto, query) == _rows(manual, query), query
    assert _sent(auto) == sent


def test_the_implication_rules():
    def atom(op: str, *values: object) -> dict:
        kinds = {int: "int", str: "str"}
        return {"op": op, "args": [{"col": "x"}, *({"lit": v, "type": kinds[type(v)]}
                                                  for v in values)]}

    def rows(*nodes: dict) -> tuple:
        return (nodes,)

    assert implies(rows(atom("gt", 20)), rows(atom("gt", 10)))
    assert implies(rows(atom("gt", 10)), rows(atom("ge", 10)))
    assert not implies(rows(atom("ge", 10)), rows(atom("gt", 10)))
    assert implies(rows(atom("eq", 3)), rows(atom("ne", 5)))
    assert implies(rows(atom("ge", 1), atom("le", 1)), rows(atom("eq", 1)))
    assert not implies(rows(atom("gt", "b")), rows(atom("gt", "a")))  # string order: collation
    assert not implies(rows(atom("is_null")), rows(atom("lt", 100)))   # NULL passes no compare
    assert implies(rows(atom("lt", 100)), rows(atom("is_not_null")))
    assert implies((rows(atom("eq", 1))[0], rows(atom("eq", 2))[0]), rows(atom("is_in", 1, 2)))
    assert not implies((rows(atom("eq", 1))[0], rows(atom("eq", 3))[0]),
                       rows(atom("is_in", 1, 2)))
    assert implies(rows(atom("eq", 1)), None) and not implies(None, rows(atom("eq", 1)))


@pytest.fixture
def governed(tmp_path, sales, pg_schema) -> Iterator[ServerHandle]:
    """analysts read sales whole; auditors through a row filter and a mask."""
    policy = (f'[policies."{sales}"]\nallow_roles = ["analyst", "auditor"]\n'
              "row_filter.auditor = \"region = 'EMEA'\"\n"
              "columns.note = { mask = \"redact\", exempt_roles = [\"analyst\"] }\n")
    handle = ServerHandle(tmp_path, extra_toml=policy, caching="auto").start()
    yield handle
    handle.stop()


def test_a_slice_serves_only_its_policy_fingerprint(governed, sales):
    ana, carl = governed.remote("ana", "analyst"), governed.remote("carl", "auditor")
    query = f"SELECT region, count(*) AS n, min(note) AS m FROM {sales} WHERE amount > 10 " \
            "GROUP BY 1 ORDER BY 1"
    for _ in range(2):
        whole = ana.sql(query).rows()
    assert [s["table"] for s in ana.status()["slices"]] == [sales]
    assert ana.explain(query).relations[0]["read"] == "slice"
    assert carl.status()["slices"] == []  # another fingerprint: not his to see or use
    assert carl.explain(query).relations[0]["read"] == "source"
    filtered = carl.sql(query).rows()
    assert [r[0] for r in filtered] == ["EMEA"] and filtered[0][2] == "***"
    assert filtered[0][1] == dict((r[0], r[1]) for r in whole)["EMEA"]
    carl.sql(query)  # his own slice now, under his fingerprint
    assert carl.explain(query).relations[0]["read"] == "slice"
    assert carl.sql(query).rows() == filtered and ana.sql(query).rows() == whole
    assert len(governed.local().status()["slices"]) == 2  # the admin sees both
    assert "slices     2 cached automatically" in governed.cli("server", "status").stdout


def test_memory_stays_under_the_limit_and_datasets_win(tmp_path, pg_engine, pg_schema):
    """A workload of many slices under a 2 MiB limit: used bytes, sampled while it runs, never
    pass the limit; slices make room for each other by benefit and for datasets (dropped, never
    spilled); a pinned dataset stays in memory."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.wide (id int, grp int, payload text)")
        conn.exec_driver_sql(f"insert into {pg_schema}.wide select g, mod(g, 10), "
                             "repeat('x', 40) || g from generate_series(1, 40000) g")
    table = f"pg.{pg_schema}.wide"
    wh = _connect(tmp_path, "small", caching="auto", memory_limit="2MiB")
    engine = wh._engine
    limit = engine.store.memory_limit
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], engine.store.used_bytes())
            stop.wait(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        pinned = wh.map("pinned", table, where="id <= 4000", pin=True)
        pinned.cache()
        kept = set()
        for start in range(0, 39000, 3000):
            query = f"SELECT id, payload FROM {table} WHERE id > {start} AND id <= {start + 3000}"
            for _ in range(2):
                assert wh.sql(f"SELECT count(*) AS n FROM ({query})")["n"].item() == 3000
            kept |= {s["slice"] for s in wh.status()["slices"]}
        before = len(wh.status()["slices"])
        assert len(kept) > before >= 1  # some were dropped for others
        assert pinned.info()["tier"] == "memory"
        other = wh.map("other", table, where="id > 20000")
        other.cache()  # a dataset needs the room slices hold: they go, it stays in memory
        assert other.info()["tier"] == "memory" and pinned.info()["tier"] == "memory"
        assert len(wh.status()["slices"]) < before
        assert not list(Path(engine.settings.spill_dir).rglob("~slices"))  # never spilled
    finally:
        stop.set()
        sampler.join()
        wh.close()
    assert 0 < peak[0] <= limit


def test_a_memory_only_table_keeps_its_slices_in_memory(tmp_path, sales):
    user = getpass.getuser()
    wh = _connect(tmp_path, "memonly", caching="auto", config={
        "policies": {sales: {"allow_roles": ["analyst"], "memory_only": True}},
        "users": {user: {"roles": ["analyst"]}}})
    try:
        query = f"SELECT count(*) AS n FROM {sales} WHERE amount > 10"
        for _ in range(2):
            wh.sql(query)
        (kept,) = wh.status()["slices"]
        engine = wh._engine
        slice_ = engine.federation.slices._slices[kept["slice"]]
        assert slice_.version.tier == "memory"
        assert Path(slice_.version.path).is_relative_to(engine.store.roots[MEMORY])
        engine.make_room(1)  # room needed: the slice is dropped, never written to disk
        assert wh.status()["slices"] == []
        assert not list(Path(engine.settings.spill_dir).rglob("~slices"))
    finally:
        wh.close()


def _settled(pg_engine, schema: str, table: str, rows: int) -> None:
    """Wait (at most 10 s) until PostgreSQL's table statistics count ``rows`` rows written
    (inserted, updated, deleted): it publishes them up to a second after a commit, and they are
    the change counters a check compares."""
    query = ("select coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) "
             "from pg_stat_user_tables "
             "where schemaname = %s and relname = %s")
    for _ in range(100):
        with pg_engine.connect() as conn:
            if conn.exec_driver_sql(query, (schema, table)).scalar() >= rows:
                return
        time.sleep(0.1)


def test_on_access_a_changed_source_is_never_served_from_a_stale_slice(
        tmp_path, sales, pg_engine, pg_schema):
    _settled(pg_engine, pg_schema, "sales", 1000)
    wh = _connect(tmp_path, "fresh", caching="auto", freshness_interval="0s",
                  config={"refresh": {f"pg.{pg_schema}.*": "on_access"}})
    try:
        query = f"SELECT count(*) AS n, sum(amount) AS s FROM {sales} WHERE amount > 10"
        before = [wh.sql(query).row(0) for _ in range(2)][-1]
        (kept,) = wh.status()["slices"]
        sent = _sent(wh)
        assert wh.sql(query).row(0) == before and _sent(wh) == sent  # unchanged: the slice
        with pg_engine.begin() as conn:
            conn.exec_driver_sql(f"insert into {pg_schema}.sales values "
                                 "(5001, 'EMEA', 45, date '2024-03-01', 'new')")
        after = wh.sql(query).row(0)
        assert after == (before[0] + 1, before[1] + 45)  # the new row, from the source
        assert _sent(wh) == sent + 1
        assert kept["slice"] not in {s["slice"] for s in wh.status()["slices"]}
        with pg_engine.begin() as conn:  # rows moving into the slice's range: seen too
            conn.exec_driver_sql(f"update {pg_schema}.sales set amount = 49 where amount = 3")
        moved = sum(1 for g in range(1, 1001) if g % 7 and g % 50 == 3)
        now = (after[0] + moved, after[1] + 49 * moved)
        assert wh.sql(query).row(0) == now
        # a change that keeps the slice's row count: the table's change counters tell
        _settled(pg_engine, pg_schema, "sales", 1001 + moved)
        for _ in range(2):
            assert wh.sql(query).row(0) == now
        sent = _sent(wh)
        assert wh.sql(query).row(0) == now and _sent(wh) == sent  # a slice read since settled
        with pg_engine.begin() as conn:
            conn.exec_driver_sql(f"update {pg_schema}.sales set amount = 21 where amount = 20")
        bumped = sum(1 for g in range(1, 1001) if g % 7 and g % 50 == 20)
        _settled(pg_engine, pg_schema, "sales", 1001 + moved + bumped)
        assert wh.sql(query).row(0) == (now[0], now[1] + bumped)
        assert _sent(wh) == sent + 1
    finally:
        wh.close()


def test_every_drops_slices_older_than_the_period(tmp_path, sales, pg_schema):
    wh = _connect(tmp_path, "every", caching="auto",
                  config={"refresh": {f"pg.{pg_schema}.*": "every 1s"}})
    try:
        query = f"SELECT count(*) AS n FROM {sales} WHERE amount > 10"
        for _ in range(2):
            wh.sql(query)
        (kept,) = wh.status()["slices"]
        time.sleep(1.1)  # the slice is now older than its refresh period
        sent = _sent(wh)
        wh.sql(query)
        assert _sent(wh) == sent + 1  # read from the source again
        assert kept["slice"] not in {s["slice"] for s in wh.status()["slices"]}
    finally:
        wh.close()


@pytest.fixture
def lines(pg_engine, pg_schema, sales) -> str:
    """20,000 lines, 20 per sale id (sales has 1,000 ids): joining filtered sales narrows it."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.lines (id int, qty int)")
        conn.exec_driver_sql(f"insert into {pg_schema}.lines select mod(g, 1000) + 1, g "
                             "from generate_series(1, 20000) g")
        conn.exec_driver_sql(f"analyze {pg_schema}.lines")
    return f"pg.{pg_schema}.lines"


def test_a_repeated_join_is_answered_from_slices_of_its_key_sets(pair, sales, lines, pg_engine,
                                                                 pg_schema):
    """lines is read narrowed to the keys of the filtered sales (a dynamic filter): that read
    is a slice of those very keys, so the join again sends nothing to the source, and the same
    join over other keys (the partner's rows changed) reads the source, with the right rows."""
    auto, manual = pair
    join = (f"SELECT s.region, sum(l.qty) AS q FROM {lines} l JOIN {sales} s ON l.id = s.id "
            "WHERE s.amount = 7 GROUP BY 1")
    for _ in range(2):
        assert _rows(auto, join) == _rows(manual, join)
    kept = {s["table"]: s for s in auto.status()["slices"]}
    assert set(kept) == {sales, lines}
    assert any("keys of" in c for c in kept[lines]["conditions"])
    assert kept[lines]["rows"] == 20 * sum(1 for g in range(1, 1001) if g % 7 and g % 50 == 7)
    sent = _sent(auto)
    assert _rows(auto, join) == _rows(manual, join)
    assert _sent(auto) == sent  # zero source queries
    assert {r["read"] for r in auto.explain(join, analyze=True).relations} == {"slice"}

    other = join.replace("s.amount = 7", "s.amount = 8")  # other keys: the slice does not serve
    assert _rows(auto, other) == _rows(manual, other)
    relations = {r["relation"]: r for r in auto.explain(other, analyze=True).relations}
    assert relations[lines]["read"] == "source"  # its second read: kept only now
    assert relations[lines]["rows"] == 20 * sum(1 for g in range(1, 1001)
                                                if g % 7 and g % 50 == 8)


def test_reads_of_several_shapes_are_answered_by_one_wider_slice(pair, sales):
    """Three reads of sales with different conditions: the third reads every row of the
    columns the reads used and keeps that, so a fourth condition needs no source query; the
    query's own conditions still apply to what was read."""
    auto, manual = pair
    shapes = ["amount > 40", "amount BETWEEN 3 AND 9", "day < DATE '2024-01-20'"]
    for where in shapes:
        query = f"SELECT region, sum(amount) AS s FROM {sales} WHERE {where} GROUP BY 1"
        assert _rows(auto, query) == _rows(manual, query)
    (kept,) = auto.status()["slices"]
    assert kept["conditions"] == [] and kept["rows"] == 1000
    assert kept["columns"] == ["amount", "day", "region"]
    query = f"SELECT count(*) AS n FROM {sales} WHERE amount IS NULL AND region = 'APAC'"
    sent = _sent(auto)
    assert _rows(auto, query) == _rows(manual, query)
    assert _sent(auto) == sent
    note = f"SELECT note FROM {sales} WHERE amount > 40"  # a column never read: the source
    assert _rows(auto, note) == _rows(manual, note)
    assert _sent(auto) > sent


def test_a_partner_served_by_a_wider_slice_narrows_the_join_by_its_own_rows(pair, sales, lines):
    """sales is answered from a slice of amount > 5 (more rows than amount = 7 keeps); the keys
    sent to lines are those of the rows amount = 7 keeps, as if sales had been read itself."""
    auto, manual = pair
    for _ in range(2):
        auto.sql(f"SELECT id, amount FROM {sales} WHERE amount > 5")
    join = (f"SELECT sum(l.qty) AS q FROM {lines} l JOIN {sales} s ON l.id = s.id "
            "WHERE s.amount = 7")
    assert _rows(auto, join) == _rows(manual, join)
    relations = {r["relation"]: r for r in auto.explain(join, analyze=True).relations}
    assert relations[sales]["read"] == "slice"
    assert relations[lines]["rows"] == 20 * sum(1 for g in range(1, 1001)
                                                if g % 7 and g % 50 == 7)
