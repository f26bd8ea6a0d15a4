"""Exports are confined (issue 12, F6): a remote user's export is written by the server only
inside that user's export roots, never over another owner's export, and never readable by
other OS users; a local client writes its export itself, as its own OS user.

One real server (PostgreSQL source, Flight on loopback) with
``export_roots = ["<base>/exports/{user}", "<base>/shared"]`` under a world-traversable base
folder, so that only the export's own modes keep a second OS user (made here) out.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ServerHandle

import ldw
from ldw.config import load_settings
from ldw.export import MANIFEST_NAME
from ldw.export.roots import confine_export_path, export_roots_for

pytestmark = pytest.mark.postgres

ROWS = 3000


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="ldw-f6-", dir="/tmp"))
    folder.chmod(0o755)  # anyone may pass through: the exports' own modes must keep them out
    (folder / "shared").mkdir(mode=0o755)
    (folder / "shared").chmod(0o755)
    (folder / "elsewhere").mkdir()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def table(pg_engine) -> Iterator[str]:
    schema = f"ldw_t_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
        conn.exec_driver_sql(
            f"create table {schema}.orders as select g as id, mod(g, 3) as bucket, "
            f"'o' || g as note from generate_series(1, {ROWS}) g")
    yield f"pg.{schema}.orders"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"drop schema {schema} cascade")


@pytest.fixture(scope="module")
def server(base: Path, table: str) -> Iterator[ServerHandle]:
    roots = os.pathsep.join([f"{base}/exports/{{user}}", f"{base}/shared"])
    (base / "server").mkdir()
    handle = ServerHandle(base / "server", export_roots=roots,
                          extra_toml="[users.carol]\nexport_roots = []\n").start()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def users(server: ServerHandle, table: str) -> dict[str, ldw.Warehouse]:
    out = {}
    for name in ("alice", "bob", "carol"):
        wh = server.remote(name)
        wh.map("orders", table).cache()
        out[name] = wh
    return out


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return found


def _assert_private(root: Path) -> None:
    for rel, mode in _modes(root).items():
        want = 0o700 if (root / rel).is_dir() else 0o600
        assert mode == want, f"{rel} has mode {oct(mode)}, expected {oct(want)}"


def _manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_NAME).read_text())


def test_a_relative_path_lands_under_the_first_root_private_and_verifiable(
        server: ServerHandle, users: dict[str, ldw.Warehouse], base: Path) -> None:
    result = users["alice"].dataset("orders").export("q1/orders", partition_by=["bucket"])
    target = base / "exports" / "alice" / "q1" / "orders"
    assert result.path == target and result.rows == ROWS
    assert _manifest(target)["export_owner"] == "alice"
    assert _manifest(target)["provenance"]["exported_by"] == "alice"
    _assert_private(target)
    assert stat.S_IMODE((base / "exports" / "alice").stat().st_mode) == 0o700
    assert stat.S_IMODE((base / "exports" / "alice" / "q1").stat().st_mode) == 0o700
    assert "ok:" in server.cli("verify", str(target)).stdout
    # an absolute path inside a root is fine too
    inside = base / "shared" / "alice-orders"
    assert users["alice"].dataset("orders").export(inside).path == inside
    _assert_private(inside)


@pytest.mark.parametrize("path", [
    "/root/ldw-f6-probe-{hex}/orders",       # the finding: a folder under root's home
    "{base}/elsewhere/orders",               # absolute, outside every root
    "/tmp/ldw-f6-probe-{hex}",
    "../bob/orders",                         # relative, climbing out of the first root
    "{base}/exports/alice/../bob/orders",    # absolute, climbing into another user's root
    "{base}/shared/../elsewhere/orders",
    "{base}/exports/alice",                  # a root itself
    ".orders.ldw-tmp-0123",                  # hidden: the temp folder of someone's export
    "{base}/shared/.report.ldw-tmp-0123",
])
def test_paths_outside_the_roots_are_refused(users: dict[str, ldw.Warehouse], base: Path,
                                             path: str) -> None:
    path = path.format(base=base, hex=secrets.token_hex(4))
    with pytest.raises(ldw.AccessDenied) as refused:
        users["alice"].dataset("orders").export(path)
    message = str(refused.value)
    assert f"{base}/exports/alice" in message and f"{base}/shared" in message
    assert not list((base / "elsewhere").iterdir())
    assert not (base / "exports" / "bob" / "orders").exists()
    assert not any(p.name.startswith("ldw-f6-probe") for p in Path("/root").iterdir())
    assert not any(p.name.startswith("ldw-f6-probe") for p in Path("/tmp").iterdir())
    # every refusal is audited
    assert any(r["action"] == "export" and r["outcome"] == "deny"
               for r in users["alice"].audit(limit=20).iter_rows(named=True))


def test_symlink_escapes_are_refused(users: dict[str, ldw.Warehouse], base: Path) -> None:
    mine = base / "exports" / "alice"
    users["alice"].dataset("orders").export("first")        # the server makes alice's root
    outside = base / "elsewhere"
    (mine / "link").symlink_to(outside, target_is_directory=True)
    (base / "shared" / "link").symlink_to(outside, target_is_directory=True)
    open_dir = mine / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)  # anyone could plant a symlink in here between check and write
    try:
        for path in ("link/orders", "link", f"{base}/shared/link/orders",
                     f"{base}/shared/link", "open/orders",
                     "first/nested"):                          # inside an existing export
            with pytest.raises(ldw.AccessDenied):
                users["alice"].dataset("orders").export(path)
        assert not list(outside.iterdir())
        assert not list(open_dir.iterdir())
        assert not (mine / "first" / "nested").exists()
    finally:
        (mine / "link").unlink()
        (base / "shared" / "link").unlink()
        open_dir.rmdir()


def test_without_export_roots_a_remote_user_cannot_export(
        users: dict[str, ldw.Warehouse], server: ServerHandle, base: Path) -> None:
    """carol's [users.carol] export_roots = [] replaces the server's: she may not export."""
    for path in (f"{base}/shared/carol", "carol", "/root/carol"):
        with pytest.raises(ldw.AccessDenied, match="export_roots"):
            users["carol"].dataset("orders").export(path)
    assert not (base / "shared" / "carol").exists()
    assert not Path("/root/carol").exists()


def test_the_socket_export_op_is_confined_too(server: ServerHandle, table: str,
                                              base: Path) -> None:
    """A local client writes its own exports; the server-side op it could still send by hand
    writes only inside the roots."""
    local = server.local()
    local.map("orders", table)
    probe = f"/root/ldw-f6-probe-{secrets.token_hex(4)}"
    with pytest.raises(ldw.AccessDenied):
        local._backend.call("export", {"name": "orders", "path": probe})
    assert not Path(probe).exists()


def test_another_owners_export_is_never_replaced(users: dict[str, ldw.Warehouse],
                                                 server: ServerHandle, base: Path) -> None:
    report = base / "shared" / "report"
    users["alice"].dataset("orders").export(report)
    before = _manifest(report)
    with pytest.raises(ldw.AccessDenied, match="alice"):
        users["bob"].dataset("orders").export(report, overwrite=True)
    with pytest.raises(ldw.AccessDenied):
        users["bob"].dataset("orders").export(report / "inside")
    assert _manifest(report) == before and not (report / "inside").exists()
    assert server.cli("verify", str(report)).returncode == 0
    # alice may replace her own; verify still catches a tampered file
    users["alice"].dataset("orders").export(report, overwrite=True, compression="none")
    assert _manifest(report)["export_owner"] == "alice"
    part = next(report.glob("*.parquet"))
    pq.write_table(pq.read_table(part).slice(1), part)
    verify = server.cli("verify", str(report), check=False)
    assert verify.returncode == 1 and "part-0.parquet" in verify.stdout


@pytest.fixture
def other_os_user() -> Iterator[str]:
    name = f"ldwf6{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def _as(user: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), user=user, group=user, extra_groups=[],
                          capture_output=True, text=True, timeout=30, cwd="/")


def test_a_second_os_user_cannot_read_an_export(users: dict[str, ldw.Warehouse],
                                                server: ServerHandle, base: Path, table: str,
                                                other_os_user: str, monkeypatch) -> None:
    remote = users["bob"].dataset("orders").export(base / "shared" / "bob-orders",
                                                   partition_by=["bucket"])
    # a local client (here root) writes its own export, as private as the server's
    monkeypatch.chdir(base)
    local = server.local()
    local.map("mine", table)
    here = local.dataset("mine").export("local-orders")
    assert here.path == base / "local-orders"
    assert _manifest(here.path)["export_owner"] == local._backend.user
    for export in (remote.path, here.path):
        _assert_private(export)
        files = [p for p in export.rglob("*") if p.is_file()]
        assert _as(other_os_user, "ls", str(base)).returncode == 0  # the way in is open
        assert _as(other_os_user, "ls", str(export)).returncode != 0
        for file in files[:3]:
            probe = _as(other_os_user, "cat", str(file))
            assert probe.returncode != 0 and "Permission denied" in probe.stderr


def test_export_roots_settings_are_checked(tmp_path: Path) -> None:
    settings = load_settings({"server": {"export_roots": f"/srv/a/{{user}}{os.pathsep}/srv/b"}})
    assert settings.export_roots == ("/srv/a/{user}", "/srv/b")
    assert export_roots_for(settings, "alice") == ("/srv/a/alice", "/srv/b")
    with pytest.raises(ldw.AccessDenied):  # a name that is no folder name never expands
        export_roots_for(settings, "../root")
    for bad in (["relative/dir"], ["/srv/../etc"], [1], "x"):
        with pytest.raises(ldw.ConfigError, match="export_roots"):
            load_settings({"server": {"export_roots": bad}})
    with pytest.raises(ldw.ConfigError, match=r"\[users.bob\] export_roots"):
        load_settings({"users": {"bob": {"export_roots": ["not/absolute"]}}})
    own = load_settings({"server": {"export_roots": ["/srv/a"]},
                         "users": {"bob": {"export_roots": []}}})
    assert export_roots_for(own, "bob") == () and export_roots_for(own, "eve") == ("/srv/a",)
    with pytest.raises(ldw.AccessDenied, match="export_roots"):
        confine_export_path("x", (), user="bob")
