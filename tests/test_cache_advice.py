"""Automatic caching, first step: the server observes what SQL reads from the sources (per table,
policy fingerprint, columns and pushed conditions, with the measured source cost) and advises
which slices to cache by source seconds saved per byte (issue 18, items 1 and 5).
"""

from __future__ import annotations

import pytest
from conftest import ServerHandle

from ldw.engine.observe import HALF_LIFE, Observations, Shape


def _shape(columns: str, conditions: str = "", table: str = "pg.s.t", fp: str = "f") -> Shape:
    return Shape(table, fp, frozenset(columns.split()), frozenset(filter(None,
                                                                         conditions.split(";"))))


def test_a_slice_serves_reads_with_fewer_columns_and_more_conditions():
    wide = _shape("a b c", "a > 1")
    assert wide.serves(_shape("a b", "a > 1;b = 2"))
    assert wide.serves(_shape("c", "a > 1"))
    assert not wide.serves(_shape("a d", "a > 1"))            # a column it does not hold
    assert not wide.serves(_shape("a", ""))                   # rows it does not hold
    assert not wide.serves(_shape("a", "a > 1", fp="other"))  # another policy fingerprint
    assert not wide.serves(_shape("a", "a > 1", table="pg.s.u"))


def test_a_dear_read_may_be_kept_the_first_time_a_cheap_one_the_second():
    """Admission (automatic caching): a read that cost ADMIT_SECONDS or more is worth keeping
    at once (reading it again would cost as much again); a cheap one once it repeats."""
    from ldw.engine.slices import ADMIT_AFTER, ADMIT_SECONDS, Slices

    observed = Observations()
    slices = Slices(None, None, None, observed)  # type: ignore[arg-type]  (admission rules only)
    cheap, dear = _shape("a"), _shape("b")
    assert slices._may_keep(cheap)  # never read: it may be dear, so its counters are taken
    observed.record(cheap, seconds=0.01, rows=10, nbytes=100)
    observed.record(dear, seconds=ADMIT_SECONDS * 2, rows=10, nbytes=100)
    assert slices._worth(cheap) is None and slices._worth(dear) == pytest.approx(
        ADMIT_SECONDS * 2)
    assert slices._may_keep(cheap) is (ADMIT_AFTER <= 2)
    for _ in range(ADMIT_AFTER - 1):
        observed.record(cheap, seconds=0.01, rows=10, nbytes=100)
    assert slices._worth(cheap) == pytest.approx(0.01 * ADMIT_AFTER)


def test_advice_ranks_by_seconds_saved_per_byte_within_the_budget():
    now = [1000.0]
    seen = Observations(clock=lambda: now[0])
    small, big, rare = _shape("k v", table="pg.s.dim"), _shape("a b c"), _shape("x", "x = 1")
    for _ in range(10):
        seen.record(small, seconds=0.5, rows=100, nbytes=1_000)        # 5 s per 1 kB
    seen.record(big, seconds=40.0, rows=10**6, nbytes=1_000_000)      # 40 s per 1 MB
    seen.record(rare, seconds=0.1, rows=10, nbytes=10**9)             # 0.1 s per 1 GB
    advice = seen.advice(budget=2_000_000)
    assert [a["table"] for a in advice] == ["pg.s.dim", "pg.s.t"]      # rare does not fit
    assert advice[0]["reads_served"] == 10 and advice[0]["source_seconds"] == 5.0
    assert seen.advice(budget=500_000) == advice[:1]

    now[0] += HALF_LIFE  # an hour later the same reads count half
    aged = {a["table"]: a["saved_seconds_aged"] for a in seen.advice(budget=2_000_000)}
    assert aged == {"pg.s.dim": 2.5, "pg.s.t": 20.0}


def test_a_slice_that_serves_another_is_chosen_instead_of_both():
    seen = Observations()
    wide, narrow = _shape("a b c"), _shape("a", "a > 1")
    seen.record(wide, seconds=2.0, rows=100, nbytes=300)
    for _ in range(5):
        seen.record(narrow, seconds=1.0, rows=10, nbytes=100)
    advice = seen.advice(budget=10_000)
    # narrow alone: 5 s / 100 B; wide serves both: 7 s / 300 B; narrow first, and wide too
    # (it serves the wide reads narrow cannot); a slice served by a chosen one is skipped
    assert [a["columns"] for a in advice] == [["a"], ["a", "b", "c"]]
    seen2 = Observations()
    for _ in range(5):
        seen2.record(wide, seconds=2.0, rows=100, nbytes=300)
    seen2.record(narrow, seconds=1.0, rows=10, nbytes=100)
    assert [a["columns"] for a in seen2.advice(budget=10_000)] == [["a", "b", "c"]]


@pytest.mark.postgres
def test_an_or_of_branches_is_one_condition_so_no_branch_claims_to_serve_it(governed,
                                                                           pg_schema):
    """A self-join reads its table once with the OR of both occurrences' conditions: a slice
    of one branch holds fewer rows than that read and must not be advised as serving it."""
    table = f"pg.{pg_schema}.sales"
    ana = governed.remote("ana", "analyst")
    ana.sql(f"SELECT id, region, amount FROM {table} WHERE amount > 40")
    ana.sql(f"SELECT count(*) AS n FROM {table} a JOIN {table} b ON a.id = b.id + 1 "
            "WHERE a.amount > 40 AND b.region = 'EMEA'")
    served = {tuple(r["conditions"]): r["reads_served"]
              for r in ana.cache_advice().iter_rows(named=True)}
    assert served == {("amount > 40",): 1, ("(amount > 40) OR (region = 'EMEA')",): 1}


@pytest.fixture
def governed(tmp_path, pg_engine, pg_schema):
    """sales readable by analysts whole and by auditors through a row filter (two policy
    fingerprints on one table)."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.sales (id int primary key, "
                             "region text, amount int, note text)")
        conn.exec_driver_sql(f"insert into {pg_schema}.sales select g, (array['EMEA','APAC'])"
                             "[mod(g, 2) + 1], mod(g, 50), 'n' || g from generate_series(1, 500) g")
        conn.exec_driver_sql(f"create table {pg_schema}.lines (id int, qty int)")
        conn.exec_driver_sql(f"insert into {pg_schema}.lines select mod(g, 500) + 1, g "
                             "from generate_series(1, 20000) g")
        conn.exec_driver_sql(f"analyze {pg_schema}.lines")
    policy = (f'[policies."pg.{pg_schema}.sales"]\nallow_roles = ["analyst", "auditor"]\n'
              "row_filter.auditor = \"region = 'EMEA'\"\n"
              f'[policies."pg.{pg_schema}.lines"]\nallow_roles = ["analyst"]\n')
    handle = ServerHandle(tmp_path, extra_toml=policy).start()
    yield handle
    handle.stop()


@pytest.mark.postgres
def test_sql_reads_are_observed_and_advised_per_policy_fingerprint(governed, pg_schema):
    table = f"pg.{pg_schema}.sales"
    ana = governed.remote("ana", "analyst")
    carl = governed.remote("carl", "auditor")
    assert ana.cache_advice().height == 0
    for _ in range(3):
        ana.sql(f"SELECT region, sum(amount) AS s FROM {table} WHERE amount > 10 GROUP BY 1")
    ana.sql(f"SELECT * FROM {table} LIMIT 5")  # a limited read is not a slice: not observed
    advice = ana.cache_advice()
    assert advice["table"].to_list() == [table]
    top = advice.row(0, named=True)
    assert top["reads_served"] == 3 and sorted(top["columns"]) == ["amount", "region"]
    assert any("amount > 10" in c for c in top["conditions"])
    assert top["bytes"] > 0 and top["rows"] == sum(1 for g in range(1, 501) if g % 50 > 10)
    assert top["source_seconds"] > 0

    assert carl.cache_advice().height == 0  # another fingerprint: ana's reads are not his
    carl.sql(f"SELECT region, sum(amount) AS s FROM {table} WHERE amount > 10 GROUP BY 1")
    mine = carl.cache_advice()
    assert mine["reads_served"].to_list() == [1]
    assert mine["rows"].to_list()[0] < top["rows"]  # his row filter: fewer rows

    owner = governed.local()  # the server's owner (admin) sees every fingerprint's reads
    everyone = owner.cache_advice()
    assert sorted(everyone["reads_served"].to_list()) == [1, 3]


@pytest.mark.postgres
def test_reads_narrowed_by_a_join_partner_are_not_observed(governed, pg_schema):
    """lines waits for the filtered sales and reads only their ids (a dynamic filter): its
    rows depend on the other relation, so that read is not a slice of lines."""
    ana = governed.remote("ana", "analyst")
    plan = ana.explain(f"SELECT sum(l.qty) AS q FROM pg.{pg_schema}.lines l "
                       f"JOIN pg.{pg_schema}.sales s ON l.id = s.id WHERE s.amount = 7",
                       analyze=True)
    lines = next(r for r in plan["relations"] if r["relation"].endswith("lines"))
    assert any("keys of" in c for c in lines["pushed"])  # the dynamic filter was used
    assert ana.cache_advice()["table"].to_list() == [f"pg.{pg_schema}.sales"]
