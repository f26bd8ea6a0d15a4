"""Bounded use of shared resources (issue 12, F18 and F19).

F18: a source's connections are capped by ``[sources.x] max_connections``, shared by every read,
partition and user of the source; ``partitions`` beyond it is refused at map time.
F19: ``wh.sql`` has a time and a memory limit, stops when its client goes away or the server
stops, and ``ldw server stop`` always finishes.
"""

from __future__ import annotations

import contextlib
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


@pytest.mark.parametrize("remote", [False, True], ids=["socket", "flight"])
def test_server_stop_finishes_while_a_query_runs(handle, events, remote):
    h = handle()
    pid = _server_pid(h)
    client = _start_client(h, events, remote=remote)
    try:
        started = time.monotonic()
        done = h.cli("server", "stop", check=False)
        assert done.returncode == 0, done.stderr
        while _alive(pid) and time.monotonic() - started < 25:
            time.sleep(0.05)
        assert not _alive(pid)
        client.wait(30)
        assert client.returncode != 0  # told the server went away, not left hanging
    finally:
        client.kill()


# --- F18: a source's connections are bounded ------------------------------------------------


@pytest.fixture
def napping(pg_engine, pg_schema) -> str:
    """A PostgreSQL view that takes ~0.4 s to read whole (2 ms a row), so reads overlap."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create function {pg_schema}.nap(i int) returns boolean language plpgsql "
            "volatile as $$ begin perform pg_sleep(0.002); return true; end $$")
        conn.exec_driver_sql(f"create view {pg_schema}.slow as select g as id from "
                             f"generate_series(1, 200) g where {pg_schema}.nap(g)")
    return f"{pg_schema}.slow"


_SAMPLER = """
import json, select, sys, time
import sqlalchemy as sa
engine = sa.create_engine(sys.argv[1])
query, params = sa.text(sys.argv[2]), json.loads(sys.argv[3])
recent, peak = [], 0
with engine.connect() as conn:
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        recent = [*recent[-2:], conn.execute(query, params).scalar_one()]
        conn.rollback()
        if len(recent) == 3:
            peak = max(peak, min(recent))
        time.sleep(0.003)
print(peak, flush=True)
"""


class _Peak:
    """Samples how many connections a query counts, every few ms, from a process of its own
    (ConnectorX holds this process's GIL while it waits for rows).

    A closed connection's server process may still be listed for a moment after the client
    let go of it (and ldw handed its slot on), so ``peak`` is the most seen in three samples
    in a row (~10 ms); a connection beyond the limit held by a read would last far longer.
    """

    def __init__(self, engine: sa.Engine, query: str, params: dict) -> None:
        import json

        self.peak = 0
        url = engine.url.render_as_string(hide_password=False)
        self._process = subprocess.Popen(
            [sys.executable, "-c", _SAMPLER, url, query, json.dumps(params)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def __enter__(self) -> _Peak:
        assert self._process.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self._process.communicate("stop\n", timeout=30)
        self.peak = int(out.strip())


def _concurrently(*calls) -> None:
    threads = [_in_thread(call) for call in calls]
    for thread, _ in threads:
        thread.join(120)
    for thread, box in threads:
        assert not thread.is_alive()
        if "error" in box:
            raise box["error"]


@pytest.mark.parametrize("limit, partitions", [(2, 1), (4, 2)])
def test_postgres_connections_never_exceed_max_connections(pg_engine, napping, shm_dir, limit,
                                                           partitions):
    app = f"ldwlim_{uuid.uuid4().hex[:8]}"
    url = f"{POSTGRES_URL}?application_name={app}"
    wh = make_warehouse(shm_dir, pg={"url": url, "max_connections": limit})
    try:
        parts = [wh.map(f"p{i}", f"pg.{napping}", partition_on="id", partitions=partitions)
                 for i in range(3)]
        plain = [wh.map(f"u{i}", f"pg.{napping}") for i in range(2)]
        count = "select count(*) from pg_stat_activity where application_name = :app"
        with _Peak(pg_engine, count, {"app": app}) as peak:
            _concurrently(*(d.cache for d in parts), *(d.cache for d in plain),
                          *(lambda d=d: d.lazy().collect() for d in plain),
                          lambda: wh.map("p9", f"pg.{napping}", partition_on="id",
                                         partitions=partitions).cache())
        assert 2 <= peak.peak <= limit, peak.peak
        assert [d.to_arrow().num_rows for d in parts + plain] == [200] * 5
    finally:
        wh.close()
    with pg_engine.connect() as conn:  # every connection was closed again
        assert conn.execute(sa.text(count), {"app": app}).scalar_one() == 0


def test_too_many_partitions_are_refused_at_map_time(pg_engine, napping, shm_dir):
    wh = make_warehouse(shm_dir, pg={"url": POSTGRES_URL, "max_connections": 4})
    try:
        for partitions in (10**9, 1000, 3):
            with pytest.raises(ldw.InvalidMapping) as info:
                wh.map("huge", f"pg.{napping}", partition_on="id", partitions=partitions)
            message = str(info.value)
            assert "\n" not in message
            assert "[sources.pg] max_connections = 4" in message and "partitions=2" in message
        assert wh.map("ok", f"pg.{napping}", partition_on="id", partitions=2).cache().state \
            == "cached"
    finally:
        wh.close()
    default = make_warehouse(shm_dir, pg={"url": POSTGRES_URL})
    try:
        with pytest.raises(ldw.InvalidMapping, match=r"max_connections = 8"):
            default.map("huge", f"pg.{napping}", partition_on="id", partitions=10**9)
    finally:
        default.close()


@pytest.mark.parametrize("value", [0, 1, "4", 10**6, True])
def test_max_connections_is_validated(value):
    with pytest.raises(ldw.ConfigError, match=r"\[sources.pg\] max_connections"):
        ldw.connect(in_process=True, config={"sources": {"pg": {
            "url": POSTGRES_URL, "max_connections": value}}})


@pytest.fixture
def mysql_user(mysql_engine, mysql_db):
    """A MariaDB account of its own, so the processlist shows exactly this test's sessions."""
    user = f"ldwlim{uuid.uuid4().hex[:6]}"
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(f"create user '{user}'@'%%' identified by ''")
        conn.exec_driver_sql(f"grant select, show view, lock tables on {mysql_db}.* "
                             f"to '{user}'@'%%'")
        conn.exec_driver_sql(f"grant process on *.* to '{user}'@'%%'")
        # ~2 ms a row, so the reads overlap
        conn.exec_driver_sql(f"create view {mysql_db}.t as select seq as id, "
                             f"sleep(0.002) as z from seq_1_to_200")
    yield user
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(f"drop user '{user}'@'%%'")


def test_mysql_connections_never_exceed_max_connections(mysql_engine, mysql_db, mysql_user,
                                                        shm_dir):
    url = sa.make_url(MYSQL_URL).set(username=mysql_user, database=mysql_db).render_as_string(
        hide_password=False)
    wh = make_warehouse(shm_dir, my={"url": url, "max_connections": 4})
    try:
        parts = [wh.map(f"p{i}", f"my.{mysql_db}.t", partition_on="id", partitions=2)
                 for i in range(3)]
        plain = wh.map("u", f"my.{mysql_db}.t")
        count = "select count(*) from information_schema.processlist where user = :user"
        with _Peak(mysql_engine, count, {"user": mysql_user}) as peak:
            _concurrently(*(d.cache for d in parts), plain.cache,
                          lambda: plain.lazy().collect())
        assert 2 <= peak.peak <= 4, peak.peak
        assert [d.to_arrow().num_rows for d in [*parts, plain]] == [200] * 4
    finally:
        wh.close()


def test_waiting_for_a_connection_honours_the_source_timeout():
    from ldw.config import load_settings
    from ldw.connectors.slots import ConnectionSlots

    source = load_settings({"sources": {"pg": {
        "url": POSTGRES_URL, "max_connections": 2, "timeout": "0.5s"}}}).source("pg")
    slots = ConnectionSlots(source)
    cancel = threading.Event()
    with contextlib.closing(slots.new_lease(2, 2)):  # another read holds both
        started = time.monotonic()
        with pytest.raises(ldw.SourceTimeout, match=r"\[sources.pg\] max_connections = 2"):
            slots.one()
        assert time.monotonic() - started < 5
        cancel.set()
        with pytest.raises(ldw.Cancelled):
            slots.new_lease(1, 1, cancel=cancel)
    release = slots.one()  # free again once the lease ended
    release()
    assert slots.in_use == 0


def test_sql_engine_limits_in_process():
    from ldw.sql import SqlEngine, run_sql

    endless = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
               "SELECT count(*) FROM r")
    with pytest.raises(QueryTimeout, match="time_limit"):
        run_sql(endless, {}, time_limit=0.5)
    gone = threading.Event()
    with SqlEngine(threads=1) as engine:
        threading.Timer(0.5, gone.set).start()
        with pytest.raises(ldw.Cancelled, match="client went away"):
            engine.run(endless, {}, cancelled=gone.is_set)
        thread, box = _in_thread(engine.run, endless, {})
        time.sleep(0.5)
        assert engine.running == 1
    thread.join(10)  # closing the engine stopped it
    assert isinstance(box.get("error"), ldw.ServerUnavailable), box
    assert engine.running == 0


def test_sql_limits_are_read_and_validated():
    from ldw.config import load_settings

    settings = load_settings({"server": {"sql_timeout": "90s", "sql_memory_limit": "2GiB"},
                              "users": {"dave": {"roles": [], "sql_timeout": "5s"}}})
    assert settings.sql_timeout == 90 and settings.sql_memory_limit == "2048MiB"
    assert settings.sql_timeout_for("dave") == (5, "[users.dave] sql_timeout")
    assert settings.sql_timeout_for("erin") == (90, "[server] sql_timeout")
    defaults = load_settings({})
    assert (defaults.sql_timeout, defaults.sql_memory_limit) == (600, "25%")
    for bad in ({"server": {"sql_timeout": "0s"}}, {"server": {"sql_timeout": "soon"}},
                {"server": {"sql_memory_limit": "150%"}}, {"server": {"sql_memory_limit": "1k"}},
                {"users": {"dave": {"sql_timeout": -1}}}):
        with pytest.raises(ldw.ConfigError, match="sql_"):
            load_settings(bad)
