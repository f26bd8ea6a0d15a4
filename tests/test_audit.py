"""The audit log: a keyed MAC chain anchored outside the catalog, every refusal recorded, and no
name or value that can forge a line of ``ldw audit``.

The tampering is what someone who can write the catalog (not the server's private key and
anchor files) can do: delete records, edit them and re-chain with SHA-256, renumber.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ServerHandle

import ldw
from ldw.audit import Anchor, legacy_hash
from ldw.catalog import Catalog

FIELDS = ("ts", "user", "action", "dataset", "outcome", "policy", "sql", "rows", "bytes",
          "detail")
LINE = re.compile(r"^\s*\d+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S")


def _records(db: sqlite3.Connection) -> list[dict]:
    db.row_factory = sqlite3.Row
    return [dict(r) for r in db.execute("select * from ldw_audit order by seq")]


def _rechain(db: sqlite3.Connection) -> None:
    """What the old verifier accepted: every link recomputed with plain SHA-256."""
    prev = "0" * 64
    for row in _records(db):
        digest = legacy_hash(prev, {k: row[k] for k in FIELDS})
        db.execute("update ldw_audit set prev_hash = ?, hash = ? where seq = ?",
                   (prev, digest, row["seq"]))
        prev = digest


@contextlib.contextmanager
def _db(path: Path):
    """A connection that is committed and closed (sqlite3's own context manager only commits)."""
    db = sqlite3.connect(path)
    try:
        with db:
            yield db
    finally:
        db.close()


def _verify(server: ServerHandle) -> subprocess.CompletedProcess:
    return server.cli("audit", "--verify", check=False)


@pytest.fixture
def sealed(tmp_path, pg_engine):
    """A stopped server whose catalog holds a few keyed, anchored audit records, and a way to
    put the catalog and anchor back as they were."""
    server = ServerHandle(tmp_path).start()
    try:
        wh = server.local()
        ds = wh.map("t", sql="select 1 as one", source="pg").cache()
        for _ in range(4):
            assert ds.to_arrow().num_rows == 1
        with pytest.raises(ldw.UnknownDataset):
            wh.dataset("nope")                              # a denial in the log
    finally:
        server.stop()
    catalog = tmp_path / "catalog.db"
    (anchor,) = tmp_path.glob("audit-*.anchor")
    with _db(catalog) as db:
        db.execute("pragma wal_checkpoint(truncate)")
    pristine = {catalog: catalog.read_bytes(), anchor: anchor.read_bytes()}

    def restore() -> None:
        for suffix in ("-wal", "-shm"):
            Path(f"{catalog}{suffix}").unlink(missing_ok=True)
        for path, data in pristine.items():
            path.write_bytes(data)

    server.anchor = anchor
    server.restore = restore
    return server


@pytest.mark.postgres
def test_verify_detects_truncation_rechaining_gaps_and_anchor_changes(sealed):
    done = _verify(sealed)
    assert done.returncode == 0 and "verified" in done.stdout, done.stdout + done.stderr
    catalog = sealed.folder / "catalog.db"
    with _db(catalog) as db:
        count = len(_records(db))
    assert count >= 7
    lines = sealed.anchor.read_text().splitlines()
    assert lines[0].startswith("ldw-audit-anchor 1 0 ") and len(lines) == count + 1
    assert oct(sealed.anchor.stat().st_mode & 0o777) == "0o600"
    assert oct((sealed.folder / "audit.key").stat().st_mode & 0o777) == "0o600"
    key_text = (sealed.folder / "audit.key").read_text()
    with _db(catalog) as db:
        assert key_text not in str(db.execute("select * from ldw_audit").fetchall())

    tampering = {
        "tail deleted": ("delete from ldw_audit where seq > (select max(seq) - 2 from ldw_audit)",
                         False, "truncated"),
        "all deleted": ("delete from ldw_audit", False, "truncated"),
        "tail deleted, re-chained": (
            "delete from ldw_audit where seq > (select max(seq) - 2 from ldw_audit)", True,
            "truncated"),
        "edited, re-chained": ("update ldw_audit set rows = 999 where action = 'attach'", True,
                               "MAC does not match"),
        "middle deleted, re-chained": ("delete from ldw_audit where seq = 3", True, "gap"),
        "middle deleted, renumbered, re-chained": (
            "delete from ldw_audit where seq = 3; "
            "update ldw_audit set seq = seq - 1 where seq > 3", True, "MAC does not match"),
        "denial removed": ("delete from ldw_audit where outcome = 'deny'; "
                           "update ldw_audit set detail = 'x' where seq = 2", True, "MAC"),
    }
    for label, (statements, rechain, expected) in tampering.items():
        sealed.restore()
        with _db(catalog) as db:
            db.executescript(statements)
            if rechain:
                _rechain(db)
        done = _verify(sealed)
        assert done.returncode == 1, f"{label}: verify passed\n{done.stdout}"
        assert "BROKEN" in done.stdout and expected in done.stdout, (label, done.stdout)

    sealed.restore()                      # the anchor: a line dropped, then the file gone
    sealed.anchor.write_text("\n".join(lines[:-1]) + "\n")
    done = _verify(sealed)
    assert done.returncode == 1 and "not in the anchor" in done.stdout, done.stdout
    sealed.anchor.unlink()
    done = _verify(sealed)
    assert done.returncode == 1 and "anchor file" in done.stdout and "missing" in done.stdout
    sealed.restore()                      # without the key nothing keyed can be checked
    (sealed.folder / "audit.key").rename(sealed.folder / "audit.key.away")
    done = _verify(sealed)
    assert done.returncode == 1 and "key file is missing" in done.stdout
    (sealed.folder / "audit.key.away").rename(sealed.folder / "audit.key")
    assert _verify(sealed).returncode == 0


@pytest.mark.postgres
def test_a_catalog_from_an_older_ldw_is_anchored_at_its_head(tmp_path, pg_engine):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    Catalog(url).close()                 # the tables, as an older ldw made them
    prev = "0" * 64
    with _db(tmp_path / "catalog.db") as db:
        for seq in (1, 2, 3):
            values = {"ts": 1700000000.0 + seq, "user": "old", "action": "map",
                      "dataset": f"old/d{seq}", "outcome": "allow", "policy": None,
                      "sql": None, "rows": None, "bytes": None, "detail": None}
            digest = legacy_hash(prev, values)
            db.execute("insert into ldw_audit (seq, ts, user, action, dataset, outcome, policy, "
                       "sql, rows, bytes, detail, prev_hash, hash) values "
                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (seq, *values.values(), prev, digest))
            prev = digest
    server = ServerHandle(tmp_path).start()
    try:
        server.local().map("t", sql="select 1 as one", source="pg")
    finally:
        server.stop()
    done = _verify(server)
    assert done.returncode == 0, done.stdout
    assert "records 1-3 predate the keyed chain" in done.stdout
    assert "keyed MAC chain from record 4" in done.stdout
    with _db(tmp_path / "catalog.db") as db:   # rewrite the old part of the log
        db.execute("update ldw_audit set user = 'someone' where seq = 2")
        _rechain(db)
    done = _verify(server)
    assert done.returncode == 1 and "genesis" in done.stdout, done.stdout


@pytest.mark.postgres
def test_audit_fails_closed_when_the_anchor_cannot_be_written(pg_wh, monkeypatch):
    catalog = pg_wh._engine.catalog
    pg_wh.map("t", sql="select 1 as one", source="pg")
    before = catalog.audit_records()

    def broken(self, seq: int, digest: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Anchor, "append", broken)
    with pytest.raises(ldw.AuditUnavailable):
        pg_wh.map("u", sql="select 2 as two", source="pg")
    with pytest.raises(ldw.AuditUnavailable):
        pg_wh.dataset("t").to_arrow()
    assert catalog.audit_records() == before        # no record left that is not anchored
    monkeypatch.undo()
    assert pg_wh.dataset("t").to_arrow().num_rows == 1
    assert catalog.verify_audit().ok


FORGED = "     9 2026-01-01 00:00:00 carol        export       allow  carol/x"


@pytest.mark.postgres
def test_names_with_control_characters_are_refused_and_never_printed_raw(tmp_path, pg_engine):
    server = ServerHandle(tmp_path).start()
    try:
        server.local().map("t", sql="select 1 as one", source="pg").cache()
        carol = server.remote("carol")
        evil = f"x\n{FORGED}"
        calls = [("info", {"name": evil}), ("info", {"name": "t", "owner": evil}),
                 ("attach", {"name": evil}), ("evict", {"name": evil}),
                 ("cache", {"name": evil}), ("share", {"name": evil, "user": "bob"}),
                 ("info", {"name": "x\x1b]0;pwned\x07"}), ("info", {"name": "x\u202ey"}),
                 ("map", {"name": evil, "sql": "select 1", "source": "pg"})]
        for op, args in calls:
            with pytest.raises(ldw.InvalidMapping):
                carol._backend.call(op, args)
        with pytest.raises(ldw.InvalidMapping):
            carol.sql(f'SELECT * FROM "root\n{FORGED}/t"')
        with _db(tmp_path / "catalog.db") as db:   # a forged record as well
            db.execute("insert into ldw_audit (seq, ts, user, action, dataset, outcome, "
                       "prev_hash, hash) values (100000, 1.0, 'mallory', 'info', ?, 'deny', "
                       "'0', '0')", (f"a\x1b[2J\r{FORGED}",))
            stored = db.execute("select user, action, dataset, detail from ldw_audit "
                                "where seq < 100000").fetchall()
        assert not [r for r in stored if any(ch in str(r) for ch in "\n\r\x1b\x07\u202e")]
        out = server.cli("audit", "--last", "1000").stdout
    finally:
        server.stop()
    assert "carol" in out and "\\n" in out
    assert not any(ch in out.replace("\n", "") for ch in "\r\x1b\x07\u202e")
    bad = [line for line in out.splitlines() if not LINE.match(line)]
    assert not bad, bad


def _as_nobody(socket_path: Path) -> dict:
    """One request over the Unix socket from the OS user 'nobody' (allowed to reach the socket,
    unknown to the server)."""
    code = textwrap.dedent("""
        import socket, sys
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        try:
            s.sendall(b'{"op": "status", "args": {}}\\n')
        except BrokenPipeError:  # refused before the request was read
            pass
        data = b""
        while not data.endswith(b"\\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        print(data.decode().splitlines()[-1])
    """)
    done = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search",
         sys.executable, "-I", "-c", code, str(socket_path)],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.postgres
def test_every_refusal_is_audited_as_a_denial(tmp_path, pg_engine, pg_schema):
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to connect as a second OS user")
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.customer (id int, phone text)")
        conn.exec_driver_sql(f"insert into {pg_schema}.customer values (1, 'PHONE-1')")
    extra = f"""
[policies."pg.{pg_schema}.customer"]
allow_roles = ["analyst"]
columns.phone = {{ mask = "hash" }}

[users.root]
roles = ["admin"]
"""
    server = ServerHandle(tmp_path, extra_toml=extra).start()
    try:
        alice = server.remote("alice", "analyst")
        alice.map("c", f"pg.{pg_schema}.customer").cache()
        refusals = {
            "sandbox": lambda: alice.sql("SELECT * FROM read_csv('/etc/passwd')"),
            "hashed where": lambda: alice.map("w", f"pg.{pg_schema}.customer",
                                              where="phone = 'PHONE-1'"),
            "other namespace": lambda: alice.attach("bob/secret").to_arrow(),
            "other namespace in sql": lambda: alice.sql('SELECT * FROM "bob/payroll"'),
        }
        for label, call in refusals.items():
            with pytest.raises((ldw.InvalidMapping, ldw.UnknownDataset, ldw.AccessDenied)):
                call()
                pytest.fail(f"{label} was not refused")
        answer = _as_nobody(tmp_path / "state" / "ldw.sock")
        assert answer["ok"] is False and answer["error"]["type"] == "AccessDenied"
        log = server.local().audit(limit=1000)
    finally:
        server.stop()
    denials = log.filter(ldw.client.pl.col("outcome") == "deny").to_dicts()
    mine = [d for d in denials if d["user"] == "alice"]
    details = " | ".join(f"{d['action']} {d['dataset']} {d['detail']} {d['sql']}" for d in mine)
    assert any(d["action"] == "sql" and "read_csv" in d["detail"] for d in mine), details
    assert any(d["action"] == "map" and "phone" in (d["sql"] or "") for d in mine), details
    assert any(d["dataset"] == "bob/secret" for d in mine), details
    assert any(d["action"] == "sql" and "bob/payroll" in (d["sql"] or "") for d in mine), details
    nobody = [d for d in denials if d["user"] == "nobody"]
    assert nobody and nobody[0]["action"] == "connect", denials
    assert "not known to this ldw server" in nobody[0]["detail"]


@pytest.mark.postgres
def test_records_removed_while_the_server_runs_stay_visible(tmp_path, pg_engine):
    """New records after a removed tail must not take the removed records' place."""
    server = ServerHandle(tmp_path).start()
    try:
        wh = server.local()
        ds = wh.map("t", sql="select 1 as one", source="pg").cache()
        ds.to_arrow()
        with _db(tmp_path / "catalog.db") as db:
            db.execute("delete from ldw_audit where seq > (select max(seq) - 2 from ldw_audit)")
        for _ in range(3):
            ds.to_arrow()
        done = _verify(server)
    finally:
        server.stop()
    assert done.returncode == 1, done.stdout
    assert "gap" in done.stdout and "anchored records missing" in done.stdout, done.stdout


def test_key_and_anchor_must_be_private_regular_files(tmp_path):
    from ldw.audit import AuditSeal, load_audit_key

    key = tmp_path / "audit.key"
    assert len(load_audit_key(key)) == 32 and key.stat().st_mode & 0o777 == 0o600
    key.chmod(0o644)
    with pytest.raises(ldw.ConfigError, match="0600"):
        load_audit_key(key)
    key.chmod(0o600)
    (tmp_path / "a.anchor").symlink_to("/etc/passwd")
    with pytest.raises(ldw.ConfigError, match="audit anchor"):
        Catalog(f"sqlite:///{tmp_path / 'c.db'}",
                seal=AuditSeal.open(key, tmp_path / "a.anchor"))
