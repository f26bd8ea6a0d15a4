"""``ldw demo`` (``python -m ldw.demo``): runs end to end, prints its table, stops its server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import ldw
from ldw import demo, tpch
from ldw.config import load_settings
from ldw.sql import referenced_datasets

SF001_ROWS = 86_805  # the eight tables at scale 0.01


def run_demo(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDW_")}
    return subprocess.run([sys.executable, "-m", "ldw.demo", "--scale", "0.01",
                           "--dir", str(folder), *extra],
                          capture_output=True, text=True, timeout=300, env=env)


def server_alive(pid: int) -> bool:
    try:
        return any("ldw" in part for part in psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False


def test_demo_prints_its_table_and_stops_its_server(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    done = run_demo(folder)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    pid = int(re.search(r"ldw server started \(pid (\d+)", out).group(1))

    assert re.search(rf"map \+ load 8 tables from SQLite\s+{SF001_ROWS:,} rows, [\d.]+ MB\s+"
                     r"[\d.,]+ m?s", out), out
    assert re.search(r"attach them from a new process\s+memory-mapped Arrow; no source query, "
                     r"same versions\s+[\d.,]+ m?s\s+[\d,]+x faster", out), out
    assert re.search(rf"\.\.\. as polars DataFrames\s+{SF001_ROWS:,} rows\s+[\d.,]+ m?s", out)
    for number, rows in ((1, "4 rows"), (3, "10 rows"), (6, "1 row")):
        assert re.search(rf"TPC-H Q{number} over the cache \(wh\.sql\)\s+{rows}\s+[\d.,]+ m?s",
                         out), out
    assert re.search(r"export orders to Parquet\s+15,000 rows, 3 files, verified", out), out
    assert "server:  stopped" in out

    config = folder / "ldw.toml"
    assert f"config:  {config}" in out
    assert demo.server_pid(config) is None
    assert not server_alive(pid)
    settings = load_settings(config)
    assert settings.listen == ""  # Flight off
    assert not settings.shm_dir.exists()  # its shared memory is freed
    export = folder / "export" / "orders"
    assert f"export:  {export}" in out
    assert ldw.verify_export(export).ok


def test_demo_runs_again_and_keeps_its_server_when_asked(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    assert run_demo(folder).returncode == 0
    data = folder / "tpch-sf0.01"
    generated = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}

    done = run_demo(folder, "--keep")  # reuses the data and SQLite file, starts a new server
    assert done.returncode == 0, done.stderr
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == generated
    config = folder / "ldw.toml"
    try:
        pid = demo.server_pid(config)
        assert pid is not None and server_alive(pid)
        assert f"server:  running, pid {pid}" in done.stdout
        with ldw.connect(config=config, autostart=False) as wh:  # the kept cache is usable
            frame = wh.dataset("lineitem").to_polars()
            assert frame.height == 60_175
            assert wh.dataset("lineitem").info()["state"] == "cached"
    finally:
        demo.stop_server(config)
    assert demo.server_pid(config) is None


def test_demo_says_how_to_install_a_missing_tpchgen(tmp_path: Path, monkeypatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    monkeypatch.setattr(demo.sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(ldw.ConfigError, match="pip install tpchgen-cli"):
        demo.tpchgen_executable()
    assert demo.main(["--scale", "0.01", "--dir", str(tmp_path / "demo")]) == 2
    assert "tpchgen-cli, which is not installed" in capsys.readouterr().err
    assert not (tmp_path / "demo" / "ldw.toml").exists()


def test_demo_rejects_a_bad_scale(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--scale", "0"]) == 2
    assert "--scale must be positive" in capsys.readouterr().err


def test_tpch_queries_for_sqlite_cast_the_date_columns() -> None:
    q6 = demo.tpch_query(6)
    assert "CAST(l_shipdate AS DATE) >= CAST('1994-01-01' AS DATE)" in q6
    q3 = demo.tpch_query(3)
    assert "CAST(o_orderdate AS DATE) AS o_orderdate" in q3  # projections keep their names
    for number in tpch.NUMBERS:  # every rewritten text is still one valid query over datasets
        assert set(referenced_datasets(demo.tpch_query(number))) <= set(demo.TABLES)
