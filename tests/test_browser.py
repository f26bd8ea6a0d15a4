"""End to end in a real browser: JupyterLab, Playwright for Python and Debian's Chromium.

JupyterLab runs on 127.0.0.1 (a free port, token auth, a temporary root and Jupyter dirs) with
``LDW_CONFIG`` pointing at a real ldw server for this test. Chromium opens
``demo_notebooks/browse.ipynb``, runs it, drives the ``%ldw browse`` widget (source, schema,
table, preview, name, Map) over a table in a fresh PostgreSQL schema, then runs new cells that
show the bound dataset and cache it, and checks the rendered HTML in the DOM. (The JupyterLab
side panel has its own test: tests/test_lab_panel.py.) Screenshots go to
``test-artifacts/``. No password or connection URL may appear in the page or the saved notebook.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; Playwright's own browser download is
never used) and the ``jupyterlab`` and ``playwright`` packages: skipped without them, failed
under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ServerHandle
from lab_helpers import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    ROOT,
    TIMEOUT_MS,
    URL_TEXT,
    Lab,
    jupyterlab,
    run_cell,
)

NOTEBOOK = ROOT / "demo_notebooks" / "browse.ipynb"
CANARY = "pw-canary-5e0d71"  # the password of the source "down"; must never reach the page


def test_demo_notebook_is_committed_clean():
    """The committed notebook carries no outputs and gets its configuration from LDW_CONFIG."""
    notebook = json.loads(NOTEBOOK.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert ["".join(c["source"]) for c in code] == ["%load_ext ldw\n%ldw connect",
                                                      "%ldw browse"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    assert "LDW_CONFIG" in json.dumps(notebook) and not URL_TEXT.search(json.dumps(notebook))


# -- the test ------------------------------------------------------------------------------------

@pytest.fixture
def warehouse(pg_engine, pg_schema, tmp_path, monkeypatch) -> Iterator[ServerHandle]:
    """A real ldw server; its sources: ``pg``, ``my`` and ``down`` (unreachable, a password)."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create table {pg_schema}.customer_orders (o_orderkey bigint primary key, "
            "o_totalprice numeric(12,2), o_comment text)")
        conn.exec_driver_sql(
            f"insert into {pg_schema}.customer_orders select i, i * 1.25, 'order ' || i "
            "from generate_series(1, 3000) i")
        conn.exec_driver_sql(f"analyze {pg_schema}.customer_orders")
    monkeypatch.setenv("LDW_TEST_BROWSER_PW", CANARY)
    (tmp_path / "ldw").mkdir()
    handle = ServerHandle(tmp_path / "ldw", extra_toml=(
        '[sources.down]\nurl = "postgresql://ldw@127.0.0.1:9/nowhere"\n'
        'password_env = "LDW_TEST_BROWSER_PW"'))
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()


@pytest.mark.postgres
def test_browse_and_map_in_jupyterlab(chromium, warehouse, pg_schema, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    (tmp_path / "lab").mkdir()
    with jupyterlab(tmp_path / "lab", {"LDW_CONFIG": str(warehouse.config)}) as lab, \
            sync_playwright() as playwright:
        shutil.copy(NOTEBOOK, lab.root / NOTEBOOK.name)
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1300})
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            try:
                _browse_and_map(page, lab, pg_schema)
            except Exception:
                page.screenshot(path=ARTIFACTS / "browse-failure.png")
                print(lab.log.read_text()[-5000:])  # shown by pytest on failure
                raise
        finally:
            browser.close()


def _browse_and_map(page, lab: Lab, schema: str) -> None:
    from playwright.sync_api import expect

    page.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}")
    notebook = page.locator(".jp-NotebookPanel")
    # the kernel is up (the execution indicator alone says "idle" before there is a kernel)
    expect(page.locator(".jp-StatusBar-Widget")).to_contain_text(
        re.compile(r"Python 3 \(ipykernel\)\s*\|\s*Idle"))
    cells = notebook.locator(".jp-CodeCell")
    expect(cells).to_have_count(2)
    connect, browse = cells.nth(0), cells.nth(1)

    run_cell(page, connect)
    expect(connect.locator(".jp-OutputArea-output")).to_contain_text(
        "ldw: connected; 3 source(s): pg, my, down")
    run_cell(page, browse)
    widget = browse.locator(".ldw-browser")
    expect(widget).to_be_visible()
    message = widget.locator(".widget-html span[style^='color:']")  # the status line

    # One change at a time, each awaited in the DOM: ipywidgets queues a model's update while an
    # earlier one is unanswered, so quick changes to two widgets can reach the kernel reordered.
    source = widget.locator(".widget-dropdown", has_text="Source").locator("select")
    expect(source).to_have_value("pg")  # the first source is open
    schemas = widget.locator(".widget-dropdown", has_text="Schema").locator("select")
    expect(schemas).to_have_value("public")  # the source's own schemas, its default first
    expect(schemas.locator(f"option[value='{schema}']")).to_have_count(1)
    schemas.select_option(schema)
    tables = widget.locator(".widget-select select")
    option = tables.locator("option", has_text="customer_orders (table")
    expect(option).to_have_count(1)
    expect(option).to_contain_text("3,000 rows")
    tables.select_option(option.get_attribute("value"))
    expect(widget).to_contain_text(f"pg.{schema}.customer_orders · 3 columns")
    expect(widget).to_contain_text("decimal128(12, 2)")

    widget.get_by_role("button", name="Preview").click()
    expect(widget).to_contain_text(f"first 10 rows of pg.{schema}.customer_orders")
    last = widget.locator(".ldw-table td", has_text="order 10")
    expect(last).to_have_count(1)
    last.scroll_into_view_if_needed()
    expect(last).to_be_visible()  # all 10 rows, none clipped

    name = widget.get_by_placeholder("variable name")
    expect(name).to_have_value("customer_orders")  # suggested from the table name
    name.fill("orders")
    widget.get_by_role("button", name="Map").click()
    expect(message).to_contain_text(f"mapped pg.{schema}.customer_orders as orders")
    datasets = widget.locator(".ldw-table", has_text="mapping")
    expect(datasets.locator("tr", has_text="orders").locator(".ldw-badge")).to_have_text("mapped")
    widget.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "browse-widget.png")

    # new cells below: the dataset bound by the Map button, then cached with a progress bar
    shown = cells.nth(2)  # Shift+Enter on the last cell added an empty one
    run_cell(page, shown, "orders")
    repr_ = shown.locator(".jp-OutputArea-output .ldw-dataset")
    expect(repr_.locator(".ldw-badge").first).to_have_text("mapped")
    expect(repr_).to_contain_text(f"pg.{schema}.customer_orders")
    columns = repr_.locator(".ldw-table")
    for column in ("o_orderkey", "o_totalprice", "o_comment", "decimal128(12, 2)", "int64"):
        expect(columns).to_contain_text(column)

    cached = cells.nth(3)
    run_cell(page, cached, "%ldw cache orders")
    progress = cached.locator(".ldw-progress")
    expect(progress).to_contain_text("cached")
    expect(progress).to_contain_text("3,000 rows")
    expect(progress).to_contain_text("MB/s")
    expect(progress.locator("progress[value='1']")).to_have_count(1)
    expect(cached.locator(".ldw-dataset .ldw-badge").first).to_have_text("cached")
    expect(cached.locator(".ldw-dataset")).to_contain_text("3,000 rows")
    cached.scroll_into_view_if_needed()
    page.screenshot(path=ARTIFACTS / "browse-dataset.png")

    # an unreachable source: one red line naming it, without its password or URL
    source.select_option("down")
    expect(message).to_contain_text("listing tables of down: SourceUnavailable")
    expect(message).to_have_css("color", "rgb(207, 34, 46)")

    # no secret in the page, nor in the notebook once saved
    text, html = page.locator("body").inner_text(), page.content()
    assert CANARY not in html and CANARY not in text
    assert not URL_TEXT.search(text), URL_TEXT.search(text)
    notebook.locator(".jp-Toolbar [data-command='docmanager:save']").click()
    saved = _saved_notebook(lab.root / NOTEBOOK.name, cells=4)
    (ARTIFACTS / "browse-saved.ipynb").write_text(saved)
    assert CANARY not in saved and not URL_TEXT.search(saved), URL_TEXT.search(saved)


def _saved_notebook(path: Path, *, cells: int) -> str:
    """The notebook's text once JupyterLab has saved ``cells`` executed code cells."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        text = path.read_text()
        with contextlib.suppress(ValueError):
            code = [c for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
            if sum(1 for c in code if c.get("execution_count")) >= cells:
                return text
        time.sleep(0.1)
    pytest.fail(f"{path.name} was not saved with {cells} executed cells")
