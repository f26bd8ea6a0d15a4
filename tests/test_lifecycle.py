"""The dataset lifecycle: one transition table, enforced, and re-mapping an identical definition
keeps the version and its shares (in process; the kernel-restart and Flight versions are in
test_rerun_after_restart.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest
from conftest import make_warehouse

import ldw
from ldw.lifecycle import TRANSITIONS, IllegalTransition
from ldw.types import DatasetState

ROWS = 500


@pytest.fixture
def lite(tmp_path, shm_dir) -> Iterator[ldw.Warehouse]:
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table events (id integer primary key, label text)")
        conn.executemany("insert into events values (?, ?)",
                         [(i, f"e{i}") for i in range(1, ROWS + 1)])
    wh = make_warehouse(shm_dir, lite={"url": f"sqlite:///{path}"})
    yield wh
    wh.close()


def _engine(wh: ldw.Warehouse):
    return wh._backend.engine


def _user(wh: ldw.Warehouse) -> str:
    return wh._backend.user


def test_every_state_has_its_moves_and_every_move_ends_in_a_state() -> None:
    assert set(TRANSITIONS) == set(DatasetState)
    assert all(targets <= set(DatasetState) for targets in TRANSITIONS.values())
    # a read can only end one way or the other (or be interrupted), and nothing at rest
    # skips the read
    assert TRANSITIONS[DatasetState.MATERIALIZING] == {
        DatasetState.CACHED, DatasetState.SPILLED, DatasetState.FAILED, DatasetState.CANCELLED}
    assert all(DatasetState.CACHED not in TRANSITIONS[s]
               for s in (DatasetState.MAPPED, DatasetState.EVICTED, DatasetState.LOST))


def test_a_move_the_table_does_not_allow_is_refused(lite: ldw.Warehouse) -> None:
    lite.map("events", "lite.events")
    engine = _engine(lite)
    lite.dataset("events").cache()
    record = engine.dataset(_user(lite), "events")
    version = record.version
    record.state = DatasetState.MAPPED  # as if nothing had been read
    with pytest.raises(IllegalTransition, match="mapped -> cached"):
        engine.lifecycle.published(record, version)


def test_states_follow_the_dataset_through_its_life(lite: ldw.Warehouse) -> None:
    ds = lite.map("events", "lite.events")
    assert ds.state == "mapped"
    assert ds.cache().state == "cached"
    ds.evict()
    assert ds.state == "evicted"
    assert ds.to_arrow().num_rows == ROWS and ds.state == "cached"
    assert ds.refresh().state == "cached"


def test_the_same_definition_keeps_the_version_the_shares_and_reads_nothing(
        lite: ldw.Warehouse) -> None:
    engine = _engine(lite)
    ds = lite.map("events", "lite.events", columns=["id", "label"], where="id > 10")
    ds.cache()
    version = ds.info()["version"]
    sent = engine.query_log.total
    again = lite.map("events", "lite.events", columns=["id", "label"], where="id > 10",
                     pin=True)
    assert again.state == "cached" and again.info()["version"] == version
    assert engine.dataset(_user(lite), "events").pin  # the new options are taken
    assert engine.query_log.total == sent  # no source query, not even a plan
    assert again.to_arrow().num_rows == ROWS - 10


@pytest.mark.parametrize("change", [{"where": "id > 20"}, {"columns": ["id"]},
                                    {"memory_only": True}, {"limit": 5}])
def test_a_changed_definition_replaces_the_version(lite: ldw.Warehouse, change: dict) -> None:
    base = {"columns": ["id", "label"], "where": "id > 10"}
    version = lite.map("events", "lite.events", **base).cache().info()["version"]
    again = lite.map("events", "lite.events", **{**base, **change})
    assert again.state == "mapped" and again.info()["version"] != version
