"""The ``%ldw`` verbs: one argument parser and one small function per verb, routed from ``VERBS``.

Each function receives the session (:class:`.session.Session`: the magics), the parsed
arguments and the cell body (``None`` for the line magic), calls the public ldw API and returns
what the cell should display. Failures a user can cause raise ``UsageError`` with one line.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import keyword
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError  # the extension may import IPython

from ldw.client import Dataset, Warehouse, connect
from ldw.errors import UnknownDataset
from ldw.hints import spoken

from .display import Details, Listing

if TYPE_CHECKING:
    from .session import Session

__all__ = ["VERBS", "HelpShown", "Verb", "find_parameters", "overview", "split_line"]


class HelpShown(Exception):
    """``--help`` printed the help; nothing else to do."""


class VerbParser(argparse.ArgumentParser):
    """argparse that reports errors as a one-line ``UsageError`` instead of exiting."""

    def __init__(self, verb: str, description: str) -> None:
        super().__init__(prog=f"%ldw {verb}", description=description, allow_abbrev=False)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if status:
            raise UsageError(f"{self.prog}: {message or 'invalid arguments'}")
        raise HelpShown


@dataclass(frozen=True)
class Verb:
    name: str
    summary: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[Session, argparse.Namespace, str | None], Any]
    cell: str = "no"  # "no": line only; "optional": line or cell; "required": cell only
    materializes: bool = False

    def parser(self) -> VerbParser:
        parser = VerbParser(self.name, self.summary)
        self.arguments(parser)
        return parser


# -- argument helpers -----------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _name_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty name; write a,b,c")
    return names


def check_variable(name: str, what: str = "name") -> str:
    """A name we may bind in the user namespace (and use as a dataset name)."""
    if not (name.isascii() and name.isidentifier()) or keyword.iskeyword(name):
        raise UsageError(f"{what} {name!r} must be a Python identifier (letters, digits, '_', "
                         "not starting with a digit)")
    return name


def split_line(tokens: Sequence[str]) -> list[str]:
    """``orders=src.t`` / ``orders= src.t`` / ``orders =src.t`` -> ``orders = src.t``."""
    out: list[str] = []
    positional = True
    for token in tokens:
        if token.startswith("-"):
            positional = False
        if positional and "=" in token and token != "=":
            left, _, right = token.partition("=")
            out += [part for part in (left, "=", right) if part]
        else:
            out.append(token)
    return out


_SQL_TOKENS = re.compile(r"""
      '(?:[^']|'')*'              # string literal
    | "(?:[^"]|"")*"              # quoted identifier
    | --[^\n]*                    # line comment
    | /\*.*?\*/                   # block comment
    | ::                          # PostgreSQL cast
    | (?<![\w:]):([A-Za-z_]\w*)   # :name, a bound parameter
""", re.S | re.X)


def find_parameters(text: str) -> list[str]:
    """The ``:name`` parameters in a predicate or query (not in literals, comments or casts)."""
    found = [m.group(1) for m in _SQL_TOKENS.finditer(text) if m.group(1)]
    return list(dict.fromkeys(found))


def _bind_parameters(magics: Session, api: Callable[..., Any], text: str | None,
                     kwargs: dict[str, Any], where: str) -> None:
    """Python values reach a query only as bound parameters, never as text."""
    names = find_parameters(text or "")
    if not names:
        return
    if "params" not in inspect.signature(api).parameters:
        raise UsageError(
            f"{where} references {', '.join(':' + n for n in names)}, but this version of ldw "
            "cannot bind parameters; write the value as a literal")
    missing = [n for n in names if n not in magics.namespace]
    if missing:
        raise UsageError(f"{where} references {', '.join(':' + n for n in missing)}, but no "
                         "such Python variable is defined")
    kwargs.setdefault("params", {}).update({n: magics.namespace[n] for n in names})


def _require(obj: Any, method: str, feature: str) -> Callable[..., Any]:
    api = getattr(obj, method, None)
    if not callable(api):
        raise UsageError(f"{feature} is not available in this version of ldw "
                         f"({type(obj).__name__}.{method} is missing)")
    return api


# -- verbs ------------------------------------------------------------------------------------

def _connect_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("url", nargs="?", help="server address, e.g. grpc://host:8815 "
                   "(default: the local server)")
    p.add_argument("--token", help="access token for a remote server")
    p.add_argument("--in-process", action="store_true",
                   help="run the engine inside this kernel instead of using a server")
    p.add_argument("--config", metavar="PATH", help="ldw.toml to read (default: $LDW_CONFIG)")
    p.add_argument("--use", metavar="VAR",
                   help="use the ldw.Warehouse already bound to VAR instead of connecting")
    p.add_argument("--as", dest="as_", metavar="VAR", help="also bind the Warehouse to VAR")


def _connect(magics: Session, args: argparse.Namespace, cell: str | None) -> None:
    if args.as_:
        check_variable(args.as_, "--as")
    notes: list[str] = []
    if args.use:
        if args.url or args.token or args.in_process or args.config:
            raise UsageError("%ldw connect: --use takes no URL, --token, --in-process or --config")
        warehouse = magics.namespace.get(args.use)
        if not isinstance(warehouse, Warehouse):
            raise UsageError(f"%ldw connect: {args.use!r} is not an ldw.Warehouse")
        magics.set_warehouse(warehouse, owned=False)
    else:
        options: dict[str, Any] = {"in_process": args.in_process, "progress": magics.progress}
        if args.config:
            options["config"] = args.config
        if args.token:
            options["token"] = args.token
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warehouse = connect(args.url, **options)
        magics.set_warehouse(warehouse, owned=True)
        notes = [spoken(str(w.message), "magic") for w in caught
                 if issubclass(w.category, UserWarning)]
    if args.as_:
        magics.bind(args.as_, warehouse)
    names = warehouse.sources()["name"].to_list()
    mode = "in-process" if args.in_process else "connected"
    print(f"ldw: {mode}; {len(names)} source(s): {', '.join(names) or 'none'}")
    for note in notes:
        print(f"ldw: note: {note}")


def _reload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH",
                   help="ldw.toml to read (default: the one %%ldw connect was given, else the "
                        "server's own)")


def _reload(magics: Session, args: argparse.Namespace, cell: str | None) -> None:
    reload = _require(magics.warehouse, "reload", "reloading the configuration")
    report = reload(**({"config": args.config} if args.config else {}))
    changes = "; ".join(f"{k}: {', '.join(report[k])}" for k in ("added", "removed", "changed")
                        if report[k])
    print(f"ldw: reloaded {report['config'] or 'the configuration'}; "
          f"{len(report['sources'])} source(s): {', '.join(report['sources']) or 'none'}"
          f"{' (' + changes + ')' if changes else ''}; {report['policies']} policies; "
          "the cache is kept")
    if report["restart_needed"]:
        print("ldw: not applied until the server restarts: [server] "
              f"{', '.join(report['restart_needed'])}")


def _no_args(p: argparse.ArgumentParser) -> None:
    pass


def _sources(magics: Session, args: argparse.Namespace, cell: str | None) -> Listing:
    return Listing("sources", magics.warehouse.sources())


def _tables_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("where", metavar="SOURCE[.SCHEMA]", help="e.g. dwh or dwh.sales")


def _tables(magics: Session, args: argparse.Namespace, cell: str | None) -> Listing:
    source, _, schema = args.where.partition(".")
    if not source:
        raise UsageError("%ldw tables: name a source, e.g. %ldw tables dwh.sales")
    frame = magics.warehouse.tables(source, schema=schema or None)
    return Listing(f"tables in {args.where}", frame)


def _describe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", metavar="SOURCE.SCHEMA.TABLE")


def _describe(magics: Session, args: argparse.Namespace, cell: str | None) -> Listing:
    return Listing(f"columns of {args.table}", magics.warehouse.describe(args.table))


def _map_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="dataset name, also bound as a Python variable")
    p.add_argument("equals", nargs="?", metavar="=", help="'=' (line form only)")
    p.add_argument("table", nargs="?", metavar="SOURCE.SCHEMA.TABLE",
                   help="the table to map (line form); the cell form takes SQL in the body")
    p.add_argument("--source", help="source the SQL in the cell body runs on (cell form)")
    p.add_argument("--columns", type=_name_list, metavar="A,B,...", help="columns to keep")
    p.add_argument("--where", metavar="PREDICATE",
                   help="row filter in SQL; Python values only as bound :name parameters")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="at most N rows")
    p.add_argument("--partition-on", metavar="COL", help="column to split parallel reads on")
    p.add_argument("--partitions", type=_positive_int, metavar="N", help="parallel reads")
    p.add_argument("--ttl", metavar="DURATION", help="expire the cached data, e.g. 30m, 8h")
    p.add_argument("--pin", action="store_true", help="never evict to make room")
    p.add_argument("--memory-only", action="store_true", help="never spill or export")
    p.add_argument("--incremental", choices=("append", "upsert"),
                   help="refresh reads only new rows (append) or changed ones (upsert)")
    p.add_argument("--key", metavar="COL", help="append: new rows are above its max; upsert: "
                   "the row identity")
    p.add_argument("--watermark", metavar="COL", help="upsert: rows past the last one seen")
    p.add_argument("--refresh", metavar="POLICY",
                   help="manual (default), on_access, or 'every 10m'")
    p.add_argument("--cache", action="store_true", help="materialize now")


_MAP_EXAMPLE = "e.g. %ldw map orders = dwh.sales.orders"


def _map(magics: Session, args: argparse.Namespace, cell: str | None) -> Dataset:
    name = check_variable(args.name, "dataset name")
    wh = magics.warehouse
    kwargs: dict[str, Any] = {}
    if cell is not None:
        if args.equals is not None:
            raise UsageError("%%ldw map NAME --source S takes the SQL from the cell body, "
                             "not '= TABLE'")
        if not args.source:
            raise UsageError("%%ldw map: --source is required with SQL in the cell body")
        if not cell.strip():
            raise UsageError("%%ldw map: the cell body is empty; write the SQL query there")
        kwargs.update(sql=cell, source=args.source)
        _bind_parameters(magics, wh.map, cell, kwargs, "the query")
    else:
        if args.source:
            raise UsageError("%ldw map: --source goes with SQL in a cell (%%ldw map NAME "
                             "--source S); a table reference names its source")
        if args.equals != "=":
            raise UsageError(f"%ldw map: expected NAME = SOURCE.SCHEMA.TABLE ({_MAP_EXAMPLE}); "
                             "the '=' is missing")
        if not args.table:
            raise UsageError(f"%ldw map: the table after '=' is missing ({_MAP_EXAMPLE})")
    for option in ("columns", "where", "limit", "partition_on", "partitions", "ttl",
                   "incremental", "key", "watermark", "refresh"):
        if getattr(args, option) is not None:
            kwargs[option] = getattr(args, option)
    for flag in ("pin", "memory_only"):
        if getattr(args, flag):
            kwargs[flag] = True
    _bind_parameters(magics, wh.map, args.where, kwargs, "--where")
    dataset = wh.map(name, args.table if cell is None else None, **kwargs)
    magics.bind(name, dataset)
    if args.cache:
        magics.materialize(dataset, "cache")
    return dataset


def _name_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="dataset name")


def _ls(magics: Session, args: argparse.Namespace, cell: str | None) -> Listing:
    return Listing("datasets", magics.warehouse.datasets())


def _info(magics: Session, args: argparse.Namespace, cell: str | None) -> Details:
    return Details(f"dataset {args.name}", magics.warehouse.dataset(args.name).info())


def _cache(magics: Session, args: argparse.Namespace, cell: str | None) -> Dataset:
    return magics.materialize(magics.warehouse.dataset(args.name), "cache")


def _refresh_args(p: argparse.ArgumentParser) -> None:
    _name_arg(p)
    p.add_argument("--full", action="store_true",
                   help="read everything, even where the mapping is incremental")


def _refresh(magics: Session, args: argparse.Namespace, cell: str | None) -> Dataset:
    dataset = magics.warehouse.dataset(args.name)
    return magics.materialize(dataset, "refresh", **({"full": True} if args.full else {}))


def _evict(magics: Session, args: argparse.Namespace, cell: str | None) -> Dataset:
    dataset = magics.warehouse.dataset(args.name)
    dataset.evict()
    return dataset


def _status(magics: Session, args: argparse.Namespace, cell: str | None) -> Details:
    return Details("ldw status", magics.warehouse.status(),
                   per_dataset=("hits", "bytes_served", "source_queries"))


def _browse(magics: Session, args: argparse.Namespace, cell: str | None) -> Any:
    from .browser import Browser

    return Browser(magics.warehouse, namespace=magics.namespace, progress=magics.progress)


def _share_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="dataset name")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--with", dest="user", metavar="USER", help="user to share with")
    who.add_argument("--role", metavar="ROLE", help="role to share with")


def _share(magics: Session, args: argparse.Namespace, cell: str | None) -> None:
    dataset = magics.warehouse.dataset(args.name)
    share = _require(dataset, "share", "sharing")
    if args.user:
        share(args.user)
        print(f"ldw: shared {args.name} with user {args.user}")
    else:
        share(role=args.role)
        print(f"ldw: shared {args.name} with role {args.role}")


def _attach_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", metavar="[OWNER/]NAME",
                   help="one of your datasets, or another user's shared one as OWNER/NAME")
    p.add_argument("--as", dest="as_", metavar="VAR", help="variable to bind (default: NAME)")


def _attach(magics: Session, args: argparse.Namespace, cell: str | None) -> Any:
    owner, slash, name = args.ref.rpartition("/")
    if slash and (not owner or not name) or not name:
        raise UsageError(f"%ldw attach: {args.ref!r} must be NAME (yours) or OWNER/NAME, e.g. "
                         "alice/orders")
    variable = check_variable(args.as_ or name, "--as" if args.as_ else "variable")
    if not slash:  # a bare name: one of the caller's own datasets
        try:
            dataset = magics.warehouse.dataset(name)
        except UnknownDataset:
            raise UsageError(f"%ldw attach: you have no dataset named {name!r} (see %ldw ls); "
                             "another user's shared dataset must be OWNER/NAME, e.g. "
                             f"alice/{name}") from None
        magics.bind(variable, dataset)
        return dataset
    attach = _require(magics.warehouse, "attach", "attaching shared datasets")
    dataset = attach(args.ref)
    magics.bind(variable, dataset)
    return dataset


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="dataset name")
    p.add_argument("path", metavar="PATH", help="destination folder")
    p.add_argument("--partition-by", type=_name_list, action="append", metavar="COL[,COL]",
                   help="Hive-style partition columns (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export there")
    p.add_argument("--format", choices=("parquet", "delta", "iceberg"),
                   help="Parquet files (default), or a Delta Lake or Iceberg table")
    p.add_argument("--mode", choices=("error", "append", "overwrite"),
                   help="for an existing path: error (default), append (tables), overwrite")


def _export(magics: Session, args: argparse.Namespace, cell: str | None) -> Any:
    dataset = magics.warehouse.dataset(args.name)
    export = _require(dataset, "export", "export")
    columns = [c for group in args.partition_by or [] for c in group]
    options: dict[str, Any] = {key: value for key, value in (
        ("partition_by", columns), ("format", args.format), ("mode", args.mode)) if value}
    if args.overwrite:
        options["overwrite"] = True
    return export(args.path, **options)


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", metavar="USER", help="only this user's records")
    p.add_argument("--dataset", metavar="NAME", help="only this dataset's records")
    p.add_argument("--last", type=_positive_int, metavar="N", help="newest N records")


def _audit(magics: Session, args: argparse.Namespace, cell: str | None) -> Listing:
    audit = _require(magics.warehouse, "audit", "the audit log")
    options = {"user": args.user, "dataset": args.dataset, "limit": args.last}
    return Listing("audit", audit(**{k: v for k, v in options.items() if v is not None}))


def _sql_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", metavar="NAME", help="also bind the result to NAME")
    p.add_argument("--cache", action="store_true",
                   help="cache the datasets the query reads first (default: read lazily)")
    p.add_argument("--explain", action="store_true",
                   help="show how each relation would be read (cache or source, SQL sent) "
                        "instead of running the query")


def _sql(magics: Session, args: argparse.Namespace, cell: str | None) -> Any:
    if args.out:
        check_variable(args.out, "-o")
    if not (cell or "").strip():
        raise UsageError("%%ldw sql: the cell body is empty; write the query there")
    if args.explain:
        if args.cache:
            raise UsageError("%%ldw sql: --explain shows the plan without running the query; "
                             "drop --cache")
        explain = _require(magics.warehouse, "explain", "explaining SQL")
        result = explain(cell)
        if args.out:
            magics.bind(args.out, result)
        return result
    sql = _require(magics.warehouse, "sql", "SQL over datasets")
    kwargs: dict[str, Any] = {"cache": True} if args.cache else {}
    _bind_parameters(magics, sql, cell, kwargs, "the query")
    result = sql(cell, **kwargs)
    if args.out:
        magics.bind(args.out, result)
    return result


VERBS: dict[str, Verb] = {v.name: v for v in [
    Verb("connect", "connect to ldw (the local server, a remote one, or --in-process)",
         _connect_args, _connect),
    Verb("sources", "list the configured sources (never a password)", _no_args, _sources),
    Verb("tables", "list the tables of a source schema", _tables_args, _tables),
    Verb("describe", "columns of a table: source type, Arrow type, notes", _describe_args,
         _describe),
    Verb("map", "map a table (NAME = SOURCE.SCHEMA.TABLE) or, in a cell, a SQL query as a "
         "dataset and bind it to NAME", _map_args, _map, cell="optional", materializes=True),
    Verb("ls", "list your datasets with state and size", _no_args, _ls),
    Verb("info", "state, size, version, SQL sent and type notes of a dataset", _name_arg, _info),
    Verb("cache", "materialize a dataset into the cache now", _name_arg, _cache,
         materializes=True),
    Verb("refresh", "read what changed in the source into a new version (--full: all)",
         _refresh_args, _refresh,
         materializes=True),
    Verb("evict", "drop the cached data; the mapping stays", _name_arg, _evict),
    Verb("share", "share a dataset with a user or a role", _share_args, _share),
    Verb("attach", "bind one of your datasets, or one another user shared (OWNER/NAME)",
         _attach_args, _attach),
    Verb("export", "export a dataset to Parquet, Delta or Iceberg", _export_args, _export,
         materializes=True),
    Verb("status", "cache status: memory used, datasets", _no_args, _status),
    Verb("reload", "make the server re-read sources, policies and users (the cache stays)",
         _reload_args, _reload),
    Verb("audit", "recent audit records", _audit_args, _audit),
    Verb("browse", "open the catalog browser", _no_args, _browse),
    Verb("sql", "run SQL over datasets and source tables (cell body) and show the result",
         _sql_args, _sql,
         cell="required"),
]}


def unknown_verb(name: str) -> UsageError:
    close = difflib.get_close_matches(name, list(VERBS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UsageError(f"%ldw: unknown verb {name!r}{hint} (verbs: {', '.join(VERBS)}; "
                      "see %ldw --help)")


def overview() -> str:
    """The ``%ldw --help`` text: every verb with its usage and summary."""
    lines = ["%ldw VERB [options] — ldw in the notebook; %ldw VERB --help for details.", ""]
    for verb in VERBS.values():
        usage = " ".join(verb.parser().format_usage().split())
        usage = usage.removeprefix("usage: ")
        if verb.cell == "required":
            usage = "%" + usage + "   (cell body: the SQL)"
        lines += [f"  {usage}", f"      {verb.summary}"]
    lines += ["", "%%ldw map NAME --source S with the SQL in the cell body maps a query.",
              "Errors from ldw are shown as one line (UsageError)."]
    return "\n".join(lines)
