"""The local backend against the Ray backend: materialize and attach TPC-H tables.

Reproduce (PostgreSQL on 127.0.0.1:5432, user postgres, database ``test``; ``pip install -e
".[dev]"`` brings Ray):

    python benchmarks/tpch_data.py --scale 1 && python benchmarks/ray_backend.py --scale 1

The script starts a Ray cluster on this machine (``ray.cluster_utils.Cluster``, loopback only,
``--nodes`` nodes sharing the CPUs, Ray's object spilling off) and, per backend, an ldw server
of its own (temporary state_dir and catalog; ``backend = "ray"`` with ``ray_address`` pointing at
that cluster). Then, for each table:

- ``materialize``: ``ds.cache()`` through the local server, whole table, ``--partitions``
  partitions (on Ray each partition is a Ray task that streams batches into the object store);
  one run each, seconds as the server reports them (``load_seconds``).
- ``attach``: a fresh process gets the cached table (``--repeat`` runs, median; imports
  excluded, ``connect`` included): local backend ``ldw.connect().dataset(name).to_arrow()`` (the
  server sends a file descriptor, the client maps it); Ray backend through the same call (the
  server copies the version into an in-memory file first: what clients outside the cluster that
  use the Unix socket get), and as a client inside the cluster: a Ray driver that redeems a
  ticket from ``ray_attach`` at the version holder and maps the objects from its node's object
  store (``ray.init`` excluded: a notebook in the cluster connects once).

Results are printed as a Markdown table and written to ``benchmarks/results/ray_backend-*.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback-only Ray

from tpch_data import schema_name

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
MB = 1 << 20

ATTACH_LOCAL = """
import json, sys, time
import ldw
started = time.perf_counter()
table = ldw.connect(config=sys.argv[1], autostart=False).dataset(sys.argv[2]).to_arrow()
print(json.dumps({"seconds": time.perf_counter() - started, "rows": table.num_rows}))
"""

ATTACH_IN_CLUSTER = """
import json, sys, time
import ray
import ldw
from ldw.storage.ray_reader import read_ticket
wh = ldw.connect(config=sys.argv[1], autostart=False)
ticket = wh._backend.call("ray_attach", {"name": sys.argv[2]})["ticket"]
ray.init(address=ticket["address"], namespace="ldw", log_to_driver=False)
started = time.perf_counter()
answer = wh._backend.call("ray_attach", {"name": sys.argv[2]})
table = read_ticket(answer["ticket"])
print(json.dumps({"seconds": time.perf_counter() - started, "rows": table.num_rows}))
"""


def server_config(folder: Path, args: argparse.Namespace, backend: str,
                  address: str | None) -> Path:
    shm = Path("/dev/shm") / f"ldw-bench-ray-{uuid.uuid4().hex[:8]}"
    lines = ["[server]",
             f'state_dir = "{folder / "state"}"', f'shm_dir = "{shm}"',
             f'spill_dir = "{folder / "spill"}"', f'catalog = "sqlite:///{folder / "cat.db"}"',
             f'mask_key_file = "{folder / "mask.key"}"', 'listen = ""',
             f'memory_limit = "{args.memory_limit}"', f'backend = "{backend}"']
    if address:
        lines.append(f'ray_address = "{address}"')
    lines += ["[sources.pg]", f'url = "{args.url}"']
    config = folder / "ldw.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def cli(config: Path, *words: str) -> None:
    subprocess.run([sys.executable, "-m", "ldw.cli", "--config", str(config), *words],
                   check=True, capture_output=True, text=True, timeout=300, cwd=ROOT)


def child(code: str, config: Path, name: str, timeout: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", code, str(config), name], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_backend(backend: str, args: argparse.Namespace, address: str | None
                ) -> dict[str, Any]:
    import ldw

    folder = Path(tempfile.mkdtemp(prefix=f"ldw-bench-{backend}-"))
    config = server_config(folder, args, backend, address)
    cli(config, "server", "start")
    results: dict[str, Any] = {}
    try:
        wh = ldw.connect(config=str(config), autostart=False)
        schema = schema_name(args.scale)
        for table in args.tables:
            ds = wh.map(table, f"pg.{schema}.{table}", partition_on=KEYS[table],
                        partitions=args.partitions)
            walls = []
            for run in range(args.runs):
                if run:
                    ds.evict()
                started = time.perf_counter()
                info = ds.cache().info()
                walls.append(time.perf_counter() - started)
            entry = {"materialize_runs": walls, "materialize_s": walls[0],
                     "materialize_best_s": min(walls), "rows": info["rows"],
                     "bytes": info["bytes"]}
            runs = [child(ATTACH_LOCAL, config, table, args.timeout)["seconds"]
                    for _ in range(args.repeat)]
            entry["attach_runs"] = runs
            entry["attach_ms"] = statistics.median(runs) * 1000
            if backend == "ray":
                runs = [child(ATTACH_IN_CLUSTER, config, table, args.timeout)["seconds"]
                        for _ in range(args.repeat)]
                entry["attach_in_cluster_runs"] = runs
                entry["attach_in_cluster_ms"] = statistics.median(runs) * 1000
            results[table] = entry
            print(f"{backend} {table}: {json.dumps(entry)}", flush=True)
            ds.evict()
        wh.close()
    finally:
        cli(config, "server", "stop")
        shutil.rmtree(folder, ignore_errors=True)
    return results


KEYS = {"orders": "o_orderkey", "lineitem": "l_orderkey", "customer": "c_custkey",
        "part": "p_partkey", "partsupp": "ps_partkey", "supplier": "s_suppkey"}


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"TPC-H SF{args.scale:g}, {args.partitions} partitions, Ray cluster of "
             f"{args.nodes} node(s) on this machine, attach = median of {args.repeat} fresh "
             "processes", "",
             "| table | MB | materialize local s (first / best) | materialize Ray s (first / "
             "best) | Ray x local (best) | attach local ms | attach Ray via server ms "
             "| attach Ray in-cluster ms |",
             "|---|---|---|---|---|---|---|---|"]
    for table in args.tables:
        local, on_ray = results["local"][table], results["ray"][table]
        lines.append(
            f"| {table} | {local['bytes'] / MB:,.0f} | {local['materialize_s']:.2f} / "
            f"{local['materialize_best_s']:.2f} | {on_ray['materialize_s']:.2f} / "
            f"{on_ray['materialize_best_s']:.2f} | "
            f"{on_ray['materialize_best_s'] / local['materialize_best_s']:.2f} | "
            f"{local['attach_ms']:.1f} | {on_ray['attach_ms']:.1f} | "
            f"{on_ray['attach_in_cluster_ms']:.1f} |")
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tables", nargs="+", default=["orders", "lineitem"])
    p.add_argument("--scale", type=float, default=1)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--nodes", type=int, default=2, help="Ray nodes on this machine")
    p.add_argument("--repeat", type=int, default=5, help="fresh processes per attach (median)")
    p.add_argument("--runs", type=int, default=2, help="materializations per table (evict "
                   "between): the first, and the best of all")
    p.add_argument("--memory-limit", default="3GiB", help="each server's memory_limit")
    p.add_argument("--timeout", type=float, default=600, help="seconds per child process")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    import ray
    from ray.cluster_utils import Cluster

    from ldw.config import parse_bytes

    store = parse_bytes(args.memory_limit) + 256 * MB
    node = {"num_cpus": max(1, (os.cpu_count() or 2) // args.nodes),
            "object_store_memory": store // args.nodes + 128 * MB,
            "include_dashboard": False, "node_ip_address": "127.0.0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={
        **node, "_system_config": {"automatic_object_spilling_enabled": False}})
    for _ in range(args.nodes - 1):
        cluster.add_node(**node)
    results: dict[str, Any] = {"started": datetime.now().isoformat(timespec="seconds"),
                               "args": vars(args)}
    try:
        results["local"] = run_backend("local", args, None)
        results["ray"] = run_backend("ray", args, cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"ray_backend-{datetime.now():%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2))
    print(report(results, args))
    print(f"\n(JSON: {out.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
