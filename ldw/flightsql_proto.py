"""The few Flight SQL protobuf messages ldw's Flight SQL service reads and writes.

Flight SQL carries its commands as a ``google.protobuf.Any`` in a ``FlightDescriptor``'s ``cmd``
(or an action's body), each a message of ``arrow.flight.protocol.sql`` (Apache Arrow's
``format/FlightSql.proto``). pyarrow ships no Flight SQL server, so the messages ldw needs are
declared here with the ``protobuf`` runtime's descriptor API, field for field as in that file,
in a private descriptor pool (no clash with another library that declares them too).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory

__all__ = ["MESSAGES", "pack", "unpack"]

PACKAGE = "arrow.flight.protocol.sql"

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BYTES, _BOOL, _UINT32 = _F.TYPE_STRING, _F.TYPE_BYTES, _F.TYPE_BOOL, _F.TYPE_UINT32
_ONE, _MANY = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# name -> [(field, number, type, label)], as in FlightSql.proto
_FIELDS: dict[str, list[tuple[str, int, int, int]]] = {
    "CommandGetSqlInfo": [("info", 1, _UINT32, _MANY)],
    "CommandGetCatalogs": [],
    "CommandGetDbSchemas": [("catalog", 1, _STRING, _ONE),
                            ("db_schema_filter_pattern", 2, _STRING, _ONE)],
    "CommandGetTables": [("catalog", 1, _STRING, _ONE),
                         ("db_schema_filter_pattern", 2, _STRING, _ONE),
                         ("table_name_filter_pattern", 3, _STRING, _ONE),
                         ("table_types", 4, _STRING, _MANY),
                         ("include_schema", 5, _BOOL, _ONE)],
    "CommandGetTableTypes": [],
    "CommandStatementQuery": [("query", 1, _STRING, _ONE), ("transaction_id", 2, _BYTES, _ONE)],
    "CommandPreparedStatementQuery": [("prepared_statement_handle", 1, _BYTES, _ONE)],
    "CommandStatementUpdate": [("query", 1, _STRING, _ONE),
                               ("transaction_id", 2, _BYTES, _ONE)],
    "CommandPreparedStatementUpdate": [("prepared_statement_handle", 1, _BYTES, _ONE)],
    "TicketStatementQuery": [("statement_handle", 1, _BYTES, _ONE)],
    "ActionCreatePreparedStatementRequest": [("query", 1, _STRING, _ONE),
                                             ("transaction_id", 2, _BYTES, _ONE)],
    "ActionCreatePreparedStatementResult": [("prepared_statement_handle", 1, _BYTES, _ONE),
                                            ("dataset_schema", 2, _BYTES, _ONE),
                                            ("parameter_schema", 3, _BYTES, _ONE)],
    "ActionClosePreparedStatementRequest": [("prepared_statement_handle", 1, _BYTES, _ONE)],
}


def _build() -> dict[str, type]:
    # proto2 syntax: the same wire format, and optional fields keep their presence
    file = descriptor_pb2.FileDescriptorProto(name="ldw/flightsql.proto", package=PACKAGE,
                                              syntax="proto2")
    for name, fields in _FIELDS.items():
        message = file.message_type.add(name=name)
        for field, number, kind, label in fields:
            message.field.add(name=field, number=number, type=kind, label=label)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"{PACKAGE}.{name}")) for name in _FIELDS}


MESSAGES = _build()


def pack(name: str, **fields: Any) -> bytes:
    """``name`` with ``fields`` as a serialized ``google.protobuf.Any``."""
    wrapper = any_pb2.Any()
    wrapper.Pack(MESSAGES[name](**fields))
    return wrapper.SerializeToString()


def unpack(data: bytes) -> tuple[str, Any] | None:
    """(message name, message) of a serialized ``Any`` holding one of :data:`MESSAGES`; None
    if ``data`` is not such an ``Any`` (garbage, another package, an unknown command)."""
    wrapper = any_pb2.Any()
    try:
        wrapper.ParseFromString(data)
    except Exception:  # protobuf's DecodeError and friends: not an Any
        return None
    prefix = f"type.googleapis.com/{PACKAGE}."
    name = wrapper.type_url.removeprefix(prefix)
    if not wrapper.type_url.startswith(prefix) or name not in MESSAGES:
        return None
    message = MESSAGES[name]()
    try:
        message.ParseFromString(wrapper.value)
    except Exception:
        return None
    return name, message
