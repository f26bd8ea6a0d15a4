"""Governance lows of issue 12: names only for those who may know them (F11), shares only to
users and roles that exist (F13), and a partial mask that never shows a whole value (F14).

Real servers (``conftest.ServerHandle``) with remote users over Flight; the masks run in real
PostgreSQL, MariaDB and SQLite.
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3

import pytest
from conftest import MYSQL_URL, POSTGRES_URL, ServerHandle

import ldw
from ldw.catalog import Catalog

SECRET = "secretplans"      # alice's unshared dataset: its name must never reach bob
SHARED = "sharedone"        # alice shares this one with bob


def server_os_user() -> str:
    """The server's own OS user (the tests' user): a local client of that name."""
    return pwd.getpwuid(os.getuid()).pw_name


@pytest.fixture
def server(tmp_path, pg_engine):
    me = server_os_user()
    handle = ServerHandle(tmp_path, extra_toml=f'[users."{me}"]\nroles = ["admin"]\n'
                                               '[users.olga]\nroles = ["auditor"]\n').start()
    yield handle
    handle.stop()


def _error(call) -> str:
    with pytest.raises(ldw.UnknownDataset) as caught:
        call()
    return str(caught.value)


@pytest.mark.postgres
def test_other_users_dataset_names_never_reach_a_user(server):
    alice = server.remote("alice")
    bob = server.remote("bob")
    alice.map(SECRET, sql="select 1 as x", source="pg").cache()
    alice.map(SHARED, sql="select 2 as x", source="pg").cache().share("bob")
    alice.dataset(SECRET).to_arrow()
    bob.map("mine", sql="select 3 as x", source="pg").cache()
    assert bob.attach(f"alice/{SHARED}").to_arrow().num_rows == 1

    status = bob.status()
    assert set(status["hits"]) == set(status["bytes_served"]) == {"bob/mine", f"alice/{SHARED}"}
    assert status["datasets"] == 2
    assert SECRET not in json.dumps(status)
    listing = bob.datasets()
    assert sorted(listing["name"].to_list()) == ["mine", SHARED]
    server.token("carol")
    alice.dataset(SHARED).share("carol")       # bob is not told who else it is shared with
    assert bob.attach(f"alice/{SHARED}").info()["shared_with"] == ["user:bob"]

    # a dataset that exists but is not shared and one that does not exist: the same answer
    probes = {
        "attach": lambda name: bob.attach(f"alice/{name}"),
        "sql": lambda name: bob.sql(f'SELECT * FROM "alice/{name}"'),
        "derived": lambda name: bob.sql(f'SELECT * FROM "alice/{name}"', name="d"),
    }
    for label, probe in probes.items():
        exists = _error(lambda probe=probe: probe(SECRET))
        missing = _error(lambda probe=probe: probe("nosuchthing"))
        assert exists.replace(SECRET, "X") == missing.replace("nosuchthing", "X"), label
        assert SHARED not in exists and SHARED not in missing, label
    own = _error(lambda: bob.dataset("nosuchthing"))
    assert "mine" in own and SECRET not in own and SHARED not in own

    # the admin role (here the server's own OS user, over the socket) sees every dataset
    admin = server.local().status()
    assert {f"alice/{SECRET}", f"alice/{SHARED}", "bob/mine"} <= set(admin["hits"])
    assert admin["hits"][f"alice/{SECRET}"] >= 1


@pytest.mark.postgres
def test_shares_go_only_to_users_and_roles_that_exist(server):
    alice = server.remote("alice")
    ds = alice.map("x", sql="select 1 as x", source="pg").cache()
    with pytest.raises(ldw.InvalidMapping, match="no such user"):
        ds.share("zed")
    with pytest.raises(ldw.InvalidMapping, match="role 'nosuchrole'"):
        ds.share(role="nosuchrole")
    assert ds.info()["shared_with"] == []

    zed = server.remote("zed")                       # created later: nothing inherited
    _error(lambda: zed.attach("alice/x"))
    ds.share("zed")                                  # now zed exists
    assert zed.attach("alice/x").to_arrow().num_rows == 1
    ds.share("olga")                                 # a [users.*] user without a token
    ds.share(server_os_user())                       # the server's own OS user (local)
    ds.share(role="auditor")                         # a role the configuration names
    server.token("tess", "analyst")
    ds.share(role="analyst")                         # a role a token user holds
    ds.unshare("ghost")                              # unsharing an unknown name is harmless

    # a removed user's shares go with them: a new zed starts with nothing
    server.cli("user", "revoke", "zed")
    assert "user:zed" not in ds.info()["shared_with"]
    zed = server.remote("zed")
    _error(lambda: zed.attach("alice/x"))
    # a [users.*] user keeps their shares when their token is revoked (they still exist)
    server.token("olga")
    server.cli("user", "revoke", "olga")
    assert "user:olga" in ds.info()["shared_with"]

    # a share left behind for a name no one holds (an older catalog) is not inherited either
    catalog = Catalog(f"sqlite:///{server.folder / 'catalog.db'}")
    try:
        catalog.grant("alice", "x", kind="user", grantee="ghost")
    finally:
        catalog.close()
    ghost = server.remote("ghost")
    _error(lambda: ghost.attach("alice/x"))


# -- F14: partial masks ---------------------------------------------------------------------
KEEP = 3
TEXTS = ["", "a", "ab", "abc", "abcd", "abcde", "éñ", "éñüö", None]  # lengths 0..keep+2
NUMBERS = [7, 42, 123, 1234, 12345, None]


def _masked(value, keep):
    if value is None:
        return None
    text = str(value)
    return "***" if len(text) <= keep else "***" + text[-keep:]


def _rows() -> list[tuple]:
    return [(i, TEXTS[i], TEXTS[i], NUMBERS[i] if i < len(NUMBERS) else None, TEXTS[i])
            for i in range(len(TEXTS))]


def _fill(conn, schema: str, dialect: str) -> None:
    text_type = "varchar(20)" if dialect == "mysql" else "text"
    conn.exec_driver_sql(f"create table {schema}.t (id int primary key, v {text_type}, "
                         f"c char(6), n int, z {text_type})")
    cursor = conn.connection.dbapi_connection.cursor()
    cursor.executemany(f"insert into {schema}.t values (%s, %s, %s, %s, %s)", _rows())


@pytest.fixture(params=["pg", "my", "lite"])
def masked_source(request, tmp_path, shm_dir):
    if request.param == "pg":
        engine, schema = request.getfixturevalue("pg_engine"), request.getfixturevalue(
            "pg_schema")
        with engine.begin() as conn:
            _fill(conn, schema, "postgresql")
        url = POSTGRES_URL
    elif request.param == "my":
        engine, schema = request.getfixturevalue("mysql_engine"), request.getfixturevalue(
            "mysql_db")
        with engine.begin() as conn:
            _fill(conn, schema, "mysql")
        url = MYSQL_URL
    else:
        path = tmp_path / "lite.db"
        schema, url = "main", f"sqlite:///{path}"
        with sqlite3.connect(path) as conn:
            conn.execute("create table t (id int primary key, v text, c char(6), n int, z text)")
            conn.executemany("insert into t values (?, ?, ?, ?, ?)", _rows())
    source = request.param
    policies = {f"{source}.{schema}.t": {"columns": {
        "v": {"mask": "partial", "keep": KEEP},
        "c": {"mask": "partial", "keep": KEEP},
        "n": {"mask": "partial", "keep": KEEP},
        "z": {"mask": "partial", "keep": 0}}}}
    wh = ldw.connect(in_process=True, shm_dir=shm_dir, spill_dir=f"{shm_dir}-spill",
                     config={"sources": {source: {"url": url}}, "policies": policies})
    yield wh, source, schema
    wh.close()


def _check(table) -> None:
    rows = sorted((int(i), *rest) for i, *rest in zip(
        *(table[c].to_pylist() for c in ("id", "v", "c", "n", "z")), strict=True))
    assert [r[0] for r in rows] == list(range(len(TEXTS)))
    for i, v, c, n, z in rows:
        assert v == _masked(TEXTS[i], KEEP), (i, TEXTS[i], v)
        assert c == _masked(TEXTS[i], KEEP), (i, TEXTS[i], c)
        number = NUMBERS[i] if i < len(NUMBERS) else None
        assert n == _masked(number, KEEP), (i, number, n)
        assert z == (None if TEXTS[i] is None else "***"), (i, TEXTS[i], z)  # keep = 0


@pytest.mark.postgres
@pytest.mark.mysql
def test_partial_mask_never_shows_a_whole_value(masked_source):
    wh, source, schema = masked_source
    _check(wh.map("t", f"{source}.{schema}.t").to_arrow())
    _check(wh.map("q", sql=f"select id, v, c, n, z from {schema}.t", source=source).to_arrow())
    _check(wh.preview(f"{source}.{schema}.t", n=100).to_arrow())
