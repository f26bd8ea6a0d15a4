"""Automatic caching against no cache and against caching whole tables by hand (LRU), on a
replayed analyst workload over TPC-H in PostgreSQL.

Reproduce (PostgreSQL on 127.0.0.1:5432, user postgres, database ``test``):

    python benchmarks/tpch_data.py --scale 1
    python benchmarks/autocache.py --scale 1 [--queries 300] [--memory-limit 1GiB]

The workload is :func:`ldw.tpch.workload.workload`: the 22 TPC-H queries and ten exploratory
queries with one parameter each, drawn with Zipf popularity (``--skew``) from a seeded order
(``--seed``). Each mode runs the same queries in the same order on a fresh in-process ldw with
the same ``memory_limit``, one after the other in this run:

- ``none``: SQL over the source tables (``pg.tpch_sf1.lineitem``), ``caching = "manual"``:
  each query reads the columns and rows it needs from PostgreSQL;
- ``lru``: every table a query touches is mapped and cached whole first (what an analyst does
  by hand), the cache making room by least recent use; a table larger than the memory tier is
  read from its source by SQL, as in ``none``;
- ``auto``: SQL over the source tables with ``caching = "auto"``.

Every table is ``memory_only`` in all three modes, so the comparison is of the memory tier alone
(no mode gets a disk tier). Source time is what each mode spent reading PostgreSQL: SQL's source
reads (``status()["sql_source_reads"]``) plus, for ``lru``, every ``cache()``. Results of every
query are compared across the modes. Output: a Markdown table and
``benchmarks/results/autocache-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tpch_data import schema_name

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's ldw

import ldw
from ldw.tpch import compare_results, order_by_columns
from ldw.tpch.workload import MODES, replay, workload

RESULTS = Path(__file__).parent / "results"


def warehouse(mode: str, url: str, schema: str, memory_limit: str, root: Path) -> Any:
    config = {"sources": {"pg": {"url": url}},
              "policies": {f"pg.{schema}.*": {"memory_only": True}}}
    return ldw.connect(in_process=True, config=config, memory_limit=memory_limit,
                       caching="auto" if mode == "auto" else "manual",
                       shm_dir=str(root / f"{mode}-shm"), spill_dir=str(root / f"{mode}-spill"))


def differences(runs: dict[str, Any], texts: list[str]) -> list[str]:
    """Queries whose result differs between the modes (the first mode is the reference)."""
    modes = list(runs)
    found = []
    for i, text in enumerate(texts):
        order = order_by_columns(text)
        for other in modes[1:]:
            diff = compare_results(runs[modes[0]].results[i], runs[other].results[i],
                                   order_by=order, rel_tol=1e-6)
            if diff is not None:
                found.append(f"query {i} ({other} vs {modes[0]}): {diff}")
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=1)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--skew", type=float, default=1.1)
    p.add_argument("--memory-limit", default="1GiB")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = p.parse_args()

    schema = schema_name(args.scale)
    queries = workload(args.queries, seed=args.seed, skew=args.skew)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="ldw-autocache-") as tmp:
        for mode in args.modes:
            wh = warehouse(mode, args.url, schema, args.memory_limit, Path(tmp))
            started = time.perf_counter()

            def progress(i: int, item: Any, seconds: float, mode: str = mode,
                         started: float = started) -> None:
                if (i + 1) % 25 == 0 or i + 1 == len(queries):
                    print(f"{mode}: {i + 1}/{len(queries)} queries, "
                          f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

            try:
                runs[mode] = replay(wh, queries, mode, f"pg.{schema}", on_query=progress)
                if mode == "auto":
                    runs[mode].slices = wh.status()["slices"]  # type: ignore[attr-defined]
            finally:
                wh.close()
    wrong = differences(runs, [q.text for q in queries])
    summaries = {mode: run.summary() for mode, run in runs.items()}
    auto = summaries.get("auto", {}).get("source_seconds")
    print(f"\n### {args.queries} queries, TPC-H SF{args.scale:g}, memory_limit "
          f"{args.memory_limit}, seed {args.seed}, skew {args.skew}\n")
    print("| mode | source seconds | source reads | wall seconds | max memory (MB) | "
          "x auto (source) |")
    print("|---|---|---|---|---|---|")
    for mode, s in summaries.items():
        ratio = f"{s['source_seconds'] / auto:.2f}" if auto else "—"
        print(f"| {mode} | {s['source_seconds']:.1f} | {s['source_reads']} | "
              f"{s['wall_seconds']:.1f} | {s['max_used_bytes'] / 2**20:.0f} | {ratio} |")
    print(f"\nresults equal across modes: {'yes' if not wrong else 'NO'}")
    for line in wrong[:10]:
        print("  " + line)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"autocache-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({
        "args": vars(args), "summaries": summaries, "differences": wrong,
        "templates": [q.template for q in queries],
        "seconds": {m: r.seconds for m, r in runs.items()},
        "source_seconds": {m: r.source for m, r in runs.items()},
        "slices": getattr(runs.get("auto"), "slices", None)}, indent=1, default=str))
    print(f"written {out}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
