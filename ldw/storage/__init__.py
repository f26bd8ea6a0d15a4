"""ldw's cache backends behind one contract (:class:`VersionStore`).

:func:`make_store` builds the store a server's settings ask for: the local store (Arrow files
in shared memory and on disk, :mod:`ldw.storage.local`) or the Ray store (``backend = "ray"``,
Ray's object store, the optional ``ray`` extra, :mod:`ldw.storage.ray_store`).
:func:`direct_reader` is the client side: a way to read a version straight from the store when
the client's process can. Nothing outside this package needs to know which backend it talks to.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldw.storage.base import (
    DISK,
    MAX_PARTS,
    MEMORY,
    Descriptors,
    DirectReader,
    MemoryBudget,
    Version,
    VersionLost,
    VersionStore,
    layout_of,
    storage_schema,
    with_layout,
)
from ldw.storage.local import Store, open_fd, open_fds

if TYPE_CHECKING:
    import pyarrow as pa

    from ldw.config import Settings
    from ldw.storage.base import ProgressCallback

__all__ = ["DISK", "MAX_PARTS", "MEMORY", "Descriptors", "DirectReader", "MemoryBudget", "Store",
           "Version", "VersionLost", "VersionStore", "direct_reader", "layout_of", "make_store",
           "open_fd", "open_fds", "storage_schema", "with_layout"]


def make_store(settings: Settings, memory_root: Path, disk_root: Path, *,
               ephemeral: bool = False) -> VersionStore:
    """The version store of ``settings.backend``, its tiers under ``memory_root`` and
    ``disk_root``; ``ephemeral`` (an in-process engine) keeps its versions private to it."""
    if settings.backend == "ray":
        from ldw.storage.ray_store import RayStore  # the optional ``ray`` extra

        # one holder actor per server identity (its catalog); a private one in-process
        key = f"inproc-{uuid.uuid4().hex}" if ephemeral else settings.catalog
        return RayStore(settings, disk_root, key=key, ephemeral=ephemeral)
    return Store(memory_root, disk_root, memory_limit=settings.memory_limit)


class _OnceRayIsLoaded(DirectReader):
    """Reads through the Ray store's own path only in a process that has imported Ray (a
    driver of a cluster); elsewhere it costs one dictionary lookup per attach."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self._call = call
        self._reader: DirectReader | None = None

    def attach(self, ref: dict[str, Any], progress: ProgressCallback | None
               ) -> tuple[dict[str, Any], pa.Table] | None:
        if "ray" not in sys.modules:
            return None
        if self._reader is None:
            from ldw.storage.ray_reader import RayReader

            self._reader = RayReader(self._call)
        return self._reader.attach(ref, progress)


def direct_reader(call: Callable[..., Any]) -> DirectReader:
    """The client's way to read versions straight from the server's store, bypassing the
    descriptor the server hands out; ``call`` is the client's ``call(op, args, progress=)``.
    Its ``attach`` returns None when this process cannot (then attach through the server)."""
    return _OnceRayIsLoaded(call)
