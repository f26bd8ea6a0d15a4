"""Run SQL on DuckDB's postgres (and mysql) scanners; the peer of ``federated.py``.

Runs in its own virtual environment, because the scanner extensions are pinned to one DuckDB
version and install offline from PyPI:

    python -m venv /tmp/duckscan && /tmp/duckscan/bin/pip install duckdb==1.5.5 \\
        duckdb-extension-postgres-scanner==1.5.5 duckdb-extension-mysql-scanner==1.5.5

Reads a JSON job on stdin: ``{"postgres": libpq DSN, "mysql": DSN or null, "repeat": N,
"queries": {id: sql}}``; the queries name tables ``pg.<schema>.<table>`` (and ``my.<db>.<table>``).
Writes ``{id: {"seconds": best, "rows": [[...], ...]} | {"status": error}}`` on stdout.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import sys
import time
from pathlib import Path


def _extension(package: str, name: str) -> str:
    module = __import__(package)
    roots = [Path(p) for p in getattr(module, "__path__", [])] or [Path(module.__file__).parent]
    for root in roots:
        found = sorted(root.rglob(f"{name}*.duckdb_extension"))
        if found:
            return str(found[0])
    raise SystemExit(f"no {name} extension file in {package}")


def _literal(text: str) -> str:
    """A SQL string literal (ATTACH takes no parameters); the DSN is the benchmark's own."""
    return "'" + text.replace("'", "''") + "'"


def _plain(value: object) -> object:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def main() -> None:
    import duckdb

    job = json.load(sys.stdin)
    con = duckdb.connect(config={"allow_unsigned_extensions": True})
    con.execute(f"LOAD '{_extension('duckdb_extension_postgres_scanner', 'postgres_scanner')}'")
    con.execute(f"ATTACH {_literal(job['postgres'])} AS pg (TYPE postgres, READ_ONLY)")
    if job.get("mysql"):
        con.execute(f"LOAD '{_extension('duckdb_extension_mysql_scanner', 'mysql_scanner')}'")
        con.execute(f"ATTACH {_literal(job['mysql'])} AS my (TYPE mysql, READ_ONLY)")
    results = {}
    for key, sql in job["queries"].items():
        best, rows = None, None
        try:
            for _ in range(job.get("repeat", 1)):
                started = time.perf_counter()
                rows = con.execute(sql).fetchall()
                seconds = time.perf_counter() - started
                best = seconds if best is None else min(best, seconds)
        except Exception as exc:  # report and carry on
            results[key] = {"status": f"{type(exc).__name__}: {exc}".splitlines()[0][:160]}
            continue
        results[key] = {"seconds": best, "rows": [[_plain(v) for v in r] for r in rows]}
        print(f"duckdb scanner {key}: {best:.3f}s", file=sys.stderr, flush=True)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
