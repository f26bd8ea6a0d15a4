"""Governance as enforced by a real server: masks, row filters, grants, sharing, audit, secrets.

Users reach the server over Flight with tokens carrying roles (``ldw user add NAME --role R``);
root, the server's own OS user, connects over the Unix socket with the roles of [users.root].
"""

from __future__ import annotations

import socket
import sqlite3
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as fl
import pyarrow.parquet as pq
import pytest
from conftest import ServerHandle

import ldw

# What the policy removes; none of these byte strings may reach a cache file, stream or export.
HIDDEN_NAME = "HIDDENROW-Q1X9"          # in rows the row filter hides
HIDDEN_SEGMENT = "secretsegment"       # an enum value only hidden rows carry
HIDDEN_BALANCE = 98765.43              # numeric, only in hidden rows
HIDDEN_DATE = "9999-12-30"             # date, only in hidden rows
PHONE = "PHONECANARY-55"               # hash-masked in visible rows
ADDRESS = "REDACTCANARY-street"        # redacted in visible rows
NAME_PREFIX = "PARTIALCANARY"          # partial mask keeps only the last 4 characters
VISIBLE_BALANCE = 13579.24             # null-masked for analysts
ROWS = 2000


def _decimal_bytes(value: float, scale: int = 2) -> bytes:
    return round(value * 10**scale).to_bytes(16, "little", signed=True)


def _date_bytes(text: str) -> bytes:
    days = pa.array([text]).cast(pa.date32()).cast(pa.int32())[0].as_py()
    return days.to_bytes(4, "little", signed=True)


CANARIES = {
    "hidden name": HIDDEN_NAME.encode(), "hidden enum": HIDDEN_SEGMENT.encode(),
    "hidden numeric": _decimal_bytes(HIDDEN_BALANCE), "hidden date": _date_bytes(HIDDEN_DATE),
    "masked phone": PHONE.encode(), "redacted address": ADDRESS.encode(),
    "partial name": NAME_PREFIX.encode(), "nulled balance": _decimal_bytes(VISIBLE_BALANCE),
}


def _assert_no_canary(data: bytes, where: str) -> None:
    found = [label for label, pattern in CANARIES.items() if pattern in data]
    assert not found, f"{where} leaks: {found}"


def _rows() -> list[tuple]:
    rows = []
    for i in range(1, ROWS + 1):
        hidden = i % 4 == 0
        rows.append((
            i, f"{HIDDEN_NAME}-{i}" if hidden else f"{NAME_PREFIX}-{i:04d}",
            f"{PHONE}-{i}", f"{ADDRESS}-{i}", "APAC" if hidden else "EMEA",
            HIDDEN_BALANCE if hidden else VISIBLE_BALANCE,
            HIDDEN_DATE if hidden else "2024-05-06",
            HIDDEN_SEGMENT if hidden else "retail"))
    return rows


@pytest.fixture
def pg_customer(pg_engine, pg_schema) -> str:
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create type {pg_schema}.seg as enum ('retail', "
                             f"'{HIDDEN_SEGMENT}')")
        conn.exec_driver_sql(
            f"create table {pg_schema}.customer (id int primary key, name text, phone text, "
            f"address varchar(60), region char(4), balance numeric(12,2), opened date, "
            f"segment {pg_schema}.seg)")
        conn.exec_driver_sql(f"create table {pg_schema}.secret (id int, note text)")
        conn.exec_driver_sql(f"insert into {pg_schema}.secret values (1, 'classified')")
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.executemany(f"insert into {pg_schema}.customer values "
                           "(%s, %s, %s, %s, %s, %s, %s, %s)", _rows())
    return pg_schema


@pytest.fixture
def my_customer(mysql_engine, mysql_db) -> str:
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create table {mysql_db}.customer (id int primary key, name text, phone text, "
            f"address varchar(60), region char(4), balance decimal(12,2), opened date, "
            f"segment enum('retail', '{HIDDEN_SEGMENT}'))")
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.executemany(f"insert into {mysql_db}.customer values "
                           "(%s, %s, %s, %s, %s, %s, %s, %s)", _rows())
    return mysql_db


def _policies(source: str, schema: str) -> str:
    return f"""
[policies."{source}.{schema}.customer"]
allow_roles = ["analyst", "apac", "risk"]
columns.phone = {{ mask = "hash" }}
columns.address = {{ mask = "redact" }}
columns.name = {{ mask = "partial", keep = 4, exempt_roles = ["risk"] }}
columns.balance = {{ mask = "null", exempt_roles = ["risk"] }}
row_filter.analyst = "region = 'EMEA'"
row_filter.apac = "region = 'APAC'"

[policies."{source}.{schema}.secret"]
allow_roles = ["risk"]
memory_only = true
export = "deny"

[users.root]
roles = ["admin", "analyst"]
"""


@pytest.fixture
def governed(tmp_path, pg_customer, my_customer):
    extra = _policies("pg", pg_customer) + _policies("my", my_customer).split("[users.root]")[0]
    # remote users export only under an export root (issue 12, F6)
    server = ServerHandle(tmp_path, extra_toml=extra, export_roots=tmp_path / "exports").start()
    yield server
    server.stop()


class _Recorder:
    """A loopback TCP proxy that keeps every byte the server sends (the raw Flight stream)."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("grpc://").rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"grpc://127.0.0.1:{self.listener.getsockname()[1]}"
        self.received = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True),
                             daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if record:
                    with self._lock:
                        self.received += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("source", ["pg", "my"])
def test_canaries_never_reach_cache_files_flight_or_parquet(governed, source, pg_customer,
                                                            my_customer, tmp_path):
    schema = pg_customer if source == "pg" else my_customer
    ref = f"{source}.{schema}.customer"
    recorder = _Recorder(governed.flight)
    alice = ldw.connect(recorder.address, token=governed.token("alice", "analyst"))
    ds = alice.map("customers", ref)
    data = ds.to_arrow()
    assert data.num_rows == ROWS * 3 // 4                       # only EMEA rows
    assert set(data["region"].to_pylist()) == {"EMEA"}
    assert data["balance"].null_count == data.num_rows          # null mask
    assert set(data["address"].to_pylist()) == {"***"}          # redact
    assert all(n.startswith("***") and len(n) == 7 for n in data["name"].to_pylist())
    phones = data["phone"].to_pylist()
    assert all(len(p) == 64 for p in phones) and len(set(phones)) == len(phones)  # keyed hash
    assert ds.head(5).height == 5                                # preview: post-policy too
    head = ds.head(5)
    assert set(head["region"].to_list()) == {"EMEA"} and head["phone"].str.len_chars().min() == 64
    export = tmp_path / "exports" / f"export-{source}"
    alice.dataset("customers").export(export, compression="none")
    recorder.close()

    _assert_no_canary(bytes(recorder.received), "the Flight stream")
    files = [p for p in governed.shm.rglob("*") if p.is_file()]
    assert files
    for path in files:
        _assert_no_canary(path.read_bytes(), f"shared-memory file {path.name}")
    parquet = list(export.rglob("*.parquet"))
    assert parquet and pq.read_table(parquet[0]).num_rows > 0
    for path in export.rglob("*"):
        if path.is_file():
            _assert_no_canary(path.read_bytes(), f"export file {path.name}")
    # the same user's hashes join: the mask is keyed, not random
    again = alice.map("again", ref, columns=["id", "phone"]).to_arrow()
    assert dict(zip(again["id"].to_pylist(), again["phone"].to_pylist(), strict=True)) == \
        dict(zip(data["id"].to_pylist(), phones, strict=True))


@pytest.mark.postgres
def test_users_with_different_row_filters_never_see_each_others_rows(governed, pg_customer):
    ref = f"pg.{pg_customer}.customer"
    alice = governed.remote("alice", "analyst")
    bob = governed.remote("bob", "apac")
    first = alice.map("c", ref).cache()            # alice materializes first
    assert set(first.to_arrow()["region"].to_pylist()) == {"EMEA"}
    theirs = bob.map("c", ref).to_arrow()          # same name, same table, other policy
    assert set(theirs["region"].to_pylist()) == {"APAC"}
    assert theirs.num_rows == ROWS // 4
    first.share("bob")                              # sharing cannot widen bob's view
    with pytest.raises(ldw.AccessDenied, match="policy that differs"):
        bob.attach("alice/c").to_arrow()
    with pytest.raises(ldw.AccessDenied):
        bob.sql('SELECT count(*) FROM "alice/c"')
    assert bob.sql("SELECT count(*) AS n FROM c")["n"].item() == ROWS // 4


@pytest.mark.postgres
def test_sharing_and_revocation_take_effect_on_the_next_call(governed, pg_customer):
    ref = f"pg.{pg_customer}.customer"
    alice = governed.remote("alice", "analyst")
    carol = governed.remote("carol", "analyst")
    ds = alice.map("c", ref).cache()
    with pytest.raises(ldw.UnknownDataset):
        carol.attach("alice/c")
    ds.share("carol")
    shared = carol.attach("alice/c")
    assert shared.to_arrow().equals(ds.to_arrow())        # same policy: the same version
    assert carol.sql('SELECT count(*) AS n FROM "alice/c"')["n"].item() == ROWS * 3 // 4
    assert "alice" in carol.datasets()["owner"].to_list()
    ds.unshare("carol")
    with pytest.raises(ldw.UnknownDataset):
        shared.to_arrow()
    ds.share(role="analyst")
    assert carol.attach("alice/c").to_arrow().num_rows == ROWS * 3 // 4
    governed.token("carol")                                # carol loses the analyst role
    carol = ldw.connect(governed.flight, token=governed.token("carol"))
    with pytest.raises((ldw.AccessDenied, ldw.UnknownDataset)):
        carol.attach("alice/c").to_arrow()


@pytest.mark.postgres
def test_no_grant_means_access_denied_on_every_path_and_it_is_audited(governed, pg_customer):
    ref = f"pg.{pg_customer}.customer"
    dave = governed.remote("dave")                          # no role at all
    alice = governed.remote("alice", "analyst")
    mine = alice.map("c", ref).cache()
    mine.share("dave")
    checks = {
        "map": lambda: dave.map("c", ref),
        "describe": lambda: dave.describe(ref),
        "preview": lambda: dave.preview(ref),
        "map sql": lambda: dave.map("q", sql=f"select * from {pg_customer}.customer",
                                    source="pg"),
        "attach": lambda: dave.attach("alice/c").to_arrow(),
        "sql": lambda: dave.sql('SELECT * FROM "alice/c"'),
        "unlisted table": lambda: alice.map("s", f"pg.{pg_customer}.secret"),
        "sql over unlisted": lambda: alice.map(
            "s", sql="select * from pg_catalog.pg_user", source="pg"),
    }
    for label, call in checks.items():
        with pytest.raises(ldw.AccessDenied):
            call()
            pytest.fail(f"{label} was not denied")
    assert dave.tables("pg", schema=pg_customer).height == 0   # nothing listed to him
    local = governed.local()                                     # root has the admin role
    denials = local.audit(user="dave", limit=50).filter(
        ldw.client.pl.col("outcome") == "deny")
    assert denials.height >= 4
    assert set(denials["action"].to_list()) >= {"map", "describe", "preview", "info", "sql"}
    with pytest.raises(ldw.AccessDenied):
        dave.audit(user="alice")                               # only admins read others'
    assert dave.audit()["user"].unique().to_list() == ["dave"]


@pytest.mark.postgres
def test_memory_only_and_export_deny_policies(governed, pg_customer, tmp_path):
    risky = governed.remote("risky", "risk")
    secret = risky.map("secret", f"pg.{pg_customer}.secret").cache()
    info = secret.info()
    assert info["memory_only"] and info["export"] == "deny"
    with pytest.raises(ldw.PolicyViolation):
        secret.export(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()
    full = risky.map("c", f"pg.{pg_customer}.customer").to_arrow()   # exempt from two masks
    assert full["balance"].null_count == 0 and full.num_rows == ROWS  # no filter for risk
    assert any(n.startswith(NAME_PREFIX) for n in full["name"].to_pylist())
    assert set(full["address"].to_pylist()) == {"***"}                # not exempt


@pytest.mark.postgres
@pytest.mark.mysql
@pytest.mark.parametrize("source", ["pg", "my"])
def test_injection_is_inert(governed, source, pg_customer, my_customer, pg_engine,
                            mysql_engine):
    schema = pg_customer if source == "pg" else my_customer
    ref = f"{source}.{schema}.customer"
    alice = governed.remote("alice", "analyst")
    attempts = [
        dict(name="x", table=ref, where="1=1; DROP TABLE customer"),
        dict(name="x", table=ref, where="region = 'EMEA') OR ('1'='1"),
        dict(name="x", table=ref, where="region = 'EMEA' UNION SELECT * FROM customer"),
        dict(name="x", table=ref, columns=["id; drop table customer"]),
        dict(name="x'; drop table customer; --", table=ref),
        dict(name="x", table=f"{source}.{schema}.customer; drop table customer"),
        dict(name="x", sql=f"select * from {schema}.customer; drop table {schema}.customer",
             source=source),
        dict(name="x", sql=f"select * from {schema}.customer where 1=0 or "
                           f"{'pg_sleep(1)' if source == 'pg' else 'sleep(1)'} is null",
             source=source),
    ]
    for attempt in attempts:
        with pytest.raises(ldw.LdwError):
            alice.map(**attempt)
            pytest.fail(f"not refused: {attempt}")
    widened = alice.map("w", ref, where="region = 'EMEA' OR 1=1 --").to_arrow()
    assert set(widened["region"].to_pylist()) == {"EMEA"}   # a valid predicate cannot widen
    ok = alice.map("ok", ref, where="region = 'APAC' OR id < 3").to_arrow()
    assert set(ok["region"].to_pylist()) == {"EMEA"}   # the row filter is ANDed in, not ORed
    bound = alice.map("b", ref, where="name = :n", params={"n": "x' OR '1'='1"}).to_arrow()
    assert bound.num_rows == 0                          # a bound value stays a value
    for evil in ("bob'; --", "a b", "../x", "x" * 200):
        with pytest.raises(ldw.InvalidMapping):
            alice.dataset("ok").share(evil)
    engine = pg_engine if source == "pg" else mysql_engine
    with engine.connect() as conn:
        assert conn.exec_driver_sql(f"select count(*) from {schema}.customer").scalar() == ROWS


def test_audit_is_hash_chained_and_fails_closed(tmp_path, pg_engine):
    server = ServerHandle(tmp_path).start()
    try:
        wh = server.local()
        ds = wh.map("t", sql="select 1 as one", source="pg").cache()
        assert ds.to_arrow().num_rows == 1
        log = wh.audit()
        assert {"map", "materialize", "attach"} <= set(log["action"].to_list())
        assert "verified" in server.cli("audit", "--verify").stdout
        with sqlite3.connect(tmp_path / "catalog.db") as db:     # tamper with one record
            db.execute("update ldw_audit set rows = 999 where action = 'attach'")
        assert server.cli("audit", "--verify", check=False).returncode == 1
        with sqlite3.connect(tmp_path / "catalog.db") as db:     # the audit store breaks
            db.execute("drop table ldw_audit")
        with pytest.raises(ldw.AuditUnavailable):
            ds.to_arrow()
        with pytest.raises(ldw.AuditUnavailable):
            wh.map("u", sql="select 2 as two", source="pg")
    finally:
        server.stop()


@pytest.mark.postgres
def test_password_canary_never_appears_anywhere(tmp_path, pg_engine, monkeypatch):
    canary = "Pw@canary:7f3/x%40"
    monkeypatch.setenv("LDW_CANARY_PW", canary)
    extra = """
[sources.wrongpw]
url = "postgresql://ldw_no_such_user@127.0.0.1:5432/test"
password_env = "LDW_CANARY_PW"
[sources.unreachable]
url = "postgresql://someone@127.0.0.1:1/test"
password_env = "LDW_CANARY_PW"
[sources.badhost]
url = "mysql://someone@no-such-host.invalid:3306/test"
password_env = "LDW_CANARY_PW"
[sources.badurl]
url = "postgresql://someone@127.0.0.1:5432/nodb_here"
password_env = "LDW_CANARY_PW"
"""
    server = ServerHandle(tmp_path, extra_toml=extra).start()
    texts: list[str] = []
    try:
        for wh in (server.local(), server.remote("erin")):
            texts += [repr(wh), str(wh.sources())]
            for alias in ("wrongpw", "unreachable", "badhost", "badurl"):
                for call in (lambda a=alias, w=wh: w.map("x", f"{a}.public.t"),
                             lambda a=alias, w=wh: w.tables(a),
                             lambda a=alias, w=wh: w.describe(f"{a}.public.t")):
                    with pytest.raises(ldw.LdwError) as info:
                        call()
                    texts += [str(info.value), repr(info.value)]
                    assert f"'{alias}'" in str(info.value)
            texts.append(str(wh.audit(limit=1000).to_dicts()))
        texts.append((tmp_path / "state" / "server.log").read_text())
        with sqlite3.connect(tmp_path / "catalog.db") as db:
            texts.append(str(db.execute("select * from ldw_audit").fetchall()))
            texts.append(str(db.execute("select * from ldw_datasets").fetchall()))
    finally:
        server.stop()
    forms = {canary, "Pw@canary", "canary:7f3", "7f3/x%40", "Pw%40canary"}
    leaked = [f for f in forms if any(f in t for t in texts)]
    assert not leaked, leaked


def test_policies_are_validated_when_the_server_starts(tmp_path):
    server = ServerHandle(tmp_path, extra_toml='[policies."pg.public.t"]\n'
                          'columns.x = { mask = "scramble" }\n')
    done = server.cli("server", "start", "--foreground", check=False)
    assert done.returncode == 2 and "mask = one of" in done.stderr
    assert not Path(server.folder / "state" / "ldw.sock").exists()


@pytest.mark.postgres
def test_revoking_a_share_stops_an_open_flight_stream(tmp_path, pg_engine, pg_schema):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.wide as select g::bigint as a, "
                             "g::float8 as b from generate_series(1, 6000000) g")
    server = ServerHandle(tmp_path).start()
    try:
        alice = server.remote("alice")
        carol = server.remote("carol")
        ds = alice.map("w", f"pg.{pg_schema}.wide").cache()   # 96 MB in ~10 batches
        ds.share("carol")
        backend = carol._backend
        ticket = backend.call("attach", {"owner": alice._backend.user, "name": "w"})["ticket"]
        reader = backend._get(ticket)
        received = reader.read_chunk().data.num_rows
        ds.unshare("carol")
        with pytest.raises(fl.FlightServerError, match="is shared with you"):
            while True:
                received += reader.read_chunk().data.num_rows
        assert received < 6_000_000
    finally:
        server.stop()
