"""Load: eight client processes hammer one server for a bounded time.

They mix attaches, lazy source reads, SQL, refreshes and materializations of shared and private
datasets. Checked: no torn read (every read has the expected checksum), no deadlock (every
process finishes in time), one source read per published version (single flight), memory
within the cap. Throughput and attach latency percentiles are printed for the README.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import ServerHandle

pytestmark = pytest.mark.postgres

CLIENTS = 8
SECONDS = 15
ROWS = 100_000

WORKER = textwrap.dedent("""
    import json, random, sys, time
    import polars as pl
    import ldw
    config, table, seconds, me = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    expected = {rows} * ({rows} + 1) // 2
    wh = ldw.connect(config=config, autostart=False)
    rng = random.Random(me)
    latencies, counts, versions = [], {{}}, set()
    deadline = time.monotonic() + seconds
    wh.map(f"mine{{me}}", table)
    while time.monotonic() < deadline:
        action = rng.choice(["attach", "attach", "attach", "lazy", "sql", "refresh", "mine"])
        if action == "attach":
            started = time.perf_counter()
            t = wh.dataset("shared").to_arrow()
            latencies.append(time.perf_counter() - started)
            assert t.num_rows == {rows}, t.num_rows
            assert t["id"].cast("int64").to_numpy().sum() == expected, "torn read"
            versions.add(wh.dataset("shared").info()["version"])
        elif action == "lazy":
            got = wh.dataset("shared").lazy().filter(pl.col("id") <= 10).collect()
            assert sorted(got["id"].to_list()) == list(range(1, 11))
        elif action == "sql":
            n = wh.sql("SELECT count(*) AS n, sum(id) AS s FROM shared")
            assert n["n"].item() == {rows} and n["s"].item() == expected
        elif action == "refresh":
            wh.dataset("shared").refresh()
        else:
            ds = wh.dataset(f"mine{{me}}")
            (ds.evict() if rng.random() < 0.5 else ds.cache())
        counts[action] = counts.get(action, 0) + 1
    print(json.dumps({{"latencies": latencies, "counts": counts, "versions": sorted(versions)}}))
""").format(rows=ROWS)


def test_eight_clients_mixing_everything(tmp_path, pg_engine, pg_schema):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.t as select g as id, "
                             "md5(g::text) as tag from generate_series(1, %d) g" % ROWS)
    server = ServerHandle(tmp_path, memory_limit="64MiB").start()
    try:
        table = f"pg.{pg_schema}.t"
        wh = server.local()
        wh.map("shared", table).cache()
        script = tmp_path / "worker.py"
        script.write_text(WORKER)
        workers = [subprocess.Popen([sys.executable, str(script), str(server.config), table,
                                     str(SECONDS), str(i)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
                   for i in range(CLIENTS)]
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=SECONDS + 120)   # no deadlock
            assert worker.returncode == 0, err[-2000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        status = wh.status()
        assert status["used_bytes"] <= status["memory_limit"]
    finally:
        server.stop()

    log = (tmp_path / "state" / "server.log").read_text()
    reads = len(re.findall(r"materialized root/shared:", log))
    refreshes = sum(r["counts"].get("refresh", 0) for r in results)
    assert reads == 1 + refreshes   # one source read per cache/refresh call, none extra
    latencies = sorted(x for r in results for x in r["latencies"])
    operations = sum(sum(r["counts"].values()) for r in results)
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    print(f"\nload: {CLIENTS} processes x {SECONDS}s: {operations} operations "
          f"({operations / SECONDS:.0f}/s), {len(latencies)} attaches, p50 {p50:.1f} ms, "
          f"p99 {p99:.1f} ms, {reads} source reads for {refreshes} refreshes")
    assert latencies and operations > CLIENTS
