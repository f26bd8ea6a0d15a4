"""Flight SQL on ldw's Flight address: what standard clients (the ADBC Flight SQL driver, Flight
SQL JDBC/ODBC drivers in BI tools, R and Go through ADBC) speak.

The same :class:`~ldw.flight.FlightEndpoint` serves it, so everything ldw's own client gets holds
here too: the bearer token of ``ldw user add`` on every call, single-use tickets bound to the
user and token, access re-checked before every batch (a revoked user, token or share ends the
stream), and each query audited by the service like ``wh.sql``.

- ``CommandStatementQuery`` and prepared statements (``CreatePreparedStatement``, then
  ``CommandPreparedStatementQuery``, ``ClosePreparedStatement``) run their SQL through the same
  ``sql`` operation as ``wh.sql``: whatever ``wh.sql`` accepts, Flight SQL accepts. Results
  leave with plain ``string``/``binary`` columns (:mod:`ldw.layout`). Parameters, updates and
  transactions are refused: ldw is read-only.
- ``CommandGetCatalogs``/``GetDbSchemas``/``GetTables``/``GetTableTypes`` list the datasets the
  user may read: catalog ``ldw``, the owner as the schema, the dataset as the table (in SQL: a
  dataset of one's own is ``orders``, one shared by alice ``"alice/orders"``). With
  ``[server] flight_sql_sources = true`` they also list the source tables the user's policies
  let them read, one catalog per source (in SQL: ``source.schema.table``), with the schema a
  query returns (masks applied). It is off by default: BI tools list metadata often, and each
  listing then queries every source's catalog.
- ``CommandGetSqlInfo`` answers the server facts (name, versions, read-only, SQL, no Substrait,
  no transactions, no cancel, the identifier quote).
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.flight as fl

from ldw.errors import (
    AccessDenied,
    BadRequest,
    CapacityExceeded,
    PolicyViolation,
    SourceUnavailable,
    UnknownDataset,
    UnknownTable,
)
from ldw.flightsql_proto import pack, unpack
from ldw.layout import standard_schema
from ldw.wire import decode_schema

if TYPE_CHECKING:
    from ldw.service import Service


class TicketDesk(Protocol):
    """What Flight SQL needs of the endpoint that serves it (:class:`ldw.flight.FlightEndpoint`):
    its service, and single-use tickets for a listing's batches or a query's stream."""

    service: Service

    def issue(self, auth: Any, schema: pa.Schema, check: Callable[[], None],
              *streams: Callable[[fl.ServerCallContext], Iterable[pa.RecordBatch]]
              ) -> list[str]: ...

    def stream_ticket(self, auth: Any, op: str, args: dict[str, Any],
                      context: fl.ServerCallContext | None, *, standard: bool = False
                      ) -> tuple[pa.Schema, str]: ...

__all__ = ["CATALOG", "FlightSql"]

log = logging.getLogger("ldw.flightsql")

CATALOG = "ldw"
TABLE_KINDS = {"table": "TABLE", "view": "VIEW"}  # a source's kinds -> Flight SQL types
ACTIONS = {"CreatePreparedStatement": "ActionCreatePreparedStatementRequest",
           "ClosePreparedStatement": "ActionClosePreparedStatementRequest"}
PREPARED_TTL = 3600.0  # seconds an unused prepared statement is kept
MAX_PREPARED = 256  # prepared statements one user may hold

_UTF8 = pa.utf8()
CATALOGS = pa.schema([pa.field("catalog_name", _UTF8, False)])
DB_SCHEMAS = pa.schema([pa.field("catalog_name", _UTF8), pa.field("db_schema_name", _UTF8,
                                                                  False)])
TABLES = pa.schema([pa.field("catalog_name", _UTF8), pa.field("db_schema_name", _UTF8),
                    pa.field("table_name", _UTF8, False), pa.field("table_type", _UTF8, False)])
TABLE_TYPES = pa.schema([pa.field("table_type", _UTF8, False)])
_VALUE = pa.dense_union([
    pa.field("string_value", _UTF8), pa.field("bool_value", pa.bool_()),
    pa.field("bigint_value", pa.int64()), pa.field("int32_bitmask", pa.int32()),
    pa.field("string_list", pa.list_(_UTF8)),
    pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32())))])
SQL_INFO = pa.schema([pa.field("info_name", pa.uint32(), False),
                      pa.field("value", _VALUE, False)])


def _server_facts() -> dict[int, tuple[int, Any]]:
    """SqlInfo code -> (union type code, value): 0 string, 1 bool, 3 int32."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ldw_version = version("ldw")
    except PackageNotFoundError:
        ldw_version = "unknown"
    return {0: (0, "ldw"), 1: (0, ldw_version), 2: (0, pa.__version__),
            3: (1, True),     # read-only
            4: (1, True),     # SQL
            5: (1, False),    # Substrait
            8: (3, 0),        # transactions: none
            9: (1, False),    # cancel
            504: (0, '"')}    # identifier quote


def _like(pattern: str | None) -> re.Pattern[str] | None:
    """A SQL LIKE pattern (``%``, ``_``, ``\\`` escapes) as a regular expression."""
    if pattern is None:
        return None
    out, escaped = [], False
    for char in pattern:
        if escaped:
            out.append(re.escape(char))
            escaped = False
        elif char == "\\":
            escaped = True
        else:
            out.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return re.compile("".join(out), re.DOTALL)


def _matches(value: str, pattern: re.Pattern[str] | None) -> bool:
    return pattern is None or pattern.fullmatch(value) is not None


class FlightSql:
    """The Flight SQL commands and actions of one endpoint (a :class:`TicketDesk`)."""

    def __init__(self, endpoint: TicketDesk) -> None:
        self.endpoint = endpoint
        self._prepared: dict[bytes, tuple[str, str, str, float]] = {}  # handle -> user,
        self._lock = threading.Lock()                                  # token, query, used

    # -- entry points (from FlightEndpoint) ----------------------------------------------------
    @staticmethod
    def handles(action_type: str) -> bool:
        return action_type in ACTIONS

    def flight_info(self, auth: Any, descriptor: fl.FlightDescriptor,
                    context: fl.ServerCallContext) -> fl.FlightInfo:
        """A Flight SQL command's schema and the ticket of its result."""
        command = unpack(descriptor.command or b"") \
            if descriptor.descriptor_type == fl.DescriptorType.CMD else None
        if command is None:
            raise BadRequest("ldw describes only Flight SQL commands (CommandStatementQuery, "
                             "CommandGetTables, ...); ldw's own client uses its actions")
        name, message = command
        if name == "CommandStatementQuery":
            self._no_transaction(message)
            schema, ticket = self._query(auth, message.query, context)
        elif name == "CommandPreparedStatementQuery":
            schema, ticket = self._query(auth, self._statement(
                auth, message.prepared_statement_handle), context)
        elif name in ("CommandStatementUpdate", "CommandPreparedStatementUpdate"):
            raise PolicyViolation("ldw is read-only: send a query (SELECT ...)")
        else:
            table = self._listing(auth, name, message)
            check = self.endpoint.service.stream_check(auth.user, "flightsql", [])
            ticket = self.endpoint.issue(auth, table.schema, check,
                                          lambda _call: table.to_batches())[0]
            schema = table.schema
        return fl.FlightInfo(schema, descriptor, [fl.FlightEndpoint(bytes.fromhex(ticket), [])],
                             -1, -1)

    @staticmethod
    def refuse_upload(descriptor: fl.FlightDescriptor) -> None:
        """PolicyViolation for a Flight SQL command sent with ``do_put`` (updates, bulk
        ingestion, bound parameters): ldw serves reads only."""
        if descriptor.descriptor_type == fl.DescriptorType.CMD and \
                (descriptor.command or b"").find(b"arrow.flight.protocol.sql.") >= 0:
            raise PolicyViolation("ldw is read-only over Flight SQL: no updates, ingestion or "
                                  "bound parameters; send a query (SELECT ...) with its values "
                                  "written in")

    def do_action(self, auth: Any, action: fl.Action) -> Iterator[bytes]:
        body = action.body.to_pybytes() if action.body is not None else b""
        command = unpack(body)
        if command is None or command[0] != ACTIONS[action.type]:
            raise BadRequest(f"{action.type} needs an {ACTIONS[action.type]} body")
        message = command[1]
        if action.type == "ClosePreparedStatement":
            handle = message.prepared_statement_handle
            with self._lock:
                entry = self._prepared.get(handle)
                if entry is not None and entry[0] == auth.user:
                    del self._prepared[handle]
            return iter(())
        self._no_transaction(message)
        self.endpoint.service.engine.check_user(auth.user)
        handle = self._prepare(auth, message.query)
        return iter([pack("ActionCreatePreparedStatementResult",
                          prepared_statement_handle=handle)])

    # -- queries -----------------------------------------------------------------------------------
    @staticmethod
    def _no_transaction(message: Any) -> None:
        if message.HasField("transaction_id"):
            raise BadRequest("ldw has no transactions: send the query without one")

    def _query(self, auth: Any, query: str, context: fl.ServerCallContext
               ) -> tuple[pa.Schema, str]:
        return self.endpoint.stream_ticket(auth, "sql", {"query": query}, context,
                                           standard=True)

    def _prepare(self, auth: Any, query: str) -> bytes:
        handle = secrets.token_bytes(24)
        now = time.monotonic()
        with self._lock:
            for key in [k for k, e in self._prepared.items() if now - e[3] > PREPARED_TTL]:
                del self._prepared[key]
            if sum(1 for e in self._prepared.values() if e[0] == auth.user) >= MAX_PREPARED:
                raise CapacityExceeded(f"you hold {MAX_PREPARED} prepared statements; close "
                                       "some (ClosePreparedStatement) first")
            self._prepared[handle] = (auth.user, auth.token, query, now)
        return handle

    def _statement(self, auth: Any, handle: bytes) -> str:
        with self._lock:
            entry = self._prepared.get(handle)
            if entry is None or entry[:2] != (auth.user, auth.token):
                raise BadRequest("unknown or closed prepared statement; prepare it again")
            self._prepared[handle] = (*entry[:3], time.monotonic())
        return entry[2]

    # -- listings ----------------------------------------------------------------------------------
    def _listed_sources(self, catalog: str | None) -> list[str]:
        """Source catalogs a listing covers: none unless ``[server] flight_sql_sources``."""
        service = self.endpoint.service
        if not service.engine.settings.flight_sql_sources:
            return []
        return [s["name"] for s in service.engine.sources()
                if s["name"] != CATALOG and catalog in (None, s["name"])]

    def _source_call(self, user: str, op: str, args: dict[str, Any]) -> list[Any]:
        """A listing of one source; a source that cannot answer is left out of the listing
        (logged), so one unreachable database does not hide every other catalog."""
        try:
            return self.endpoint.service.call(user, op, args)
        except (SourceUnavailable, UnknownTable, AccessDenied) as exc:
            log.warning("Flight SQL listing left out %s: %s", args.get("source"), exc)
            return []

    def _schemas(self, user: str, catalog: str | None, pattern: re.Pattern[str] | None
                 ) -> list[tuple[str, str]]:
        """(catalog, schema) pairs the user may read: dataset owners under ``ldw``, then the
        schemas of each listed source."""
        pairs = []
        if catalog in (None, CATALOG):
            owners = {r["owner"] for r in self._readable(user) if _matches(r["owner"], pattern)}
            pairs += [(CATALOG, o) for o in sorted(owners)]
        for source in self._listed_sources(catalog):
            pairs += [(source, name) for name in self._source_call(user, "schemas",
                                                                   {"source": source})
                      if _matches(name, pattern)]
        return pairs

    def _listing(self, auth: Any, name: str, message: Any) -> pa.Table:
        user = auth.user
        if name == "CommandGetSqlInfo":
            self.endpoint.service.engine.check_user(user)
            return _sql_info(list(message.info))
        if name == "CommandGetTableTypes":
            self.endpoint.service.engine.check_user(user)
            kinds = list(TABLE_KINDS.values()) if self._listed_sources(None) else ["TABLE"]
            return pa.Table.from_pylist([{"table_type": t} for t in kinds], TABLE_TYPES)
        if name == "CommandGetCatalogs":
            self.endpoint.service.engine.check_user(user)
            return pa.Table.from_pylist([{"catalog_name": c}
                                         for c in [CATALOG, *self._listed_sources(None)]],
                                        CATALOGS)
        catalog = message.catalog if message.HasField("catalog") else None
        schemas = self._schemas(user, catalog, _like(
            message.db_schema_filter_pattern if message.HasField("db_schema_filter_pattern")
            else None))
        if name == "CommandGetDbSchemas":
            return pa.Table.from_pylist([{"catalog_name": c, "db_schema_name": s}
                                         for c, s in schemas], DB_SCHEMAS)
        if name != "CommandGetTables":
            raise BadRequest(f"ldw does not answer the Flight SQL command {name}")
        pattern = _like(message.table_name_filter_pattern
                        if message.HasField("table_name_filter_pattern") else None)
        types = set(message.table_types)
        out = [row for row in self._tables(user, schemas)
               if _matches(row["table_name"], pattern)
               and (not types or row["table_type"] in types)]
        if not message.include_schema:
            return pa.Table.from_pylist([{k: r[k] for k in TABLES.names} for r in out], TABLES)
        schema = TABLES.append(pa.field("table_schema", pa.binary(), False))
        for row in out:
            row["table_schema"] = self._table_schema(user, row)
        return pa.Table.from_pylist([{k: r[k] for k in schema.names} for r in out], schema)

    def _tables(self, user: str, schemas: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Every table of ``schemas`` the user may read, as GetTables rows."""
        owners = {s for c, s in schemas if c == CATALOG}
        rows = [{"catalog_name": CATALOG, "db_schema_name": r["owner"], "table_name": r["name"],
                 "table_type": "TABLE"} for r in self._readable(user) if r["owner"] in owners]
        for catalog, schema in schemas:
            if catalog != CATALOG:
                rows += [{"catalog_name": catalog, "db_schema_name": schema,
                          "table_name": t["table"],
                          "table_type": TABLE_KINDS.get(t.get("kind", "table"), "TABLE")}
                         for t in self._source_call(user, "tables",
                                                    {"source": catalog, "schema": schema})]
        return sorted(rows, key=lambda r: (r["catalog_name"] != CATALOG, r["catalog_name"],
                                           r["db_schema_name"], r["table_name"]))

    def _readable(self, user: str) -> list[dict[str, Any]]:
        return self.endpoint.service.call(user, "datasets", {})

    def _table_schema(self, user: str, row: dict[str, Any]) -> bytes:
        """The IPC schema of a table as a query returns it (plain string/binary): a dataset's
        stored schema, or a source table's planned under the user's policy (masks applied)."""
        engine = self.endpoint.service.engine
        try:
            if row["catalog_name"] == CATALOG:
                info = self.endpoint.service.call(user, "info", {"name": row["table_name"],
                                                                 "owner": row["db_schema_name"]})
                schema = decode_schema(info["arrow_schema"])
            else:
                schema = engine.federation.sources.schema(user, f"{row['catalog_name']}."
                                              f"{row['db_schema_name']}.{row['table_name']}")
        except (UnknownDataset, UnknownTable, AccessDenied, SourceUnavailable):
            return pa.schema([]).serialize().to_pybytes()  # gone or refused since listed
        return standard_schema(schema).serialize().to_pybytes()


def _sql_info(wanted: list[int]) -> pa.Table:
    facts = _server_facts()
    codes = [c for c in (wanted or sorted(facts)) if c in facts]
    children: list[list[Any]] = [[] for _ in _VALUE]
    kinds, offsets = [], []
    for code in codes:
        kind, value = facts[code]
        kinds.append(kind)
        offsets.append(len(children[kind]))
        children[kind].append(value)
    arrays = [pa.array(values, field.type) for values, field in zip(children, _VALUE,
                                                                   strict=True)]
    value = pa.UnionArray.from_dense(pa.array(kinds, pa.int8()), pa.array(offsets, pa.int32()),
                                     arrays, [f.name for f in _VALUE])
    return pa.Table.from_arrays([pa.array(codes, pa.uint32()), value], schema=SQL_INFO)
