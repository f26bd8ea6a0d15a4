"""The shared cache server as users meet it: real server processes, real PostgreSQL.

Each test gets its own state_dir, shared-memory folder, spill folder and catalog, starts the
server with the CLI (detached, as `ldw.connect()` would) and stops it afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import POSTGRES_URL, ServerHandle, make_warehouse

import ldw
from ldw.config import load_settings

pytestmark = pytest.mark.postgres

ROWS = 200_000


def _run(*args: str, config: Path, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ldw.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, check=check)


def _python(code: str, *, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"child failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip()


def _pid(config_dir: Path) -> int:
    return int((config_dir / "state" / "ldw.pid").read_text())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child of ours stays a zombie until reaped; it no longer serves
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


@pytest.fixture
def table(pg_engine, pg_schema) -> str:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create table {pg_schema}.events as select g as id, 'user' || mod(g, 977) as who, "
            f"mod(g, 1000)::numeric(12,2) as amount from generate_series(1, {ROWS}) g")
    return f"pg.{pg_schema}.events"


def _write_config(folder: Path, **server: object) -> Path:
    """An ldw.toml for a private server in ``folder`` (see conftest.ServerHandle)."""
    return ServerHandle(folder, **server).config


@pytest.fixture
def server(tmp_path, pg_engine):
    """A running server; yields its ldw.toml path. Stopped (or killed) afterwards."""
    config = _write_config(tmp_path)
    _run("server", "start", config=config)
    yield config
    _run("server", "stop", config=config, check=False)
    if (tmp_path / "state" / "ldw.pid").exists():
        try:
            os.kill(_pid(tmp_path), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    settings = load_settings(str(config))
    subprocess.run(["rm", "-rf", str(settings.shm_dir)], check=False)


def _restart(config: Path) -> None:
    _run("server", "start", config=config)


def _kill9(config: Path) -> None:
    pid = _pid(config.parent)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def test_cache_outlives_the_client_and_a_new_process_attaches_without_the_source(
        server, table, pg_engine):
    out = _python(f"""
        import ldw, pyarrow.compute as pc
        wh = ldw.connect(config={str(server)!r}, autostart=False)
        ds = wh.map("events", {table!r}).cache()
        print(ds.info()["version"], pc.sum(ds.to_arrow()["id"]).as_py())
    """)
    version, total = out.split()
    with pg_engine.begin() as conn:  # the source is gone: only the cache can answer now
        conn.exec_driver_sql(f"drop table {table[3:]}")
    out = _python(f"""
        import ldw, pyarrow.compute as pc
        wh = ldw.connect(config={str(server)!r}, autostart=False)
        ds = wh.dataset("events")
        t = ds.to_arrow()
        print(ds.info()["version"], pc.sum(t["id"]).as_py(), t.num_rows)
    """)
    assert out.split() == [version, total, str(ROWS)]
    status = json.loads(_run("server", "status", "--json", config=server).stdout)
    assert status["hits"]["root/events" if os.getuid() == 0 else next(iter(status["hits"]))] >= 2


def test_autostarted_server_survives_the_kernel_process_group(tmp_path, table):
    config = _write_config(tmp_path)
    kernel = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import ldw, time
        wh = ldw.connect(config={str(config)!r})   # no server yet: autostart
        wh.map("events", {table!r}).cache()
        print("ready", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert kernel.stdout.readline().strip() == "ready"
        server_pid = _pid(tmp_path)
        os.killpg(kernel.pid, signal.SIGKILL)  # what a Jupyter kernel restart does
        kernel.wait(timeout=10)
        time.sleep(0.2)
        assert _alive(server_pid)
        wh = ldw.connect(config=str(config), autostart=False)
        assert wh.dataset("events").to_arrow().num_rows == ROWS
        assert _pid(tmp_path) == server_pid
    finally:
        _run("server", "stop", config=config, check=False)
        subprocess.run(["rm", "-rf", str(load_settings(str(config)).shm_dir)])


def test_kill9_mid_materialization_publishes_nothing_and_recovers(server, pg_engine, pg_schema):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create table {pg_schema}.big as select g as id, repeat('x', 100) as pad "
            "from generate_series(1, 1500000) g")
    wh = ldw.connect(config=str(server), autostart=False)
    wh.map("big", f"pg.{pg_schema}.big")
    shm = load_settings(str(server)).shm_dir
    errors: list[BaseException] = []

    def cache() -> None:
        try:
            wh.dataset("big").cache()
        except BaseException as exc:  # the server dies under us
            errors.append(exc)

    worker = threading.Thread(target=cache)
    worker.start()
    deadline = time.monotonic() + 60
    while not list(shm.rglob(".tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(shm.rglob(".tmp-*")), "the materialization never started writing"
    _kill9(server)
    worker.join(timeout=30)
    assert errors and isinstance(errors[0], ldw.ServerUnavailable)
    assert not list(shm.rglob("*.arrow")) or all(p.name.startswith(".tmp-")
                                                 for p in shm.rglob("*.arrow"))
    _restart(server)
    assert not list(shm.rglob(".tmp-*")), "orphans are cleaned at start"
    wh = ldw.connect(config=str(server), autostart=False)
    ds = wh.dataset("big")  # the catalog kept the mapping
    assert ds.state == "mapped"  # never published: no version to adopt
    assert ds.to_arrow().num_rows == 1_500_000  # recomputed from lineage


def test_surviving_versions_are_readopted_and_memory_only_ones_reported_lost(server, table):
    wh = ldw.connect(config=str(server), autostart=False)
    kept = wh.map("kept", table).cache()
    secret = wh.map("secret", table, memory_only=True).cache()
    version = kept.info()["version"]
    _kill9(server)
    # the machine "rebooted" for the memory-only version: its shared-memory file is gone
    shm = load_settings(str(server)).shm_dir
    for path in (shm / "root" / "secret").glob("*.arrow") if os.getuid() == 0 else []:
        path.unlink()
    _restart(server)
    wh = ldw.connect(config=str(server), autostart=False)
    kept, secret = wh.dataset("kept"), wh.dataset("secret")
    assert kept.state == "cached" and kept.info()["version"] == version
    assert secret.state == "lost"
    with pytest.raises(ldw.DatasetLost, match="refresh"):
        secret.to_arrow()
    assert secret.refresh().to_arrow().num_rows == ROWS


def test_reader_keeps_its_mapping_after_the_server_is_killed(server, table):
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import ldw, sys, pyarrow.compute as pc
        wh = ldw.connect(config={str(server)!r}, autostart=False)
        t = wh.map("events", {table!r}).to_arrow()
        print("mapped", flush=True)
        sys.stdin.readline()                      # the server is killed meanwhile
        print(pc.sum(t["id"]).as_py(), t.num_rows, flush=True)
        try:
            wh.datasets()
        except ldw.ServerUnavailable as exc:
            print("unavailable", flush=True)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "mapped"
    _kill9(server)
    out, err = child.communicate("go\n", timeout=60)
    assert child.returncode == 0, err
    assert out.split() == [str(ROWS * (ROWS + 1) // 2), str(ROWS), "unavailable"]


def test_capacity_spills_lru_to_disk_pins_stay_and_memory_only_never_touches_disk(
        tmp_path, pg_engine, pg_schema):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.t as select g as id, g * 2 as v "
                             "from generate_series(1, 100000) g")  # ~1.2 MB as Arrow
    config = _write_config(tmp_path, memory_limit="3MiB")
    _run("server", "start", config=config)
    try:
        wh = ldw.connect(config=str(config), autostart=False)
        ref = f"pg.{pg_schema}.t"
        pinned = wh.map("pinned", ref, pin=True).cache()
        old = wh.map("old", ref).cache()
        expected = old.to_arrow()
        wh.map("volatile", ref, memory_only=True).cache()
        time.sleep(0.01)
        wh.map("new", ref).cache()      # over the cap: the least recently used gives way
        states = dict(zip(wh.datasets()["name"], wh.datasets()["state"], strict=True))
        assert states["pinned"] == "cached" and states["new"] == "cached"
        assert states["old"] == "spilled"
        assert states["volatile"] in ("cached", "evicted")
        spill = tmp_path / "spill"
        assert list(spill.rglob("*.arrow")) and not list(spill.rglob("volatile/*"))
        assert old.to_arrow().equals(expected)   # served from the disk tier
        wh.map("newer", ref).cache()
        assert wh.dataset("volatile").state == "evicted"  # dropped, never spilled
        assert not list(spill.rglob("volatile/*"))
        assert pinned.state == "cached"
        status = wh.status()
        assert status["used_bytes"] <= status["memory_limit"]
        with pytest.raises(ldw.CapacityExceeded, match="memory_limit"):
            wh.map("huge", sql="select g as id, repeat('y', 100) as pad from "
                   "generate_series(1, 200000) g", source="pg").cache()
    finally:
        _run("server", "stop", config=config, check=False)
        subprocess.run(["rm", "-rf", str(load_settings(str(config)).shm_dir)])


def test_a_second_server_for_the_same_state_dir_refuses(server):
    done = subprocess.run([sys.executable, "-m", "ldw.cli", "--config", str(server), "server",
                           "start", "--foreground"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "already runs" in done.stderr


def test_data_files_are_private_and_other_users_are_refused(tmp_path, table):
    state = Path("/tmp") / f"ldw-test-state-{uuid.uuid4().hex[:8]}"  # reachable by 'nobody'
    config = _write_config(tmp_path, state_dir=state)
    _run("server", "start", config=config)
    try:
        wh = ldw.connect(config=str(config), autostart=False)
        wh.map("events", table).cache()
        shm = load_settings(str(config)).shm_dir
        files = list(shm.rglob("*.arrow"))
        assert files and all(p.stat().st_mode & 0o077 == 0 for p in files)
        assert shm.stat().st_mode & 0o077 == 0
        if os.getuid() != 0:
            pytest.skip("needs root to act as another user")
        os.chmod(state, 0o711)  # let 'nobody' reach the socket; peer credentials decide
        done = subprocess.run(  # starts as root, then becomes 'nobody' before it connects
            [sys.executable, "-c", textwrap.dedent(f"""
                import os, socket
                os.setgid(65534); os.setuid(65534)
                s = socket.socket(socket.AF_UNIX); s.connect({str(state / "ldw.sock")!r})
                try:  # the server may refuse (and hang up) before reading the request
                    s.sendall(b'{{"op": "datasets", "args": {{}}}}\\n')
                except BrokenPipeError:
                    pass
                print(s.recv(65536).decode())
            """)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["ok"] is False and answer["error"]["type"] == "AccessDenied"
    finally:
        _run("server", "stop", config=config, check=False)
        subprocess.run(["rm", "-rf", str(state), str(load_settings(str(config)).shm_dir)])


def test_flight_requires_a_token_and_tickets_are_single_use(server, table):
    status = json.loads(_run("server", "status", "--json", config=server).stdout)
    address = status["flight"]
    token = _run("user", "add", "bob", config=server).stdout.split()[-1]
    other = _run("user", "add", "carol", config=server).stdout.split()[-1]
    with pytest.raises(ldw.AccessDenied, match="token"):
        ldw.connect(address, token="ldw_not-a-token")
    with pytest.raises(ldw.ConfigError, match="token"):
        ldw.connect(address, token="")
    bob = ldw.connect(address, token=token)
    ds = bob.map("events", table)
    seen = []
    ds.cache(progress=seen.append)
    assert seen and seen[-1].done and seen[-1].rows == ROWS
    remote = ds.to_arrow()
    local = ldw.connect(config=str(server), autostart=False)
    assert [r["name"] for r in local._backend.call("datasets")] == []  # bob's, not root's
    assert pc.sum(remote["id"]).as_py() == ROWS * (ROWS + 1) // 2
    backend = bob._backend
    ticket = backend.call("attach", {"name": "events"})["ticket"]
    carol = ldw.connect(address, token=other)._backend
    with pytest.raises(ldw.AccessDenied, match="ticket"):
        carol._get(ticket).read_all()  # another user's ticket
    assert backend._get(ticket).read_all().num_rows == ROWS
    with pytest.raises(ldw.AccessDenied, match="ticket"):
        backend._get(ticket).read_all()  # used once already
    with pytest.raises(ldw.UnknownDataset):
        ldw.connect(address, token=other).dataset("events")
    import pyarrow.flight as fl
    raw = fl.FlightClient(address.replace("grpc://", "grpc+tcp://"))
    for call in (lambda: list(raw.do_action(fl.Action("datasets", b"{}"))),
                 lambda: raw.do_get(fl.Ticket(bytes.fromhex(ticket))).read_all(),
                 lambda: list(raw.list_actions())):
        with pytest.raises(fl.FlightUnauthenticatedError):
            call()


def test_lazy_scan_over_the_server_pushes_down(server, table):
    import polars as pl
    wh = ldw.connect(config=str(server), autostart=False)
    ds = wh.map("events", table)
    got = ds.lazy().filter(pl.col("id") <= 5).select("id", "amount").collect()
    assert sorted(got["id"].to_list()) == [1, 2, 3, 4, 5]
    assert ds.state == "mapped"  # nothing cached by a lazy read
    assert ds.head(3).height == 3


def test_single_flight_and_ttl(shm_dir, pg_engine, table):
    wh = make_warehouse(shm_dir, pg={"url": POSTGRES_URL})
    ds = wh.map("events", table, ttl="1s")
    before = len(wh._engine.query_log)
    threads = [threading.Thread(target=ds.cache) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wh._engine.query_log) == before + 1  # one source query for six callers
    version = ds.info()["version"]
    time.sleep(1.2)
    assert ds.state == "evicted"  # the TTL expired the version
    assert ds.to_arrow().num_rows == ROWS and ds.info()["version"] != version
    wh.close()


def test_stale_flag_when_a_refresh_fails(shm_dir, pg_engine, table):
    wh = make_warehouse(shm_dir, pg={"url": POSTGRES_URL})
    ds = wh.map("events", table).cache()
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"drop table {table[3:]}")
    with pytest.raises(ldw.SourceError):
        ds.refresh()
    info = ds.info()
    assert info["state"] == "cached" and info["stale"] and info["error"]
    assert ds.to_arrow().num_rows == ROWS  # the previous version is still served
    wh.close()


def test_arrow_from_the_socket_equals_in_process(server, table, shm_dir):
    wh = ldw.connect(config=str(server), autostart=False)
    served = wh.map("events", table).to_arrow()
    local = make_warehouse(shm_dir, pg={"url": POSTGRES_URL})
    direct = local.map("events", table).to_arrow()
    assert served.equals(direct)
    assert isinstance(served, pa.Table)
    local.close()


def test_sql_over_datasets_on_every_transport(server, table, shm_dir):
    query = ("SELECT who, count(*) AS n, sum(amount) AS total FROM events "
             "WHERE id <= 977 GROUP BY who ORDER BY who LIMIT 3")
    local = ldw.connect(config=str(server), autostart=False)
    local.map("events", table)
    token = _run("user", "add", "dave", config=server).stdout.split()[-1]
    address = json.loads(_run("server", "status", "--json", config=server).stdout)["flight"]
    remote = ldw.connect(address, token=token)
    remote.map("events", table)
    inproc = make_warehouse(shm_dir, pg={"url": POSTGRES_URL})
    inproc.map("events", table)
    results = [wh.sql(query) for wh in (local, remote, inproc)]
    assert results[0].height == 3 and results[0]["n"].to_list() == [1, 1, 1]
    assert results[0].equals(results[1]) and results[0].equals(results[2])
    for wh in (local, remote):
        with pytest.raises(ldw.InvalidMapping):
            wh.sql("SELECT * FROM read_parquet('/etc/passwd')")
        with pytest.raises(ldw.UnknownDataset):
            wh.sql("SELECT * FROM nobody_has_this")
    empty = local.sql("SELECT id FROM events WHERE id < 0")
    assert empty.height == 0 and empty.columns == ["id"]
    inproc.close()


def _flight_calls(fl, client, options, ticket: bytes) -> dict:
    """Every Flight RPC once, with the given call options."""
    descriptor = fl.FlightDescriptor.for_path("events")
    schema = pa.schema([("x", pa.int64())])

    def put():
        writer, _ = client.do_put(descriptor, schema, options=options)
        writer.write_table(pa.table({"x": [1]}))
        writer.close()

    def exchange():
        writer, reader = client.do_exchange(descriptor, options=options)
        writer.begin(schema)
        writer.close()
        reader.read_all()

    return {
        "do_action": lambda: list(client.do_action(fl.Action("datasets", b"{}"),
                                                   options=options)),
        "list_actions": lambda: list(client.list_actions(options=options)),
        "do_get": lambda: client.do_get(fl.Ticket(ticket), options=options).read_all(),
        "list_flights": lambda: list(client.list_flights(options=options)),
        "get_flight_info": lambda: client.get_flight_info(descriptor, options=options),
        "get_schema": lambda: client.get_schema(descriptor, options=options),
        "do_put": put,
        "do_exchange": exchange,
    }


def test_every_flight_method_refuses_missing_wrong_and_revoked_tokens(server, table):
    import pyarrow.flight as fl
    address = json.loads(_run("server", "status", "--json", config=server).stdout)["flight"]
    token = _run("user", "add", "erin", config=server).stdout.split()[-1]
    erin = ldw.connect(address, token=token)
    erin.map("events", table).cache()
    ticket = bytes.fromhex(erin._backend.call("attach", {"name": "events"})["ticket"])
    client = fl.FlightClient(address.replace("grpc://", "grpc+tcp://"))
    bearer = [(b"authorization", f"Bearer {token}".encode())]
    assert list(client.list_actions(options=fl.FlightCallOptions(headers=bearer)))
    _run("user", "revoke", "erin", config=server)
    refusals = {
        "none": fl.FlightCallOptions(),
        "wrong": fl.FlightCallOptions(headers=[(b"authorization", b"Bearer ldw_wrong")]),
        "revoked": fl.FlightCallOptions(headers=bearer),
    }
    for kind, options in refusals.items():
        for method, call in _flight_calls(fl, client, options, ticket).items():
            # get_schema surfaces the status as a plain OSError on the client side
            with pytest.raises((fl.FlightUnauthenticatedError, OSError),
                               match="ldw token is required"):
                call()
                pytest.fail(f"{method} with {kind} token was not refused")
    with pytest.raises(ldw.AccessDenied):
        erin.datasets()


def test_flight_over_tls(tmp_path, table):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    config = _write_config(tmp_path, listen="grpc+tls://localhost:0", tls_cert=cert,
                           tls_key=key)
    _run("server", "start", config=config)
    try:
        address = json.loads(_run("server", "status", "--json", config=config).stdout)["flight"]
        assert address.startswith("grpc+tls://localhost:")
        token = _run("user", "add", "fred", config=config).stdout.split()[-1]
        wh = ldw.connect(address, token=token, tls_root_certs=cert)
        assert wh.map("events", table).to_arrow().num_rows == ROWS
        plain = address.replace("grpc+tls://", "grpc://")
        with pytest.raises(ldw.LdwError):  # plaintext against a TLS port
            ldw.connect(plain, token=token)
    finally:
        _run("server", "stop", config=config, check=False)
        subprocess.run(["rm", "-rf", str(load_settings(str(config)).shm_dir)])


def test_a_real_jupyter_kernel_restart_keeps_the_cache(server, table):
    from jupyter_client.manager import start_new_kernel

    def run(client, code: str) -> str:
        reply_text: list[str] = []
        reply = client.execute_interactive(
            code, timeout=120,
            output_hook=lambda msg: reply_text.append(msg["content"].get("text", ""))
            if msg["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok", reply["content"]
        return "".join(reply_text).strip()

    manager, client = start_new_kernel(kernel_name="python3")
    try:
        first = run(client, f"import ldw\nwh = ldw.connect(config={str(server)!r}, "
                            f"autostart=False)\nds = wh.map('events', {table!r}).cache()\n"
                            "print(ds.info()['version'])")
        server_pid = _pid(server.parent)
        manager.restart_kernel(now=True)
        client.wait_for_ready(timeout=60)
        second = run(client, f"import ldw\nwh = ldw.connect(config={str(server)!r}, "
                             "autostart=False)\nds = wh.dataset('events')\n"
                             "print(ds.info()['version'], ds.to_arrow().num_rows)")
        assert second.split() == [first, str(ROWS)]
        assert _pid(server.parent) == server_pid and _alive(server_pid)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def test_capacity_of_a_few_hundred_mb_is_never_exceeded(tmp_path, pg_engine, pg_schema):
    with pg_engine.begin() as conn:  # about 60 MB as Arrow
        conn.exec_driver_sql(f"create table {pg_schema}.wide as select g::bigint as a, "
                             "g::bigint * 3 as b, g::float8 / 7 as c from "
                             "generate_series(1, 2500000) g")
    cap = 150 * 2**20
    config = _write_config(tmp_path, memory_limit=str(cap))
    _run("server", "start", config=config)
    shm = load_settings(str(config)).shm_dir
    peak = [0]
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                peak[0] = max(peak[0], sum(p.stat().st_size for p in shm.rglob("*")
                                           if p.is_file()))
            time.sleep(0.005)

    import contextlib
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        wh = ldw.connect(config=str(config), autostart=False)
        pid = _pid(tmp_path)
        ref = f"pg.{pg_schema}.wide"
        for i in range(4):
            wh.map(f"load{i}", ref, memory_only=(i == 2)).cache()
        with pytest.raises(ldw.CapacityExceeded):
            wh.map("toobig", sql=f"select a, b, c, a as d, b as e, c as f from {pg_schema}.wide "
                   f"union all select a, b, c, a, b, c from {pg_schema}.wide",
                   source="pg").cache()
        states = dict(zip(wh.datasets()["name"], wh.datasets()["state"], strict=True))
        assert _alive(pid)
        # the failed load may have made room first (its size is unknown until it streams)
        assert "spilled" in states.values() and states["toobig"] == "failed"
        assert not list((tmp_path / "spill").rglob("load2/*"))  # memory-only never spilled
        for i in (0, 1, 3):
            assert wh.dataset(f"load{i}").to_arrow().num_rows == 2_500_000
    finally:
        stop.set()
        watcher.join()
        _run("server", "stop", config=config, check=False)
        subprocess.run(["rm", "-rf", str(shm)])
    assert peak[0] <= cap + 2 * 2**20, f"shared memory peaked at {peak[0] / 2**20:.1f} MiB"


def test_large_streams_over_the_socket_arrive_whole(server, table):
    wh = ldw.connect(config=str(server), autostart=False)
    ds = wh.map("events", table)
    lazy = ds.lazy().collect()                 # an uncached scan streamed over the socket
    assert lazy.height == ROWS
    result = wh.sql("SELECT * FROM events")    # a large SQL result streamed back
    assert result.height == ROWS
    assert result["id"].cast(pl.Int64).sum() == ROWS * (ROWS + 1) // 2


def test_an_autostarted_server_gets_every_server_override(tmp_path, table):
    """connect(**overrides) hands every [server] setting to the server it starts (the client
    once re-listed them and dropped mask_key_file and ray_address)."""
    config = _write_config(tmp_path)
    key = tmp_path / "custom-mask.key"
    kernel = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import ldw
        wh = ldw.connect(config={str(config)!r}, mask_key_file={str(key)!r},
                         max_streams_per_user=3, sql_timeout="7m")
        print(wh.status()["pid"])
    """)], capture_output=True, text=True, timeout=120)
    try:
        assert kernel.returncode == 0, kernel.stderr
        pid = int(kernel.stdout.split()[-1])
        environ = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text()
                       .split("\0") if "=" in item)
        assert environ["LDW_MASK_KEY_FILE"] == str(key)
        assert environ["LDW_MAX_STREAMS_PER_USER"] == "3"
        assert environ["LDW_SQL_TIMEOUT"] == "7m"
    finally:
        _run("server", "stop", config=config, check=False)
        subprocess.run(["rm", "-rf", str(load_settings(str(config)).shm_dir)])
