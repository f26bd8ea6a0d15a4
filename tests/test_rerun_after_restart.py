"""'Restart and run all': re-running a notebook's map cells after a kernel restart finds the
shared cache as it was: same version, same shares, zero source queries. Locally (a real Jupyter
kernel, restarted) and over Flight (a new process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import nbclient
import nbformat
import pytest
from conftest import ServerHandle
from nbclient.util import run_sync

import ldw
from ldw.engine import server_os_user

pytestmark = pytest.mark.postgres

ROWS = 20_000


@pytest.fixture(scope="module")
def table(pg_engine) -> Iterator[str]:
    schema = f"ldw_t_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
        conn.exec_driver_sql(f"create table {schema}.events as select g::bigint as id, "
                             f"'e' || g as label from generate_series(1, {ROWS}) g")
    yield f"pg.{schema}.events"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"drop schema {schema} cascade")


@pytest.fixture(scope="module")
def server(tmp_path_factory, table) -> Iterator[ServerHandle]:
    handle = ServerHandle(tmp_path_factory.mktemp("rerun")).start()
    yield handle
    handle.stop()


def _notebook(config: Path, table: str) -> nbformat.NotebookNode:
    cells = [
        "import ldw\n%load_ext ldw.extension\n"
        f"%ldw connect --config {config}",
        f"%ldw map events = {table}",
        "rows = events.to_arrow().num_rows\nprint(events.state, rows)",
    ]
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])


def _output(notebook: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in notebook.cells[-1].outputs
                   if o.output_type == "stream")


def _source_queries(server: ServerHandle, key: str, token: str | None = None) -> int:
    wh = server.local() if token is None else ldw.connect(server.flight, token=token)
    try:
        return wh.status()["source_queries"][key]
    finally:
        wh.close()


def test_rerunning_map_cells_after_a_kernel_restart_sends_no_source_query(
        server: ServerHandle, table: str, tmp_path: Path) -> None:
    notebook = _notebook(server.config, table)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDW_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=180,
                                     resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel(env=env):
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
        assert _output(notebook).split() == ["cached", str(ROWS)]
        user = server_os_user()  # local clients are named by their OS user
        wh = server.local()
        server.token("bob")
        wh.dataset("events").share(user="bob")
        wh.close()
        key = f"{user}/events"
        before = _source_queries(server, key)
        assert before >= 1

        run_sync(client.km.restart_kernel)(now=True)  # "Restart and run all"
        run_sync(client.kc.wait_for_ready)(timeout=60)
        for cell in notebook.cells:
            cell.outputs = []
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
    assert _output(notebook).split() == ["cached", str(ROWS)]
    assert _source_queries(server, key) == before  # zero source queries
    wh = server.local()
    assert wh.dataset("events").info()["shared_with"] == ["user:bob"]
    wh.close()


def test_remapping_the_same_definition_over_flight_from_a_new_process_sends_no_source_query(
        server: ServerHandle, table: str) -> None:
    token = server.token("carol")
    first = ldw.connect(server.flight, token=token)
    assert first.map("flown", table).to_arrow().num_rows == ROWS
    version = first.dataset("flown").info()["version"]
    first.close()
    before = _source_queries(server, "carol/flown", token)
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import ldw
        wh = ldw.connect({server.flight!r}, token={token!r})
        ds = wh.map("flown", {table!r})
        print(ds.state, ds.to_arrow().num_rows, ds.info()["version"])
    """)], capture_output=True, text=True, timeout=120, check=False)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["cached", str(ROWS), version]
    assert _source_queries(server, "carol/flown", token) == before


def test_a_changed_definition_replaces_the_version_and_drops_the_shares(
        server: ServerHandle, table: str) -> None:
    server.token("dave")
    wh = server.remote("erin")
    ds = wh.map("changing", table).cache()
    ds.share(user="dave")
    version = ds.info()["version"]
    again = wh.map("changing", table, columns=["id"])
    assert again.state == "mapped" and again.info()["shared_with"] == []
    assert again.to_arrow().column_names == ["id"]
    assert again.info()["version"] != version
    wh.close()
