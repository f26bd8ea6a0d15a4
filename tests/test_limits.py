"""Bounded use of shared resources (issue 12, F18 and F19).

F18: a source's connections are capped by ``[sources.x] max_connections``, shared by every read,
partition and user of the source; ``partitions`` beyond it is refused at map time.
F19: ``wh.sql`` has a time and a memory limit, stops when its client goes away or the server
stops, and ``ldw server stop`` always finishes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import MYSQL_URL, POSTGRES_URL, ServerHandle, make_warehouse

import ldw
from ldw.errors import QueryTimeout

RECURSIVE = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
             "SELECT count(*) AS n FROM r, events")


# --- F19: wh.sql is bounded ------------------------------------------------------------------


@pytest.fixture
def events(pg_engine, pg_schema) -> str:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.events as "
                             "select g as id from generate_series(1, 3) g")
    return f"pg.{pg_schema}.events"


@pytest.fixture
def handle(tmp_path):
    handles: list[ServerHandle] = []

    def start(**server: object) -> ServerHandle:
        folder = tmp_path / f"s{len(handles)}"
        folder.mkdir()
        h = ServerHandle(folder, **server)
        handles.append(h)
        h.start()
        return h

    yield start
    for h in handles:
        h.stop()
        pid_file = h.folder / "state" / "ldw.pid"
        pid = pid_file.read_text().strip() if pid_file.exists() else ""
        if pid.isdigit() and _alive(int(pid)):
            os.kill(int(pid), 9)


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _server_pid(h: ServerHandle) -> int:
    return int((h.folder / "state" / "ldw.pid").read_text())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _in_thread(fn, *args):
    """Run ``fn`` on a thread; returns (thread, box) with box['error'] / box['result']."""
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn(*args)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_sql_over_its_time_limit_is_stopped_with_a_clear_error(handle, events):
    h = handle(sql_timeout="2s", extra_toml='[users.dave]\nroles = []\nsql_timeout = "1s"\n')
    local = h.local()
    local.map("events", events).cache()
    assert local.sql("SELECT count(*) AS n FROM events")["n"].to_list() == [3]
    thread, box = _in_thread(local.sql, RECURSIVE)
    thread.join(60)
    assert not thread.is_alive(), "the query was never stopped"
    error = box.get("error")
    assert isinstance(error, QueryTimeout) and isinstance(error, TimeoutError), error
    assert "[server] sql_timeout" in str(error) and "2 s" in str(error)
    # a per-user limit, over Flight
    remote = h.remote("dave")
    remote.map("events", events).cache()
    thread, box = _in_thread(remote.sql, RECURSIVE)
    thread.join(60)
    assert not thread.is_alive(), "the query was never stopped"
    error = box.get("error")
    assert isinstance(error, QueryTimeout), error
    assert "[users.dave] sql_timeout" in str(error)
    # the server still answers
    assert remote.sql("SELECT count(*) AS n FROM events")["n"].to_list() == [3]


def test_sql_over_its_memory_limit_is_refused_naming_the_setting(handle, events):
    h = handle(sql_memory_limit="32MiB")
    local = h.local()
    local.map("events", events).cache()
    with pytest.raises(ldw.CapacityExceeded, match=r"\[server\] sql_memory_limit"):
        local.sql("SELECT count(DISTINCT (r.range, e.id)) AS n FROM range(20000000) r, events e")


_CLIENT = """
import ldw, sys
wh = ldw.connect({target}, autostart=False) if {remote} else \\
    ldw.connect(config={config!r}, autostart=False)
wh.map("events", {events!r}).cache()
print("running", flush=True)
wh.sql({query!r})
"""


def _start_client(h: ServerHandle, events: str, *, remote: bool) -> subprocess.Popen:
    target = f"{h.flight!r}, token={h.token('erin')!r}" if remote else "None"
    code = _CLIENT.format(target=target, remote=remote, config=str(h.config), events=events,
                          query=RECURSIVE)
    client = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                              stdout=subprocess.PIPE, text=True)
    assert client.stdout.readline().strip() == "running"
    time.sleep(1.5)  # the query is running now
    return client


@pytest.mark.parametrize("remote", [False, True], ids=["socket", "flight"])
def test_sql_stops_when_its_client_goes_away(handle, events, remote):
    h = handle()  # sql_timeout: the default 10 minutes
    pid = _server_pid(h)
    client = _start_client(h, events, remote=remote)
    busy = _cpu_seconds(pid)
    time.sleep(1)
    assert _cpu_seconds(pid) - busy > 0.15, "the query should be running"
    client.kill()
    client.wait()
    time.sleep(1.5)  # the watchdog notices within a fraction of a second
    before = _cpu_seconds(pid)
    time.sleep(2)
    assert _cpu_seconds(pid) - before < 0.1, "the server keeps running the abandoned query"


def test_server_stop_finishes_while_a_query_runs(handle, events):
    h = handle()
    pid = _server_pid(h)
    client = _start_client(h, events, remote=False)
    try:
        started = time.monotonic()
        done = h.cli("server", "stop", check=False)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 25
        assert not _alive(pid)
        client.wait(30)
        assert client.returncode != 0  # told the server went away, not left hanging
    finally:
        client.kill()
