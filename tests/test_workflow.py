"""The everyday notebook workflow (issue 16, item 8), each fix through the interface it is about:
a real Jupyter kernel for the notebook ones, the ``ldw`` command for the command-line ones,
real PostgreSQL where a source must be slow or estimate its rows, SQLite elsewhere.

a. ``%ldw attach NAME`` binds one of your own datasets;
b. a server that cannot start (the Flight port is taken) makes ``ldw server start`` and the
   autostart fail with the reason;
c. ``ldw server stop`` says what cache stays; ``--drop-cache`` drops it;
d. an interrupted materialization is ``cancelled`` with the reason and retried; progress carries
   the rows to expect, with the percentage and the time left;
e. a server running another configuration is detected; ``%ldw reload`` / ``ldw server reload``
   re-read it without dropping the cache; the ``password_env`` hint names the server;
f. a checkout in a folder named ``ldw`` does not hide the package from the folder above;
g. a database URL given to ``%ldw connect`` is told where sources go; hints speak the
   interface (``--overwrite``);
h. mappings show their columns and ``where``; a cached dataset shows its first rows;
i. ``ldw --help`` lists ``demo``; README, docs and the install extras.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import POSTGRES_URL, ServerHandle

import ldw
from ldw.config import SERVER_KEYS, SourceConfig

ROOT = Path(__file__).resolve().parent.parent
ITEMS = 1000


# -- a real kernel ---------------------------------------------------------------------------------

@dataclass
class Out:
    """What one cell printed and showed: ``text`` (stdout, stderr, errors), rich ``data``."""

    text: str = ""
    error: str | None = None
    data: list[dict[str, str]] = field(default_factory=list)
    status: str = "ok"

    @property
    def plain(self) -> str:
        return "\n".join(d.get("text/plain", "") for d in self.data)

    @property
    def html(self) -> str:
        return "\n".join(d.get("text/html", "") for d in self.data)


def _kernel_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDW_")}
    # the kernel spec runs `python`: make it this interpreter (the venv's)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class Kernel:
    """A Jupyter kernel (ipykernel, started as JupyterLab starts one) in folder ``cwd``."""

    def __init__(self, cwd: Path) -> None:
        from jupyter_client.manager import start_new_kernel

        self.manager, self.client = start_new_kernel(kernel_name="python3", cwd=str(cwd),
                                                     env=_kernel_env())

    def start(self, code: str) -> str:
        return self.client.execute(code)

    def wait(self, msg_id: str, timeout: float = 180) -> Out:
        out = Out()
        deadline = time.monotonic() + timeout
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the cell did not finish within {timeout}s: {out}") \
                    from None
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.text += content["text"]
            elif kind == "error":
                out.error = f"{content['ename']}: {content['evalue']}"
                out.text += out.error + "\n"
                out.status = "error"
            elif kind in ("execute_result", "display_data"):
                out.data.append(content["data"])
            elif kind == "status" and content["execution_state"] == "idle":
                return out

    def run(self, code: str, timeout: float = 180) -> Out:
        return self.wait(self.start(code), timeout)

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    started = Kernel(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def items_db(tmp_path: Path) -> Path:
    db = tmp_path / "shop.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table items (id integer primary key, name text, price real)")
        conn.executemany("insert into items values (?, ?, ?)",
                         [(i, f"item{i}", i * 0.5) for i in range(1, ITEMS + 1)])
    conn.close()
    return db


def _config(folder: Path, name: str, body: str = "", **server: str) -> Path:
    """An ldw.toml with its own state, shared memory and catalog under ``folder``."""
    settings = {"state_dir": folder / "state", "shm_dir": folder / "shm",
                "spill_dir": folder / "spill", "catalog": f"sqlite:///{folder / 'catalog.db'}",
                "mask_key_file": folder / "keys" / "mask.key", "listen": "", **server}
    lines = ["[server]"] + [f"{k} = {json.dumps(str(v))}" for k, v in settings.items()]
    path = folder / name
    path.write_text("\n".join(lines) + "\n" + body)
    return path


def _lite(db: Path) -> str:
    return f'[sources.lite]\nurl = "sqlite:///{db}"\n'


def _cli(config: Path | None, *args: str, cwd: Path | None = None
         ) -> subprocess.CompletedProcess:
    prefix = ["--config", str(config)] if config is not None else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDW_")}
    return subprocess.run([sys.executable, "-m", "ldw.cli", *prefix, *args], capture_output=True,
                          text=True, timeout=180, check=False, env=env, cwd=cwd)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in SERVER_KEYS:  # nothing inherited from the test's own environment
        monkeypatch.delenv(f"LDW_{key.upper()}", raising=False)
    for name in ("LDW_CONFIG", "LDW_CONFIG_JSON"):
        monkeypatch.delenv(name, raising=False)


# -- a. attach by a bare name ----------------------------------------------------------------------

def test_attach_takes_a_bare_name_for_ones_own_dataset(kernel: Kernel, tmp_path: Path,
                                                       items_db: Path) -> None:
    config = _config(tmp_path, "ldw.toml", _lite(items_db))
    assert kernel.run(f"%load_ext ldw\n%ldw connect --in-process --config {config}").status \
        == "ok"
    assert kernel.run("%ldw map lineitem = lite.main.items --cache").status == "ok"
    bound = kernel.run("%ldw attach lineitem --as mine\n"
                       "print(mine.name, mine.state, mine.to_polars().height)")
    assert bound.status == "ok" and bound.text.split() == ["lineitem", "cached", str(ITEMS)]
    again = kernel.run("%ldw attach lineitem\nprint(lineitem is not None, lineitem.name)")
    assert again.text.split() == ["True", "lineitem"]
    missing = kernel.run("%ldw attach nosuch")
    assert "you have no dataset named 'nosuch'" in missing.text
    assert "must be OWNER/NAME, e.g. alice/nosuch" in missing.text
    # the Python API takes the same spellings
    wh = ldw.connect(in_process=True, config=str(config))
    try:
        wh.map("mine", "lite.main.items")
        assert wh.attach("mine").name == "mine" and wh.attach("mine").owner is None
        with pytest.raises(ldw.UnknownDataset):
            wh.attach("nosuch")
        with pytest.raises(ldw.InvalidMapping, match="NAME"):
            wh.attach("/mine")
    finally:
        wh.close()


# -- b. a server that cannot start says why --------------------------------------------------------

@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_server_start_with_the_flight_port_taken_fails_with_the_reason(
        tmp_path: Path, items_db: Path, taken_port: int, clean_env: None) -> None:
    config = _config(tmp_path, "ldw.toml", _lite(items_db),
                     listen=f"grpc://127.0.0.1:{taken_port}")
    started = _cli(config, "server", "start")
    assert started.returncode != 0, started.stdout
    assert "started" not in started.stdout
    assert f"Flight cannot listen on grpc://127.0.0.1:{taken_port}" in started.stderr
    assert "Address already in use" in started.stderr
    assert "[server] listen" in started.stderr and "server.log" in started.stderr
    assert not (tmp_path / "state" / "ldw.sock").exists()
    assert "not running" in _cli(config, "server", "status").stdout

    # the Python autostart path says the same
    with pytest.raises(ldw.ServerUnavailable, match="Address already in use") as raised:
        ldw.connect(config=str(config))
    assert f"port {taken_port}" in str(raised.value)
    assert "not running" in _cli(config, "server", "status").stdout


# -- c. stopping keeps the cache and says so; --drop-cache drops it --------------------------------

def _arrow_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.arrow") if p.is_file()] if folder.exists() else []


def test_server_stop_says_what_stays_and_drop_cache_frees_it(
        tmp_path: Path, items_db: Path, clean_env: None) -> None:
    server = ServerHandle(tmp_path, listen="", extra_toml=_lite(items_db)).start()
    try:
        wh = server.local()
        wh.map("items", "lite.main.items").cache()
        size = wh.dataset("items").info()["bytes"]
        wh.close()
        assert len(_arrow_files(server.shm)) == 1

        stopped = server.cli("server", "stop")
        assert "stopped" in stopped.stdout
        assert (f"the cache stays for the next start: 1 version(s), {size / 2**20:,.1f} MiB in "
                f"{server.shm}") in stopped.stdout
        assert "ldw server stop --drop-cache" in stopped.stdout
        assert len(_arrow_files(server.shm)) == 1  # the default keeps it: a core promise

        server.start()
        wh = server.local()
        again = wh.dataset("items").info()
        assert again["state"] == "cached" and again["bytes"] == size
        wh.close()
        dropped = server.cli("server", "stop", "--drop-cache")
        assert f"cache dropped: 1 version(s), {size / 2**20:,.1f} MiB in {server.shm}" \
            in dropped.stdout
        assert "the mappings stay" in dropped.stdout
        assert _arrow_files(server.shm) == []

        server.start()
        wh = server.local()
        info = wh.dataset("items").info()
        assert info["state"] == "evicted" and info["version"] is None  # the mapping stayed
        assert wh.dataset("items").to_polars().height == ITEMS       # and reloads
        audit = wh.audit(limit=50)
        assert "drop_cache" in audit["action"].to_list()
        wh.close()
        server.cli("server", "stop")
        # with no server running, --drop-cache opens the store itself
        assert len(_arrow_files(server.shm)) == 1
        offline = server.cli("server", "stop", "--drop-cache")
        assert "no ldw server running" in offline.stdout
        assert "cache dropped: 1 version(s)" in offline.stdout
        assert _arrow_files(server.shm) == []
    finally:
        server.stop()


# -- d. an interrupt is a cancellation; progress knows the rows to expect --------------------------

SLOW_ROWS = 3000
RUNNING = ("select count(*) from pg_stat_activity where state = 'active' and query like "
           "'%/* ldw:%' and query like :pattern and query not ilike 'explain%' "
           "and pid <> pg_backend_pid()")


@pytest.mark.postgres
def test_an_interrupted_cache_is_cancelled_with_its_reason_and_retried(
        kernel: Kernel, tmp_path: Path, pg_engine: sa.Engine, pg_schema: str,
        clean_env: None) -> None:
    with pg_engine.begin() as conn:  # 2 ms a row while ctl says so, as in test_cancel
        conn.exec_driver_sql(f"create table {pg_schema}.ctl (delay float8)")
        conn.exec_driver_sql(f"insert into {pg_schema}.ctl values (0.002)")
        conn.exec_driver_sql(
            f"create function {pg_schema}.slow_z(i int) returns boolean language plpgsql "
            f"stable as $$ begin perform pg_sleep((select delay from {pg_schema}.ctl)); "
            "return i > 0; end $$")
        conn.exec_driver_sql(f"create view {pg_schema}.slow as select i, "
                             f"{pg_schema}.slow_z(i) as z from generate_series(1, {SLOW_ROWS}) i")
    (tmp_path / "server").mkdir()
    server = ServerHandle(tmp_path / "server", listen="", batch_rows="50").start()
    try:
        assert kernel.run(f"%load_ext ldw\n%ldw connect --config {server.config}\n"
                          f"%ldw map slow = pg.{pg_schema}.slow").status == "ok"
        running = kernel.start("%ldw cache slow")
        deadline = time.monotonic() + 60
        with pg_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while conn.execute(sa.text(RUNNING), {"pattern": f"%{pg_schema}%slow%"}
                               ).scalar_one() == 0:
                assert time.monotonic() < deadline, \
                    f"the read never ran on the source: {kernel.wait(running, 5)}"
                time.sleep(0.05)
        kernel.manager.interrupt_kernel()
        interrupted = kernel.wait(running)
        assert "%ldw cache: interrupted" in interrupted.text

        wh = server.local()
        deadline = time.monotonic() + 60
        while (state := wh.dataset("slow").info()["state"]) == "materializing":
            assert time.monotonic() < deadline, "the server never noticed the interrupt"
            time.sleep(0.1)
        wh.close()
        assert state == "cancelled"
        info = kernel.run("%ldw info slow")
        assert "cancelled" in info.plain
        assert "the client went away while the dataset was loading" in info.plain
        assert "Broken pipe" not in info.plain and "Errno" not in info.plain
        assert "nothing was kept" in info.plain and "the next read tries again" in info.plain

        with pg_engine.begin() as conn:
            conn.exec_driver_sql(f"update {pg_schema}.ctl set delay = 0")
        retried = kernel.run("%ldw cache slow\nprint(slow.state, slow.info()['rows'])")
        assert retried.text.split()[-2:] == ["cached", str(SLOW_ROWS)]
    finally:
        server.stop()


@pytest.mark.postgres
def test_progress_carries_the_rows_to_expect_with_percentage_and_time_left(
        pg_engine: sa.Engine, pg_schema: str, shm_dir: str) -> None:
    from ldw.extension import ProgressReporter
    from ldw.types import Progress

    rows = 200_000
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.big as select g as id, 'v' || g as v "
                             f"from generate_series(1, {rows}) g")
        conn.exec_driver_sql(f"analyze {pg_schema}.big")
    wh = ldw.connect(in_process=True, config={"sources": {"pg": {"url": POSTGRES_URL}}},
                     shm_dir=shm_dir, spill_dir=f"{shm_dir}-spill")
    try:
        events: list[Progress] = []
        ds = wh.map("big", f"pg.{pg_schema}.big").cache(progress=events.append)
        assert events[-1].done and events[-1].total_rows == rows
        estimated = [e.total_rows for e in events if not e.done]
        assert set(estimated) <= {rows, None} and rows in estimated  # PostgreSQL's estimate
        refreshed: list[Progress] = []
        ds.refresh(progress=refreshed.append)  # a refresh expects the last version's rows
        assert all(e.total_rows == rows for e in refreshed)
        limited: list[Progress] = []
        wh.map("few", f"pg.{pg_schema}.big", limit=1000).cache(progress=limited.append)
        assert limited[-1].total_rows == 1000
    finally:
        wh.close()

    class Terminal:
        text = ""

        def isatty(self) -> bool:
            return True

        def write(self, text: str) -> None:
            self.text += text

        def flush(self) -> None:
            pass

    screen = Terminal()
    reporter = ProgressReporter(widgets=False, stream=screen, min_interval=0)  # type: ignore
    reporter(Progress("big", 50_000, 10**6, 2.0, total_rows=rows))
    assert "50,000 rows of ~200,000 (25%, ~6.0 s left)" in screen.text
    reporter(Progress("big", rows, 4 * 10**6, 8.0, done=True, total_rows=rows))
    assert "cached big: 200,000 rows ·" in screen.text
    reporter(Progress("other", 10, 100, 1.0))  # no estimate: no percentage
    assert "caching other: 10 rows ·" in screen.text


# -- e. a server running another configuration; reload ---------------------------------------------

def test_a_server_with_another_config_is_named_and_reload_applies_the_file(
        kernel: Kernel, tmp_path: Path, items_db: Path, clean_env: None) -> None:
    empty = _config(tmp_path, "empty.toml")
    full = _config(tmp_path, "ldw.toml", _lite(items_db))
    try:
        first = kernel.run(f"%load_ext ldw\n%ldw connect --config {empty}")
        assert "connected; 0 source(s)" in first.text and "note" not in first.text
        second = kernel.run(f"%ldw connect --config {full}")
        assert "0 source(s)" in second.text
        assert "ldw: note: the ldw server already running (pid" in second.text
        assert f"reads {empty}, not {full}" in second.text
        assert "%ldw reload makes it read this file (the cache stays)" in second.text
        unknown = kernel.run("%ldw map items = lite.main.items")
        assert f"add [sources.lite] to {empty}" in unknown.text
        assert "%ldw reload" in unknown.text and "wh.reload" not in unknown.text

        reloaded = kernel.run("%ldw reload")
        assert f"ldw: reloaded {full}; 1 source(s): lite (added: lite)" in reloaded.text
        assert "the cache is kept" in reloaded.text
        cached = kernel.run("%ldw map items = lite.main.items --cache\n"
                            "print(items.state, items.info()['version'])")
        state, version = cached.text.split()[-2:]
        assert state == "cached"

        # an edited file: said so, and a reload applies it; the cache is kept, what a new
        # policy changes is re-planned on the next read
        with open(full, "a") as handle:
            handle.write('[policies."lite.main.items"]\ncolumns.name = { mask = "redact" }\n')
        edited = kernel.run(f"%ldw connect --config {full}")
        assert f"{full} changed since the ldw server (pid" in edited.text
        untouched = kernel.run("print(items.info()['version'])")
        assert untouched.text.split() == [version]
        cli = _cli(full, "server", "reload")
        assert cli.returncode == 0, cli.stderr
        assert f"ldw server reloaded {full}: 1 source(s): lite" in cli.stdout
        assert "1 policies" in cli.stdout and "the cache is kept" in cli.stdout
        assert "note" not in kernel.run(f"%ldw connect --config {full}").text
        masked = kernel.run("print(items.to_polars()['name'].unique().to_list())")
        assert masked.text.split() == ["['***']"]
        records = kernel.run("import ldw\nprint([(r['action'], r['outcome']) for r in "
                             "ldw.connect(config=" + repr(str(full)) + ").audit(limit=100)"
                             ".iter_rows(named=True) if r['action'] == 'reload'])")
        assert records.text.split("\n")[0].count("('reload', 'allow')") == 2

        # [server] changes are listed, not applied
        full.write_text(full.read_text().replace('listen = ""', 'listen = "grpc://127.0.0.1:0"'))
        pending = kernel.run("%ldw reload")
        assert "not applied until the server restarts: [server] listen" in pending.text
    finally:
        _cli(full, "server", "stop")
        shutil.rmtree(tmp_path / "shm", ignore_errors=True)


def test_reload_is_for_the_owner_and_admins_and_audited(tmp_path: Path, items_db: Path) -> None:
    from ldw.engine import server_os_user

    config = _config(tmp_path, "ldw.toml", _lite(items_db) + '[users.ann]\nroles = ["admin"]\n'
                     '[users.bob]\nroles = ["analyst"]\n')
    other = _config(tmp_path, "other.toml", _lite(items_db))
    wh = ldw.connect(in_process=True, config=str(config))
    service = wh._backend.service
    try:
        with pytest.raises(ldw.AccessDenied, match="owner or the 'admin' role"):
            service.call("bob", "reload", {})
        with pytest.raises(ldw.AccessDenied, match="only the ldw server's owner may point"):
            service.call("ann", "reload", {"config": str(other)})
        assert service.call("ann", "reload", {})["sources"] == ["lite"]
        with pytest.raises(ldw.InvalidMapping, match="absolute path"):
            service.call(server_os_user(), "reload", {"config": "other.toml"})
        broken = tmp_path / "broken.toml"
        broken.write_text('[policies."lite.main.items"]\ncolumns.name = { mask = "nope" }\n')
        with pytest.raises(ldw.ConfigError, match="mask"):
            wh.reload(config=broken)
        assert wh.sources()["name"].to_list() == ["lite"]  # a bad file changed nothing
        report = wh.reload(config=other)
        assert report["users"] == [] and report["restart_needed"] == []
        rows = [(r["user"], r["outcome"]) for r in wh.audit(limit=50).iter_rows(named=True)
                if r["action"] == "reload"]
        assert ("bob", "deny") in rows and ("ann", "deny") in rows and ("ann", "allow") in rows
        assert (server_os_user(), "allow") in rows
    finally:
        wh.close()


def test_the_password_env_hint_names_the_server_process() -> None:
    source = SourceConfig("dwh", sa.make_url("postgresql://analyst@dwh/prod"),
                          password_env="LDW_TEST_UNSET_PASSWORD_VAR")
    with pytest.raises(ldw.ConfigError) as raised:
        source.password()
    message = str(raised.value)
    assert "$LDW_TEST_UNSET_PASSWORD_VAR" in message
    assert f"pid {os.getpid()}" in message and "the server, not your notebook" in message
    assert "restart" in message and "export it before connecting" not in message


# -- f. a checkout named ldw, seen from the folder above -------------------------------------------

def _checkout(parent: Path) -> Path:
    """A copy of this checkout in ``parent/ldw``, as `git clone ... ldw` makes it."""
    copy = parent / "ldw"
    copy.mkdir()
    for name in ("__init__.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    ignore = shutil.ignore_patterns("__pycache__")
    for name in ("ldw", "connectors", "extension", "docs"):
        shutil.copytree(ROOT / name, copy / name, ignore=ignore)
    return copy


def test_a_checkout_named_ldw_does_not_hide_the_package_from_the_folder_above(
        tmp_path: Path) -> None:
    copy = _checkout(tmp_path)
    installed = Path(ldw.__file__).resolve()
    kernel = Kernel(tmp_path)  # a notebook in the folder that holds the checkout
    try:
        loaded = kernel.run("%load_ext ldw\nimport ldw\nprint(ldw.__file__)\n"
                            "print(callable(ldw.connect), ldw.Dataset.__name__)")
        assert loaded.status == "ok", loaded.text
        assert loaded.text.split() == [str(installed), "True", "Dataset"]
        helped = kernel.run("%ldw --help")
        assert "%ldw VERB" in helped.text
    finally:
        kernel.close()
    # the same from a script, and without any ldw installed: the checkout's own package
    code = "import ldw; print(ldw.__file__, ldw.LdwError.__name__)"
    script = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=True)
    assert script.stdout.split() == [str(installed), "LdwError"]
    paths = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    bare = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False,  # -S: no .pth, no editable finder
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)})
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.split() == [str(copy / "ldw" / "__init__.py"), "LdwError"]


# -- g. database URLs and hints in the interface's own words ---------------------------------------

def test_a_database_url_is_told_where_sources_go_and_hints_speak_the_magics(
        kernel: Kernel, tmp_path: Path, items_db: Path) -> None:
    told = kernel.run("%load_ext ldw\n%ldw connect postgresql://analyst:s3cret@db.internal/prod")
    assert "needs a token" not in told.text
    assert "postgresql://analyst@db.internal/prod is a database, not an ldw server" in told.text
    assert '[sources.prod] url = "postgresql://analyst@db.internal/prod"' in told.text
    assert 'password_env = "PROD_PASSWORD"' in told.text
    assert "%ldw connect --config ldw.toml" in told.text and "ldw.connect(" not in told.text
    assert "s3cret" not in told.text
    with pytest.raises(ldw.ConfigError, match=r'ldw.connect\(config="ldw.toml"\)') as raised:
        ldw.connect("mysql://root:pw@127.0.0.1/shop")
    assert "pw@" not in str(raised.value) and "[sources.shop]" in str(raised.value)

    config = _config(tmp_path, "ldw.toml", _lite(items_db))
    target = tmp_path / "out" / "items"
    kernel.run(f"%ldw connect --in-process --config {config}\n%ldw map items = lite.main.items")
    assert kernel.run(f"%ldw export items {target}").status == "ok"
    refused = kernel.run(f"%ldw export items {target}")
    assert "already exists" in refused.text and "pass --overwrite" in refused.text
    assert "overwrite=True" not in refused.text
    assert kernel.run(f"%ldw export items {target} --overwrite").status == "ok"


def test_ldw_export_says_overwrite_as_a_flag(tmp_path: Path, items_db: Path,
                                             clean_env: None) -> None:
    server = ServerHandle(tmp_path, listen="", extra_toml=_lite(items_db)).start()
    try:
        server.local().map("items", "lite.main.items").cache()
        target = tmp_path / "export"
        assert server.cli("export", "items", str(target)).returncode == 0
        again = server.cli("export", "items", str(target), check=False)
        assert again.returncode == 2
        assert "pass --overwrite" in again.stderr and "overwrite=True" not in again.stderr
        assert server.cli("export", "items", str(target), "--overwrite").returncode == 0
    finally:
        server.stop()


# -- h. what tells two mappings apart; the first rows of a cached dataset --------------------------

def test_mappings_show_columns_and_where_and_a_cached_dataset_its_first_rows(
        kernel: Kernel, tmp_path: Path, items_db: Path) -> None:
    config = _config(tmp_path, "ldw.toml", _lite(items_db))
    kernel.run(f"%load_ext ldw\n%ldw connect --in-process --config {config} --as wh")
    kernel.run("%ldw map pricey = lite.main.items --columns id,name --where 'price > 495' --cache")
    kernel.run("%ldw map every = lite.main.items")
    sent = kernel.run("before = wh._engine.query_log.total")
    assert sent.status == "ok"
    shown = kernel.run("pricey")
    assert "columns id, name" in shown.plain and "where price &gt; 495" in shown.html
    assert "where price > 495" in shown.plain
    assert "first 5 rows" in shown.html and "5 more rows not shown" in shown.html
    assert all(f"item{i}" in shown.html for i in range(991, 996))
    assert "item990" not in shown.html and "item996" not in shown.html
    assert "first 5 rows:" in shown.plain and "item991" in shown.plain
    uncached = kernel.run("every")
    assert "first" not in uncached.plain and "item1" not in uncached.plain
    assert kernel.run("print(wh._engine.query_log.total - before)").text.split() == ["0"]
    listed = kernel.run("%ldw ls")
    assert "mapped_columns" in listed.html and "where" in listed.html
    assert "id, name" in listed.html and "price &gt; 495" in listed.html
    text = kernel.run("print(repr(pricey)); print(repr(every))").text.splitlines()
    assert text[0].endswith("from 'lite.main.items' columns [id, name] where price > 495>")
    assert text[1].endswith("from 'lite.main.items'>")


# -- i. the command's help, README and the install extras ------------------------------------------

def test_help_readme_and_extras_say_what_there_is() -> None:
    helped = _cli(None, "--help")
    assert helped.returncode == 0 and "demo" in helped.stdout and "server" in helped.stdout
    readme = (ROOT / "README.md").read_text()
    assert "being built" not in readme and "../shared" not in readme
    assert "DESIGN.md" not in readme and "[docs/design.md](docs/design.md)" in readme
    assert (ROOT / "docs" / "design.md").is_file()
    for command in ('pip install -e ".[notebook]"', 'pip install -e ".[dev]"',
                    "ldw server stop [--drop-cache]", "ldw server reload"):
        assert command in readme
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert {"notebook", "ray", "demo", "dev"} <= set(extras)
    assert any(r.startswith("ipykernel") for r in extras["notebook"])
    for name, requirements in extras.items():  # CI installs .[dev]: it must hold every extra
        assert set(requirements) <= set(extras["dev"]), name
