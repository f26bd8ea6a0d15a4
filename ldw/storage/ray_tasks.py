"""The Ray backend's partition reads: code that runs in Ray worker processes, and the specs the
server sends them.

Each task opens its own connection, imports the read's exported snapshot, applies the
keyed-hash masks and yields every batch as (sizes, IPC bytes): the server only sees the sizes.
Errors cross back as an ldw class name and a message, never a traceback.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

import ldw.errors as errors
from ldw.config import SourceConfig
from ldw.errors import LdwError
from ldw.governance.masks import Mask, mask_batch
from ldw.secrets import Secret, redact
from ldw.storage.base import storage_schema
from ldw.storage.ray_common import ipc_payload, ray

__all__ = ["TaskSource", "at_least_one", "error_info", "mask_and_store", "raise_error",
           "read_partition", "task_specs", "warm"]


class _TokenSnapshot:
    """Stands in for the server's snapshot connection: only its exported snapshot id travels."""

    def __init__(self, token: str | None) -> None:
        self.info = {"ldw_snapshot": token} if token else {}


@dataclass(frozen=True)
class TaskSource(SourceConfig):
    """A source config whose password was resolved by the server (tasks cannot read its env)."""

    revealed: str | None = None

    def password(self) -> Secret | None:
        return Secret(self.revealed) if self.revealed is not None else None

    def __reduce__(self):  # plain fields only; the password is no Secret while it travels
        return (TaskSource, (self.name, self.url, None, None, dict(self.options),
                             self.revealed))


def task_specs(connector: Any, plan: Any, token: str | None, schema: pa.Schema,
               masks: Mapping[str, Mask], mask_key: bytes | None) -> list[dict[str, Any]]:
    """One task per partition query; the source's password is resolved here, once."""
    source = connector.source
    secret = source.password()
    travelling = TaskSource(source.name, source.url, None, None, dict(source.options),
                            secret.reveal() if secret is not None else None)
    masks = {name: mask for name, mask in masks.items() if mask.applied_in_arrow}
    return [{"source": travelling, "batch_rows": connector.batch_rows, "sql": query.sql,
             "columns": plan.columns, "tables": plan.tables, "tag": plan.tag,
             "token": token, "schema": storage_schema(schema), "masks": masks,
             "mask_key": mask_key if masks else None} for query in plan.queries]


def at_least_one(batches: Iterable[pa.RecordBatch], schema: pa.Schema
                 ) -> Iterator[pa.RecordBatch]:
    """The batches, or one empty batch when there are none (it carries the schema)."""
    empty = True
    for batch in batches:
        empty = False
        yield batch
    if empty:
        yield pa.RecordBatch.from_pylist([], schema=schema)


def mask_and_store(batch: pa.RecordBatch, stored: pa.Schema, masks: Mapping[str, Mask],
                   key: bytes | None) -> pa.RecordBatch:
    """Apply the Arrow-side masks, then cast to the stored schema."""
    batch = mask_batch(batch, masks, key)
    if batch.schema != stored:
        batch = batch.cast(stored)
    return batch


def read_partition(spec: dict[str, Any]) -> Iterator[Any]:
    """A Ray task: read one partition on a connection of its own; yield (meta, payload) pairs."""
    from ldw.connectors import ReadPlan, SourceQuery, connector_for

    connector = connector_for(spec["source"], batch_rows=spec["batch_rows"])
    plan = ReadPlan([SourceQuery(spec["sql"])], spec["columns"], spec["tables"], spec["tag"])
    node = ray.get_runtime_context().get_node_id()
    cancel = threading.Event()
    batches = connector.stream(plan, cancel, _TokenSnapshot(spec["token"]))
    try:
        for batch in batches:
            batch = mask_and_store(batch, spec["schema"], spec["masks"], spec["mask_key"])
            payload = ipc_payload(batch)
            yield {"rows": batch.num_rows, "bytes": int(payload.nbytes), "node": node}
            yield payload
    finally:
        cancel.set()
        batches.close()
        connector.close()


def warm() -> str:
    """A no-op task that starts a worker process and imports the connectors, so the first
    partition read does not pay for it (Ray reuses the holder's worker processes)."""
    import ldw.connectors  # noqa: F401

    return ray.get_runtime_context().get_node_id()


def error_info(exc: BaseException) -> dict[str, str]:
    """An error crossing from the cluster: its ldw class name and message (never a traceback)."""
    cause = exc
    if ray is not None and isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
    if isinstance(cause, LdwError):
        return {"type": type(cause).__name__, "message": str(cause)}
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return {"type": "SourceError", "message": redact(
        f"a partition read failed in the Ray cluster: {type(cause).__name__}: {first}")}


def raise_error(info: dict[str, str]) -> None:
    """Raise the ldw error :func:`error_info` described (a SourceError if unknown)."""
    cls = getattr(errors, info.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, LdwError)):
        cls = errors.SourceError
    raise cls(info.get("message", "a read in the Ray cluster failed"))
