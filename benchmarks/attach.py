"""Time getting a cached TPC-H table into a new process: ldw (fd + mmap, Flight) against Parquet.

Reproduce (PostgreSQL on 127.0.0.1:5432, user postgres, database ``test``):

    python benchmarks/tpch_data.py --scale 1 && python benchmarks/attach.py --scale 1

The script starts its own ldw server (temporary state_dir and catalog, shm_dir under /dev/shm,
Flight on 127.0.0.1 with a free port), maps and caches the tables, and writes each cached table
once to an uncompressed Parquet file under /dev/shm (so no disk read is timed). Every method then
runs ``--repeat`` times, each in a fresh python process with its libraries already imported; the
time runs from just before the call to just after it returned a usable table or DataFrame:

- ``ldw to_arrow``: ``ldw.connect(config=...).dataset(name).to_arrow()`` (local: fd + mmap)
- ``ldw to_polars``: the same with ``.to_polars()``
- ``polars.read_parquet`` / ``pyarrow.parquet.read_table`` of the Parquet file
- ``Flight to_arrow``: ``ldw.connect("grpc://...", token=...).dataset(name).to_arrow()``: the
  attach asks for parallel streams (the client's default, 2 on 2 cores), each ticket read on its
  own connection; ``1 stream`` is the same with ``streams = 1`` (one ticket, one connection); and
  the same again in a process that did it once before (the first transfer into a new process
  page-faults all the memory it receives into: gRPC's read buffers and Flight's copy of each
  message; later ones partly reuse freed memory)
- ``plain pyarrow Flight``: the transport alone, as a baseline: a minimal
  ``pyarrow.flight.FlightServerBase`` in its own process serves the same batches (memory-mapped
  from an Arrow IPC file in /dev/shm) and a fresh process reads them with ``do_get().read_all()``
  on one stream, or on 2 streams over 2 connections (no auth, no actions, no access checks)

The Flight client authenticates with a token for a user of the same name as the local user, so it
sees the datasets cached above. Memory: ``RssAnon`` (private anonymous memory, i.e. copies) after
the call minus before, and the peak RSS during the call (``VmHWM`` after resetting it); pages of a
memory-mapped cache file are shared memory, not copies. ``touch`` is a first pass over the result
afterwards (one byte of every 4 KiB page of every buffer): a mapped table pays its page mapping
there, not in the attach. ``CPU`` is the process's user + system time over the call (all its
threads) and ``minor faults`` its page faults, ``server CPU`` what the serving process (ldw's
server or the plain one) spent meanwhile on the same cores: unlike the wall time, none of them
grows when other jobs load the machine. Medians are shown; the JSON in ``benchmarks/results/``
keeps every run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pwd
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tpch_data import schema_name

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
MB = 1 << 20
METHODS = ["ldw_arrow", "ldw_polars", "parquet_polars", "parquet_arrow", "flight_arrow",
           "flight_arrow_1stream", "flight_arrow_2nd", "flight_plain", "flight_plain_2streams"]
LABELS = {
    "ldw_arrow": "**ldw** `to_arrow()` (local fd + mmap)",
    "ldw_polars": "**ldw** `to_polars()`",
    "parquet_polars": "`polars.read_parquet`",
    "parquet_arrow": "`pyarrow.parquet.read_table`",
    "flight_arrow": "**ldw** over Flight `to_arrow()` (parallel streams)",
    "flight_arrow_1stream": "**ldw** over Flight `to_arrow()`, 1 stream",
    "flight_arrow_2nd": "**ldw** over Flight, 2nd `to_arrow()` in the process",
    "flight_plain": "plain pyarrow Flight `do_get().read_all()`",
    "flight_plain_2streams": "plain pyarrow Flight, 2 streams on 2 connections",
}
SF1_ROWS = {"orders": 1_500_000, "lineitem": 6_001_215}


# -- child: one measured call in a fresh process ---------------------------------------------
def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so it shows the peak of the call alone."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def touch_pages(table: Any) -> None:
    """Read one byte of every 4 KiB page of every buffer (maps pages that are not mapped yet)."""
    import numpy as np

    for column in table.columns:
        for chunk in column.chunks:
            for buffer in chunk.buffers():
                if buffer is not None and buffer.size:
                    int(np.frombuffer(buffer, dtype=np.uint8)[::4096].sum())


def plain_server(arrow_dir: str) -> None:
    """A minimal pyarrow Flight server (the transport baseline): ticket ``table`` or
    ``table/i/n`` streams all batches, or the i-th of n contiguous runs of them."""
    import pyarrow as pa
    import pyarrow.flight as fl

    tables = {path.stem: pa.ipc.open_file(pa.memory_map(str(path))).read_all()
              for path in Path(arrow_dir).glob("*.arrow")}

    class Plain(fl.FlightServerBase):
        def do_get(self, context: Any, ticket: Any) -> Any:
            name, _, part = ticket.ticket.decode().partition("/")
            batches = tables[name].to_batches()
            if part:
                i, n = map(int, part.split("/"))
                batches = batches[len(batches) * i // n: len(batches) * (i + 1) // n]
            return fl.RecordBatchStream(pa.Table.from_batches(batches, tables[name].schema))

    server = Plain("grpc+tcp://127.0.0.1:0")
    print(server.port, flush=True)
    server.serve()


def read_plain(address: str, table: str, streams: int) -> Any:
    """``do_get().read_all()`` from the plain server: one stream, or ``streams`` on as many
    connections read by as many threads, joined in order."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa
    import pyarrow.flight as fl

    url = address.replace("grpc://", "grpc+tcp://")
    if streams == 1:
        return fl.FlightClient(url).do_get(fl.Ticket(table.encode())).read_all()
    clients = [fl.FlightClient(url, generic_options=[("grpc.use_local_subchannel_pool", 1)])
               for _ in range(streams)]
    with ThreadPoolExecutor(streams) as pool:
        parts = list(pool.map(lambda i: clients[i].do_get(
            fl.Ticket(f"{table}/{i}/{streams}".encode())).read_all(), range(streams)))
    return pa.concat_tables(parts)


def child(method: str, table: str, config: str, parquet: str, address: str) -> dict[str, Any]:
    sys.path.append(str(ROOT))  # the checkout's ldw, unless PYTHONPATH says otherwise
    import numpy  # noqa: F401
    import polars as pl
    import pyarrow.dataset  # read_table imports it on first use
    import pyarrow.flight  # noqa: F401
    import pyarrow.parquet as pq

    import ldw
    import ldw.flight
    import ldw.unix

    token = os.environ.get("LDW_TOKEN", "")
    plain = os.environ.get("PLAIN_FLIGHT", "")
    steps: dict[str, float] = {}

    def via_ldw(url: str | None, polars: bool, streams: int | None = None) -> Any:
        t0 = time.perf_counter()
        wh = ldw.connect(url, token=token) if url else ldw.connect(config=config,
                                                                    autostart=False)
        if streams is not None:
            wh._backend.streams = streams
        t1 = time.perf_counter()
        ds = wh.dataset(table)
        t2 = time.perf_counter()
        out = ds.to_polars() if polars else ds.to_arrow()
        t3 = time.perf_counter()
        steps.update(connect=t1 - t0, dataset=t2 - t1, call=t3 - t2)
        return out

    calls = {
        "ldw_arrow": lambda: via_ldw(None, False),
        "ldw_polars": lambda: via_ldw(None, True),
        "parquet_polars": lambda: pl.read_parquet(parquet),
        "parquet_arrow": lambda: pq.read_table(parquet),
        "flight_arrow": lambda: via_ldw(address, False),
        "flight_arrow_1stream": lambda: via_ldw(address, False, streams=1),
        "flight_arrow_2nd": lambda: via_ldw(address, False),
        "flight_plain": lambda: read_plain(plain, table, 1),
        "flight_plain_2streams": lambda: read_plain(plain, table, 2),
    }
    call = calls[method]
    if method.endswith("_2nd"):
        first = call()
        del first
        gc.collect()
    before = proc_status()
    peak_reset = reset_peak_rss()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)
    minor_faults = cpu_after.ru_minflt - cpu.ru_minflt
    after = proc_status()
    if isinstance(result, pl.DataFrame):  # no first pass: converting back would be timed too
        rows, nbytes, touch = len(result), int(result.estimated_size()), None
    else:
        rows, nbytes = result.num_rows, int(result.nbytes)
        started = time.perf_counter()
        touch_pages(result)
        touch = time.perf_counter() - started
    return {"seconds": seconds, "steps": steps, "rows": rows, "touch_seconds": touch,
            "loadavg": os.getloadavg()[0], "cpu_seconds": cpu_seconds,
            "minor_faults": minor_faults,
            "nbytes": nbytes, "rss_anon_delta": after["RssAnon"] - before["RssAnon"],
            "rss_peak_delta": (after["VmHWM"] - before["VmRSS"]) if peak_reset else None,
            "before": before, "after": after, "after_touch": proc_status()}


# -- parent: server, data, runs, report ------------------------------------------------------
def ldw_cli(config: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ldw.cli", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"ldw {' '.join(args)} failed: {done.stderr.strip() or done.stdout}")
    return done.stdout


def write_config(folder: Path, shm: Path, url: str, memory_limit: str) -> Path:
    settings = {"state_dir": folder / "state", "shm_dir": shm, "spill_dir": folder / "spill",
                "catalog": f"sqlite:///{folder / 'catalog.db'}", "listen": "grpc://127.0.0.1:0",
                "memory_limit": memory_limit}
    lines = ["[server]"] + [f"{k} = {json.dumps(str(v))}" for k, v in settings.items()]
    lines += ["[sources.bench]", f"url = {json.dumps(url)}"]
    config = folder / "ldw.toml"
    config.write_text("\n".join(lines) + "\n")
    return config


def wait_for_table(url: str, schema: str, table: str, scale: float) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(f'select count(*) from "{schema}".{table}').fetchone()[0]
    want = SF1_ROWS.get(table) if scale == 1 else None
    if not rows or (want is not None and rows != want):
        raise SystemExit(f"{schema}.{table} has {rows} rows; load it with "
                         f"`python benchmarks/tpch_data.py --scale {scale:g}` first")
    return rows


def prepare(config: Path, schema: str, tables: list[str], parquet_dir: Path,
            arrow_dir: Path | None) -> dict[str, Any]:
    """Map and cache the tables; write each once to uncompressed Parquet (and, for the plain
    Flight server, to an Arrow IPC file with the cached batches). Returns facts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(ROOT))
    import ldw

    facts: dict[str, Any] = {}
    wh = ldw.connect(config=str(config), autostart=False)
    for table in tables:
        started = time.perf_counter()
        ds = wh.map(table, f"bench.{schema}.{table}").cache()
        seconds = time.perf_counter() - started
        data = ds._cached()  # the cached batches (view layouts), as the plain server sends
        path = parquet_dir / f"{table}.parquet"
        pq.write_table(data, path, compression="none")
        if arrow_dir is not None:
            with pa.OSFile(str(arrow_dir / f"{table}.arrow"), "wb") as sink, \
                    pa.ipc.new_file(sink, data.schema) as writer:
                writer.write_table(data)
        info = ds.info()
        facts[table] = {"rows": data.num_rows, "arrow_bytes": data.nbytes,
                        "cache_file_bytes": info["bytes"], "cache_seconds": seconds,
                        "batches": data.column(0).num_chunks, "parquet": str(path),
                        "parquet_bytes": path.stat().st_size}
        print(f"cached {table}: {data.num_rows:,} rows, {data.nbytes / MB:.0f} MB Arrow in "
              f"{seconds:.1f}s; Parquet {path.stat().st_size / MB:.0f} MB", file=sys.stderr)
        del data
    wh.close()
    return facts


def process_cpu(pid: int | None) -> float | None:
    """User + system seconds a process has used so far (from /proc)."""
    if pid is None:
        return None
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_child(method: str, table: str, config: Path, parquet: str, address: str,
              token: str, timeout: float, plain: str, server_pid: int | None) -> dict[str, Any]:
    """One run in a fresh process; ``server_cpu_seconds`` is what the serving process spent
    meanwhile (it shares the machine's cores with the reader)."""
    served_before = process_cpu(server_pid)
    result = _run_child(method, table, config, parquet, address, token, timeout, plain)
    if served_before is not None and "seconds" in result:
        result["server_cpu_seconds"] = process_cpu(server_pid) - served_before
    return result


def _run_child(method: str, table: str, config: Path, parquet: str, address: str,
               token: str, timeout: float, plain: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", method, "--tables", table, "--config",
           str(config), "--parquet", parquet, "--address", address]
    env = {**os.environ, "LDW_TOKEN": token, "PLAIN_FLIGHT": plain}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"failed: timeout after {timeout:.0f}s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"status": f"failed: exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "seconds" in r]
    if not ok:
        return {"status": runs[0].get("status", "failed") if runs else "no runs"}

    def med(key: str) -> float | None:
        values = [r[key] for r in ok if r.get(key) is not None]
        return statistics.median(values) if values else None

    seconds = [r["seconds"] for r in ok]
    calls = [r["steps"]["call"] for r in ok if r.get("steps")]
    return {"seconds": statistics.median(seconds), "min": min(seconds), "max": max(seconds),
            "call_seconds": statistics.median(calls) if calls else None,
            "touch_seconds": med("touch_seconds"), "rss_anon_delta": med("rss_anon_delta"),
            "cpu_seconds": med("cpu_seconds"), "minor_faults": med("minor_faults"),
            "server_cpu_seconds": med("server_cpu_seconds"),
            "rss_peak_delta": med("rss_peak_delta"), "rows": ok[0]["rows"], "runs_ok": len(ok),
            "failed": len(runs) - len(ok)}


def fmt_ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def markdown(table: str, facts: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    size = facts["arrow_bytes"]
    base = results.get("ldw_arrow", {}).get("seconds")
    lines = [f"### {table}: {facts['rows']:,} rows, {size / MB:.0f} MB as Arrow "
             f"({facts['batches']} batches), Parquet file {facts['parquet_bytes'] / MB:.0f} MB",
             "", "| method | ms (median) | min–max ms | GB/s | x ldw to_arrow | RssAnon + MB "
             "| peak RSS + MB | then touch every page, ms | CPU ms (all threads) "
             "| minor faults | server CPU ms |", "|" + "---|" * 11]
    for method, r in results.items():
        if "seconds" not in r:
            lines.append(f"| {LABELS[method]} | {r.get('status', 'failed')} |" + " |" * 9)
            continue
        s, peak = r["seconds"], r["rss_peak_delta"]
        cells = [LABELS[method], fmt_ms(s), f"{fmt_ms(r['min'])}–{fmt_ms(r['max'])}",
                 f"{size / 1e9 / s:,.2f}", f"{s / base:,.1f}" if base else "—",
                 f"{r['rss_anon_delta'] / MB:,.0f}",
                 "—" if peak is None else f"{peak / MB:,.0f}", fmt_ms(r["touch_seconds"]),
                 fmt_ms(r.get("cpu_seconds")),
                 "—" if r.get("minor_faults") is None else f"{r['minor_faults']:,.0f}",
                 fmt_ms(r.get("server_cpu_seconds"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(report: dict[str, Any]) -> list[str]:
    """The docs/design.md attach targets, checked against this run's medians."""
    out = []
    for table, results in report["tables"].items():

        def get(method: str, key: str = "seconds", results: dict = results) -> float | None:
            return results.get(method, {}).get(key)

        size = report["facts"][table]["arrow_bytes"]
        for method in ("ldw_polars", "ldw_arrow"):  # to_polars is the zero-copy attach
            if get(method) is not None and table == "orders":
                ms = get(method) * 1e3
                out.append(f"- {table}: attach (`{method.replace('ldw_', 'to_')}`, connect "
                           f"included) {ms:.1f} ms — target under 10 ms: "
                           f"{'met' if ms < 10 else 'NOT met'}")
        pairs = [("parquet_polars", "ldw_polars", "polars.read_parquet / ldw to_polars"),
                 ("parquet_polars", "ldw_arrow", "polars.read_parquet / ldw to_arrow"),
                 ("parquet_arrow", "ldw_arrow", "pyarrow read_table / ldw to_arrow")]
        for slow, fast, label in pairs:
            if get(slow) is not None and get(fast) is not None:
                ratio = get(slow) / get(fast)
                out.append(f"- {table}: {label} = {ratio:,.1f}x — target at least 10x: "
                           f"{'met' if ratio >= 10 else 'NOT met'}")
        for method, which in (("flight_arrow", "new process"),
                              ("flight_arrow_1stream", "new process, 1 stream"),
                              ("flight_arrow_2nd", "2nd attach in a process"),
                              ("flight_plain", "plain pyarrow server and client"),
                              ("flight_plain_2streams", "plain pyarrow, 2 streams")):
            if get(method) is None:
                continue
            whole = size / 1e9 / get(method)
            call = get(method, "call_seconds")
            alone = f"; `to_arrow()` alone {size / 1e9 / call:.2f} GB/s" if call else ""
            out.append(f"- {table}: Flight, {which}: {whole:.2f} GB/s (connect + dataset + "
                       f"to_arrow{alone}) — target at least 1 GB/s: "
                       f"{'met' if whole >= 1 else 'NOT met'}")
    return out


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tables", nargs="+", default=["orders", "lineitem"])
    p.add_argument("--scale", type=float, default=1)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--repeat", type=int, default=7, help="fresh processes per method (median)")
    p.add_argument("--only", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument("--memory-limit", default="6GiB", help="the benchmark server's memory_limit")
    p.add_argument("--timeout", type=float, default=600, help="seconds per run")
    p.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    p.add_argument("--plain-server", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--parquet", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.plain_server:
        plain_server(args.plain_server)
        return
    if args.child:
        print(json.dumps(child(args.child, args.tables[0], args.config, args.parquet,
                               args.address)))
        return
    schema = schema_name(args.scale)
    for table in args.tables:
        wait_for_table(args.url, schema, table, args.scale)
    folder = Path(tempfile.mkdtemp(prefix="ldw-bench-attach-"))
    shm = Path(tempfile.mkdtemp(prefix="ldw-bench-attach-", dir="/dev/shm"))
    parquet_dir = Path(tempfile.mkdtemp(prefix="ldw-bench-parquet-", dir="/dev/shm"))
    plain_methods = [m for m in args.only if m.startswith("flight_plain")]
    arrow_dir = (Path(tempfile.mkdtemp(prefix="ldw-bench-arrow-", dir="/dev/shm"))
                 if plain_methods else None)
    plain_proc: subprocess.Popen | None = None
    plain = ""
    config = write_config(folder, shm / "cache", args.url, args.memory_limit)
    report: dict[str, Any] = {"scale": args.scale, "schema": schema, "repeat": args.repeat,
                              "host": urlsplit(args.url).hostname, "cpus": os.cpu_count(),
                              "loadavg_start": os.getloadavg(), "facts": {}, "tables": {}}
    try:
        ldw_cli(config, "server", "start")
        status = json.loads(ldw_cli(config, "server", "status", "--json"))
        address, server_pid = status["flight"], status.get("pid")
        user = pwd.getpwuid(os.getuid()).pw_name  # the same owner as local attaches
        token = ldw_cli(config, "user", "add", user).split()[-1]
        report["facts"] = prepare(config, schema, args.tables, parquet_dir, arrow_dir)
        if arrow_dir is not None:
            plain_proc = subprocess.Popen([sys.executable, __file__, "--plain-server",
                                           str(arrow_dir)], stdout=subprocess.PIPE, text=True)
            plain = f"grpc://127.0.0.1:{int(plain_proc.stdout.readline())}"
        for table in args.tables:
            facts = report["facts"][table]
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.only}
            for _ in range(args.repeat):  # interleaved, so load drifts hit every method alike
                for method in args.only:
                    serving = (plain_proc.pid if plain_proc and method.startswith("flight_plain")
                               else server_pid if method.startswith("flight") else None)
                    runs[method].append(run_child(method, table, config, facts["parquet"],
                                                  address, token, args.timeout, plain, serving))
            results = {m: {**summarize(r), "runs": r} for m, r in runs.items()}
            for method, r in results.items():
                print(f"{table} {method}: {r.get('seconds', r.get('status'))}", file=sys.stderr)
            report["tables"][table] = results
            print(markdown(table, facts, results) + "\n", flush=True)
    finally:
        if plain_proc is not None:
            plain_proc.terminate()
            plain_proc.wait(timeout=30)
        subprocess.run([sys.executable, "-m", "ldw.cli", "--config", str(config), "server",
                        "stop"], capture_output=True, timeout=120, cwd=ROOT)
        for path in (folder, shm, parquet_dir, arrow_dir):
            if path is None:
                continue
            shutil.rmtree(path, ignore_errors=True)
    report["loadavg_end"] = os.getloadavg()
    lines = targets(report)
    print("Targets (docs/design.md):\n" + "\n".join(lines))
    print(f"\nload average at start {report['loadavg_start'][0]:.1f}, at end "
          f"{report['loadavg_end'][0]:.1f} on {report['cpus']} CPUs")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"attach-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
