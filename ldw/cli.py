"""The ``ldw`` command: run and inspect the server, manage tokens.

    ldw server start [--foreground] [--config ldw.toml]
    ldw server stop | ldw server status
    ldw user add NAME          prints a new token once; only its hash is stored
    ldw user revoke NAME       every later call with that token is refused
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from ldw.config import Settings, load_settings
from ldw.errors import LdwError, ServerUnavailable

__all__ = ["main"]


def _settings(args: argparse.Namespace) -> tuple[Settings, Any]:
    config: Any = args.config
    if config is None and os.environ.get("LDW_CONFIG_JSON"):
        config = json.loads(os.environ["LDW_CONFIG_JSON"])
    return load_settings(config), config


def _server_pid(settings: Settings) -> int | None:
    from ldw.server import running_pid  # noqa: PLC0415

    return running_pid(settings)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def cmd_server_start(args: argparse.Namespace) -> int:
    settings, config = _settings(args)
    if args.foreground:
        from ldw.server import serve  # noqa: PLC0415

        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        serve(settings)
        return 0
    from ldw.unix import LocalBackend, start_server  # noqa: PLC0415

    if _server_pid(settings) is not None:
        print(f"ldw server already running (pid {_server_pid(settings)})")
        return 0
    start_server(settings, config=config, overrides={})
    status = LocalBackend.connect(settings, autostart=False).call("status")
    print(f"ldw server started: pid {status['pid']}, socket {status['socket']}, "
          f"flight {status['flight'] or 'off'}")
    return 0


def cmd_server_stop(args: argparse.Namespace) -> int:
    settings, _ = _settings(args)
    pid = _server_pid(settings)
    if pid is None:
        print("no ldw server running")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _server_pid(settings) == pid:
        time.sleep(0.05)
    if _server_pid(settings) == pid:
        print(f"ldw server (pid {pid}) did not stop within 30s", file=sys.stderr)
        return 1
    print(f"ldw server (pid {pid}) stopped")
    return 0


def cmd_server_status(args: argparse.Namespace) -> int:
    from ldw.unix import LocalBackend  # noqa: PLC0415

    settings, _ = _settings(args)
    try:
        status = LocalBackend.connect(settings, autostart=False).call("status")
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
        print(f"  {key:<30} {hits:>6} hits {_mib(status['bytes_served'][key]):>14} served")
    return 0


def cmd_user_add(args: argparse.Namespace) -> int:
    from ldw.catalog import Catalog  # noqa: PLC0415
    from ldw.engine import check_name  # noqa: PLC0415

    settings, _ = _settings(args)
    check_name(args.name, "user name")
    catalog = Catalog(settings.catalog)
    token = catalog.new_token(args.name)
    catalog.close()
    print(f"token for {args.name} (shown once; only its hash is stored):")
    print(token)
    return 0


def cmd_user_revoke(args: argparse.Namespace) -> int:
    from ldw.catalog import Catalog  # noqa: PLC0415

    settings, _ = _settings(args)
    catalog = Catalog(settings.catalog)
    revoked = catalog.revoke_token(args.name)
    catalog.close()
    print(f"token of {args.name} revoked" if revoked else f"{args.name} has no token")
    return 0 if revoked else 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ldw", description="ldw: a logical data warehouse")
    parser.add_argument("--config", help="ldw.toml (default: $LDW_CONFIG)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    server = verbs.add_parser("server", help="run or inspect the local server")
    actions = server.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="start the server (detached unless --foreground)")
    start.add_argument("--foreground", action="store_true", help="run in this process")
    start.set_defaults(func=cmd_server_start)
    stop = actions.add_parser("stop", help="stop the server")
    stop.set_defaults(func=cmd_server_stop)
    status = actions.add_parser("status", help="pid, addresses, memory use")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_server_status)
    user = verbs.add_parser("user", help="manage users")
    user_actions = user.add_subparsers(dest="action", required=True)
    add = user_actions.add_parser("add", help="create a user token (printed once)")
    add.add_argument("name")
    add.set_defaults(func=cmd_user_add)
    revoke = user_actions.add_parser("revoke", help="revoke a user's token")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_user_revoke)
    for sub in (start, stop, status, add, revoke):
        sub.add_argument("--config", default=argparse.SUPPRESS, help="ldw.toml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except LdwError as exc:
        print(f"ldw: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
