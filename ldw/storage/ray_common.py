"""What every process of the Ray backend shares: the ``ray`` module (an optional extra), the
holder's name and namespace, and a version's object format (one Arrow IPC stream per object).

See :mod:`ldw.storage.ray_store` for how the backend works as a whole.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from ldw.errors import ConfigError

try:
    import ray
    import ray.exceptions
except ImportError:  # the ``ray`` extra is not installed
    ray = None

__all__ = ["GET_TIMEOUT", "NAMESPACE", "actor_name", "ipc_payload", "lost_errors", "require_ray",
           "table_from_refs"]

NAMESPACE = "ldw"
GET_TIMEOUT = 120.0  # seconds a read of a version may wait for the cluster


def require_ray() -> Any:
    """The ``ray`` module, or a ConfigError saying how to install it."""
    if ray is None:
        raise ConfigError("backend = 'ray' needs Ray, which is not installed; "
                          "install it with pip install 'ldw[ray]'")
    return ray


def actor_name(key: str) -> str:
    """The holder's name for a server identity (its catalog URL) or an ephemeral engine."""
    return "ldw-store-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def lost_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for objects gone with their node or owner."""
    return (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError,
            ray.exceptions.ObjectFetchTimedOutError, ray.exceptions.RayActorError)


def ipc_payload(batch: pa.RecordBatch) -> np.ndarray:
    """One batch as Arrow IPC stream bytes (a uint8 array: Ray stores it as raw bytes)."""
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return np.frombuffer(sink.getvalue(), dtype=np.uint8)


def table_from_refs(refs: list) -> pa.Table:
    """``ray.get`` every object (zero-copy on the node that holds it) and read the IPC bytes
    (every version has at least one object, so the schema is always there)."""
    return pa.concat_tables([ipc.open_stream(pa.py_buffer(payload)).read_all()
                             for payload in ray.get(refs, timeout=GET_TIMEOUT)])
