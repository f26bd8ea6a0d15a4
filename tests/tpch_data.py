"""TPC-H SF0.1 for tests: generated once per session with ``tpchgen-cli``, read into Arrow and
loaded into a fresh PostgreSQL schema (fixtures, registered by conftest)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
from conftest import IN_CI, POSTGRES_URL
from psycopg import sql as pgsql

from ldw import tpch

SCALE = "0.1"


def _tpchgen() -> str:
    exe = shutil.which("tpchgen-cli") or str(Path(sys.executable).parent / "tpchgen-cli")
    if not Path(exe).exists():
        message = "tpchgen-cli is not installed (pip install -e '.[dev]')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return exe


@pytest.fixture(scope="session")
def tpch_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tpch")
    subprocess.run([_tpchgen(), "-s", SCALE, "--output-dir", str(out), "--quiet"], check=True)
    return out


@pytest.fixture(scope="session")
def tpch_arrow(tpch_files: Path) -> dict[str, pa.Table]:
    return {table: tpch.read_tbl(tpch_files / f"{table}.tbl", table) for table in tpch.TABLES}


def _copy_tbl(cur: psycopg.Cursor, target: pgsql.Composed, path: Path) -> None:
    statement = pgsql.SQL("copy {} from stdin (format csv, delimiter '|')").format(target)
    with cur.copy(statement) as copy, open(path, "rb") as fh:
        rest = b""
        while chunk := fh.read(1 << 20):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            copy.write(chunk[:cut].replace(b"|\n", b"\n"))  # tpchgen ends each line with '|'
            rest = chunk[cut:]


def _drop(schema: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(pgsql.SQL("drop schema if exists {} cascade").format(
            pgsql.Identifier(schema)))


@pytest.fixture(scope="session")
def tpch_pg(pg_engine, tpch_files: Path) -> Iterator[str]:
    """SF0.1 in a fresh PostgreSQL schema with primary keys and foreign-key indexes.

    No connection is held between tests: test_source_faults restarts PostgreSQL."""
    schema = f"ldw_tpch_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(pgsql.SQL("create schema {}").format(pgsql.Identifier(schema)))
            for table in tpch.TABLES:
                target = pgsql.Identifier(schema, table)
                cur.execute(pgsql.SQL("create table {} ({})").format(
                    target, pgsql.SQL(tpch.postgres_columns(table))))
                _copy_tbl(cur, target, tpch_files / f"{table}.tbl")
            for table, indexes in tpch.INDEXES.items():
                for columns in indexes:
                    cur.execute(pgsql.SQL("create index on {} ({})").format(
                        pgsql.Identifier(schema, table),
                        pgsql.SQL(", ").join(map(pgsql.Identifier, columns))))
            for table in tpch.TABLES:
                cur.execute(pgsql.SQL("analyze {}").format(pgsql.Identifier(schema, table)))
        yield schema
    finally:
        _drop(schema)


@pytest.fixture
def pg_conn(tpch_pg: str) -> Iterator[psycopg.Connection]:
    """A connection to the TPC-H schema, one per test (PostgreSQL may restart between)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(pgsql.SQL("set search_path to {}").format(pgsql.Identifier(tpch_pg)))
        conn.execute("set statement_timeout = '60s'")
        yield conn
