"""The protocol's one table of operations, its typed payloads and its errors, and user management
through the server (checked and audited)."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pyarrow.flight as fl
import pytest
from conftest import make_warehouse

import ldw
from ldw import ops, wire
from ldw.engine import server_os_user
from ldw.errors import AccessDenied, BadRequest, InvalidMapping, UnknownDataset
from ldw.service import Service
from ldw.types import AuditRow, DatasetInfo, DatasetListing

ROOT = Path(__file__).resolve().parent.parent


def test_every_operation_has_its_handler_and_kind():
    for name, spec in ops.OPS.items():
        assert spec.name == name
        assert callable(getattr(Service, spec.handler, None)), spec.handler
    assert ops.names(ops.Kind.STREAM) == ["preview", "scan", "sql"]
    assert ops.names(ops.Kind.ATTACH) == ["attach"]


def test_a_malformed_request_is_a_bad_request_and_still_an_invalid_mapping():
    with pytest.raises(BadRequest, match="unknown operation"):
        ops.checked_request("__init__", {})
    with pytest.raises(BadRequest, match=r"unknown argument\(s\) \['nope'\]"):
        ops.checked_request("info", {"name": "x", "nope": 1})
    with pytest.raises(BadRequest, match="unknown stream operation"):
        ops.checked_request("info", {}, ops.Kind.STREAM)
    assert issubclass(BadRequest, InvalidMapping) and issubclass(BadRequest, ValueError)
    assert "BadRequest" in ldw.errors.__all__


def test_an_error_detail_round_trips_outside_a_frame():
    raw = wire.error_bytes(UnknownDataset("no dataset 'x'"))
    back = wire.error_from_bytes(raw)
    assert type(back) is UnknownDataset and str(back) == "no dataset 'x'"
    assert wire.error_from_bytes(b"not json") is None
    assert wire.error_from_bytes(None) is None


def test_a_flight_error_carries_its_detail_in_extra_info():
    from ldw.flight import _flight_error
    from ldw.flight_client import _decode_flight_error

    error = _flight_error(AccessDenied("only alice can share alice/x"))
    assert isinstance(error, fl.FlightUnauthorizedError)
    assert "only alice can share alice/x" in str(error)  # readable by a person
    decoded = _decode_flight_error(error)
    assert type(decoded) is AccessDenied and str(decoded) == "only alice can share alice/x"
    plain = _decode_flight_error(fl.FlightServerError("no detail {\"type\": \"ConfigError\"}"))
    assert type(plain) is ldw.LdwError  # the text is never parsed for a type


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any level (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found |= {f"{'.' * node.level}{node.module or ''}"} | {
                f"{'.' * node.level}{node.module + '.' if node.module else ''}{a.name}"
                for a in node.names}
    return found


def test_the_flight_endpoint_and_the_verbs_import_nothing_that_imports_them_back():
    assert not {"ldw.server"} & _imports(ROOT / "ldw" / "flight.py")
    assert not {".magics", "ldw.extension.magics"} & _imports(ROOT / "extension" / "verbs.py")


@pytest.fixture
def wh(tmp_path: Path) -> ldw.Warehouse:
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (a INTEGER, b TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"v{i}") for i in range(5)])
    warehouse = make_warehouse(str(tmp_path / "shm"), lite={"url": f"sqlite:///{db}"})
    yield warehouse
    warehouse.close()


def test_payloads_have_the_keys_their_types_name(wh):
    wh.map("t", "lite.main.t").cache()
    service = wh._backend.service
    me = wh._backend.user
    assert set(service.call(me, "info", {"name": "t"})) == set(DatasetInfo.__annotations__)
    assert set(service.call(me, "datasets", {})[0]) == set(DatasetListing.__annotations__)
    assert set(service.call(me, "audit", {"limit": 1})[0]) == set(AuditRow.__annotations__)
    assert list(wh.datasets().columns) == list(DatasetListing.__annotations__)


def test_users_are_managed_by_the_server_owner_only_and_audited(wh):
    service: Service = wh._backend.service
    owner = server_os_user()
    answer = service.call(owner, "user_add", {"name": "bob", "roles": ["analyst"]})
    assert answer["user"] == "bob" and answer["token"].startswith("ldw_")
    assert service.call(owner, "user_list", {}) == [{"user": "bob", "roles": ["analyst"]}]
    with pytest.raises(AccessDenied, match="owner"):
        service.call("bob", "user_add", {"name": "eve"})
    revoked = service.call(owner, "user_revoke", {"name": "bob"})
    assert revoked == {"user": "bob", "had_token": True, "dropped_shares": 0}
    rows = service.call(owner, "audit", {"limit": 10})
    actions = [(r["user"], r["action"], r["outcome"]) for r in rows]
    assert (owner, "user_add", "allow") in actions and (owner, "user_revoke", "allow") in actions
    assert ("bob", "user_add", "deny") in actions
    assert not any(answer["token"] in str(r) for r in rows)  # the token is never stored
