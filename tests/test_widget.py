"""The %ldw browse widget and the progress display, driven through their widget models."""

from __future__ import annotations

import io
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MYSQL_URL, POSTGRES_URL
from freshness_helpers import Source, wait_stale
from traitlets import TraitError

import ldw
from ldw.extension import Browser, ProgressReporter

CANARY = "pw-canary-1b9e"


def _warehouse(tmp_path: Path, **sources: dict) -> ldw.Warehouse:
    return ldw.connect(in_process=True, config={"sources": sources},
                       shm_dir=str(tmp_path / "shm"), spill_dir=str(tmp_path / "spill"),
                       memory_limit="1GiB")


@pytest.fixture
def pg(pg_engine, pg_schema, tmp_path, monkeypatch):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create table {pg_schema}.orders (id bigint primary key, price numeric(12,2), "
            "\"x<b>\" text)")
        conn.exec_driver_sql(
            f"insert into {pg_schema}.orders select i, i * 1.25, '<i>' || i || '</i>' "
            "from generate_series(1, 5000) i")
        conn.exec_driver_sql(f"create table {pg_schema}.customers (id int)")
        conn.exec_driver_sql(f"analyze {pg_schema}.orders")
    monkeypatch.setenv("LDW_TEST_WIDGET_PW", CANARY)
    wh = _warehouse(tmp_path, pg={"url": POSTGRES_URL},
                    down={"url": "postgresql://ldw@127.0.0.1:9/nowhere",
                          "password_env": "LDW_TEST_WIDGET_PW"})
    yield wh
    wh.close()


def _select(browser: Browser, schema: str, table: str) -> None:
    browser.source.value = "pg"
    browser.schema.value = schema
    browser.table.value = table



@pytest.mark.postgres
def test_select_preview_map_and_manage(pg, pg_schema):
    namespace: dict = {}
    browser = Browser(pg, namespace=namespace, progress=ProgressReporter(widgets=True))
    assert "pg" in browser.source.options and browser.source.value == "pg"
    assert browser.schema.value == "public"  # the source's default schema

    browser.schema.value = pg_schema
    labels = dict(browser.table.options)
    assert set(labels.values()) == {"orders", "customers"}
    assert any(label.startswith("orders (table, ~5,000 rows") for label in labels)
    assert browser.map_button.disabled and browser.preview_button.disabled

    browser.table.value = "orders"
    assert f"pg.{pg_schema}.orders" in browser.columns.value
    assert "NUMERIC(12, 2)" in browser.columns.value
    assert "decimal128(12, 2)" in browser.columns.value
    assert "x&lt;b&gt;" in browser.columns.value and "<b>x" not in browser.columns.value
    assert browser.name.value == "orders" and not browser.map_button.disabled

    browser.preview_button.click()
    assert "first 10 rows" in browser.preview.value
    assert "&lt;i&gt;1&lt;/i&gt;" in browser.preview.value and "<i>1</i>" not in \
        browser.preview.value
    assert pg.datasets().height == 0  # the preview maps nothing

    browser.name.value = "my_orders"
    browser.map_button.click()
    dataset = namespace["my_orders"]
    assert isinstance(dataset, ldw.Dataset) and dataset.state == "mapped"
    assert "mapped pg." in browser.last_message and "my_orders" in browser.last_message
    assert browser.dataset.options == ("my_orders",) and browser.dataset.value == "my_orders"
    assert "my_orders" in browser.datasets_table.value
    assert Browser.PREVIEW_DATASET not in browser.datasets_table.value

    browser.cache_button.click()
    assert dataset.state == "cached" and "5,000 rows" in browser.last_message
    assert "cached" in browser.datasets_table.value
    box = browser.progress.last_display.box
    assert "cached" in box.children[0].value and "MB/s" in box.children[0].value
    version = dataset.info()["version"]
    browser.refresh_button.click()
    assert dataset.info()["version"] != version
    browser.evict_button.click()
    assert dataset.state == "evicted" and "evicted" in browser.last_message


@pytest.mark.postgres
@pytest.mark.parametrize("name", ["", "2x", "for", "a-b", "na me", "ñame",
                                  Browser.PREVIEW_DATASET])
def test_invalid_names_cannot_be_mapped(pg, pg_schema, name):
    namespace: dict = {}
    browser = Browser(pg, namespace=namespace)
    _select(browser, pg_schema, "orders")
    browser.name.value = name
    assert browser.map_button.disabled and browser.map_button.tooltip
    browser.map_button.click()  # a click that slips through is refused too
    assert namespace == {} and browser.last_message.startswith("map: ")
    assert pg.datasets().filter(pg.datasets()["name"] == name).height == 0


@pytest.mark.postgres
def test_typed_schema_never_reaches_sql(pg, pg_engine, pg_schema):
    """The schema is picked from the source's own list: anything else is refused by the widget
    before the browser sees it (it used to be a free-text box)."""
    browser = Browser(pg)
    assert pg_schema in browser.schema.options and browser.schema.options[0] == "public"
    with pytest.raises(TraitError):
        browser.schema.value = f"{pg_schema}; drop table {pg_schema}.orders"
    assert browser.schema.value == "public"
    with pg_engine.connect() as conn:
        assert conn.exec_driver_sql(f"select count(*) from {pg_schema}.orders").scalar() == 5000


@pytest.mark.mysql
def test_a_mariadb_source_lists_its_own_schemas(mysql_engine, mysql_db, tmp_path):
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {mysql_db}.items (id int primary key)")
    wh = _warehouse(tmp_path, my={"url": MYSQL_URL})
    try:
        browser = Browser(wh)
        assert browser.schema.options[0] == "test"  # the database of the source's URL
        assert mysql_db in browser.schema.options and "public" not in browser.schema.options
        browser.schema.value = mysql_db
        assert dict(browser.table.options) == {"items (table, ~0 rows)": "items"}
    finally:
        wh.close()


@pytest.mark.postgres
def test_preview_maps_nothing_and_shows_nulls_and_short_floats(pg, pg_engine, pg_schema):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.notes (id int, note text, "
                             "ratio double precision)")
        conn.exec_driver_sql(f"insert into {pg_schema}.notes values (1, null, 0.1::float8 + "
                             "0.2::float8), (2, '', 1.5), (3, 'x', null)")
    browser = Browser(pg)
    _select(browser, pg_schema, "notes")
    assert "notes (table, rows not estimated)" in dict(browser.table.options)  # never analyzed
    browser.preview_button.click()
    html = browser.preview.value
    assert "first 3 rows" in html and "overflow:auto" in html
    assert html.count('class="ldw-null"') == 2  # the NULL note and the NULL ratio
    assert ">0.3</td>" in html and "0.30000000000000004" not in html
    assert '<td style="text-align:left;white-space:nowrap"></td>' in html  # the empty string
    assert pg.datasets().height == 0 and pg.status()["datasets"] == 0  # nothing was mapped


@pytest.mark.postgres
def test_the_datasets_panel_shows_a_stale_badge(pg_engine, pg_schema, tmp_path):
    source = Source("pg", pg_engine, pg_schema)
    source.create(rows=100)
    wh = ldw.connect(in_process=True, config={"sources": {"pg": {"url": POSTGRES_URL}}},
                     shm_dir=str(tmp_path / "shm"), spill_dir=str(tmp_path / "spill"),
                     memory_limit="1GiB", freshness_interval="0.2s")
    try:
        orders = wh.map("orders", source.table).cache()
        browser = Browser(wh)
        assert ">stale</span>" not in browser.datasets_table.value
        source.insert(101, 110)
        assert wait_stale(orders, True, within=10)["stale"] is True
        browser.refresh_datasets()
        assert 'class="ldw-badge"' in browser.datasets_table.value
        assert ">stale</span>" in browser.datasets_table.value
    finally:
        wh.close()


@pytest.mark.postgres
def test_source_errors_are_one_line_without_secrets(pg):
    browser = Browser(pg)
    browser.source.value = "down"
    message = browser.last_message
    assert "down" in message and "\n" not in message
    assert CANARY not in browser.message.value
    assert "postgresql://" not in message and CANARY not in message
    browser.source.value = "pg"
    assert browser.schema.value == "public"


def test_sqlite_browse_and_map(tmp_path):
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table items (id integer primary key, name text)")
        conn.executemany("insert into items values (?, ?)", [(i, f"n{i}") for i in range(50)])
    wh = _warehouse(tmp_path, lite={"url": f"sqlite:///{db}"})
    try:
        namespace: dict = {}
        browser = Browser(wh, namespace=namespace, preview_rows=3)
        assert browser.schema.value == "main"
        browser.table.value = "items"
        browser.preview_button.click()
        assert "first 3 rows" in browser.preview.value
        browser.map_button.click()
        assert namespace["items"].to_polars().height == 50
        browser.dataset.value = "items"
        browser.evict_button.click()
        assert namespace["items"].state == "evicted"
    finally:
        wh.close()


# -- progress --------------------------------------------------------------------------------

def test_widget_progress_rows_and_outcome():
    reporter = ProgressReporter(widgets=True, min_interval=0)
    reporter(ldw.Progress("me/orders", 1000, 2_000_000, 0.5))
    row = reporter.last_display.box.children[0]
    assert "<progress></progress>" in row.value  # indeterminate: the total is not known
    assert "1,000 rows" in row.value and "1.9 MiB" in row.value and "4.0 MB/s" in row.value
    reporter(ldw.Progress("me/orders", 3000, 6_000_000, 1.0, done=True))
    assert 'value="1"' in row.value and "cached me/orders" in row.value
    with pytest.raises(KeyboardInterrupt), reporter.watching("orders"):
        reporter(ldw.Progress("me/orders", 10, 20, 0.1))  # a new run gets a new display
        raise KeyboardInterrupt
    assert reporter.last_display.box.children[0] is not row
    assert "me/orders: interrupted" in reporter.last_display.box.children[0].value
    reporter(ldw.Progress("me/orders", 10, 20, 0.1))  # closed: the next report starts afresh
    assert "caching me/orders: 10 rows" in reporter.last_display.box.children[0].value


def test_widget_progress_has_a_row_per_partition():
    reporter = ProgressReporter(widgets=True, min_interval=0)
    for part in (0, 1, 0):
        reporter(_Partitioned("me/t", 10, 1000, 0.1, partition=part))
    rows = reporter.last_display.box.children
    assert len(rows) == 2 and "[partition 1]" in rows[1].value


@dataclass(frozen=True)
class _Partitioned(ldw.Progress):
    """A report carrying the partition it is about, as the engine will send per partition."""

    partition: int | None = None


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_text_progress_rewrites_one_line():
    stream = _Tty()
    reporter = ProgressReporter(widgets=False, stream=stream, min_interval=0)
    for rows in (1000, 2000):
        reporter(ldw.Progress("me/t", rows, rows * 100, rows / 1000))
    reporter(ldw.Progress("me/t", 2500, 250_000, 2.5, done=True))
    text = stream.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert "cached me/t: 2,500 rows · 244.1 KiB" in text

    quiet = io.StringIO()  # not a terminal: only the outcome
    reporter = ProgressReporter(widgets=False, stream=quiet)
    reporter(ldw.Progress("me/t", 1, 10, 0.1))
    reporter(ldw.Progress("me/t", 2, 20, 0.2, done=True))
    assert quiet.getvalue().count("\n") == 1 and "2 rows" in quiet.getvalue()
