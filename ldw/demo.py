"""``ldw demo``: the first command to run. TPC-H in SQLite, a private server, load vs attach.

    ldw demo [--scale 0.1] [--dir ~/.cache/ldw/demo] [--keep]
    python -m ldw.demo ...

What it does, timing each step and printing a short table at the end:

1. generates TPC-H data at ``--scale`` with ``tpchgen-cli`` (Parquet, kept for the next run),
2. builds a SQLite database from it: the embedded default source, no server to install,
3. writes ``ldw.toml`` for a private ldw server (its own state dir, shared memory, catalog;
   Flight off) under ``--dir`` and starts that server,
4. maps the eight TPC-H tables and materializes them into the cache, with progress,
5. attaches all of them from a *second* process (as a restarted kernel or a colleague would),
6. runs TPC-H Q1, Q3 and Q6 over the cache with ``wh.sql`` and exports ``orders`` to Parquet,
7. stops the server (unless ``--keep``) and frees its shared memory.

The helpers are public so the notebooks in ``demo_notebooks/`` build the same warehouse:
:func:`prepare` (data, SQLite, ``ldw.toml``; idempotent), :func:`tpch_query` (a TPC-H query
for SQLite-sourced data) and :func:`stop_server`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_DIR", "SOURCE", "TABLES", "attach_from_new_process", "main", "prepare",
           "server_pid", "stop_server", "tpch_query"]

DEFAULT_DIR = "~/.cache/ldw/demo"
DEFAULT_SCALE = 0.1
SOURCE = "tpch"
#: Load order: the big tables first, so the progress display has something to show.
TABLES = ("lineitem", "orders", "partsupp", "part", "customer", "supplier", "nation", "region")
QUERIES = (1, 3, 6)
EXPORTED = "orders"
EXPORT_PARTITION = "o_orderstatus"

Say = Callable[[str], None]


def _sql_type(kind: str) -> str:
    """The column type declared in SQLite for a TPC-H type (PostgreSQL spelling)."""
    if kind in ("integer", "bigint"):
        return "INTEGER"
    if kind.startswith("numeric"):
        return "DECIMAL(15,2)"  # SQLite stores it as REAL; ldw reads float64 and says so
    return kind.upper()  # DATE (kept as ISO text by SQLite), CHAR(n), VARCHAR(n)


def _label(scale: float) -> str:
    return f"{scale:g}"


# -- data ------------------------------------------------------------------------------------

def tpchgen_executable() -> str:
    """Path of ``tpchgen-cli``: on PATH or next to this Python (a venv not activated)."""
    from ldw.errors import ConfigError

    found = shutil.which("tpchgen-cli")
    if found:
        return found
    beside = Path(sys.executable).parent / "tpchgen-cli"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    raise ConfigError("ldw demo generates TPC-H data with tpchgen-cli, which is not installed; "
                      "run `pip install tpchgen-cli` (or `pip install -e \".[dev]\"`) and retry")


def generate(scale: float, folder: Path) -> Path:
    """TPC-H at ``scale`` as one Parquet file per table in ``folder/tpch-sf<scale>``.

    Generated into a temporary folder and renamed when complete: an interrupted run leaves
    nothing half-written behind, and a complete folder is reused.
    """
    from ldw.errors import ConfigError

    target = folder / f"tpch-sf{_label(scale)}"
    if all((target / f"{t}.parquet").is_file() for t in TABLES):
        return target
    exe = tpchgen_executable()
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{target.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        done = subprocess.run([exe, "parquet", "--scale-factor", _label(scale),
                               "--output-dir", str(partial)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise ConfigError(f"tpchgen-cli failed (exit {done.returncode}): {tail}")
        missing = [t for t in TABLES if not (partial / f"{t}.parquet").is_file()]
        if missing:
            raise ConfigError(f"tpchgen-cli wrote no {', '.join(missing)} in {partial}; "
                              "is it version 1.0 or newer?")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def build_sqlite(data: Path, database: Path) -> Path:
    """A SQLite database with the eight TPC-H tables (declared types, primary keys) from the
    Parquet files in ``data``; built under a temporary name, so it is complete or absent."""
    import adbc_driver_sqlite.dbapi as adbc_sqlite
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ldw import tpch

    if database.is_file():
        return database
    partial = database.with_name(f".{database.name}.{os.getpid()}.partial")
    partial.unlink(missing_ok=True)
    try:
        with adbc_sqlite.connect(str(partial)) as conn:
            cursor = conn.cursor()
            for table in TABLES:
                columns = ", ".join(f"{name} {_sql_type(kind)} NOT NULL"
                                    for name, kind in tpch.TABLES[table])
                key = ", ".join(tpch.PRIMARY_KEYS[table])
                cursor.execute(f"CREATE TABLE {table} ({columns}, PRIMARY KEY ({key}))")
                rows = pq.read_table(data / f"{table}.parquet")
                arrays = []
                for field, column in zip(rows.schema, rows.columns, strict=True):
                    if pa.types.is_date(field.type) or field.type == pa.string_view():
                        column = column.cast(pa.string())  # dates as ISO text, like SQLite
                    elif pa.types.is_decimal(field.type):
                        column = column.cast(pa.float64())
                    arrays.append(column)
                cursor.adbc_ingest(table, pa.table(arrays, names=rows.column_names),
                                   mode="append")
            cursor.close()
            conn.commit()
        os.replace(partial, database)
    finally:
        partial.unlink(missing_ok=True)
    return database


# -- configuration and server ----------------------------------------------------------------

def _user() -> str:
    from ldw.config import _user as user

    return user()


def _state_dir(folder: Path) -> Path:
    state = folder / "state"
    if len(str(state / "ldw.sock")) < 100:  # Unix socket paths are limited to 107 bytes
        return state
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:10]
    return Path(os.environ.get("TMPDIR", "/tmp")) / f"ldw-demo-{digest}"


def config_text(folder: Path, database: Path, *, scale: float, flight: bool = False,
                governance: bool = False) -> str:
    """The ``ldw.toml`` of a private demo server living in ``folder``."""
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:10]
    shm_root = Path("/dev/shm") if Path("/dev/shm").is_dir() else folder
    memory = max(1, round(scale * 8))  # SF1 is about 1.9 GB as Arrow (strings as views)

    def q(value: object) -> str:
        return json.dumps(str(value))

    lines = [
        f"# A private ldw server for the demo (TPC-H SF{_label(scale)} in SQLite).",
        "# Written by `ldw demo` / ldw.demo.prepare(); delete this folder to start over.",
        "[server]",
        f"listen = {q('grpc://127.0.0.1:0' if flight else '')}"
        + ("   # Flight on a free loopback port, token auth" if flight else "   # Flight off"),
        f"state_dir = {q(_state_dir(folder))}",
        f"shm_dir = {q(shm_root / f'ldw-demo-{_user()}-{digest}')}",
        f"spill_dir = {q(folder / 'spill')}",
        f"catalog = {q('sqlite:///' + str(folder / 'catalog.db'))}",
        f"mask_key_file = {q(folder / 'mask.key')}",
        f"memory_limit = {q(f'{memory}GiB')}",
        "",
        f"[sources.{SOURCE}]",
        f"url = {q('sqlite:///' + str(database))}",
    ]
    if governance:
        lines += [
            "",
            "# Governance: every TPC-H table is open to everyone...",
            f'[policies."{SOURCE}.main.*"]',
            "",
            "# ...but customer balances and phone numbers are only for the risk role.",
            f'[policies."{SOURCE}.main.customer"]',
            'columns.c_acctbal = { mask = "null", exempt_roles = ["risk"] }',
            'columns.c_phone = { mask = "partial", keep = 3, exempt_roles = ["risk"] }',
            "",
            "# You (the OS user running the server) are in the risk role, and admin (you may",
            "# read everyone's audit records).",
            f"[users.{json.dumps(_user())}]",
            'roles = ["analyst", "risk", "admin"]',
        ]
    return "\n".join(lines) + "\n"


def prepare(folder: str | os.PathLike[str] = DEFAULT_DIR, *, scale: float = DEFAULT_SCALE,
            flight: bool = False, governance: bool = False, say: Say | None = None) -> Path:
    """Make a demo warehouse in ``folder`` and return its ``ldw.toml``: TPC-H at ``scale``
    (tpchgen-cli), a SQLite database of it as source ``tpch``, the server configuration.

    Idempotent and quick when done before. If the configuration changes while the folder's
    server runs, that server is stopped so the next ``ldw.connect`` starts it with the new one.

    >>> config = prepare("~/.cache/ldw/demo", scale=0.01)  # doctest: +SKIP
    >>> wh = ldw.connect(config=config)  # doctest: +SKIP
    """
    from ldw.errors import ConfigError

    if not scale > 0:
        raise ConfigError(f"scale must be positive, not {scale!r}")
    root = Path(folder).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    say = say or (lambda _message: None)
    started = time.perf_counter()
    database = root / f"tpch-sf{_label(scale)}.db"
    if not database.is_file():
        say(f"generating TPC-H SF{_label(scale)} with tpchgen-cli and loading it into SQLite "
            "(once; later runs reuse it) ...")
    data = generate(scale, root)
    build_sqlite(data, database)
    say(f"TPC-H SF{_label(scale)} in SQLite: {database} "
        f"({time.perf_counter() - started:.1f}s)")
    config = root / "ldw.toml"
    text = config_text(root, database, scale=scale, flight=flight, governance=governance)
    if not config.is_file() or config.read_text() != text:
        if config.is_file():
            stop_server(config)
        config.write_text(text)
    return config


def server_pid(config: str | os.PathLike[str]) -> int | None:
    """The pid of the server running for ``config``, or None."""
    from ldw.config import load_settings
    from ldw.unix import running_pid

    return running_pid(load_settings(config))


def stop_server(config: str | os.PathLike[str], *, free_memory: bool = True,
                wait: float = 30.0) -> int | None:
    """Stop the server of ``config`` (SIGTERM, then wait); return its pid if one ran.

    With ``free_memory`` the cached versions in its shared-memory folder are removed too: a
    demo should not keep hundreds of MB of RAM after it stopped.
    """
    from ldw.config import load_settings
    from ldw.unix import running_pid
    from ldw.unix import stop_server as stop

    settings = load_settings(config)
    pid = stop(settings, wait=wait)  # the one stop routine, as `ldw server stop`
    if free_memory and running_pid(settings) is None:
        shutil.rmtree(settings.shm_dir, ignore_errors=True)
    return pid


# -- TPC-H over a SQLite-sourced cache -------------------------------------------------------

def _date_columns() -> frozenset[str]:
    from ldw import tpch

    return frozenset(name for columns in tpch.TABLES.values()
                     for name, kind in columns if kind == "date")


def tpch_query(number: int) -> str:
    """TPC-H query ``number`` for datasets mapped from the demo's SQLite source.

    SQLite has no date type: its DATE columns hold ISO text, which ldw caches as strings (and
    says so in ``info()["columns"]``). DuckDB will not compare text with a date, so every date
    column is read as ``CAST(col AS DATE)``; the rest is the standard text of ``ldw.tpch``.
    """
    import sqlglot
    from sqlglot import exp

    from ldw import tpch

    dates = _date_columns()
    tree = sqlglot.parse_one(tpch.query(number), read="duckdb")

    def cast(node: exp.Expression) -> exp.Expression:
        if not isinstance(node, exp.Column) or node.name not in dates \
                or isinstance(node.parent, exp.Cast):
            return node
        typed = exp.cast(node.copy(), exp.DataType.build("date"))
        if isinstance(node.parent, exp.Select) and node.arg_key == "expressions":
            return exp.alias_(typed, node.name)  # a projection keeps its column name
        return typed

    return tree.transform(cast).sql(dialect="duckdb", pretty=True)


# -- the demo --------------------------------------------------------------------------------

def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms" if seconds < 1 else f"{seconds:,.2f} s"


class _ProgressLine:
    """One line per table, redrawn in place on a terminal; only the final line otherwise."""

    def __init__(self, name: str, stream: Any) -> None:
        self.name, self.stream = name, stream
        self.live = bool(getattr(stream, "isatty", lambda: False)())
        self.last = 0.0

    def _text(self, progress: Any) -> str:
        return (f"  {self.name:<9} {progress.rows:>11,} rows {_mb(progress.bytes):>11} "
                f"{progress.mb_per_s:>8,.0f} MB/s {progress.seconds:>7.2f} s")

    def __call__(self, progress: Any) -> None:
        now = time.monotonic()
        if self.live and not progress.done and now - self.last > 0.1:
            self.stream.write("\r" + self._text(progress))
            self.stream.flush()
            self.last = now
        if progress.done:
            self.stream.write(("\r" if self.live else "") + self._text(progress) + "\n")
            self.stream.flush()


def _attach_in_new_process(config: str, names: Sequence[str]) -> None:
    """Runs in the second process: connect, attach every dataset, report what it took.

    ``polars_s``: connect + memory-map every cached version as a polars DataFrame
    (``to_polars()``, zero-copy); ``arrow_s``: then the same as pyarrow Tables (``to_arrow()``:
    the mapped buffers, string columns rewritten as plain ``string``).
    """
    import polars as pl  # noqa: F401  imports are not timed: a kernel has done them already

    import ldw

    started = time.perf_counter()
    wh = ldw.connect(config=config, autostart=False)
    frames = [wh.dataset(name).to_polars() for name in names]
    polars_s = time.perf_counter() - started
    started = time.perf_counter()
    for name in names:
        wh.dataset(name).to_arrow()
    arrow_s = time.perf_counter() - started
    print(json.dumps({"arrow_s": arrow_s, "polars_s": polars_s,
                      "rows": sum(frame.height for frame in frames)}))


def attach_from_new_process(config: Path, names: Sequence[str]) -> dict[str, Any]:
    """Start a fresh Python process that attaches ``names``; return what it measured."""
    code = ("import sys; from ldw.demo import _attach_in_new_process; "
            "_attach_in_new_process(sys.argv[1], sys.argv[2:])")
    done = subprocess.run([sys.executable, "-c", code, str(config), *names],
                          capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        from ldw.errors import ServerUnavailable

        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise ServerUnavailable(f"the second process could not attach: {tail}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ldw demo", description="TPC-H in SQLite -> a private ldw server: map and load, "
        "attach from a new process, SQL over the cache, export to Parquet.")
    parser.add_argument("--scale", type=float, default=DEFAULT_SCALE,
                        help=f"TPC-H scale factor (default {DEFAULT_SCALE}: ~870k rows)")
    parser.add_argument("--dir", default=DEFAULT_DIR,
                        help="work folder: data, SQLite, ldw.toml, catalog "
                        f"(default {DEFAULT_DIR})")
    parser.add_argument("--keep", action="store_true",
                        help="leave the server running (and its cache in memory) afterwards")
    return parser


def run(scale: float, folder: Path, *, keep: bool = False, out: Any = None) -> dict[str, Any]:
    """The demo; returns its measurements (``main`` prints them as a table)."""
    import ldw

    out = out or sys.stdout

    def say(message: str) -> None:
        out.write(message + "\n")
        out.flush()

    results: dict[str, Any] = {"scale": scale, "folder": folder}
    config = prepare(folder, scale=scale, say=say)
    results["config"] = config
    stop_server(config)  # a server kept by an earlier run: start clean, with this config
    started = time.perf_counter()
    wh = ldw.connect(config=config)
    try:
        results["server_pid"] = wh.status().get("pid")
        results["start_s"] = time.perf_counter() - started
        say(f"ldw server started (pid {results['server_pid']}, config {config}) "
            f"in {_duration(results['start_s'])}")
        say(f"mapping and loading {len(TABLES)} tables from SQLite into the cache:")
        started = time.perf_counter()
        datasets = [wh.map(t, f"{SOURCE}.main.{t}") for t in TABLES]
        for dataset in datasets:
            dataset.cache(progress=_ProgressLine(dataset.name, out))
        results["load_s"] = time.perf_counter() - started
        infos = {d.name: d.info() for d in datasets}
        results["rows"] = sum(i["rows"] for i in infos.values())
        results["bytes"] = sum(i["bytes"] for i in infos.values())

        say("attaching them from a second process ...")
        attached = attach_from_new_process(config, TABLES)
        results["attach_s"], results["polars_s"] = attached["arrow_s"], attached["polars_s"]
        results["attach_rows"] = attached["rows"]
        after = {d.name: d.info() for d in datasets}
        results["same_versions"] = all(after[n]["version"] == infos[n]["version"]
                                       for n in infos)

        results["queries"] = []
        for number in QUERIES:
            text = tpch_query(number)
            started = time.perf_counter()
            frame = wh.sql(text)
            results["queries"].append((number, time.perf_counter() - started, frame.height))

        target = folder / "export" / EXPORTED
        exported = wh.dataset(EXPORTED).export(target, partition_by=[EXPORT_PARTITION],
                                               overwrite=True)
        check = ldw.verify_export(exported.path)
        results["export"] = {"path": exported.path, "rows": exported.rows,
                             "files": len(exported.files), "seconds": exported.seconds,
                             "verified": bool(check.ok)}
    finally:
        wh.close()
        if keep:
            results["stopped"] = False
        else:
            stop_server(config)
            results["stopped"] = True
    return results


def report(results: dict[str, Any]) -> str:
    """The closing table."""
    load, attach, polars = results["load_s"], results["attach_s"], results["polars_s"]
    same = ("no source query, same versions" if results["same_versions"]
            else "the versions changed!")
    rows = [
        (f"map + load {len(TABLES)} tables from SQLite",
         f"{results['rows']:,} rows, {_mb(results['bytes'])}", _duration(load), ""),
        ("attach them from a new process", f"memory-mapped Arrow; {same}", _duration(attach),
         f"{load / attach:,.0f}x faster"),
        ("  ... as polars DataFrames", f"{results['attach_rows']:,} rows", _duration(polars),
         f"{load / polars:,.0f}x faster"),
    ]
    for number, seconds, height in results["queries"]:
        rows.append((f"TPC-H Q{number} over the cache (wh.sql)",
                     f"{height:,} row{'s' if height != 1 else ''}", _duration(seconds), ""))
    export = results["export"]
    rows.append((f"export {EXPORTED} to Parquet",
                 f"{export['rows']:,} rows, {export['files']} files, "
                 f"{'verified' if export['verified'] else 'VERIFY FAILED'}",
                 _duration(export["seconds"]), ""))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    line = "-" * (sum(width) + 6)
    title = f"ldw demo: TPC-H SF{_label(results['scale'])}, SQLite source, local server"
    body = [title, line]
    body += [f"{a:<{width[0]}}  {b:<{width[1]}}  {c:>{width[2]}}  {d}".rstrip()
             for a, b, c, d in rows]
    body += [line, f"export:  {export['path']}", f"config:  {results['config']}"]
    if results["stopped"]:
        body.append("server:  stopped (--keep leaves it running)")
    else:
        body.append(f"server:  running, pid {results['server_pid']}; try:\n"
                    f"         python -c \"import ldw; wh = ldw.connect(config='"
                    f"{results['config']}'); print(wh.datasets())\"\n"
                    f"         ldw --config {results['config']} server stop")
    return "\n".join(body)


def _private_settings() -> None:
    """The demo server is private: LDW_STATE_DIR, LDW_SHM_DIR, ... set for the user's own
    server (they beat ldw.toml) must not move the demo's files there."""
    from ldw.config import _SERVER_DEFAULTS

    for key in [*(f"LDW_{k.upper()}" for k in _SERVER_DEFAULTS), "LDW_CONFIG", "LDW_CONFIG_JSON"]:
        os.environ.pop(key, None)


def main(argv: Sequence[str] | None = None) -> int:
    from ldw.errors import LdwError

    args = _parser().parse_args(argv)
    _private_settings()
    if not args.scale > 0:
        print(f"ldw demo: --scale must be positive, not {args.scale}", file=sys.stderr)
        return 2
    try:
        results = run(args.scale, Path(args.dir).expanduser().resolve(), keep=args.keep)
    except LdwError as exc:
        print(f"ldw demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ldw demo: interrupted", file=sys.stderr)
        return 130
    print()
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
