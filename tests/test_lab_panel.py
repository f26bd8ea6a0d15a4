"""The JupyterLab side panel in a real browser: JupyterLab, Debian's Chromium, Playwright.

(That the install put the prebuilt panel in place, and that it matches its sources:
tests/test_lab_build.py.) The test opens the "ldw" sidebar with its
keyboard shortcut, walks the catalog (rows the source cannot estimate say so), filters it,
previews a table (NULL marked, short floats), maps a view, caches it while the source is held
mid-read by an advisory lock (so the live progress is seen for sure: rows, MB/s, the
materializing state), sees it cached, refreshes and evicts it, drags a table into a notebook
and runs the cells it inserted, finds its commands in the palette and switches to the dark
theme. No password or connection URL may appear in the page. Screenshots go to
``test-artifacts/`` (the path is printed).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import ServerHandle
from lab_helpers import ARTIFACTS, CHROMIUM_ARGS, TIMEOUT_MS, URL_TEXT, jupyterlab

from ldw.config import _user

CANARY = "pw-canary-panel-8d3f"  # the password of the source "down"
GATE = 741_852_963  # the advisory lock the view waits on at row GATE_ROW
GATE_ROW = 150_000
ROWS = 200_000  # ~43 MB: a first batch of rows is stored before the view reaches the gate


@pytest.fixture
def warehouse(pg_engine: sa.Engine, pg_schema: str, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerHandle]:
    """A real ldw server over a fresh schema: ``events`` (analyzed), ``slow_events`` (a view
    that waits for the advisory lock GATE at row GATE_ROW), ``fresh`` (never analyzed),
    ``notes`` (NULLs, an empty string, a float), and the source ``down`` with a password."""
    s = pg_schema
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create table {s}.events as select i::bigint as id, repeat('x', 200) || i "
            f"as payload from generate_series(1, {ROWS}) i")
        conn.exec_driver_sql(f"analyze {s}.events")
        conn.exec_driver_sql(
            f"create function {s}.gate(i bigint) returns bigint language plpgsql as $$ begin "
            f"if i = {GATE_ROW} then perform pg_advisory_lock_shared({GATE}); "
            f"perform pg_advisory_unlock_shared({GATE}); end if; return i; end $$")
        conn.exec_driver_sql(f"create view {s}.slow_events as select {s}.gate(id) as id, "
                             f"payload from {s}.events")
        conn.exec_driver_sql(f"create table {s}.fresh (id int)")
        conn.exec_driver_sql(f"create table {s}.notes (id int, note text, ratio float8)")
        conn.exec_driver_sql(f"insert into {s}.notes values (1, null, 0.1::float8 + "
                             "0.2::float8), (2, '', 1.5), (3, 'x', null)")
    monkeypatch.setenv("LDW_TEST_PANEL_PW", CANARY)
    (tmp_path / "ldw").mkdir()
    handle = ServerHandle(tmp_path / "ldw", extra_toml=(
        '[sources.down]\nurl = "postgresql://ldw@127.0.0.1:9/nowhere"\n'
        'password_env = "LDW_TEST_PANEL_PW"'))
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@contextlib.contextmanager
def _gate_closed(engine: sa.Engine) -> Iterator[None]:
    """Hold the advisory lock: a read of slow_events stops at row GATE_ROW until released."""
    with engine.connect() as conn:
        conn.exec_driver_sql(f"select pg_advisory_lock({GATE})")
        try:
            yield
        finally:
            conn.exec_driver_sql(f"select pg_advisory_unlock({GATE})")
            conn.commit()


@pytest.mark.postgres
def test_the_panel_maps_caches_refreshes_and_evicts(chromium, warehouse, pg_engine, pg_schema,
                                                    tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    (tmp_path / "lab").mkdir()
    with jupyterlab(tmp_path / "lab", {"LDW_CONFIG": str(warehouse.config)}) as lab, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            page.goto(f"{lab.url}/lab?token={lab.token}")
            try:
                _drive(page, warehouse, pg_engine, pg_schema)
            except Exception:
                page.screenshot(path=ARTIFACTS / "panel-failure.png")
                print(lab.log.read_text()[-5000:])  # shown by pytest on failure
                raise
        finally:
            browser.close()
    print(f"screenshots of the panel: {ARTIFACTS}/panel-*.png")


def _shot(page, name: str) -> None:
    page.screenshot(path=ARTIFACTS / f"panel-{name}.png")


def _drive(page, warehouse: ServerHandle, pg_engine: sa.Engine, schema: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator(".jp-LauncherCard").first).to_be_visible()
    page.keyboard.press("Alt+Shift+W")  # ldw:open: the panel, with the search box focused
    panel = page.locator("#ldw-sidebar")
    expect(panel).to_be_visible()
    expect(panel.locator(".ldw-search-input")).to_be_focused()
    expect(panel.locator(".ldw-where")).to_contain_text(f"{_user()} · local server (pid ")
    expect(panel.locator(".ldw-empty", has_text="No datasets yet")).to_be_visible()

    # the catalog: source -> schema -> tables -> columns
    panel.locator(".ldw-source[data-source='pg'] > .ldw-node").click()
    schema_node = panel.locator(f".ldw-schema[data-schema='{schema}']")
    schema_node.locator("> .ldw-node").click()

    def table(name: str):
        return schema_node.locator(f".ldw-table[data-table='pg.{schema}.{name}']")

    expect(table("events").locator(".ldw-rows")).to_have_text("~200,000 rows")
    expect(table("fresh").locator(".ldw-rows")).to_have_text("rows not estimated")
    expect(table("slow_events").locator(".ldw-rows")).to_have_text("view")
    table("slow_events").locator(".ldw-node").press("Enter")  # keyboard: open the columns
    columns = table("slow_events").locator(".ldw-column")
    expect(columns).to_have_count(2)
    expect(columns.nth(0)).to_contain_text("id")
    expect(columns.nth(0)).to_contain_text("int64")
    expect(columns.nth(1)).to_contain_text("string")
    panel.locator(".ldw-search-input").fill("slow")
    expect(schema_node.locator(".ldw-table")).to_have_count(1)
    panel.locator(".ldw-search-input").fill("")
    expect(schema_node.locator(".ldw-table")).to_have_count(4)
    _shot(page, "catalog")

    # a preview in the main area: NULL marked, the empty string empty, floats short
    table("notes").locator(".ldw-row").hover()  # a table's actions show on hover or focus
    table("notes").locator("[data-action='preview']").click()
    preview = page.locator(".ldw-Preview")
    expect(preview).to_contain_text(f"first 3 rows of pg.{schema}.notes")
    expect(preview.locator("td.ldw-null")).to_have_count(2)
    expect(preview.locator("td.ldw-empty-string")).to_have_count(1)
    expect(preview.locator("td", has_text=re.compile(r"^0\.3$"))).to_have_count(1)
    _shot(page, "preview")
    page.locator(".lm-TabBar-tab", has_text="Preview:").locator(
        ".lm-TabBar-tabCloseIcon").click()

    # map the view (the dialog suggests the name); its actions show while it is open
    table("slow_events").locator("[data-action='map']").click()
    name = page.locator(".jp-Dialog input")
    expect(name).to_have_value("slow_events")
    name.press("Enter")
    message = panel.locator(".ldw-message")
    expect(message).to_have_text(f"mapped pg.{schema}.slow_events as slow_events "
                                 "(no rows moved)")
    dataset = panel.locator(".ldw-dataset[data-dataset='slow_events']")
    expect(dataset).to_have_attribute("data-state", "mapped")

    # cache it while the source is held mid-read: the progress is live in the panel
    with _gate_closed(pg_engine):
        dataset.locator("[data-action='cache']").click()
        expect(dataset).to_have_attribute("data-state", "materializing")
        expect(dataset.locator(".ldw-progress-text")).to_have_text(
            re.compile(r"^cache: [1-9][\d,]* rows · [\d.]+ [kMG]?B · [\d.]+ MB/s"))
        expect(dataset.locator(".ldw-action[data-action='evict']")).to_be_disabled()
        _shot(page, "progress")
    expect(dataset).to_have_attribute("data-state", "cached")
    expect(dataset.locator(".ldw-summary")).to_contain_text("200,000 rows")
    expect(message).to_have_text("slow_events is cached")
    expect(dataset.locator(".ldw-progress")).to_have_count(0)
    _shot(page, "cached")

    local = warehouse.local()
    try:
        version = local.dataset("slow_events").info()["version"]
        dataset.locator("[data-action='refresh']").click()
        expect(message).to_have_text("slow_events refreshed: cached, 200,000 rows")
        expect(dataset).to_have_attribute("data-state", "cached")
        assert local.dataset("slow_events").info()["version"] != version

        dataset.locator("[data-action='evict']").click()
        expect(dataset).to_have_attribute("data-state", "evicted")
        expect(message).to_have_text("slow_events is evicted")
        assert local.dataset("slow_events").state == "evicted"
    finally:
        local.close()

    _drag_into_a_notebook(page, panel, table("events"), schema)

    # an unreachable source: an error naming it, never its password or URL
    panel.locator(".ldw-source[data-source='down'] > .ldw-node").click()
    expect(panel.locator(".ldw-source[data-source='down'] .ldw-error")).to_contain_text(
        "SourceUnavailable")
    text, html = page.locator("body").inner_text(), page.content()
    assert CANARY not in html and CANARY not in text
    assert not URL_TEXT.search(text), URL_TEXT.search(text)

    # the commands are in the palette; the dark theme keeps the panel readable
    page.keyboard.press("Control+Shift+C")
    palette = page.locator("#command-palette")
    palette.locator("input").fill("ldw")
    for label in ("Open the ldw Panel", "Cache the ldw Dataset", "Refresh the ldw Dataset",
                  "Evict the ldw Dataset", "Map a Table as an ldw Dataset…"):
        expect(palette.locator(".lm-CommandPalette-item", has_text=label)).to_have_count(1)
    light = panel.evaluate("node => getComputedStyle(node).backgroundColor")
    palette.locator("input").fill("Use Theme: JupyterLab Dark")
    palette.locator("input").press("Enter")
    expect(page.locator("body")).to_have_attribute("data-jp-theme-light", "false")
    expect(page.locator("#jupyterlab-splash")).to_have_count(0)  # the theme is in place
    expect(panel).not_to_have_css("background-color", light)
    _shot(page, "dark")


def _drag_into_a_notebook(page, panel, events, schema: str) -> None:
    """Drag the table onto a new notebook: the connect cell and the map cell are inserted;
    run both, and the dataset the notebook mapped appears in the panel."""
    from lab_helpers import run_cell
    from playwright.sync_api import expect

    page.locator(".jp-LauncherCard[data-category='Notebook']").first.click()
    notebook = page.locator(".jp-NotebookPanel:visible")
    expect(page.locator(".jp-StatusBar-Widget")).to_contain_text(
        re.compile(r"Python 3 \(ipykernel\)\s*\|\s*Idle"))
    start = events.locator(".ldw-name").bounding_box()
    target = notebook.locator(".jp-Notebook").bounding_box()
    page.mouse.move(start["x"] + 5, start["y"] + 5)
    page.mouse.down()
    page.mouse.move(start["x"] + 40, start["y"] + 10, steps=5)
    page.mouse.move(target["x"] + target["width"] / 2, target["y"] + 40, steps=10)
    page.mouse.up()
    cells = notebook.locator(".jp-CodeCell")
    expect(cells).to_have_count(3)  # the notebook's empty cell and the two dropped ones
    setup = cells.filter(has_text="%ldw connect --as wh")
    mapping = cells.filter(has_text=f"%ldw map events = pg.{schema}.events")
    run_cell(page, setup)
    expect(setup.locator(".jp-OutputArea-output")).to_contain_text(
        "ldw: connected; 3 source(s): pg, my, down")
    run_cell(page, mapping)
    expect(mapping.locator(".ldw-dataset .ldw-badge").first).to_have_text("mapped")
    expect(panel.locator(".ldw-dataset[data-dataset='events']")).to_have_attribute(
        "data-state", "mapped")
    _shot(page, "notebook")
