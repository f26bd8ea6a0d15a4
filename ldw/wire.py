"""What crosses a process boundary: JSON frames, schemas, progress events and errors.

No pickle anywhere: requests and results are JSON, schemas and data are Arrow IPC. An error
travels as its ``ldw.errors`` class name and message and is raised again on the client side
as the same class; anything else becomes a plain ``LdwError`` (details stay in the server log).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pyarrow as pa

from ldw import errors
from ldw.store import Progress

__all__ = ["MAX_REQUEST", "decode_error", "decode_schema", "encode_error", "encode_schema",
           "frame", "progress_from_json", "progress_to_json"]

MAX_REQUEST = 1 << 20  # bytes of one JSON request; larger ones are refused unread


def frame(obj: Any) -> bytes:
    """One newline-terminated JSON frame."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def encode_schema(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def decode_schema(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def progress_to_json(progress: Progress) -> dict[str, Any]:
    return {"dataset": progress.dataset, "rows": progress.rows, "bytes": progress.bytes,
            "seconds": progress.seconds, "done": progress.done}


def progress_from_json(data: dict[str, Any]) -> Progress:
    return Progress(str(data["dataset"]), int(data["rows"]), int(data["bytes"]),
                    float(data["seconds"]), bool(data["done"]))


def encode_error(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, errors.LdwError):
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": "LdwError", "message": "internal server error; see the server log"}


def decode_error(data: dict[str, Any]) -> errors.LdwError:
    name = str(data.get("type", "LdwError"))
    cls = getattr(errors, name, None) if name in errors.__all__ else None
    if not (isinstance(cls, type) and issubclass(cls, errors.LdwError)):
        cls = errors.LdwError
    return cls(str(data.get("message", "")))
