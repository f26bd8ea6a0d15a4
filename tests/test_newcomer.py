"""What a newcomer met in a real JupyterLab (issue 16, item 7), each fixed and held here: JSON as
text in polars, short API errors in a notebook, readable export results and status values,
a where the source refuses caught at map time, argument types, the progress rate,
nullability as the source says, and where on columns that are not mapped.

Notebook-facing behaviour runs through a real kernel (nbclient), the rest against the real
PostgreSQL and MariaDB.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import polars as pl
import pyarrow as pa
import pytest
from conftest import MYSQL_URL, POSTGRES_URL, ServerHandle, make_warehouse
from test_magics import magics, run, shell, write_config  # noqa: F401  (fixtures)

import ldw
from ldw import formatting as fmt
from ldw import wire
from ldw.errors import BadRequest, WhereRejected
from ldw.extension.display import Details, Listing

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def events(pg_engine, pg_schema) -> str:
    """A PostgreSQL table with a primary key, a date, json and jsonb."""
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(
            f"create table {pg_schema}.events (id int primary key, day date not null, "
            "payload jsonb, doc json, note text)")
        conn.exec_driver_sql(
            f"insert into {pg_schema}.events select i, date '2024-01-01' + i, "
            "jsonb_build_object('kind', case when mod(i, 2) = 0 then 'click' else 'view' end, "
            "'n', i), json_build_object('k', i), 'note ' || i from generate_series(1, 100) i")
    return f"{pg_schema}.events"


# -- a. JSON reaches polars as text ------------------------------------------------------------

@pytest.mark.postgres
def test_json_columns_are_strings_in_polars_and_json_in_arrow(pg_wh, events):
    ds = pg_wh.map("events", f"pg.{events}")
    df = ds.to_polars()
    assert df.schema["payload"] == pl.String and df.schema["doc"] == pl.String
    clicks = df.filter(pl.col("payload").str.contains('"click"'))
    assert clicks.height == 50 and clicks["id"].to_list() == list(range(2, 101, 2))
    assert df.filter(pl.col("doc").str.json_path_match("$.k") == "7")["id"].to_list() == [7]
    for frame in (ds.head(3), ds.lazy().select("payload").collect()):
        assert frame.schema["payload"] == pl.String
    uncached = pg_wh.map("events2", f"pg.{events}")  # the source path (lazy scan) too
    assert uncached.lazy().filter(pl.col("id") < 3).collect().schema["payload"] == pl.String
    # to_arrow keeps the canonical JSON type, over plain string storage
    table = ds.to_arrow()
    assert isinstance(table.schema.field("payload").type, pa.JsonType)
    assert table.schema.field("payload").type.storage_type == pa.string()
    # the text column handed to polars is the cached storage itself (no copy on ldw's side)
    from ldw.client import _polars_ready

    cached = ds._cached()
    ready = _polars_ready(cached)
    i = cached.schema.get_field_index("payload")
    assert ready.schema.field(i).type == pa.string()
    assert ready.column(i).chunk(0).buffers()[2].address == \
        cached.column(i).chunk(0).storage.buffers()[2].address


# -- c, d: readable results and values ---------------------------------------------------------

def test_formatting_rules():
    assert fmt.size(4 * 2**30) == "4.0 GiB" and fmt.size(1536) == "1.5 KiB"
    assert fmt.size(12) == "12 B" and fmt.size(None) == "—"
    assert fmt.count(1_500_000) == "1,500,000"
    assert fmt.value("port", 5432) == "5432" and fmt.value("pid", 14353) == "14353"
    assert fmt.value("seq", 12345) == "12345" and fmt.value("rows", 12345) == "12,345"
    assert fmt.value("memory_limit", 4 * 2**30) == "4.0 GiB"
    assert fmt.value("bytes_served", {"me/t": 3 * 2**20}) == "me/t: 3.0 MiB"
    assert fmt.rate(2_000_000, 0.5) == "4.0 MB/s"
    assert [fmt.duration(s) for s in (0.25, 2.34, 61, 3600 * 8, 90000)] == \
        ["250 ms", "2.3 s", "1 min 1 s", "8 h", "1 d 1 h"]
    now = time.time()
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now - 180))
    assert fmt.value("started", now - 180) in {f"{local} (3 min ago)", f"{local} (2 min ago)"}
    assert fmt.value("last_access", now - 2 * 3600).endswith("(2 h ago)")
    assert fmt.value("freshness", {"checked_at": now, "reason": "x"}).startswith("checked_at: ")


@pytest.mark.postgres
def test_export_result_reads_as_path_files_rows_and_size(pg_wh, events, tmp_path):
    target = tmp_path / "out<x>"
    result = pg_wh.map("events", f"pg.{events}").export(target, partition_by=["id"])
    text = repr(result)
    head = text.splitlines()[0]
    assert head.startswith(f"exported {target} (parquet): 100 rows, 100 files, ")
    assert "KiB" in head and "PosixPath" not in text and "ExportedFile(" not in text
    assert "  … 80 more files" in text and f"manifest: {target}/_ldw_manifest.json" in text
    assert repr(result.files[0]).startswith("<ExportedFile id=")
    assert "/part-0.parquet: 1 rows, " in repr(result.files[0])
    html = result._repr_html_()
    assert "out&lt;x&gt;" in html and "<x>" not in html and html.count("<tr>") == 21


RELATIVE = re.compile(r"\d\d:\d\d:\d\d \((just now|\d+ (s|min|h|d) ago)\)")


def _details(text: str) -> dict[str, str]:
    """The ``key  value`` lines of a Details repr."""
    pairs = [line.strip().split(None, 1) for line in text.splitlines()[1:]]
    return {p[0]: p[1] for p in pairs if len(p) == 2}


@pytest.mark.postgres
def test_status_info_and_listings_show_ids_bytes_and_times_readably(
        shell, magics, pg_engine, events, tmp_path):  # noqa: F811
    server = ServerHandle(tmp_path, memory_limit="4GiB").start()
    try:
        ran = run(shell, f"%ldw connect --config {server.config}")
        assert ran.error is None, ran.stderr
        assert run(shell, f"%ldw map ev = pg.{events} --cache").error is None
        assert run(shell, "ev.to_polars().height").result == 100  # served: bytes and a hit
        status = run(shell, "%ldw status").result
        assert isinstance(status, Details)
        pid, started = status.data["pid"], status.data["started"]
        text = repr(status)
        shown = _details(text)
        assert shown["pid"] == str(pid)
        assert shown["started"].startswith(time.strftime("%Y-%m-%d %H:%M",
                                                         time.localtime(started)))
        assert RELATIVE.search(shown["started"]) and shown["memory_limit"] == "4.0 GiB"
        assert "GB" not in text
        header = next(line for line in text.splitlines() if line.split()[:1] == ["dataset"])
        assert header.split() == ["dataset", "hits", "bytes_served", "source_queries"]
        row = next(line for line in text.splitlines() if line.strip().startswith("root/ev"))
        assert row.split()[1:4] == ["1", "8.2", "KiB"] or row.split()[3] == "KiB", text
        html = status._repr_html_()
        assert f">{pid}<" in html and "4.0 GiB" in html and str(started) not in html
        info = run(shell, "%ldw info ev").result
        shown = _details(repr(info))
        assert RELATIVE.search(shown["last_access"]) and shown["bytes_served"].endswith("KiB")
        assert shown["bytes"].endswith("KiB") and shown["rows"] == "100"
        sources = run(shell, "%ldw sources").result
        assert isinstance(sources, Listing)
        assert ">5432<" in sources._repr_html_() and "5,432" not in sources._repr_html_()
        audit = run(shell, "%ldw audit --last 3").result
        from ldw.extension.display import _readable  # what the text listing prints

        assert RELATIVE.search(audit._repr_html_())  # ts: a local time, not an epoch float
        assert all(RELATIVE.search(t) for t in _readable(audit.frame)["ts"])
    finally:
        magics.close()
        server.stop()


# -- e. a where the source refuses -------------------------------------------------------------

@pytest.mark.postgres
@pytest.mark.parametrize("source", ["pg", "pg_dbapi"])
def test_a_where_the_source_refuses_is_refused_when_mapping(pg_wh, events, source):
    for where, params, reason in (
            ("day > 'notadate'", None, 'invalid input syntax for type date: "notadate"'),
            ("day > :d", {"d": "notadate"}, 'invalid input syntax for type date: "notadate"'),
            ("id = 'abc'", None, 'invalid input syntax for type integer: "abc"')):
        with pytest.raises(WhereRejected) as info:
            pg_wh.map("bad", f"{source}.{events}", where=where, params=params)
        error = info.value
        assert isinstance(error, ldw.InvalidMapping) and isinstance(error, ldw.SourceError)
        assert str(error).startswith(f"source {source!r} refuses where {where!r}: {reason}. ")
        assert error.where == where and error.reason == reason
        assert "INVALID_DATA" not in str(error) and "LINE 1" not in str(error)
    assert "bad" not in pg_wh.datasets()["name"].to_list()
    # a string literal the source reads as a date works on both transports
    ok = pg_wh.map("ok", f"{source}.{events}", where="day >= '2024-04-01' AND note LIKE 'note%'")
    assert ok.to_polars()["id"].to_list() == list(range(91, 101))
    # sql= mappings too, and what is not the where stays the source's error
    with pytest.raises(WhereRejected):
        pg_wh.map("q", sql=f"SELECT id, day FROM {events}", source=source, where="day < 'x'")
    with pytest.raises(ldw.SourceError) as info:
        pg_wh.map("q", sql=f"SELECT id, day::date + 'x' AS d FROM {events}", source=source)
    assert not isinstance(info.value, WhereRejected)


@pytest.mark.postgres
def test_a_source_that_is_down_at_map_time_is_unavailable_not_a_bad_where(shm_dir):
    wh = make_warehouse(shm_dir, down={"url": "postgresql://ldw@127.0.0.1:9/nowhere",
                                       "timeout": "3s"})
    try:
        with pytest.raises(ldw.SourceUnavailable, match="'down'") as info:
            wh.map("x", "down.public.t", where="day > 'notadate'")
        assert not isinstance(info.value, WhereRejected)
    finally:
        wh.close()


# -- f. argument types -------------------------------------------------------------------------

@pytest.mark.postgres
def test_public_api_argument_types_are_checked(pg_wh, events, tmp_path):
    ds = pg_wh.map("events", f"pg.{events}")
    table = f"pg.{events}"
    calls = {
        "map(): columns must be a list of strings (or None), not int 5":
            lambda: pg_wh.map("x", table, columns=5),
        "map(): columns must be a list of strings (or None), not list [1]":
            lambda: pg_wh.map("x", table, columns=[1]),
        "map(): where must be a string (or None), not int 3": lambda: pg_wh.map("x", table,
                                                                               where=3),
        "map(): limit must be a whole number (or None), not bool True":
            lambda: pg_wh.map("x", table, limit=True),
        "map(): pin must be True or False, not str 'yes'": lambda: pg_wh.map("x", table,
                                                                            pin="yes"),
        "map(): params must be a dict with string keys (or None), not int 5":
            lambda: pg_wh.map("x", table, where="id > :a", params=5),
        "map(): name must be a string, not int 5": lambda: pg_wh.map(5, table),
        "info(): name must be a string, not int 5": lambda: pg_wh.dataset(5),
        "head(): n must be a whole number, not str 'x'": lambda: ds.head("x"),
        "export(): path must be a string or PathLike, not int 5": lambda: ds.export(5),
        "export(): partition_by must be a list of strings (or None), not int 5":
            lambda: ds.export(tmp_path / "e", partition_by=5),
        "refresh(): full must be True or False, not str 'no'": lambda: ds.refresh(full="no"),
        "sql(): query must be a string, not int 5": lambda: pg_wh.sql(5),
        "share(): user must be a string (or None), not int 5": lambda: ds.share(5),
        "preview(): n must be a whole number, not str 'x'": lambda: pg_wh.preview(table, "x"),
        "connect(): url must be a string (or None), not int 5": lambda: ldw.connect(5),
        "connect(): in_process must be True or False, not str 'yes'":
            lambda: ldw.connect(in_process="yes"),
    }
    for message, call in calls.items():
        with pytest.raises(BadRequest) as info:
            call()
        assert str(info.value) == message
        assert isinstance(info.value, ldw.LdwError) and isinstance(info.value, ValueError)
    assert pg_wh.map("x", table, columns=("id", "day")).schema.names == ["id", "day"]
    assert not (tmp_path / "e").exists()


@pytest.mark.postgres
def test_argument_types_are_checked_before_a_request_is_sent_and_by_the_server(
        pg_engine, events, tmp_path):
    server = ServerHandle(tmp_path).start()
    try:
        for wh in (server.local(), server.remote("bob")):
            with pytest.raises(BadRequest, match="columns must be a list of strings"):
                wh.map("x", f"pg.{events}", columns=5)
            with pytest.raises(BadRequest, match="columns must be a list of strings"):
                wh.map("x", f"pg.{events}", columns=[object()])  # not even JSON
            wh.close()
        raw = server.remote("carol")._backend  # a client that skips its own check
        from ldw.flight_client import fl

        frames = raw._client.do_action(fl.Action("map", b'{"name": "x", "table": "pg.a.b", '
                                                 b'"columns": 5}'), options=raw._options)
        with pytest.raises(BadRequest, match="^map\\(\\): columns must be a list of strings"):
            wire.final_result(json.loads(f.body.to_pybytes()) for f in frames)
    finally:
        server.stop()


# -- g. the progress rate ----------------------------------------------------------------------

@pytest.mark.postgres
def test_progress_reports_rows_bytes_and_mb_per_s(pg_wh, events):
    seen: list[ldw.Progress] = []
    pg_wh.map("events", f"pg.{events}").cache(progress=seen.append)
    last = seen[-1]
    assert last.done and last.rows == 100 and last.bytes > 0
    assert last.mb_per_s == pytest.approx(last.bytes / 1e6 / last.seconds)
    assert "mb_per_s=" in repr(last)
    assert str(last) == (f"cached {last.dataset}: 100 rows, {fmt.size(last.bytes)}, "
                         f"{fmt.rate(last.bytes, last.seconds)}, {fmt.duration(last.seconds)}")
    assert "mb_per_s" in README.read_text()


# -- h. nullable as the source says ------------------------------------------------------------

def _nullability(wh: ldw.Warehouse, table: str) -> list[dict]:
    described = dict(zip(wh.describe(table)["name"], wh.describe(table)["nullable"],
                         strict=True))
    ds = wh.map("n", table)
    info = ds.info()
    views = [described, {c["name"]: c["nullable"] for c in info["columns"]},
             {c["name"]: c["nullable"] for c in info["schema"]},
             {f.name: f.nullable for f in ds.schema}]
    ds.cache()
    views.append({f.name: f.nullable for f in ds.to_arrow().schema})
    ds.refresh()
    views.append({f.name: f.nullable for f in ds.to_arrow().schema})
    return views


@pytest.mark.postgres
def test_describe_and_info_agree_on_nullable_postgres(pg_wh, pg_engine, pg_schema):
    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.n (id int primary key, "
                             "code text not null, note text)")
        conn.exec_driver_sql(f"insert into {pg_schema}.n values (1, 'a', null), (2, 'b', 'x')")
    for view in _nullability(pg_wh, f"pg.{pg_schema}.n") + _nullability(
            pg_wh, f"pg_dbapi.{pg_schema}.n"):
        assert view == {"id": False, "code": False, "note": True}


@pytest.mark.mysql
def test_describe_and_info_agree_on_nullable_mariadb(mysql_wh, mysql_engine, mysql_db):
    with mysql_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {mysql_db}.n (id int primary key, "
                             "code varchar(10) not null, note text)")
        conn.exec_driver_sql(f"insert into {mysql_db}.n values (1, 'a', null), (2, 'b', 'x')")
    for view in _nullability(mysql_wh, f"my.{mysql_db}.n") + _nullability(
            mysql_wh, f"my_dbapi.{mysql_db}.n"):
        assert view == {"id": False, "code": False, "note": True}


@pytest.mark.postgres
def test_a_masked_not_null_column_is_nullable(pg_engine, pg_schema, shm_dir):
    from ldw.config import _user

    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.m (id int primary key, "
                             "bal int not null)")
        conn.exec_driver_sql(f"insert into {pg_schema}.m values (1, 10)")
    wh = ldw.connect(in_process=True, shm_dir=shm_dir, spill_dir=f"{shm_dir}-spill", config={
        "sources": {"pg": {"url": POSTGRES_URL}},
        "policies": {f"pg.{pg_schema}.m": {"allow_roles": ["a"],
                                           "columns": {"bal": {"mask": "null"}}}},
        "users": {_user(): {"roles": ["a"]}}})
    try:
        ds = wh.map("m", f"pg.{pg_schema}.m")
        assert {f.name: f.nullable for f in ds.schema} == {"id": False, "bal": True}
        assert ds.to_arrow().column("bal").to_pylist() == [None]
    finally:
        wh.close()


# -- i. where on any column of the policy view -------------------------------------------------

CANARY = "555-CANARY-0199"


@pytest.mark.postgres
def test_where_may_use_unmapped_columns_of_the_policy_view_never_raw_masked_ones(
        pg_engine, pg_schema, shm_dir):
    from ldw.config import _user

    with pg_engine.begin() as conn:
        conn.exec_driver_sql(f"create table {pg_schema}.c (id int primary key, region text, "
                             "phone text, email text)")
        conn.exec_driver_sql(f"insert into {pg_schema}.c select i, case when i <= 3 then 'EU' "
                             f"else 'US' end, '{CANARY}', 'u' || i || '@x' "
                             "from generate_series(1, 6) i")
    wh = ldw.connect(in_process=True, shm_dir=shm_dir, spill_dir=f"{shm_dir}-spill", config={
        "sources": {"pg": {"url": POSTGRES_URL}},
        "policies": {f"pg.{pg_schema}.c": {"allow_roles": ["a"], "columns": {
            "phone": {"mask": "redact"}, "email": {"mask": "hash"}}}},
        "users": {_user(): {"roles": ["a"]}}})
    try:
        table = f"pg.{pg_schema}.c"
        eu = wh.map("eu", table, columns=["id"], where="region = 'EU'")
        assert eu.schema.names == ["id"] and eu.to_polars()["id"].to_list() == [1, 2, 3]
        # a redacted column compares as its masked value, never its raw one
        assert wh.map("raw", table, columns=["id"], where=f"phone = '{CANARY}'"
                      ).to_arrow().num_rows == 0
        assert wh.map("masked", table, columns=["id"], where="phone = '***'"
                      ).to_arrow().num_rows == 6
        # a hashed column cannot be filtered on at all: its raw values are in the view
        with pytest.raises(ldw.InvalidMapping, match="'email' is hash-masked") as info:
            wh.map("h", table, columns=["id"], where="email LIKE 'u1%'")
        assert CANARY not in str(info.value) and "u1@x" not in str(info.value)
    finally:
        wh.close()


def test_readme_says_where_may_use_any_column():
    text = README.read_text()
    assert "must be one boolean expression over the mapped columns" not in text
    assert "not only the mapped ones" in text


# -- b (and a, c, d) in a real kernel ----------------------------------------------------------

def _run_notebook(cells: list[str], folder: Path) -> list:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env = {k: v for k, v in os.environ.items() if not k.startswith("LDW_")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=180,
                                     allow_errors=True,
                                     resources={"metadata": {"path": str(folder)}})
    client.execute(env=env)
    return [cell.outputs for cell in notebook.cells]


def _text(outputs: list) -> str:
    parts = []
    for out in outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append("\n".join(out.traceback))
        else:
            parts.append(out.get("data", {}).get("text/plain", ""))
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(parts))  # IPython colours its tracebacks


@pytest.mark.postgres
def test_in_a_kernel_api_errors_are_short_and_results_read_well(events, tmp_path):
    config = write_config(tmp_path, f'[sources.pg]\nurl = "{POSTGRES_URL}"\n'
                                    f'[sources.my]\nurl = "{MYSQL_URL}"\n')
    export = tmp_path / "export"
    outputs = _run_notebook([
        "%load_ext ldw",
        f"%ldw connect --in-process --config {config} --as wh",
        "wh.map('x', 'nosuch.schema.t')",                                   # 2: LdwError
        "%tb",                                                              # 3
        "1/0",                                                              # 4: a real bug
        f"ev = wh.map('ev', 'pg.{events}', where=\"day > 'notadate'\")",    # 5: LdwError
        f"ev = wh.map('ev', 'pg.{events}')\n"
        "import polars as pl\n"
        "ev.to_polars().filter(pl.col('payload').str.contains('click')).height",  # 6
        f"ev.export({str(export)!r})",                                      # 7
        "%ldw status",                                                      # 8
        f"%ldw export ev {tmp_path / 'by_magic'}",                          # 9
        "%unload_ext ldw",  # closes the warehouse the magics opened
        "import ldw\nldw.connect(in_process=True, config={'sources': {}}).map('x', 'no.s.t')",
    ], tmp_path)
    short = [o for o in outputs[2] if o.output_type == "error"]
    assert len(short) == 1 and short[0].ename == "UnknownSource"
    traceback = "\n".join(short[0].traceback)
    assert "no source named 'nosuch'" in traceback and "add [sources.nosuch]" in traceback
    assert "%tb" in traceback and "client.py" not in traceback and "File " not in traceback
    assert len(traceback.splitlines()) <= 4
    assert "config.py" in _text(outputs[3])  # %tb: the whole traceback is still there
    bug = _text(outputs[4])
    assert "ZeroDivisionError" in bug and "----> 1" in bug  # a bug keeps its traceback
    rejected = [o for o in outputs[5] if o.output_type == "error"]
    assert rejected[0].ename == "WhereRejected" and "notadate" in rejected[0].evalue
    assert "\n".join(rejected[0].traceback).count("\n") <= 4
    assert [o["data"]["text/plain"] for o in outputs[6] if o.output_type == "execute_result"
            ] == ["50"]
    exported = [o["data"] for o in outputs[7] if o.output_type == "execute_result"][0]
    assert exported["text/plain"].startswith(f"exported {export} (parquet): 100 rows, 1 file, ")
    assert "ldw-export" in exported["text/html"] and "PosixPath" not in exported["text/plain"]
    status = [o["data"] for o in outputs[8] if o.output_type == "execute_result"][0]["text/plain"]
    assert "memory_limit" in status and "GiB" in status and " GB" not in status
    by_magic = [o["data"] for o in outputs[9] if o.output_type == "execute_result"][0]
    assert by_magic["text/plain"].startswith(f"exported {tmp_path / 'by_magic'} (parquet): ")
    assert "<table" in by_magic["text/html"]
    long = _text(outputs[11])
    assert "UnknownSource" in long and "client.py" in long  # unloaded: IPython's own again
    assert "%tb" not in long
