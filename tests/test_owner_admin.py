"""The server's owner holds the admin role without listing itself in [users.*], and ``info()``
shows a readable schema (issue 16, item 5).

A real server (``conftest.ServerHandle``) governed by a policy, a remote analyst over Flight,
and the server's own OS user over the Unix socket.
"""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import ServerHandle

import ldw


@pytest.fixture
def server(tmp_path, pg_engine, pg_schema):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.t (id int primary key, name text, "
                             "price numeric(12, 2))")
        conn.exec_driver_sql(f"insert into {pg_schema}.t values (1, 'a', 1.50), (2, NULL, 2)")
    policy = f'[policies."pg.{pg_schema}.*"]\nallow_roles = ["analyst"]\n'
    handle = ServerHandle(tmp_path, extra_toml=policy).start()  # no [users.<owner>] at all
    yield handle
    handle.stop()


@pytest.mark.postgres
def test_the_owner_reads_every_users_audit_and_status(server, pg_schema):
    alice = server.remote("alice", "analyst")
    alice.map("t", f"pg.{pg_schema}.t").cache()
    dave = server.remote("dave")
    with pytest.raises(ldw.AccessDenied):
        dave.map("t", f"pg.{pg_schema}.t")                  # an audited denial of dave
    with pytest.raises(ldw.AccessDenied, match="admin"):
        dave.audit(user="alice")                             # not the owner, no admin role

    owner = server.local()
    seen = owner.audit(user="alice", limit=50)
    assert {"map", "materialize"} <= set(seen["action"].to_list())
    assert seen["user"].unique().to_list() == ["alice"]
    assert "dave" in owner.audit(limit=200)["user"].to_list()
    status = owner.status()
    assert "admin" in status["roles"]
    assert "alice/t" in status["hits"]                       # the admin's status lists all
    assert "admin" not in alice.status()["roles"]
    with pytest.raises(ldw.AccessDenied):                    # the data still follows policy
        owner.map("t", f"pg.{pg_schema}.t")


@pytest.mark.postgres
def test_info_shows_a_readable_schema_and_the_exact_one(server, pg_schema):
    alice = server.remote("alice", "analyst")
    ds = alice.map("t", f"pg.{pg_schema}.t")
    info = ds.info()
    assert [f["name"] for f in info["schema"]] == ["id", "name", "price"]
    assert all(set(f) == {"name", "type", "nullable"} for f in info["schema"])
    fields = {f["name"]: f for f in info["schema"]}
    assert fields["price"]["type"] == "decimal128(12, 2)"
    assert fields["id"]["type"] == "int32" and fields["name"]["nullable"]
    assert isinstance(ds.schema, pa.Schema)                  # the exact schema, for the client
    assert ds.schema.names == ["id", "name", "price"]
    assert [str(f.type) for f in ds.schema] == [f["type"] for f in info["schema"]]
