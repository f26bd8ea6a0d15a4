"""Hostile input and clients: code that never evaluates data, fuzzed predicates, TLS refusals,
idle and stalled clients on the local socket, oversized Flight requests."""

from __future__ import annotations

import ast
import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.flight as fl
import pytest
import sqlalchemy as sa
from conftest import ServerHandle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql

import ldw
from ldw.errors import LdwError
from ldw.predicates import parse_where, validate_select_sql

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [ROOT / "ldw", ROOT / "connectors", ROOT / "extension"]
FORBIDDEN_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def test_no_pickle_eval_or_exec_anywhere_in_the_code():
    found = []
    for package in PACKAGES:
        for path in package.rglob("*.py"):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom):
                    names = {(node.module or "").split(".")[0]}
                elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                    names = {node.func.id} & FORBIDDEN_CALLS
                else:
                    continue
                bad = names & (FORBIDDEN_MODULES | FORBIDDEN_CALLS)
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {b}" for b in bad]
    assert not found, found


# -- fuzzing the validators ------------------------------------------------------------------
_TABLE = sa.table("t", sa.column("a", sa.Integer), sa.column("b", sa.String),
                  sa.column("c", sa.Date))
_TOKENS = st.sampled_from([
    "a", "b", "c", "d", "t.a", "other.x", "1", "0", "'x'", "'", "''", "\"", ";", "--", "/*", "*/",
    "(", ")", "AND", "OR", "NOT", "=", "<>", "<", ">=", "+", "-", "*", "/", "%", "||", "IN",
    "BETWEEN", "LIKE", "IS", "NULL", "TRUE", "SELECT", "FROM", "DROP", "TABLE", "UNION",
    "pg_sleep(1)", "sleep(1)", "lower(b)", "CAST(a AS TEXT)", "DATE '2020-01-01'", ",", ":p",
    "EXISTS", "(SELECT 1)", "x'00'", "\\", "\x00", "𝔘", "$1", "?", "@@version", "`a`",
])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=60), st.lists(_TOKENS, max_size=12).map(" ".join)))
def test_where_validator_only_accepts_expressions_over_the_mapped_columns(text):
    try:
        clause = parse_where(text, _TABLE.c, dialect="postgresql", params={"p": 1})
    except LdwError:
        return
    compiled = str(clause.compile(dialect=postgresql.dialect()))
    for word in ("select", "from", "drop", ";", "pg_sleep", "other"):
        assert word not in compiled.lower(), (text, compiled)
    tables = {t.name for t in sa.sql.util.find_tables(clause, include_crud=True)}
    assert tables <= {"t"}, (text, tables)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=80), st.lists(_TOKENS, max_size=16).map(" ".join)))
def test_sql_validator_never_lets_anything_but_one_read_only_query_through(text):
    for dialect in ("postgresql", "mysql"):
        try:
            out = validate_select_sql(text, dialect=dialect)
        except LdwError:
            continue
        lowered = out.lower()
        assert ";" not in lowered.strip().rstrip(";"), (text, out)
        for word in ("drop ", "insert ", "update ", "delete ", "pg_sleep", "sleep("):
            assert word not in lowered, (text, out)


# -- the local socket under hostile clients --------------------------------------------------
@pytest.fixture
def server(tmp_path, pg_engine):
    handle = ServerHandle(tmp_path).start()
    yield handle
    handle.stop()


def _sock(server: ServerHandle) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(server.folder / "state" / "ldw.sock"))
    return sock


@pytest.mark.postgres
def test_idle_oversized_and_garbage_clients_are_bounded_and_others_still_served(server,
                                                                                monkeypatch):
    idle = [_sock(server) for _ in range(20)]          # many idle connections
    huge = _sock(server)
    try:                                                # a request over 1 MiB, no newline:
        huge.sendall(b"{" + b" " * (2 << 20))           # the server answers and hangs up
    except BrokenPipeError:
        pass
    answer = huge.recv(65536)
    assert b"larger than" in answer
    garbage = _sock(server)
    garbage.sendall(b"\x00\xffnot json\n")
    assert b"not JSON" in garbage.recv(65536)
    unknown = _sock(server)
    unknown.sendall(b'{"op": "__class__", "args": {}}\n')
    assert b"unknown operation" in unknown.recv(65536)
    started = time.monotonic()
    assert server.local().status()["pid"]              # the server keeps serving others
    assert time.monotonic() - started < 5
    for sock in idle:                                   # idle ones are dropped after 10 s
        sock.settimeout(30)
        assert sock.recv(10) == b""
    for sock in (*idle, huge, garbage, unknown):
        sock.close()


@pytest.mark.postgres
def test_a_reader_that_stops_reading_does_not_hold_the_server(server, pg_engine, pg_schema):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.big as select g as id, repeat('z', 200) "
                             "as pad from generate_series(1, 300000) g")
    wh = server.local()
    wh.map("big", f"pg.{pg_schema}.big").cache()
    stalled = _sock(server)                            # asks for 60 MB, then never reads
    stalled.sendall(json.dumps({"op": "sql", "args": {"query": "SELECT * FROM big"}}).encode()
                    + b"\n")
    time.sleep(1)
    results = []

    def use() -> None:
        results.append(wh.sql("SELECT count(*) AS n FROM big")["n"].item())

    threads = [threading.Thread(target=use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [300000] * 4
    stalled.close()


@pytest.mark.postgres
def test_oversized_and_unknown_flight_requests_are_refused(server):
    wh = server.remote("mallory")
    client = wh._backend._client
    options = wh._backend._options
    with pytest.raises(fl.FlightServerError, match="larger than"):
        list(client.do_action(fl.Action("datasets", b"{" + b" " * (2 << 20) + b"}"),
                              options=options))
    with pytest.raises(fl.FlightServerError, match="JSON object"):
        list(client.do_action(fl.Action("datasets", b"[1, 2]"), options=options))
    with pytest.raises(fl.FlightServerError, match="does not accept") as info:
        writer, _ = client.do_put(fl.FlightDescriptor.for_path("x" * 100_000),
                                  ldw.client.pa.schema([("x", ldw.client.pa.int64())]),
                                  options=options)    # no client-supplied Arrow is accepted
        writer.close()
    assert "Traceback" not in str(info.value)
    assert list(client.list_flights(options=options)) == []
    with pytest.raises(ldw.InvalidMapping, match="unknown"):
        wh._backend.call("__init__", {})
    assert wh.status()["user"] == "mallory"


@pytest.mark.postgres
def test_many_idle_and_garbage_flight_connections_do_not_stop_service(server):
    port = int(server.flight.rsplit(":", 1)[1])
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    garbage = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    try:
        for sock in garbage:                            # not HTTP/2: dropped by gRPC
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\x00" * 65536)
        started = time.monotonic()
        wh = server.remote("mallory")
        assert wh.status()["user"] == "mallory"
        assert time.monotonic() - started < 10
        for sock in garbage:
            sock.settimeout(10)
            with contextlib.suppress(ConnectionResetError):
                sock.recv(65536)                        # an HTTP/2 error frame, or reset
    finally:
        for sock in (*idle, *garbage):
            sock.close()


_STALLED_READER = """
import os, signal, sys, ldw
wh = ldw.connect(sys.argv[1], token=sys.argv[2])
reader = wh._backend.stream("sql", {"query": f'SELECT * FROM "{sys.argv[3]}"', "name": None})
reader.read_next_batch()                 # the stream is under way; now stop reading for good
print("stalled", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def _private_mib(pid: int) -> float:
    """The process's private resident memory (the cached version's shared pages excluded)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon")


@pytest.mark.postgres
def test_stalled_flight_readers_are_bounded_and_others_still_served(server, pg_engine,
                                                                    pg_schema):
    """Readers that stop mid-stream (SIGSTOP) hold a little memory each, not their dataset,
    and every other client is still served while they hang."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.big as select g as id, repeat('z', 200) "
                             "as pad from generate_series(1, 400000) g")
    owner = server.local()
    big = owner.map("big", f"pg.{pg_schema}.big").cache()
    address, token = server.flight, server.token("mallory")
    big.share("mallory")                 # shares go to existing users only
    expected = big.to_arrow()
    dataset_mib = expected.nbytes / 2**20
    pid = owner.status()["pid"]
    before = _private_mib(pid)
    stalled = []
    try:
        for _ in range(6):
            child = subprocess.Popen(
                [sys.executable, "-c", _STALLED_READER, address, token,
                 f"{owner.status()['user']}/big"], stdout=subprocess.PIPE, text=True)
            stalled.append(child)
            assert child.stdout.readline().strip() == "stalled"
        grown = _private_mib(pid) - before
        reader = server.remote("mallory")
        for _ in range(3):                              # others are still served, whole
            assert reader.attach(f"{owner.status()['user']}/big").to_arrow().equals(expected)
        assert owner.status()["pid"] == pid
        # each stalled stream holds a few batches, not its whole result
        assert grown / len(stalled) < dataset_mib / 2, (grown, dataset_mib)
    finally:
        for child in stalled:
            child.kill()
            child.wait(timeout=30)
    assert server.remote("mallory").attach(f"{owner.status()['user']}/big").to_arrow().num_rows


# -- TLS ----------------------------------------------------------------------------------
def _cert(folder: Path, name: str, host: str) -> tuple[Path, Path]:
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return key, cert


@pytest.mark.postgres
def test_tls_refuses_plaintext_wrong_ca_and_wrong_hostname(tmp_path, pg_engine):
    key, cert = _cert(tmp_path, "server", "localhost")
    _, other_ca = _cert(tmp_path, "other", "localhost")
    _, _ = _cert(tmp_path, "elsewhere", "elsewhere.invalid")
    server = ServerHandle(tmp_path, listen="grpc+tls://localhost:0", tls_cert=cert,
                          tls_key=key).start()
    try:
        address = server.flight
        token = server.token("tess")
        port = address.rsplit(":", 1)[1]
        assert ldw.connect(address, token=token, tls_root_certs=cert).status()["user"] == "tess"
        refusals = {
            "plaintext": lambda: ldw.connect(f"grpc://localhost:{port}", token=token),
            "wrong CA": lambda: ldw.connect(address, token=token, tls_root_certs=other_ca),
            "wrong hostname": lambda: ldw.connect(f"grpc+tls://127.0.0.1:{port}", token=token,
                                                  tls_root_certs=cert),
        }
        for label, call in refusals.items():
            with pytest.raises(ldw.LdwError) as info:
                call()
                pytest.fail(f"{label} was accepted")
            assert "\n" not in str(info.value), label
    finally:
        server.stop()
