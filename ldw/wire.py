"""What crosses a process boundary: JSON frames, schemas, progress events and errors.

No pickle anywhere: requests and results are JSON, schemas and data are Arrow IPC. An error
travels as its ``ldw.errors`` class name and message and is raised again on the client side
as the same class; anything else becomes a plain ``LdwError`` (details stay in the server log).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
from typing import Any

import pyarrow as pa

from ldw import errors
from ldw.types import Progress, SchemaField

__all__ = ["MAX_REQUEST", "STREAM_ERROR", "decode_error", "decode_schema", "decode_value",
           "encode_error", "encode_schema", "encode_value", "error_bytes", "error_from_bytes",
           "final_result", "frame", "progress_from_json", "progress_to_json", "readable_schema"]

MAX_REQUEST = 1 << 20  # bytes of one JSON request; larger ones are refused unread
STREAM_ERROR = "ldw_error"  # batch metadata key: the stream failed with this (JSON) error


def frame(obj: Any) -> bytes:
    """One newline-terminated JSON frame."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def encode_table(table: pa.Table) -> str:
    """A small table (a few rows) as base64 Arrow IPC, to travel inside a JSON answer."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return base64.b64encode(sink.getvalue().to_pybytes()).decode()


def decode_table(text: str) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(base64.b64decode(text))).read_all()


def readable_schema(schema: pa.Schema) -> list[SchemaField]:
    """A schema as people and JSON tools read it: one ``{name, type, nullable}`` per field."""
    return [{"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in schema]


def progress_to_json(progress: Progress) -> dict[str, Any]:
    return {"dataset": progress.dataset, "rows": progress.rows, "bytes": progress.bytes,
            "seconds": progress.seconds, "done": progress.done,
            "total_rows": progress.total_rows}


def progress_from_json(data: dict[str, Any]) -> Progress:
    total = data.get("total_rows")
    return Progress(str(data["dataset"]), int(data["rows"]), int(data["bytes"]),
                    float(data["seconds"]), bool(data["done"]),
                    int(total) if isinstance(total, int) else None)


def final_result(messages: Any, progress: Any = None) -> Any:
    """Consume response frames: report progress frames, then return the final result or raise
    its error. ``messages`` is any iterable of decoded frames."""
    for message in messages:
        if "progress" in message:
            if progress is not None:
                progress(progress_from_json(message["progress"]))
            continue
        if not message.get("ok"):
            raise decode_error(message.get("error", {}))
        return message.get("result")
    raise errors.ServerUnavailable("the ldw server ended the call without a result")


def encode_error(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, errors.LdwError):
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": "LdwError", "message": "internal server error; see the server log"}


def decode_error(data: dict[str, Any]) -> errors.LdwError:
    """The error a JSON error detail names, as its own ldw class (else a plain LdwError)."""
    name = str(data.get("type", "LdwError"))
    cls = getattr(errors, name, None) if name in errors.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, errors.LdwError)):
        cls = errors.LdwError
    return cls(str(data.get("message", "")))


def error_bytes(exc: BaseException) -> bytes:
    """An error's detail as it travels outside a JSON frame: in a stream's batch metadata
    (Unix socket) or a Flight error's ``extra_info``."""
    return json.dumps(encode_error(exc), separators=(",", ":")).encode()


def error_from_bytes(raw: bytes | str | None) -> errors.LdwError | None:
    """The error :func:`error_bytes` wrote, or None if ``raw`` is not such a detail; the one
    decoder of error details that arrive outside a frame, for both transports."""
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    return decode_error(data) if isinstance(data, dict) and "type" in data else None


def encode_value(value: Any) -> Any:
    """A bound parameter as JSON: dates, times and decimals keep their type in a tagged form."""
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, dt.time):
        return {"$time": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    return value


def decode_value(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        (tag, text), = value.items()
        kinds = {"$datetime": dt.datetime.fromisoformat, "$date": dt.date.fromisoformat,
                 "$time": dt.time.fromisoformat, "$decimal": decimal.Decimal}
        if tag in kinds and isinstance(text, str):
            try:
                return kinds[tag](text)
            except (ValueError, ArithmeticError):
                raise errors.BadRequest(f"parameter value {text!r} is not a valid "
                                            f"{tag[1:]}") from None
    return value
