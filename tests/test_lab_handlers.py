"""The JupyterLab panel's server extension, over HTTP against a real Jupyter server.

The Jupyter server (``python -m jupyter_server``, which loads ``ldw.extension.lab`` because the
install enabled it) talks to a real, governed ldw server whose config ``LDW_CONFIG`` names: the
panel connects as the Jupyter server's OS user, with that user's roles (``[users.<me>]``), as a
notebook of the same user would. Checked: no Jupyter token, no answer; no password in any
answer; policy tags (masked, filtered) on columns and a denied table shown as denied; the
actions' answers and refusals.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from conftest import ServerHandle
from lab_helpers import Lab, jupyterlab

from ldw.config import _user

CANARY = "pw-canary-lab-2c61"  # the password of the source "down"
GATE = 852_741_963  # an advisory lock the view "slow" waits on
URL_TEXT = re.compile(r"(postgresql|mysql|sqlite)(\+\w+)?://")
READS = ["status", "sources", "schemas?source=pg", "tables?source=pg&schema=public",
         "columns?source=pg&schema=public&table=x", "preview?source=pg&schema=public&table=x",
         "datasets"]


def _call(lab: Lab, path: str, body: dict | None = None, *,
          token: str | None = "lab") -> tuple[int, dict | list | None]:
    """(status, JSON answer) of ``{base}/ldw/api/{path}``; token "lab" is the server's own."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"token {lab.token if token == 'lab' else token}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{lab.url}/ldw/api/{path}", data=data, headers=headers,
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # loopback
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode()
    assert CANARY not in text and not URL_TEXT.search(text), (path, text)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, None


@pytest.fixture(scope="module")
def schema(pg_engine) -> Iterator[str]:
    """One PostgreSQL schema for the module: customer (masked, filtered) and secret (denied)."""
    name = f"lab17_h_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create schema {name}")
        conn.exec_driver_sql(f"create table {name}.customer (id int primary key, "
                             "phone text, region text)")
        conn.exec_driver_sql(f"insert into {name}.customer select i, 'phone ' || i, "
                             "case when mod(i, 2) = 0 then 'EMEA' else 'APAC' end "
                             "from generate_series(1, 50) i")
        conn.exec_driver_sql(f"create table {name}.secret (id int, note text)")
        conn.exec_driver_sql(f"create table {name}.changing as select 1 as id")
        conn.exec_driver_sql(  # waits at row 100,000 while the test holds the lock GATE
            f"create function {name}.gate(i bigint) returns bigint language plpgsql as $$ "
            f"begin if i = 100000 then perform pg_advisory_lock_shared({GATE}); "
            f"perform pg_advisory_unlock_shared({GATE}); end if; return i; end $$")
        conn.exec_driver_sql(f"create view {name}.slow as select {name}.gate(i) as id, "
                             "repeat('x', 200) as payload from generate_series(1, 150000) i")
    yield name
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"drop schema {name} cascade")


@pytest.fixture(scope="module")
def ldw_server(schema, tmp_path_factory) -> Iterator[ServerHandle]:
    """A governed ldw server (one for the module: starting it takes seconds)."""
    policies = f"""
[sources.down]
url = "postgresql://ldw@127.0.0.1:9/nowhere"
password_env = "LDW_TEST_LAB_PW"

[policies."pg.{schema}.customer"]
allow_roles = ["analyst"]
columns.phone = {{ mask = "hash" }}
row_filter.analyst = "region = 'EMEA'"

[policies."pg.{schema}.secret"]
allow_roles = ["risk"]

[policies."pg.{schema}.slow"]
allow_roles = ["analyst"]

[policies."pg.{schema}.changing"]
allow_roles = ["analyst"]

[users.{_user()}]
roles = ["analyst"]

[users.bob]
roles = ["analyst"]
"""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LDW_TEST_LAB_PW", CANARY)
        server = ServerHandle(tmp_path_factory.mktemp("ldw"), extra_toml=policies,
                              freshness_interval="0.2s").start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="module")
def lab(ldw_server, tmp_path_factory) -> Iterator[Lab]:
    """A Jupyter server whose panel API talks to ``ldw_server`` (its LDW_CONFIG)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LDW_TEST_LAB_PW", CANARY)
        with jupyterlab(tmp_path_factory.mktemp("jupyter"),
                        {"LDW_CONFIG": str(ldw_server.config)}, app="jupyter_server") as running:
            yield running


@pytest.mark.postgres
def test_the_api_answers_only_with_the_jupyter_token(lab, schema):
    for path in READS:
        for token in (None, "not-the-token"):
            status, _ = _call(lab, path, token=token)
            assert status == 403, (path, token, status)
    for path, body in (("map", {"name": "c", "source": "pg", "schema": schema,
                                "table": "customer"}),
                       ("action", {"action": "cache", "name": "c"})):
        status, _ = _call(lab, path, body, token=None)
        assert status == 403, path
    status, answer = _call(lab, "datasets")
    assert status == 200 and "c" not in {d["name"] for d in answer["datasets"]}  # refused


@pytest.mark.postgres
def test_no_password_in_any_answer(lab, schema):
    """Every answer is scanned for the canary and for connection URLs (in _call)."""
    status, sources = _call(lab, "sources")
    assert status == 200 and {s["name"] for s in sources} == {"pg", "my", "down"}
    assert all(set(s) == {"name", "dialect", "host", "port", "database", "transport"}
               for s in sources)
    for path in ("schemas?source=down", "tables?source=down&schema=x",
                 "columns?source=down&schema=x&table=t",
                 "preview?source=down&schema=x&table=t"):
        status, answer = _call(lab, path)
        assert status == 503 and answer["error"] == "SourceUnavailable", (path, answer)
        assert "down" in answer["message"]
    status, answer = _call(lab, "map", {"name": "d", "source": "down", "schema": "x",
                                        "table": "t"})
    assert status == 503 and answer["error"] == "SourceUnavailable"
    status, answer = _call(lab, "status")
    assert status == 200 and answer["user"] == _user() and "analyst" in answer["roles"]
    assert "token" not in json.dumps(answer).lower()
    assert answer["setup_code"] == "%load_ext ldw\n%ldw connect --as wh"


@pytest.mark.postgres
def test_policy_tags_and_a_denied_table(lab, schema):
    status, tables = _call(lab, f"tables?source=pg&schema={schema}")
    assert status == 200
    # the denied table is never listed
    assert sorted((t["table"], t["kind"]) for t in tables) == [
        ("changing", "table"), ("customer", "table"), ("slow", "view")]
    customer = next(t for t in tables if t["table"] == "customer")
    assert customer["rows"] is None  # filtered for this user: no estimate is given away
    assert customer["ref"] == f"pg.{schema}.customer" and customer["name"] == "customer"

    status, columns = _call(lab, f"columns?source=pg&schema={schema}&table=customer")
    assert status == 200 and columns["denied"] is False
    tags = {c["name"]: c["tags"] for c in columns["columns"]}
    assert tags["phone"] == ["mask:hash", "row_filter"] and tags["id"] == ["row_filter"]
    assert columns["tags"] == ["masked", "row_filter"]

    status, secret = _call(lab, f"columns?source=pg&schema={schema}&table=secret")
    assert status == 200 and secret["denied"] is True and secret["tags"] == ["denied"]
    assert "may not read" in secret["message"] and secret["columns"] == []
    status, preview = _call(lab, f"preview?source=pg&schema={schema}&table=secret")
    assert status == 200 and preview["denied"] is True and preview["rows"] == []

    status, preview = _call(lab, f"preview?source=pg&schema={schema}&table=customer&rows=5")
    assert status == 200 and preview["denied"] is False and len(preview["rows"]) == 5
    names = [c["name"] for c in preview["columns"]]
    assert names == ["id", "phone", "region"]
    assert {row[2] for row in preview["rows"]} == {"EMEA"}  # the row filter applies
    assert not any(row[1].startswith("phone ") for row in preview["rows"])  # masked


def _wait_job(lab: Lab, job_id: int) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        _, answer = _call(lab, "datasets")
        job = next(j for j in answer["jobs"] if j["id"] == job_id)
        if job["state"] != "running":
            return job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} did not finish")


@pytest.mark.postgres
def test_map_cache_pin_evict_and_refusals(lab, schema):
    status, mapped = _call(lab, "map", {"name": "cust", "source": "pg", "schema": schema,
                                        "table": "customer"})
    assert status == 200 and mapped == {"name": "cust", "ref": f"pg.{schema}.customer",
                                        "state": "mapped"}
    status, answer = _call(lab, "action", {"action": "cache", "name": "cust"})
    assert status == 200 and answer["job"]["state"] in ("running", "done")
    job = _wait_job(lab, answer["job"]["id"])
    assert job["state"] == "done" and job["message"] == "cust is cached"
    assert job["progress"]["rows"] == 25 and job["progress"]["done"] is True

    status, answer = _call(lab, "datasets")
    cust = next(d for d in answer["datasets"] if d["name"] == "cust")
    assert cust["state"] == "cached" and cust["rows"] == 25 and cust["mine"] is True
    assert cust["stale"] is False and cust["owner"] == _user() and cust["shared_with"] == []

    assert _call(lab, "action", {"action": "pin", "name": "cust"})[0] == 200
    listed = _call(lab, "datasets")[1]["datasets"]
    assert next(d for d in listed if d["name"] == "cust")["pinned"] is True
    status, answer = _call(lab, "action", {"action": "share", "name": "cust",
                                           "args": {"user": "bob"}})
    assert status == 200 and answer == {"dataset": "cust", "shared_with": ["user:bob"]}, answer
    listed = _call(lab, "datasets")[1]["datasets"]
    assert next(d for d in listed if d["name"] == "cust")["shared_with"] == ["user:bob"]
    status, answer = _call(lab, "action", {"action": "export", "name": "cust",
                                           "args": {"path": "exports/cust"}})
    job = _wait_job(lab, answer["job"]["id"])
    assert job["state"] == "done" and job["result"]["rows"] == 25, job
    assert (lab.root / "exports" / "cust" / "_ldw_manifest.json").is_file()  # in the root
    status, answer = _call(lab, "action", {"action": "evict", "name": "cust"})
    assert status == 200 and answer == {"dataset": "cust", "state": "evicted"}

    refusals = [
        ({"action": "drop", "name": "cust"}, 400, "BadRequest"),
        ({"action": "cache", "name": "nosuch"}, 404, "UnknownDataset"),
        ({"action": "export", "name": "cust", "args": {"path": "../outside"}}, 403,
         "AccessDenied"),
        ({"action": "share", "name": "cust", "args": {}}, 400, "BadRequest"),
        ({"action": "evict", "name": "cust", "owner": "alice"}, 403, "AccessDenied"),
    ]
    for body, expected, kind in refusals:
        status, answer = _call(lab, "action", body)
        assert (status, answer.get("error")) == (expected, kind), (body, answer)
    for name in ("2x", "a-b", "_ldw_preview", ""):
        status, answer = _call(lab, "map", {"name": name, "source": "pg",
                                            "schema": schema, "table": "customer"})
        assert status == 400 and answer["error"] in ("InvalidMapping", "BadRequest"), name
    status, answer = _call(lab, "map", {"name": "s", "source": "pg", "schema": schema,
                                        "table": "secret"})
    assert status == 403 and answer["error"] == "AccessDenied"
    assert _call(lab, "action", ["not", "an", "object"])[0] == 400


@pytest.mark.postgres
def test_progress_of_a_materialization_started_elsewhere(lab, ldw_server, schema, pg_engine):
    """A notebook (here: this process, as the same user) caches a dataset; the panel's listing
    shows how far it got while it runs, from info()["progress"], not only for its own jobs."""
    status, _ = _call(lab, "map", {"name": "slow", "source": "pg", "schema": schema,
                                   "table": "slow"})
    assert status == 200
    failures: list[BaseException] = []
    with pg_engine.connect() as gate:
        gate.exec_driver_sql(f"select pg_advisory_lock({GATE})")
        worker = threading.Thread(target=_cache_elsewhere, args=(ldw_server, failures),
                                  daemon=True)
        worker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            slow = next(d for d in _call(lab, "datasets")[1]["datasets"] if d["name"] == "slow")
            if slow["progress"] and slow["progress"]["rows"] > 0:
                break
            time.sleep(0.1)
        gate.exec_driver_sql(f"select pg_advisory_unlock({GATE})")
        gate.commit()
    worker.join(60)
    assert failures == []
    assert slow["state"] == "materializing" and slow["job"] is None  # not the panel's job
    assert 0 < slow["progress"]["rows"] < 150_000 and slow["progress"]["mb_per_s"] >= 0
    done = next(d for d in _call(lab, "datasets")[1]["datasets"] if d["name"] == "slow")
    assert done["state"] == "cached" and done["rows"] == 150_000 and done["progress"] is None


def _cache_elsewhere(server: ServerHandle, failures: list[BaseException]) -> None:
    try:
        with server.local() as wh:
            wh.dataset("slow").cache()
    except BaseException as exc:  # reported by the test
        failures.append(exc)


@pytest.mark.postgres
def test_a_stale_dataset_says_so(lab, schema, pg_engine):
    status, _ = _call(lab, "map", {"name": "changed", "source": "pg", "schema": schema,
                                   "table": "changing"})
    assert status == 200
    started = _call(lab, "action", {"action": "cache", "name": "changed"})[1]
    job = _wait_job(lab, started["job"]["id"])
    assert job["state"] == "done"
    with pg_engine.connect() as conn:
        conn.exec_driver_sql(f"insert into {schema}.changing values (2)")
        conn.commit()
        conn.exec_driver_sql("select pg_stat_force_next_flush()")  # the counters show it now
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = _call(lab, "datasets")[1]["datasets"]
        changed = next(d for d in listed if d["name"] == "changed")
        if changed["stale"]:
            break
        time.sleep(0.2)
    assert changed["stale"] is True and changed["state"] == "cached", changed
    assert changed["stale_reason"]
