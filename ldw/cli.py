"""The ``ldw`` command: run and inspect the server, manage tokens.

    ldw server start [--foreground] [--config ldw.toml]
    ldw server stop [--drop-cache] | ldw server status
    ldw server reload                 re-read sources, policies, users; the cache stays
    ldw user add NAME [--role R]...   prints a new token once; only its hash is stored
    ldw user revoke NAME              every later call, ticket and stream of NAME is refused
    ldw user list                     users holding a token, with their roles
    (user commands go through the local server, which checks and audits them; started if
    none runs)
    ldw audit [--user U] [--dataset OWNER/NAME] [--last N] [--verify]
    ldw export NAME PATH [--format parquet|delta|iceberg] [--mode error|append|overwrite]
               [--partition-by COL]... | ldw verify PATH
    ldw demo [--scale 0.1] [--keep]   TPC-H in SQLite -> cache -> attach, SQL, export
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

from ldw.audit import printable
from ldw.config import Settings, load_settings
from ldw.errors import AccessDenied, LdwError, ServerUnavailable
from ldw.hints import spoken
from ldw.types import ServerStatus

__all__ = ["main"]


def _settings(args: argparse.Namespace) -> tuple[Settings, Any]:
    config: Any = args.config
    if config is None and os.environ.get("LDW_CONFIG_JSON"):
        config = json.loads(os.environ["LDW_CONFIG_JSON"])
    return load_settings(config), config


def _server_pid(settings: Settings) -> int | None:
    from ldw.server import running_pid

    return running_pid(settings)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def cmd_server_start(args: argparse.Namespace) -> int:
    settings, config = _settings(args)
    if args.foreground:
        from ldw.server import serve

        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        serve(settings)
        return 0
    from ldw.unix import LocalBackend, start_server

    if _server_pid(settings) is not None:
        print(f"ldw server already running (pid {_server_pid(settings)})")
        return 0
    start_server(settings, config=config, overrides={})
    status = LocalBackend.connect(settings, autostart=False).call("status")
    print(f"ldw server started: pid {status['pid']}, socket {status['socket']}, "
          f"flight {status['flight'] or 'off'}")
    return 0


def cmd_server_stop(args: argparse.Namespace) -> int:
    from ldw.unix import LocalBackend, stop_server

    settings, _ = _settings(args)
    before: dict[str, Any] | None = None  # what the server holds, asked before it stops
    if _server_pid(settings) is not None:
        with contextlib.suppress(ServerUnavailable):
            server = LocalBackend.connect(settings, autostart=False)
            before = server.call("drop_cache" if args.drop_cache else "status")
    elif args.drop_cache:
        before = _drop_cache_here(settings)
    try:
        pid = stop_server(settings)
    except AccessDenied as exc:  # the pid file names a process that is not our server
        print(f"ldw: {exc}", file=sys.stderr)
        return 2
    except ServerUnavailable as exc:  # it did not stop in time
        print(exc, file=sys.stderr)
        return 1
    print("no ldw server running" if pid is None else f"ldw server (pid {pid}) stopped")
    if before is not None:
        print(_dropped(before, settings) if args.drop_cache else _kept(before, settings))
    return 0


def _drop_cache_here(settings: Settings) -> dict[str, Any]:
    """``--drop-cache`` with no server running: this process opens the server's engine (its
    catalog and store, as the server would after a restart), drops, and closes it."""
    from ldw.config import _user
    from ldw.engine import Engine
    from ldw.service import Service

    os.umask(0o077)  # as the server: whatever it writes is private
    engine = Engine(settings)
    try:
        return Service(engine).call(_user(), "drop_cache", {})
    finally:
        engine.close()


def _tiers(counts: dict[str, Any], settings: Settings, memory: str, disk: str) -> str:
    where_memory = "Ray's object store" if settings.backend == "ray" else str(settings.shm_dir)
    parts = [f"{counts[memory + '_versions']} version(s), {_mib(counts[memory + '_bytes'])} "
             f"in {where_memory}" if counts[memory + "_versions"] else "",
             f"{counts[disk + '_versions']} version(s), {_mib(counts[disk + '_bytes'])} "
             f"in {settings.spill_dir}" if counts[disk + "_versions"] else ""]
    return " and ".join(p for p in parts if p)


def _kept(status: dict[str, Any], settings: Settings) -> str:
    """What a stopped server leaves for its next start (the cache outlives restarts)."""
    counts = {"memory_versions": status.get("memory_versions", 0),
              "memory_bytes": status.get("used_bytes", 0),
              "spilled_versions": status.get("spilled_versions", 0),
              "spilled_bytes": status.get("spilled_bytes", 0)}
    if not counts["memory_versions"] and not counts["spilled_versions"]:
        return "nothing was cached"
    if settings.backend == "ray" and not status.get("ray_address"):
        return ("the Ray that ldw started stopped with it: its cached versions are gone; "
                "they reload from their sources on next use")
    return (f"the cache stays for the next start: {_tiers(counts, settings, 'memory', 'spilled')}"
            "; `ldw server stop --drop-cache` frees it (the mappings stay)")


def _dropped(counts: dict[str, Any], settings: Settings) -> str:
    what = _tiers(counts, settings, "memory", "disk") or "nothing was cached"
    busy = (f"; {counts['busy']} dataset(s) still loading were left alone"
            if counts.get("busy") else "")
    return (f"cache dropped: {what}{busy}; the mappings stay and reload from their sources on "
            "next use")


def cmd_server_reload(args: argparse.Namespace) -> int:
    """The running server re-reads sources, policies, users and [refresh]; the cache stays."""
    from ldw.unix import LocalBackend

    settings, config = _settings(args)
    if config is None and settings.config_path is not None:  # $LDW_CONFIG
        config = str(settings.config_path)
    if isinstance(config, str):
        config = os.path.abspath(os.path.expanduser(config))
    report = LocalBackend.connect(settings, autostart=False).call("reload", {"config": config})
    print(f"ldw server reloaded {report['config'] or 'its configuration'}: "
          f"{len(report['sources'])} source(s): {', '.join(report['sources']) or 'none'}")
    for key in ("added", "removed", "changed"):
        if report[key]:
            print(f"  {key}: {', '.join(report[key])}")
    print(f"  {report['policies']} policies, {len(report['users'])} [users] entries; the "
          "cache is kept")
    if report["restart_needed"]:
        print(f"  not applied until a restart: [server] {', '.join(report['restart_needed'])}")
    return 0


def cmd_server_status(args: argparse.Namespace) -> int:
    from ldw.unix import LocalBackend

    settings, _ = _settings(args)
    try:
        status: ServerStatus = LocalBackend.connect(settings, autostart=False).call("status")
    except ServerUnavailable as exc:
        print(f"not running: {exc}")
        return 1
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"pid        {status['pid']}  (up {time.time() - status['started']:.0f}s)")
    print(f"socket     {status['socket']}")
    print(f"flight     {status['flight'] or 'off'}")
    print(f"memory     {_mib(status['used_bytes'])} of {_mib(status['memory_limit'])}"
          f" (+{_mib(status['spilled_bytes'])} spilled to disk)")
    print(f"datasets   {status['datasets']} ({status['cached']} cached)")
    for key, hits in sorted(status["hits"].items()):
        print(f"  {printable(key):<30} {hits:>6} hits "
              f"{_mib(status['bytes_served'][key]):>14} served")
    slices = status.get("slices") or []
    if slices:
        print(f"slices     {len(slices)} cached automatically "
              f"({_mib(sum(s['bytes'] for s in slices))})")
    for kept in slices:
        where = " OR ".join(kept["conditions"]) or "every row"
        print(f"  {printable(kept['table'])} ({printable(where)}): {kept['hits']} hits, "
              f"{kept['saved_seconds']:.2f} s of source time saved")
    return 0


def _server(args: argparse.Namespace) -> Any:
    """The local server, started if none runs: users and tokens are managed by the server, so
    every change is checked and audited there."""
    from ldw.unix import LocalBackend

    settings, config = _settings(args)
    return LocalBackend.connect(settings, config=config, overrides={})


def cmd_user_add(args: argparse.Namespace) -> int:
    answer = _server(args).call("user_add", {"name": args.name, "roles": args.role})
    print(f"token for {printable(answer['user'])} (shown once; only its hash is stored):")
    print(answer["token"])
    return 0


def cmd_user_revoke(args: argparse.Namespace) -> int:
    answer = _server(args).call("user_revoke", {"name": args.name})
    name = printable(answer["user"])
    print(f"{name} revoked{' (token deleted)' if answer['had_token'] else ''}: every call, "
          "ticket and open stream of theirs is refused, over Flight and the local socket, "
          f"whatever [users.{name}] says; `ldw user add {name}` lets them in again")
    if answer["dropped_shares"]:
        print(f"{answer['dropped_shares']} share(s) with {name} dropped")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    for row in _server(args).call("user_list"):
        print(f"{printable(row['user']):<24} {', '.join(printable(r) for r in row['roles'])}")
    return 0


def _local(settings: Settings) -> Any:
    from ldw.client import Warehouse
    from ldw.unix import LocalBackend

    return Warehouse(LocalBackend.connect(settings, autostart=False))


def cmd_audit(args: argparse.Namespace) -> int:
    settings, _ = _settings(args)
    if args.verify:
        return _verify_audit(settings)
    frame = _local(settings).audit(user=args.user, dataset=args.dataset, limit=args.last)
    for row in frame.iter_rows(named=True):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["ts"]))
        size = f" rows={row['rows']}" if row["rows"] is not None else ""
        user, action, outcome, dataset, detail = (printable(row[k] or "") for k in (
            "user", "action", "outcome", "dataset", "detail"))
        print(f"{row['seq']:>6} {when} {user:<12} {action:<12} "
              f"{outcome:<6} {dataset or '-'}{size} {detail}")
    return 0


def _verify_audit(settings: Settings) -> int:
    """Check the audit log's keyed chain, sequence and anchor; say what is wrong."""
    from ldw.audit import Anchor, load_audit_key
    from ldw.catalog import Catalog

    key = load_audit_key(settings.audit_key_file, create=False)
    catalog = Catalog(settings.catalog)
    try:
        report = catalog.verify_audit(key, Anchor(settings.audit_anchor_file))
    finally:
        catalog.close()
    for note in report.notes:
        print(f"note: {printable(note)}")
    if report.ok:
        keyed = (f"keyed MAC chain from record {report.keyed_from}"
                 if report.keyed_from is not None else "no keyed records yet")
        print(f"audit log intact: {report.records} records verified ({keyed}; anchored up to "
              f"record {report.head if report.head is not None else 0}, "
              f"{report.anchored} anchored)")
        return 0
    print(f"audit log BROKEN ({report.records} records in the catalog, {report.anchored} "
          "anchored):")
    for problem in report.problems:
        print(f"  {printable(problem)}")
    return 1


def cmd_export(args: argparse.Namespace) -> int:
    settings, _ = _settings(args)
    result = _local(settings).dataset(args.name).export(
        args.path, format=args.format, mode=args.mode,
        partition_by=args.partition_by or None, overwrite=args.overwrite)
    if args.format != "parquet":
        print(f"exported {result.rows:,} rows to the {args.format} table {result.path} "
              f"({result.mode}, version {result.version}; {result.seconds:.2f}s)")
        if result.catalog:
            print(f"catalog {result.catalog}, table {result.table}")
        return 0
    print(f"exported {result.rows:,} rows in {len(result.files)} file(s), "
          f"{_mib(result.bytes)}, to {result.path} ({result.seconds:.2f}s)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ldw.export import verify_export

    result = verify_export(args.path)
    if result.ok:
        owner = (result.manifest or {}).get("export_owner")
        whose = f" (an export of {owner})" if isinstance(owner, str) else ""
        print(f"ok: {result.files_checked} file(s), {result.rows:,} rows match the "
              f"manifest{whose}")
        return 0
    for problem in result.problems:
        print(printable(problem))
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldw", description="ldw: a logical data warehouse")
    parser.add_argument("--config", help="ldw.toml (default: $LDW_CONFIG)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    server = verbs.add_parser("server", help="run or inspect the local server")
    actions = server.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="start the server (detached unless --foreground)")
    start.add_argument("--foreground", action="store_true", help="run in this process")
    start.set_defaults(func=cmd_server_start)
    stop = actions.add_parser("stop", help="stop the server (its cache stays for the next "
                              "start)")
    stop.add_argument("--drop-cache", action="store_true",
                      help="drop every cached version first (the mappings stay)")
    stop.set_defaults(func=cmd_server_stop)
    reload = actions.add_parser("reload", help="re-read sources, policies and users from the "
                                "config (ldw --config FILE: that file); the cache stays")
    reload.set_defaults(func=cmd_server_reload)
    status = actions.add_parser("status", help="pid, addresses, memory use")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_server_status)
    user = verbs.add_parser("user", help="manage users")
    user_actions = user.add_subparsers(dest="action", required=True)
    add = user_actions.add_parser("add", help="create a user token (printed once)")
    add.add_argument("name")
    add.add_argument("--role", action="append", default=[], help="a role (repeatable)")
    add.set_defaults(func=cmd_user_add)
    revoke = user_actions.add_parser("revoke", help="revoke a user's token")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_user_revoke)
    listing = user_actions.add_parser("list", help="users holding a token, with their roles")
    listing.set_defaults(func=cmd_user_list)
    audit = verbs.add_parser("audit", help="read (or --verify) the audit log")
    audit.add_argument("--user")
    audit.add_argument("--dataset", help="OWNER/NAME")
    audit.add_argument("--last", type=int, default=50)
    audit.add_argument("--verify", action="store_true",
                       help="check the keyed chain, sequence gaps and the anchor")
    audit.set_defaults(func=cmd_audit)
    export = verbs.add_parser("export", help="export a dataset to Parquet, Delta or Iceberg")
    export.add_argument("name")
    export.add_argument("path")
    export.add_argument("--format", choices=("parquet", "delta", "iceberg"), default="parquet",
                        help="Parquet files with a manifest (default), or a Delta Lake or "
                             "Iceberg table (one commit per export)")
    export.add_argument("--mode", choices=("error", "append", "overwrite"),
                        help="for an existing path: error (default), append (tables), "
                             "overwrite")
    export.add_argument("--partition-by", action="append", default=[])
    export.add_argument("--overwrite", action="store_true", help="the same as --mode overwrite")
    export.set_defaults(func=cmd_export)
    verify = verbs.add_parser("verify", help="check an export against its manifest")
    verify.add_argument("path")
    verify.set_defaults(func=cmd_verify)
    demo = verbs.add_parser("demo", help="TPC-H in SQLite -> cache -> attach, SQL, export "
                            "(ldw demo --help)", add_help=False)
    demo.set_defaults(func=lambda args: _demo([]))  # `ldw demo ...` goes straight to _demo
    for sub in (start, stop, reload, status, add, revoke, listing, audit, export):
        sub.add_argument("--config", default=argparse.SUPPRESS, help="ldw.toml")
    return parser


def _demo(argv: list[str]) -> int:
    from ldw.demo import main as demo

    return demo(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:  # the demo has its own flags
        return _demo(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except LdwError as exc:
        print(f"ldw: {spoken(str(exc), 'cli')}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
