"""Remote attach over several parallel Flight streams: same table, same order, same security.

An attach that asks for ``streams`` gets up to that many single-use tickets, each for a contiguous
run of the version's batches; the client reads them on parallel connections and joins them in
order. These tests run a real server (``conftest.ServerHandle``) against real PostgreSQL.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as fl
import pytest
from conftest import ServerHandle

import ldw
from ldw.layout import standard_table

pytestmark = pytest.mark.postgres

WIDE_ROWS = 6_000_000  # 2 x 8 bytes a row: 96 MB, about ten batches of the PostgreSQL reader


@pytest.fixture(scope="module")
def source(pg_engine) -> Iterator[str]:
    """A schema with an empty, a small (one batch) and a wide (many batches) table."""
    schema = f"ldw_t_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create schema {schema}")
        conn.exec_driver_sql(f"create table {schema}.empty (a bigint, s text)")
        conn.exec_driver_sql(f"create table {schema}.small as select g::bigint as a, "
                             f"'row ' || g as s from generate_series(1, 1000) g")
        conn.exec_driver_sql(f"create table {schema}.wide as select g::bigint as a, "
                             f"g::float8 / 7 as b from generate_series(1, {WIDE_ROWS}) g")
    yield schema
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"drop schema {schema} cascade")


@pytest.fixture(scope="module")
def server(tmp_path_factory, source) -> Iterator[ServerHandle]:
    handle = ServerHandle(tmp_path_factory.mktemp("flight-transfer"),
                          memory_limit="2GiB").start()
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def alice(server, source) -> Iterator[ldw.Warehouse]:
    """A remote user with the three tables cached."""
    wh = server.remote("alice")
    for name in ("empty", "small", "wide"):
        wh.map(name, f"pg.{source}.{name}").cache()
    yield wh
    wh.close()


def _single_stream(wh: ldw.Warehouse, **ref: str) -> pa.Table:
    """The version as one stream (an attach that does not ask for streams)."""
    backend = wh._backend
    info = backend.call("attach", ref)
    assert "tickets" not in info
    return backend._get(info["ticket"]).read_all()


def _tickets(wh: ldw.Warehouse, streams: int, **ref: str) -> list[str]:
    info = wh._backend.call("attach", {**ref, "streams": streams})
    assert "ticket" not in info
    return info["tickets"]


def _layout(table: pa.Table) -> list[int]:
    return [batch.num_rows for batch in table.to_batches()]


@pytest.mark.parametrize("streams", [2, 3, 8])
def test_many_batches_arrive_whole_and_in_order(alice, streams):
    whole = _single_stream(alice, name="wide")
    assert whole.num_rows == WIDE_ROWS and whole.column("a").num_chunks >= 8
    tickets = _tickets(alice, streams, name="wide")
    assert 2 <= len(tickets) <= streams
    joined = alice._backend._read_all(tickets)
    assert joined.equals(whole)
    assert _layout(joined) == _layout(whole)  # the same batches, in the version's order
    assert pc.all(pc.equal(joined["a"], pa.array(range(1, WIDE_ROWS + 1)))).as_py()


def test_to_arrow_uses_several_streams_and_equals_one_stream(alice, monkeypatch):
    backend = alice._backend
    assert backend.streams >= 2  # the default asks for parallel streams
    whole = _single_stream(alice, name="wide")
    read_all, used = backend._read_all, []

    def spy(tickets: list[str]) -> pa.Table:
        used.append(len(tickets))
        return read_all(tickets)

    monkeypatch.setattr(backend, "_read_all", spy)
    for streams in (1, 4):
        monkeypatch.setattr(backend, "streams", streams)
        got = alice.dataset("wide").to_arrow()
        assert got.equals(whole) and _layout(got) == _layout(whole)
    assert used[0] == 1 and used[1] >= 2


@pytest.mark.parametrize("name, rows", [("empty", 0), ("small", 1000)])
def test_empty_and_single_batch_datasets_take_one_stream(alice, name, rows):
    whole = _single_stream(alice, name=name)
    tickets = _tickets(alice, 4, name=name)
    assert len(tickets) == 1  # nothing to split: one ticket whatever was asked
    got = alice._backend._read_all(tickets)
    assert got.num_rows == rows and got.schema == whole.schema and got.equals(whole)
    assert alice.dataset(name).to_arrow().equals(standard_table(whole))  # plain strings
    if rows:
        assert pc.sum(got["a"]).as_py() == rows * (rows + 1) // 2


def test_streams_must_be_a_small_positive_integer(alice):
    for bad in (0, -1, 9, 2.5, "2", True):
        with pytest.raises(ldw.InvalidMapping, match="streams"):
            alice._backend.call("attach", {"name": "wide", "streams": bad})


def test_every_ticket_is_single_use_and_bound_to_its_user(server, alice):
    bob = server.remote("bob")
    tickets = _tickets(alice, 4, name="wide")
    assert len(tickets) >= 2 and len(set(tickets)) == len(tickets)
    for ticket in tickets:  # another user can neither read nor use up alice's tickets
        with pytest.raises(ldw.AccessDenied, match="ticket"):
            bob._backend._get(ticket).read_all()
    assert alice._backend._read_all(tickets).num_rows == WIDE_ROWS
    for ticket in tickets:
        with pytest.raises(ldw.AccessDenied, match="ticket"):
            alice._backend._get(ticket).read_all()
    raw = fl.FlightClient(server.flight.replace("grpc://", "grpc+tcp://"))
    try:  # and nobody reads one without a token
        with pytest.raises(fl.FlightUnauthenticatedError):
            raw.do_get(fl.Ticket(bytes.fromhex(_tickets(alice, 2, name="wide")[0]))).read_all()
    finally:
        raw.close()
    bob.close()


def test_revoking_a_share_stops_every_parallel_stream(server, alice):
    carol = server.remote("carol")
    backend = carol._backend
    owner = alice._backend.user
    alice.dataset("wide").share("carol")
    try:
        # streams opened before the revocation, each one batch in
        tickets = _tickets(carol, 2, owner=owner, name="wide")
        assert len(tickets) == 2
        readers = [backend._get(ticket, client) for ticket, client
                   in zip(tickets, backend._connections(len(tickets)), strict=True)]
        received = sum(reader.read_chunk().data.num_rows for reader in readers)
        # tickets issued before the revocation but not redeemed yet
        unread = _tickets(carol, 4, owner=owner, name="wide")
        alice.dataset("wide").unshare("carol")
        for reader in readers:
            with pytest.raises(fl.FlightServerError, match="is shared with you"):
                while True:
                    received += reader.read_chunk().data.num_rows
        assert received < WIDE_ROWS
        with pytest.raises(ldw.UnknownDataset, match="is shared with you"):
            backend._read_all(unread)  # every stream checks before its first batch
        with pytest.raises(ldw.UnknownDataset):
            carol.attach(f"{owner}/wide").to_arrow()
    finally:
        carol.close()


def _mapped_by(pid: int, version: str) -> bool:
    return any(f"/{version}.arrow" in line
               for line in Path(f"/proc/{pid}/maps").read_text().splitlines())


def test_the_server_keeps_a_served_version_mapped_until_it_is_replaced(server, alice, source):
    """Serving a version again must not map and page-fault its file again, so the server keeps
    the mapping; once a refresh replaces the version, the deleted file is no longer mapped (its
    memory is not held by the server)."""
    ds = alice.map("remapped", f"pg.{source}.small").cache()
    first = ds.info()["version"]
    pid = server.local().status()["pid"]
    assert ds.to_arrow().num_rows == 1000
    assert _mapped_by(pid, first), "a served version should stay mapped for the next reader"
    assert ds.to_arrow().num_rows == 1000
    mappings = sum(f"/{first}.arrow" in line
                   for line in Path(f"/proc/{pid}/maps").read_text().splitlines())
    assert mappings == 1, "the second read mapped the file again"
    second = ds.refresh().info()["version"]
    assert second != first and ds.to_arrow().num_rows == 1000
    deadline = time.monotonic() + 10
    while _mapped_by(pid, first) and time.monotonic() < deadline:
        time.sleep(0.1)  # the stream that served it lets go of its batches when gRPC is done
    assert not _mapped_by(pid, first), "a replaced version is still mapped by the server"
    assert _mapped_by(pid, second)
