"""The Ray backend's client side: a process that is a Ray driver of the server's cluster reads
versions straight from its node's object store (zero-copy), on a single-use ticket the server
issued after checking access (the ``ray_attach`` operation).

Importing this module does not import Ray: a client uses it only once its process has joined
a cluster itself (``ray.init(address=...)``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa

import ldw.errors as errors
from ldw.storage.base import DirectReader, ProgressCallback

__all__ = ["RayReader", "read_ticket"]


def read_ticket(ticket: dict[str, Any]) -> pa.Table:
    """For a client inside the cluster: redeem a ticket from the server's ``ray_attach``
    operation at the holder and map the version from this node's object store.

    The process must be a Ray driver of the same cluster (``ray.init(address=...)``).
    """
    from ldw.storage.ray_common import GET_TIMEOUT, NAMESPACE, require_ray, table_from_refs

    ray = require_ray()
    if not ray.is_initialized():
        ray.init(address=ticket["address"], namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)
    holder = ray.get_actor(ticket["actor"], namespace=NAMESPACE)
    refs = ray.get(holder.redeem.remote(ticket["ticket"]), timeout=GET_TIMEOUT)
    if refs is None:
        raise errors.AccessDenied("unknown, used or expired ticket; attach again")
    return table_from_refs(refs)


class RayReader(DirectReader):
    """Attach through a ticket when this process is a Ray driver of the cluster that holds the
    server's versions (backend = "ray"); ``call`` is the client's ``call(op, args, progress=)``.
    """

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call
        self._address: str | None = None  # the server's Ray cluster ("" if none), asked once

    def _in_servers_cluster(self) -> bool:
        ray = sys.modules.get("ray")  # never imported here: only a process that joined one
        if ray is None or not ray.is_initialized():
            return False
        if self._address is None:
            status = self._call("status")
            self._address = status.get("ray_address") or ""
        return bool(self._address) and \
            ray.get_runtime_context().gcs_address == self._address

    def attach(self, ref: dict[str, Any], progress: ProgressCallback | None
               ) -> tuple[dict[str, Any], pa.Table] | None:
        if not self._in_servers_cluster():
            return None
        info = self._call("ray_attach", dict(ref), progress=progress)
        if info.get("ticket") is None:  # spilled to the server's disk: attach through the server
            return None
        return info, read_ticket(info.pop("ticket"))
