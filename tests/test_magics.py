"""%ldw / %%ldw through a real IPython InteractiveShell, against real PostgreSQL and SQLite."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import sqlalchemy as sa
from conftest import POSTGRES_URL
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from traitlets.config import Config

import ldw
from ldw.extension import (
    Details,
    LdwMagics,
    Listing,
    ProgressReporter,
    load_ipython_extension,
)
from ldw.extension.verbs import VERBS, find_parameters

CANARY = "pw-canary-7f3a9c"  # the password of the `guarded` source: must never be shown


@pytest.fixture(scope="session")
def shell(tmp_path_factory: pytest.TempPathFactory) -> InteractiveShell:
    os.environ.setdefault("IPYTHONDIR", str(tmp_path_factory.mktemp("ipython")))
    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=config)
    ip.run_line_magic("load_ext", "ldw.extension")
    return ip


@pytest.fixture
def magics(shell: InteractiveShell) -> LdwMagics:
    found = shell.magics_manager.registry["LdwMagics"]
    yield found
    found.close()
    shell.reset(new_session=False)


@dataclass
class Ran:
    result: object
    error: BaseException | None
    stdout: str
    stderr: str
    outputs: list


def run(shell: InteractiveShell, source: str) -> Ran:
    """Run a cell like a notebook does; collect what it printed and displayed."""
    with capture_output() as cap:
        result = shell.run_cell(source)
    return Ran(result.result, result.error_in_exec, cap.stdout, cap.stderr, cap.outputs)


def usage_error(shell: InteractiveShell, source: str) -> str:
    """Run a cell that must fail with a one-line UsageError; return the message."""
    ran = run(shell, source)
    assert isinstance(ran.error, UsageError), (ran.error, ran.stdout, ran.stderr)
    message = str(ran.error)
    assert "\n" not in message and message
    assert ran.stderr.strip() == f"UsageError: {message}"  # no traceback
    return message


def write_config(folder: Path, sources: str) -> str:
    path = folder / "ldw.toml"
    path.write_text(f'[server]\nshm_dir = "{folder}/shm"\nspill_dir = "{folder}/spill"\n'
                    f'state_dir = "{folder}/state"\nbatch_rows = 1000\n\n{sources}')
    return str(path)


@pytest.fixture
def lite_config(tmp_path: Path) -> str:
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table items (id integer primary key, name text, price real)")
        conn.executemany("insert into items values (?, ?, ?)",
                         [(i, f"item{i}", i * 0.5) for i in range(1, 1001)])
    return write_config(tmp_path, f'[sources.lite]\nurl = "sqlite:///{db}"\n')


@pytest.fixture
def pg_config(tmp_path: Path, pg_engine, pg_schema: str, monkeypatch) -> str:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create table {pg_schema}.orders (id bigint primary key, cust int, "
            "price numeric(12,2), status char(3), \"x<script>\" text)")
        conn.exec_driver_sql(
            f"insert into {pg_schema}.orders select i, mod(i, 7), (i * 1.25)::numeric(12,2), "
            "case when mod(i, 2) = 0 then 'ab' else 'xyz' end, 'v' || i "
            "from generate_series(1, 5000) i")
    monkeypatch.setenv("LDW_TEST_GUARDED_PW", CANARY)
    return write_config(tmp_path, (
        f'[sources.pg]\nurl = "{POSTGRES_URL}"\n\n'
        f'[sources.guarded]\nurl = "{POSTGRES_URL}"\npassword_env = "LDW_TEST_GUARDED_PW"\n\n'
        '[sources.down]\nurl = "postgresql://ldw@127.0.0.1:9/nowhere"\n'
        'password_env = "LDW_TEST_GUARDED_PW"\n'))


def connect(shell: InteractiveShell, config: str) -> None:
    ran = run(shell, f"%ldw connect --in-process --config {config}")
    assert ran.error is None, ran.stderr


# -- help --------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["%ldw --help", "%ldw", "%ldw -h", "%ldw help"])
def test_overview_lists_every_verb(shell, magics, line):
    ran = run(shell, line)
    assert ran.error is None and ran.result is None
    for verb in VERBS:
        assert f"%ldw {verb} " in ran.stdout or f"%%ldw {verb} " in ran.stdout


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(shell, magics, verb):
    ran = run(shell, f"%ldw {verb} --help")
    assert ran.error is None, ran.stderr
    assert f"usage: %ldw {verb}" in ran.stdout and VERBS[verb].summary.split()[0] in ran.stdout
    assert run(shell, f"%ldw help {verb}").stdout == ran.stdout


def test_magic_docstring_is_the_overview(shell, magics):
    assert "%ldw VERB" in LdwMagics.ldw.__doc__ and "browse" in LdwMagics.ldw.__doc__


# -- connecting and the catalog -------------------------------------------------------------------

def test_verbs_need_a_connection(shell, magics):
    message = usage_error(shell, "%ldw ls")
    assert "not connected" in message and "%ldw connect" in message


def test_sqlite_catalog_map_cache_and_listings(shell, magics, lite_config):
    ran = run(shell, f"%ldw connect --in-process --config {lite_config} --as wh")
    assert ran.error is None and "1 source(s): lite" in ran.stdout
    assert isinstance(shell.user_ns["wh"], ldw.Warehouse)

    sources = run(shell, "%ldw sources").result
    assert isinstance(sources, Listing) and sources.frame["name"].to_list() == ["lite"]
    assert run(shell, "%ldw tables lite").result.frame["table"].to_list() == ["items"]
    described = run(shell, "%ldw describe lite.items").result
    assert described.frame["name"].to_list() == ["id", "name", "price"]

    ran = run(shell, "%ldw map items = lite.items --where 'price > 100' --columns id,price")
    assert ran.error is None, ran.stderr
    items = shell.user_ns["items"]
    assert ran.result is items and isinstance(items, ldw.Dataset) and items.state == "mapped"
    assert items.schema.names == ["id", "price"]

    ran = run(shell, "%ldw cache items")
    assert ran.error is None and items.state == "cached"
    assert "cached" in ran.stdout and "800 rows" in ran.stdout  # the final progress line
    listing = run(shell, "%ldw ls").result
    assert listing.frame.filter(pl.col("name") == "items")["rows"].item() == 800
    assert "800" in listing._repr_html_() and "cached" in repr(listing)


def test_connect_use_adopts_a_warehouse(shell, magics, lite_config):
    wh = ldw.connect(in_process=True, config=lite_config)
    try:
        shell.user_ns["mine"] = wh
        assert run(shell, "%ldw connect --use mine").error is None
        assert magics.warehouse is wh
        run(shell, "%ldw map it = lite.items --limit 3")
        assert wh.dataset("it").head(5).height == 3
        magics.close()  # not ours: stays open
        assert wh.datasets().height == 1
        shell.user_ns["nope"] = 42
        assert "is not an ldw.Warehouse" in usage_error(shell, "%ldw connect --use nope")
        assert "takes no URL" in usage_error(shell, "%ldw connect --use mine --in-process")
    finally:
        wh.close()


def test_reconnecting_closes_the_previous_warehouse(shell, magics, lite_config):
    connect(shell, lite_config)
    first = magics.warehouse
    run(shell, "%ldw map a = lite.items")
    connect(shell, lite_config)
    assert magics.warehouse is not first
    assert run(shell, "%ldw ls").result.frame.height == 0


# -- map, cache, refresh, evict against PostgreSQL ------------------------------------------------

@pytest.mark.postgres
def test_map_line_form_with_every_option(shell, magics, pg_config, pg_schema):
    connect(shell, pg_config)
    ran = run(shell, f'%ldw map orders = pg.{pg_schema}.orders --columns id,price,status '
                     f'--where "price > 100 AND status = \'ab\'" --limit 1000 '
                     f"--ttl 8h --pin --cache")
    assert ran.error is None, ran.stderr
    orders = shell.user_ns["orders"]
    info = orders.info()
    assert info["state"] == "cached" and info["rows"] == 1000
    assert info["pinned"] and info["ttl"] == 8 * 3600
    assert orders.to_polars()["status"].unique().to_list() == ["ab"]
    assert "1,000 rows" in ran.stdout
    ran = run(shell, f"%ldw map parts = pg.{pg_schema}.orders --where 'id > 10' "
                     "--partition-on id --partitions 3 --cache")
    assert ran.error is None, ran.stderr
    assert shell.user_ns["parts"].to_polars()["id"].sort().to_list() == list(range(11, 5001))

    details = run(shell, "%ldw info orders").result
    assert isinstance(details, Details) and details.data["rows"] == 1000
    assert "status" in repr(details) and "&lt;" not in details._repr_html_()

    version = info["version"]
    assert run(shell, "%ldw refresh orders").error is None
    assert orders.info()["version"] != version
    assert run(shell, "%ldw evict orders").result.state == "evicted"
    assert run(shell, "%ldw cache orders").result.state == "cached"
    status = run(shell, "%ldw status").result
    assert isinstance(status, Details) and status.data["cached"] >= 1
    assert "memory_limit" in repr(status) and "GiB" in status._repr_html_()


@pytest.mark.postgres
def test_map_spellings_and_memory_only(shell, magics, pg_config, pg_schema):
    connect(shell, pg_config)
    for line in (f"o1=pg.{pg_schema}.orders", f"o2= pg.{pg_schema}.orders",
                 f"o3 =pg.{pg_schema}.orders --memory-only"):
        ran = run(shell, f"%ldw map {line} --limit 5")
        assert ran.error is None, ran.stderr
    assert shell.user_ns["o3"].info()["memory_only"] is True
    assert shell.user_ns["o1"].head(10).height == 5


@pytest.mark.postgres
def test_map_cell_form_maps_a_query(shell, magics, pg_config, pg_schema):
    connect(shell, pg_config)
    ran = run(shell, f"%%ldw map by_status --source pg --cache\n"
                     f"SELECT status, count(*) AS n FROM {pg_schema}.orders GROUP BY status")
    assert ran.error is None, ran.stderr
    frame = shell.user_ns["by_status"].to_polars().sort("status")
    assert frame["n"].to_list() == [2500, 2500]


@pytest.mark.postgres
def test_line_is_not_expanded_against_python_variables(shell, magics, pg_config, pg_schema):
    """`{x}`/`$x` are never substituted: Python values only as bound :name parameters."""
    connect(shell, pg_config)
    shell.user_ns["who"] = "ab"  # expanded, either predicate would match 2,500 rows
    for text in ("{who}", "$who"):
        ran = run(shell, f"%ldw map o = pg.{pg_schema}.orders --where \"status = '{text}'\"")
        assert ran.error is None, ran.stderr
        assert shell.user_ns["o"].to_polars().height == 0
    shell.user_ns["who"] = "ab' OR '1'='1"  # bound as a value: matches nothing
    ran = run(shell, f"%ldw map o = pg.{pg_schema}.orders --where \"status = :who\"")
    assert ran.error is None, ran.stderr
    assert shell.user_ns["o"].to_polars().height == 0
    shell.user_ns["who"] = "ab"
    run(shell, f"%ldw map o = pg.{pg_schema}.orders --where \"status = :who\"")
    assert shell.user_ns["o"].to_polars().height == 2500


def test_parameters_are_bound_values(shell, magics, lite_config):
    """``:name`` takes the value of a notebook variable as a bound parameter, never as text."""
    connect(shell, lite_config)
    shell.user_ns.update(lo=100, hi="x'; drop table items; --")
    ran = run(shell, "%ldw map it = lite.items --where 'price > :lo AND name <> :hi'")
    assert ran.error is None, ran.stderr
    filtered = shell.user_ns["it"].to_polars()
    assert filtered.height > 0 and filtered["price"].min() > 100
    run(shell, "%ldw map everything = lite.items")
    assert shell.user_ns["everything"].to_polars().height > filtered.height  # table intact
    assert "no such Python variable" in usage_error(
        shell, "%ldw map it = lite.items --where 'price > :undefined_here'")


def test_find_parameters_skips_literals_comments_and_casts():
    text = "a = :lo AND b::int > 2 AND c = ':no' /* :no */ AND d = :hi -- :no\n OR e = :lo"
    assert find_parameters(text) == ["lo", "hi"]
    assert find_parameters("arr[lo:hi] > 1") == []


# -- bad input: one line each ------------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.parametrize(("line", "expected"), [
    ("%ldw frobnicate", "unknown verb 'frobnicate'"),
    ("%ldw mpa o = pg.s.t", "did you mean 'map'"),
    ("%ldw map o pg.{s}.orders", "the '=' is missing"),
    ("%ldw map o =", "the table after '=' is missing"),
    ("%ldw map o = nosuch.s.t", "UnknownSource: no source named 'nosuch'"),
    ("%ldw map o = pg.{s}.nosuch", "UnknownTable"),
    ("%ldw map o = pg.{s}.orders --columns id,nosuch", "nosuch"),
    ("%ldw map o = pg.{s}.orders --where 'id > (select 1)'", "InvalidMapping"),
    ("%ldw map o = pg.{s}.orders --limit x", "argument --limit: 'x' is not a whole number"),
    ("%ldw map o = pg.{s}.orders --limit 0", "must be at least 1"),
    ("%ldw map o = pg.{s}.orders --partitions -2", "--partitions"),
    ("%ldw map o = pg.{s}.orders --columns id,,price", "empty name"),
    ("%ldw map o = pg.{s}.orders --frob", "unrecognized arguments: --frob"),
    ("%ldw map o = pg.{s}.orders --ttl soon", "ConfigError"),
    ("%ldw map o = pg.{s}.orders --where 'unbalanced", "check the quotes"),
    ("%ldw map 1st = pg.{s}.orders", "must be a Python identifier"),
    ("%ldw map class = pg.{s}.orders", "must be a Python identifier"),
    ("%ldw map o = pg.{s}.orders --source pg", "--source goes with SQL in a cell"),
    ("%%ldw map o\nSELECT 1", "--source is required"),
    ("%%ldw map o = pg.{s}.orders --source pg\nSELECT 1", "not '= TABLE'"),
    ("%%ldw map o --source pg\n  ", "the cell body is empty"),
    ("%%ldw ls\nSELECT 1", "%%ldw ls takes no cell body"),
    ("%ldw sql SELECT 1", "needs a cell"),
    ("%ldw tables nosuch", "UnknownSource"),
    ("%ldw tables pg.nosuch_schema", "UnknownTable"),
    ("%ldw describe pg", "InvalidMapping"),
    ("%ldw info nosuch", "UnknownDataset"),
    ("%ldw cache", "the following arguments are required: NAME"),
    ("%ldw evict nosuch", "UnknownDataset"),
    ("%ldw share", "required"),
    ("%ldw attach noslash", "must be OWNER/NAME"),
    ("%ldw audit --last zero", "not a whole number"),
    ("%ldw connect --as 9x --in-process", "must be a Python identifier"),
    ("%ldw connect --in-process --config /nonexistent/ldw.toml", "ConfigError"),
    ("%ldw tables down", "down"),
])
def test_bad_input_is_one_line(shell, magics, pg_config, pg_schema, line, expected):
    connect(shell, pg_config)
    message = usage_error(shell, line.replace("{s}", pg_schema))
    assert expected in message
    assert CANARY not in message and "postgresql://" not in message


# -- features arriving in the API: routed per DESIGN.md, refused while absent ----------------------

_FUTURE = [
    ("%ldw share it --with bob", ldw.Dataset, "share", "sharing"),
    ("%ldw attach alice/orders", ldw.Warehouse, "attach", "attaching shared datasets"),
    ("%ldw export it out", ldw.Dataset, "export", "export"),
    ("%ldw audit", ldw.Warehouse, "audit", "the audit log"),
    ("%%ldw sql\nSELECT 1", ldw.Warehouse, "sql", "SQL over datasets"),
]


@pytest.mark.parametrize(("line", "cls", "method", "feature"), _FUTURE)
def test_missing_api_is_refused_not_faked(shell, magics, lite_config, monkeypatch,
                                          line, cls, method, feature):
    monkeypatch.delattr(cls, method, raising=False)
    connect(shell, lite_config)
    run(shell, "%ldw map it = lite.items")
    message = usage_error(shell, line)
    assert message.startswith(f"{feature} is not available in this version of ldw")


def test_arriving_verbs_call_the_api_as_designed(shell, magics, lite_config, monkeypatch):
    """Routing only: recording stand-ins for the methods colleagues are adding right now."""
    calls = []

    def record(name, result=None):
        def method(self, *args, **kwargs):
            calls.append((name, args, kwargs))
            return result(self) if callable(result) else result
        return method

    frame = pl.DataFrame({"x": [1]})
    monkeypatch.setattr(ldw.Dataset, "share", record("share"), raising=False)
    monkeypatch.setattr(ldw.Dataset, "export", record("export", "exported"), raising=False)
    monkeypatch.setattr(ldw.Warehouse, "sql", record("sql", frame), raising=False)
    monkeypatch.setattr(ldw.Warehouse, "audit", record("audit", [{"user": "bob"}]),
                        raising=False)
    monkeypatch.setattr(ldw.Warehouse, "attach",
                        record("attach", lambda wh: wh.dataset("it")), raising=False)
    connect(shell, lite_config)
    run(shell, "%ldw map it = lite.items")

    assert "shared it with user bob" in run(shell, "%ldw share it --with bob").stdout
    assert "with role risk" in run(shell, "%ldw share it --role risk").stdout
    assert run(shell, "%ldw attach alice/it --as theirs").error is None
    assert shell.user_ns["theirs"].name == "it"
    assert run(shell, "%ldw export it out/it --partition-by a,b --partition-by c").result \
        == "exported"
    audit = run(shell, "%ldw audit --user bob --dataset it --last 5").result
    assert isinstance(audit, Listing) and audit.frame["user"].to_list() == ["bob"]
    ran = run(shell, "%%ldw sql -o res\nSELECT count(*) FROM it")
    assert ran.result is frame and shell.user_ns["res"] is frame
    assert calls == [
        ("share", ("bob",), {}), ("share", (), {"role": "risk"}),
        ("attach", ("alice/it",), {}),
        ("export", ("out/it",), {"partition_by": ["a", "b", "c"]}),
        ("audit", (), {"user": "bob", "dataset": "it", "limit": 5}),
        ("sql", ("SELECT count(*) FROM it",), {}),  # the cell body, stripped
    ]
    assert "must be a Python identifier" in usage_error(shell, "%%ldw sql -o 2x\nSELECT 1")
    assert "is empty" in usage_error(shell, "%%ldw sql\n")
    assert "cannot bind parameters" in usage_error(shell, "%%ldw sql\nSELECT * FROM it "
                                                          "WHERE id = :x")


# -- rich display ----------------------------------------------------------------------------

@pytest.mark.postgres
def test_dataset_rich_display_is_escaped(shell, magics, pg_config, pg_schema):
    connect(shell, pg_config)
    ds = run(shell, f"%ldw map orders = pg.{pg_schema}.orders --cache").result
    data, _ = shell.display_formatter.format(ds)
    page, text = data["text/html"], data["text/plain"]
    assert "x&lt;script&gt;" in page and "<script>" not in page
    assert "cached" in page and "5,000 rows" in page and "decimal128(12, 2)" in page
    assert "char(n)" in page  # the lossy-type note of status
    assert text.startswith("ldw.Dataset 'orders' [cached]") and "x<script>" in text
    listing = run(shell, f"%ldw describe pg.{pg_schema}.orders").result
    assert "x&lt;script&gt;" in listing._repr_html_() and "<script>" not in \
        listing._repr_html_()


def test_browse_verb_returns_the_browser(shell, magics, lite_config):
    connect(shell, lite_config)
    ran = run(shell, "%ldw browse")
    assert ran.error is None, ran.stderr
    browser = ran.result
    assert browser.source.value == "lite" and browser.namespace is shell.user_ns
    assert "application/vnd.jupyter.widget-view+json" in browser._repr_mimebundle_()


# -- secrets -----------------------------------------------------------------------------------

@pytest.mark.postgres
def test_no_password_or_url_in_any_output(shell, magics, pg_config, pg_schema):
    connect(shell, pg_config)
    cells = ["%ldw sources", "%ldw tables guarded.{s}", "%ldw describe guarded.{s}.orders",
             "%ldw map g = guarded.{s}.orders --cache", "%ldw info g", "%ldw ls", "%ldw status",
             "%ldw map bad = guarded.{s}.nosuch", "%ldw tables down", "%ldw describe down.s.t",
             "%ldw map d = down.s.t"]
    seen = []
    for cell in cells:
        ran = run(shell, cell.replace("{s}", pg_schema))
        seen += [ran.stdout, ran.stderr, str(ran.error or "")]
        if ran.result is not None:
            seen += [str(v) for v in shell.display_formatter.format(ran.result)[0].values()]
    everything = "\n".join(seen)
    assert CANARY not in everything
    assert "postgresql://" not in everything and "127.0.0.1:9" not in everything
    assert shell.user_ns["g"].info()["rows"] == 5000


# -- progress and interrupts --------------------------------------------------------------------

def _shm_files(config: str) -> list[Path]:
    root = Path(config).parent
    return [p for p in root.rglob("*") if p.is_file() and p.suffix == ".arrow"
            or p.name.startswith(".tmp")]


@pytest.mark.postgres
def test_interrupt_during_cache_keeps_no_partial_version(shell, magics, pg_config, pg_schema,
                                                         monkeypatch):
    """A KeyboardInterrupt arriving between batches: one line, nothing published."""
    connect(shell, pg_config)
    run(shell, f"%ldw map orders = pg.{pg_schema}.orders")
    reports = []

    def interrupt(report):
        reports.append(report)
        raise KeyboardInterrupt

    monkeypatch.setattr(ProgressReporter, "__call__", lambda self, report: interrupt(report))
    with pytest.raises(UsageError, match="interrupted; the source query was cancelled"):
        shell.run_line_magic("ldw", "cache orders")
    assert reports and not reports[-1].done
    info = shell.user_ns["orders"].info()
    assert info["version"] is None and info["state"] != "cached"
    assert _shm_files(pg_config) == []


def _active_queries(pg_engine, pattern: str) -> int:
    with pg_engine.connect() as conn:
        return conn.execute(sa.text(
            "select count(*) from pg_stat_activity where state = 'active' "
            "and query like :pattern and pid <> pg_backend_pid()"), {"pattern": pattern}).scalar()


@pytest.mark.postgres
def test_sigint_mid_read_cancels_the_source_query(shell, magics, pg_config, pg_schema,
                                                  pg_engine):
    """A real SIGINT (what 'interrupt kernel' sends) two seconds into a six-second read."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create view {pg_schema}.slow as select i, pg_sleep(0.002) "
                             "is null as z from generate_series(1, 3000) i")
    connect(shell, pg_config)
    run(shell, f"%ldw map slow = pg.{pg_schema}.slow")
    pattern = f"%{pg_schema}%slow%"
    seen: list[int] = []
    interrupt = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT))
    look = threading.Timer(3.5, lambda: seen.append(_active_queries(pg_engine, pattern)))
    interrupt.start()
    look.start()
    look_at = time.monotonic() + 3.5
    try:
        with pytest.raises(UsageError) as raised:
            shell.run_line_magic("ldw", "cache slow")
        returned = time.monotonic()
    finally:
        interrupt.cancel()
        look.join()
    message = str(raised.value)
    assert "\n" not in message and message.startswith("%ldw cache:")
    assert shell.user_ns["slow"].info()["version"] is None
    assert _shm_files(pg_config) == []
    assert seen == [0], "the source query was still running 1.5 s after the interrupt"
    assert "interrupted; the source query was cancelled" in message
    assert returned < look_at, "the interrupt was acted on only after the read's batch"


def test_load_and_unload_are_idempotent(shell, lite_config):
    load_ipython_extension(shell)
    magics = shell.magics_manager.registry["LdwMagics"]
    load_ipython_extension(shell)
    assert shell.magics_manager.registry["LdwMagics"] is magics
    connect(shell, lite_config)
    shell.run_line_magic("unload_ext", "ldw.extension")
    assert magics._warehouse is None
    assert ldw.Dataset not in shell.display_formatter.formatters["text/html"].type_printers
    shell.run_line_magic("load_ext", "ldw.extension")
    assert ldw.Dataset in shell.display_formatter.formatters["text/html"].type_printers
    shell.reset(new_session=False)


@pytest.mark.postgres
def test_sql_names_source_tables_explains_and_caches(shell, magics, pg_config, pg_schema):
    connect(shell, pg_config)
    ran = run(shell, f"%%ldw sql -o res\nSELECT count(*) AS n FROM pg.{pg_schema}.orders "
                     "WHERE id <= 10")
    assert ran.error is None, ran.stderr
    assert shell.user_ns["res"]["n"].item() == 10
    ran = run(shell, f"%%ldw sql --explain\nSELECT count(*) FROM pg.{pg_schema}.orders "
                     "WHERE id <= 10")
    assert ran.error is None, ran.stderr
    assert f"pg.{pg_schema}.orders: from source pg" in repr(ran.result)
    assert "pushed: id <= 10" in repr(ran.result) and "sql: SELECT" in repr(ran.result)
    assert run(shell, f"%ldw map lazy = pg.{pg_schema}.orders").error is None
    assert run(shell, "%%ldw sql\nSELECT count(*) FROM lazy").error is None
    assert shell.user_ns["lazy"].info()["state"] == "mapped"
    assert run(shell, "%%ldw sql --cache\nSELECT count(*) FROM lazy").error is None
    assert shell.user_ns["lazy"].info()["state"] == "cached"
    assert "drop --cache" in usage_error(shell, "%%ldw sql --explain --cache\nSELECT 1")
