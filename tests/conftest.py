"""Fixtures: real PostgreSQL and MariaDB from LDW_TEST_*_URL (local defaults), SQLite files.

Without a reachable server the database tests skip with the reason, except under CI=true, where
they fail: CI must never pass by skipping the real thing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

import ldw

POSTGRES_URL = os.environ.get("LDW_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("LDW_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

_DRIVERS = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}


def _engine(url: str) -> sa.Engine:
    parsed = sa.make_url(url)
    # pre-ping: test_source_faults restarts PostgreSQL, which kills the pooled connections
    return sa.create_engine(parsed.set(drivername=_DRIVERS[parsed.get_backend_name()]),
                            pool_pre_ping=True)


def _reachable(url: str) -> sa.Engine:
    engine = _engine(url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1")
    except Exception as exc:
        message = f"database at {sa.make_url(url).render_as_string()} unreachable: {exc}"
        if IN_CI:
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    return engine


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[sa.Engine]:
    engine = _reachable(POSTGRES_URL)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def mysql_engine() -> Iterator[sa.Engine]:
    engine = _reachable(MYSQL_URL)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema(pg_engine: sa.Engine) -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    name = f"ldw_t_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create schema {name}")
    yield name
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"drop schema {name} cascade")


@pytest.fixture
def mysql_db(mysql_engine: sa.Engine) -> Iterator[str]:
    """A fresh MariaDB database (MySQL's 'schema') for one test, dropped afterwards."""
    name = f"ldw_t_{uuid.uuid4().hex[:8]}"
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(f"create database {name}")
    yield name
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(f"drop database {name}")


@pytest.fixture
def shm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("shm"))


def make_warehouse(shm_dir: str, **sources: dict) -> ldw.Warehouse:
    return ldw.connect(in_process=True, config={"sources": sources}, shm_dir=shm_dir,
                       spill_dir=f"{shm_dir}-spill", memory_limit="4GiB")


@pytest.fixture
def pg_wh(pg_engine: sa.Engine, shm_dir: str) -> Iterator[ldw.Warehouse]:
    wh = make_warehouse(shm_dir, pg={"url": POSTGRES_URL},
                        pg_dbapi={"url": POSTGRES_URL, "transport": "dbapi"})
    yield wh
    wh.close()


@pytest.fixture
def mysql_wh(mysql_engine: sa.Engine, shm_dir: str) -> Iterator[ldw.Warehouse]:
    wh = make_warehouse(shm_dir, my={"url": MYSQL_URL},
                        my_dbapi={"url": MYSQL_URL, "transport": "dbapi"})
    yield wh
    wh.close()


class ServerHandle:
    """A real ldw server for one test: its own state, shared memory, spill dir and catalog."""

    def __init__(self, folder, *, extra_toml: str = "", **server: object) -> None:
        import json
        from pathlib import Path

        self.folder = Path(folder)
        self.shm = Path("/dev/shm") / f"ldw-test-{uuid.uuid4().hex[:8]}"
        settings = {"state_dir": self.folder / "state", "shm_dir": self.shm,
                    "spill_dir": self.folder / "spill",
                    "catalog": f"sqlite:///{self.folder / 'catalog.db'}",
                    "mask_key_file": self.folder / "mask.key",
                    "listen": "grpc://127.0.0.1:0", "memory_limit": "1GiB", **server}
        lines = ["[server]"] + [f"{k} = {json.dumps(str(v))}" for k, v in settings.items()]
        lines += ["[sources.pg]", f"url = {json.dumps(POSTGRES_URL)}",
                  "[sources.my]", f"url = {json.dumps(MYSQL_URL)}", extra_toml]
        self.config = self.folder / "ldw.toml"
        self.config.write_text("\n".join(lines) + "\n")

    def cli(self, *args: str, check: bool = True):
        import subprocess
        import sys

        return subprocess.run([sys.executable, "-m", "ldw.cli", "--config", str(self.config),
                               *args], capture_output=True, text=True, timeout=120, check=check)

    def start(self) -> ServerHandle:
        self.cli("server", "start")
        return self

    def stop(self) -> None:
        import shutil

        self.cli("server", "stop", check=False)
        shutil.rmtree(self.shm, ignore_errors=True)

    @property
    def flight(self) -> str:
        import json

        return json.loads(self.cli("server", "status", "--json").stdout)["flight"]

    def token(self, user: str, *roles: str) -> str:
        args = [a for role in roles for a in ("--role", role)]
        return self.cli("user", "add", user, *args).stdout.split()[-1]

    def local(self) -> ldw.Warehouse:
        return ldw.connect(config=str(self.config), autostart=False)

    def remote(self, user: str, *roles: str) -> ldw.Warehouse:
        return ldw.connect(self.flight, token=self.token(user, *roles))


from lab_helpers import chromium  # noqa: E402,F401  (a fixture)
from tpch_data import pg_conn, tpch_arrow, tpch_files, tpch_pg  # noqa: E402,F401  (fixtures)
