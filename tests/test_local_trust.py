"""Local trust (issue 12, F3, F4, F15): another OS user on the host, created by the test, tries to
plant the server's folders, read cached versions, make `ldw server stop` kill a process of its
choice and sit behind the server's socket. Each attack must be refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pytest
from conftest import ServerHandle

import ldw
from ldw.config import load_settings
from ldw.errors import ConfigError, LdwError
from ldw.storage import Store

pytestmark = pytest.mark.postgres

CANARY = "canary-7d1e0c"


class User(NamedTuple):
    name: str
    uid: int
    gid: int


@pytest.fixture
def attacker() -> Iterator[User]:
    """A second OS user with no home, removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second OS user")
    name = f"ldwatk{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    import pwd

    entry = pwd.getpwnam(name)
    yield User(name, entry.pw_uid, entry.pw_gid)
    subprocess.run(["pkill", "-KILL", "-u", name], check=False)  # only that user's processes
    subprocess.run(["userdel", name], check=False, capture_output=True)


def as_user(user: User, code: str, **popen: object) -> subprocess.CompletedProcess:
    """Run Python ``code`` as ``user`` (the system interpreter: no ldw needed to attack)."""
    return subprocess.run(["runuser", "-u", user.name, "--", "/usr/bin/python3", "-c",
                           textwrap.dedent(code)], capture_output=True, text=True, timeout=60,
                          cwd="/", **popen)


def spawn_as_user(user: User, code: str) -> subprocess.Popen:
    """Start ``code`` as ``user``; it prints 'ready' once set up and runs until stdin closes."""
    process = subprocess.Popen(["runuser", "-u", user.name, "--", "/usr/bin/python3", "-c",
                                textwrap.dedent(code)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    line = process.stdout.readline().strip()
    if line != "ready":
        process.kill()
        raise AssertionError(f"attacker setup failed: {line} {process.stderr.read()}")
    return process


def stop_spawned(process: subprocess.Popen) -> None:
    process.stdin.close()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def table(pg_engine, pg_schema) -> str:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.t as select g as id, 'row' || g as txt "
                             "from generate_series(1, 1000) g")
    return f"pg.{pg_schema}.t"


@pytest.fixture
def server(tmp_path, table) -> Iterator[ServerHandle]:
    handle = ServerHandle(tmp_path).start()
    yield handle
    handle.stop()


def shared_tmp(prefix: str) -> Path:
    """A fresh name in the shared temp folder (which every local user can write to)."""
    return Path(tempfile.gettempdir()) / f"{prefix}-{uuid.uuid4().hex[:8]}"


def canary_arrow(path: Path) -> None:
    table = pa.table({"id": pa.array([1], pa.int32()), "txt": pa.array([CANARY],
                                                                        pa.string_view())})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


# -- F4: defaults ----------------------------------------------------------------------------------
def test_without_xdg_runtime_dir_the_state_dir_is_not_a_shared_temp_name(monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    state = load_settings({}).state_dir
    assert not state.is_relative_to(tempfile.gettempdir())
    assert state.is_relative_to(Path.home()) or state.is_relative_to(f"/run/user/{os.geteuid()}")


# -- F3/F4: folders planted by another user --------------------------------------------------------
@pytest.mark.parametrize("key", ["shm_dir", "state_dir", "spill_dir"])
def test_a_folder_planted_by_another_user_is_refused(tmp_path, attacker, key):
    planted = (Path("/dev/shm") if key == "shm_dir" else Path(tempfile.gettempdir())) / \
        f"ldw-planted-{uuid.uuid4().hex[:8]}"
    done = as_user(attacker, f"import os; os.mkdir({str(planted)!r}); "
                             f"os.chmod({str(planted)!r}, 0o777)")
    assert done.returncode == 0, done.stderr
    handle = ServerHandle(tmp_path, **{key: planted})
    try:
        started = handle.cli("server", "start", check=False)
        assert started.returncode != 0, "the server used a folder another user owns"
        message = started.stderr + started.stdout
        assert str(planted) in message and attacker.name in message, message
        assert not any(planted.iterdir()), "the server wrote into the planted folder"
    finally:
        handle.stop()
        shutil.rmtree(planted, ignore_errors=True)


def test_in_process_refuses_a_planted_shm_dir_and_a_catalog_folder_others_can_write(
        tmp_path, attacker):
    planted = Path("/dev/shm") / f"ldw-planted-{uuid.uuid4().hex[:8]}"
    as_user(attacker, f"import os; os.mkdir({str(planted)!r}, 0o700)")
    try:
        with pytest.raises(ConfigError, match="belongs to"):
            ldw.connect(in_process=True, config={}, shm_dir=str(planted),
                        spill_dir=str(tmp_path / "spill"))
    finally:
        shutil.rmtree(planted, ignore_errors=True)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    handle = ServerHandle(tmp_path, catalog=f"sqlite:///{shared / 'catalog.db'}")
    started = handle.cli("server", "start", check=False)
    handle.stop()
    assert started.returncode != 0 and "catalog folder" in started.stderr, started.stderr
    assert not (shared / "catalog.db").exists()


def test_a_symlinked_shm_dir_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = Path("/dev/shm") / f"ldw-link-{uuid.uuid4().hex[:8]}"
    link.symlink_to(real)
    try:
        with pytest.raises(ConfigError, match="symbolic link"):
            Store(link, tmp_path / "spill", memory_limit=1 << 20)
    finally:
        link.unlink()


# -- F3/F15: private files and folders -------------------------------------------------------------
def test_versions_catalog_and_folders_are_private_and_another_user_cannot_read_them(
        server, table, attacker):
    wh = server.local()
    wh.map("secret", table).cache()
    settings = load_settings(str(server.config))
    versions = list(settings.shm_dir.rglob("*.arrow"))
    assert versions
    for root in (settings.shm_dir, settings.spill_dir, settings.state_dir):
        for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
            assert folder.stat().st_mode & 0o077 == 0, f"{folder} is open to others"
    catalog = Path(settings.catalog.removeprefix("sqlite:///"))
    for path in [catalog, *versions, *catalog.parent.glob("catalog.db-*"),
                 settings.state_dir / "server.log", settings.state_dir / "ldw.pid"]:
        assert path.stat().st_mode & 0o077 == 0, f"{path} is open to others"
    pid = int((settings.state_dir / "ldw.pid").read_text())
    umask = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text()
                 .splitlines() if line.startswith("Umask:"))
    assert int(umask, 8) == 0o077
    done = as_user(attacker, f"""
        import os
        for path in {[str(p) for p in [versions[0], settings.shm_dir]]!r}:
            try:
                os.listdir(path) if os.path.isdir(path) else open(path, "rb").read(1)
                print("READ", path)
            except PermissionError:
                print("EACCES")
    """)
    assert done.stdout.split() == ["EACCES", "EACCES"], done.stdout + done.stderr


def test_a_version_file_is_0600_while_it_is_being_written(tmp_path):
    old = os.umask(0o022)  # what a user's shell usually has
    try:
        store = Store(tmp_path / "shm", tmp_path / "spill", memory_limit=1 << 30)
        modes = []

        def batches():
            for i in range(2):
                modes.extend(p.stat().st_mode & 0o777 for p in (tmp_path / "shm").rglob(".tmp-*"))
                yield pa.record_batch({"x": [i]})

        store.write("me/t", pa.schema([("x", pa.int64())]), batches())
        store.close()
    finally:
        os.umask(old)
    assert modes and set(modes) == {0o600}
    folders = [p for p in (tmp_path / "shm").rglob("*") if p.is_dir()]
    assert folders and all(p.stat().st_mode & 0o777 == 0o700 for p in folders)


# -- F3: swapped version files ---------------------------------------------------------------------
@pytest.mark.parametrize("swap", ["symlink", "replaced"])
def test_a_swapped_version_file_is_never_served(server, table, tmp_path, swap):
    wh = server.local()
    ds = wh.map("secret", table).cache()
    assert ds.to_arrow().num_rows == 1000
    [version] = load_settings(str(server.config)).shm_dir.rglob("*.arrow")
    decoy = (tmp_path if swap == "symlink" else version.parent) / "decoy.arrow"
    canary_arrow(decoy)
    if swap == "symlink":
        version.unlink()
        version.symlink_to(decoy)
    else:
        os.replace(decoy, version)  # a whole, valid Arrow file, but not the one published
    with pytest.raises(LdwError, match="replaced") as caught:
        table_now = wh.dataset("secret").to_arrow()
        assert CANARY not in str(table_now.to_pydict())
    assert CANARY not in str(caught.value)


# -- two servers, one shm_dir ----------------------------------------------------------------------
def test_a_second_server_on_the_same_shm_dir_refuses_and_the_first_keeps_its_versions(
        server, table, tmp_path):
    first = server.local()
    first.map("kept", table).cache()
    other = tmp_path / "other"
    other.mkdir()
    second = ServerHandle(other, shm_dir=server.shm)
    try:
        started = second.cli("server", "start", check=False)
        assert started.returncode != 0
        assert str(server.shm) in started.stderr and "another ldw server" in started.stderr
    finally:
        second.cli("server", "stop", check=False)
    assert first.dataset("kept").to_arrow().num_rows == 1000
    assert first.dataset("kept").state == "cached"


# -- F4: server stop -------------------------------------------------------------------------------
@pytest.fixture
def victim() -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(["sleep", "300"])
    yield process
    process.kill()
    process.wait()


def test_stop_never_kills_the_pid_in_a_pid_file_another_user_planted(tmp_path, attacker,
                                                                      victim):
    state = shared_tmp("ldw-atk-state")
    holder = spawn_as_user(attacker, f"""
        import fcntl, os, sys
        os.mkdir({str(state)!r}, 0o755)
        f = open({str(state / "ldw.pid")!r}, "w")
        f.write("{victim.pid}"); f.flush()
        fcntl.flock(f, fcntl.LOCK_EX)
        print("ready", flush=True)
        sys.stdin.read()
    """)
    try:
        handle = ServerHandle(tmp_path, state_dir=state)
        done = handle.cli("server", "stop", check=False)
        time.sleep(0.2)
        assert victim.poll() is None, "ldw server stop killed another user's pid"
        assert done.returncode != 0 and str(state) in done.stderr, done.stderr
    finally:
        stop_spawned(holder)
        shutil.rmtree(state, ignore_errors=True)


def test_stop_never_kills_a_process_that_is_not_the_ldw_server(tmp_path, victim):
    """A stale or forged pid file in our own state_dir: the pid does not serve the socket."""
    handle = ServerHandle(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, sys
        f = open({str(state / "ldw.pid")!r}, "w")
        f.write("{victim.pid}"); f.flush()
        fcntl.flock(f, fcntl.LOCK_EX)
        print("ready", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    try:
        done = handle.cli("server", "stop", check=False)
        time.sleep(0.2)
        assert victim.poll() is None, "ldw server stop killed a process that is not ldw"
        assert done.returncode != 0 and "not the ldw server" in done.stderr, done.stderr
    finally:
        stop_spawned(holder)


def test_stop_still_stops_the_real_server(server):
    pid = int((server.folder / "state" / "ldw.pid").read_text())
    done = server.cli("server", "stop")
    assert f"(pid {pid}) stopped" in done.stdout
    assert not Path(f"/proc/{pid}").exists() or \
        Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


# -- F4: a replaced socket -------------------------------------------------------------------------
def client_datasets(server: ServerHandle) -> subprocess.CompletedProcess:
    """A client in its own process (bounded in time): list datasets over the socket."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import ldw
        print(ldw.connect(config={str(server.config)!r}, autostart=False).datasets())
    """)], capture_output=True, text=True, timeout=60)


def test_a_client_never_talks_to_a_socket_another_user_put_in_place(server, attacker, table):
    server.local().map("mine", table)
    socket_file = server.folder / "state" / "ldw.sock"
    spot = shared_tmp("ldw-atk-sock")
    heard = spot / "heard"
    fake = spawn_as_user(attacker, f"""
        import os, socket, sys, threading
        os.mkdir({str(spot)!r}, 0o755)
        s = socket.socket(socket.AF_UNIX); s.bind({str(spot / "s.sock")!r}); s.listen()
        os.chmod({str(spot / "s.sock")!r}, 0o777)
        def serve():
            while True:
                conn, _ = s.accept()
                conn.settimeout(5)
                try:
                    data = conn.recv(65536)
                except OSError:
                    data = b""
                with open({str(heard)!r}, "ab") as f:
                    f.write(data)
                conn.sendall(b'{{"ok": true, "result": []}}\\n')
                conn.close()
        threading.Thread(target=serve, daemon=True).start()
        print("ready", flush=True)
        sys.stdin.read()
    """)
    try:
        real = socket_file.with_name("real.sock")
        os.rename(socket_file, real)  # as if someone with write access swapped it
        os.rename(spot / "s.sock", socket_file)
        refused = client_datasets(server)
        assert refused.returncode != 0 and "AccessDenied" in refused.stderr, refused.stderr
        assert "replaced" in refused.stderr, refused.stderr
        assert not heard.exists() or heard.read_bytes() == b"", "a request reached the fake"
        os.chmod(server.folder / "state", 0o777)  # a state_dir others may change: refused
        os.rename(real, socket_file)
        refused = client_datasets(server)
        assert "ConfigError" in refused.stderr and "open to other users" in refused.stderr
        os.chmod(server.folder / "state", 0o700)
        assert server.local().datasets()["name"].to_list() == ["mine"]
    finally:
        stop_spawned(fake)
        shutil.rmtree(spot, ignore_errors=True)

