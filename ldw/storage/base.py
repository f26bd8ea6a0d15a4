"""The contract of a cache backend: what the engine, the service and the transports may ask of a
version store, and the pieces every store shares.

A store holds immutable dataset versions in two tiers: the memory tier (capped at
``memory_limit``, accounted batch by batch) and the disk tier (where the memory tier spills).
The engine owns the policy (what to spill, drop or recompute); a store only keeps, serves and
forgets bytes. :class:`VersionStore` names every call the rest of ldw makes, so a new backend
implements one abstract class and nothing outside :mod:`ldw.storage` needs to know which store
it talks to.
"""

from __future__ import annotations

import abc
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ldw.errors import CapacityExceeded, InvalidMapping
from ldw.types import Progress, Tier

if TYPE_CHECKING:
    from ldw.governance.masks import Mask

__all__ = ["DISK", "MAX_PARTS", "MEMORY", "Descriptors", "DirectReader", "MakeRoom",
           "MemoryBudget", "Part", "ProgressCallback", "Version", "VersionLost", "VersionStore",
           "layout_of", "new_version_id", "storage_schema", "with_layout"]

MEMORY, DISK = Tier.MEMORY, Tier.DISK

ProgressCallback = Callable[[Progress], None]
MakeRoom = Callable[[int], int]  # frees at least n bytes of the memory tier; returns how many


MAX_PARTS = 16  # files a version may be made of (and descriptors one attach hands over)

Keep = tuple[tuple[int, int], ...]  # (start, length) row ranges


@dataclass(frozen=True)
class Part:
    """One file of a version and how many rows it holds."""

    path: Path
    rows: int


@dataclass(frozen=True)
class Version:
    """A published, immutable version of a dataset.

    Usually one file (``path``). A version an incremental refresh made is several files
    (``parts``, in order; ``path`` is the first): the files of the version it continues, shared,
    and one with the new rows. ``keep`` then lists the row ranges of the parts' rows, counted
    over all parts in order, that the version holds (rows an upsert replaced are left out);
    None: all of them.
    """

    dataset: str  # "owner/name"
    version_id: str
    path: Path
    rows: int
    bytes: int
    created: float
    seconds: float
    tier: str = MEMORY
    parts: tuple[Part, ...] = ()
    keep: Keep | None = None

    @property
    def files(self) -> tuple[Part, ...]:
        """The version's files, in order (one for a version written at once)."""
        return self.parts or (Part(self.path, self.rows),)


def layout_of(version: Version) -> dict[str, Any] | None:
    """How a version is laid out over files, as JSON for the catalog (None: one file)."""
    if not version.parts and version.keep is None:
        return None
    return {"parts": [[str(p.path), p.rows] for p in version.files],
            "keep": [list(r) for r in version.keep] if version.keep is not None else None}


def with_layout(version: Version, layout: dict[str, Any] | None) -> Version:
    """``version`` laid out as :func:`layout_of` described it."""
    if not layout:
        return version
    parts = tuple(Part(Path(path), int(rows)) for path, rows in layout["parts"])
    keep = layout.get("keep")
    return replace(version, path=parts[0].path, parts=parts,
                   keep=tuple((int(s), int(n)) for s, n in keep) if keep is not None else None)


@dataclass
class Descriptors:
    """Read-only descriptors of a version's files, in order, and the row ranges of them the
    version holds (see :class:`Version`); the receiver closes them."""

    fds: list[int]
    keep: Keep | None = None

    def layout(self) -> dict[str, Any]:
        """What a receiver of the descriptors needs besides them (JSON)."""
        return {"files": len(self.fds),
                "keep": [list(r) for r in self.keep] if self.keep is not None else None}

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


class VersionLost(Exception):  # internal signal, never reaches a user
    """A published version's bytes are gone (e.g. a Ray node holding them died); the engine
    recomputes the dataset from its mapping."""


def _storage_type(arrow_type: pa.DataType) -> pa.DataType:
    if arrow_type in (pa.string(), pa.large_string()):
        return pa.string_view()
    if arrow_type in (pa.binary(), pa.large_binary()):
        return pa.binary_view()
    return arrow_type


def storage_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a version is stored with: view layouts for strings and binaries."""
    return pa.schema([f.with_type(_storage_type(f.type)) for f in schema],
                     metadata=schema.metadata)


_PLAIN = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}


def _filter(batch: pa.RecordBatch, keep: pa.Array) -> pa.RecordBatch:
    """``batch.filter(keep)``, also for view layouts (Arrow has no take kernel for them):
    through polars, whose strings are views (5x faster than casting), else by casting."""
    if not any(t in _PLAIN for t in batch.schema.types):
        return batch.filter(keep)
    try:
        import polars as pl

        frame = pl.from_arrow(batch).filter(pl.Series(keep))
        out = frame.to_arrow(compat_level=pl.CompatLevel.newest())
        batches = out.cast(batch.schema).to_batches()
        if len(batches) == 1:
            return batches[0]
    except Exception:  # a type polars does not carry exactly: Arrow's own way below
        pass
    columns = []
    for column in batch.columns:
        plain = _PLAIN.get(column.type)
        if plain is None:
            columns.append(column.filter(keep))
        else:
            columns.append(column.cast(plain).filter(keep).cast(column.type))
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def new_version_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


class MemoryBudget:
    """The memory tier's byte count against ``memory_limit``, reserved batch by batch while a
    version streams in. When a batch would cross the limit, the owner's ``make_room`` is asked
    to free space (spill or drop other versions); if it cannot, ``CapacityExceeded``."""

    def __init__(self, limit: int, used: int = 0) -> None:
        self.limit = limit
        self._used = used
        self._lock = threading.Lock()

    def used(self) -> int:
        with self._lock:
            return self._used

    def reserve(self, nbytes: int, make_room: MakeRoom | None, dataset: str, *,
                written: int) -> None:
        """Count ``nbytes`` more of ``dataset`` (``written`` of it counted already)."""
        with self._lock:
            over = self._used + nbytes - self.limit
            if over <= 0:
                self._used += nbytes
                return
        # spilling others cannot help a version larger than the whole memory tier
        if make_room is not None and written + nbytes <= self.limit:
            make_room(over)
        with self._lock:
            if self._used + nbytes <= self.limit:
                self._used += nbytes
                return
            left = max(self.limit - self._used, 0)
        raise CapacityExceeded(
            f"dataset {dataset!r} does not fit: {left / 2**20:.0f} MiB of memory_limit "
            f"({self.limit / 2**30:.2f} GiB) is free and every other cached version is "
            "pinned or in use; evict or unpin datasets, map fewer columns or rows, or raise "
            "memory_limit")

    def add(self, nbytes: int) -> None:
        """Count ``nbytes`` without a check (e.g. file framing beyond the reserved batches)."""
        with self._lock:
            self._used += nbytes

    def release(self, nbytes: int) -> None:
        self.add(-nbytes)

    def reset(self, used: int) -> None:
        """Start over from a fresh count of what the tier holds."""
        with self._lock:
            self._used = used


class VersionStore(abc.ABC):
    """A cache backend: versions in a memory tier and a disk tier.

    ``roots`` are the tiers' folders on the server (removed by an ephemeral engine on close);
    ``distributed`` says partitioned reads run where the data lands (:meth:`write_partitions`);
    ``address`` is the cluster a client may read versions from directly (:meth:`ticket`), or
    None.
    """

    distributed: bool = False
    address: str | None = None
    roots: dict[Tier, Path]
    budget: MemoryBudget

    @property
    def memory_limit(self) -> int:
        return self.budget.limit

    def used_bytes(self) -> int:
        """Bytes the memory tier holds now."""
        return self.budget.used()

    # -- writing --------------------------------------------------------------------------------
    @abc.abstractmethod
    def write(self, dataset: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *,
              progress: ProgressCallback | None = None,
              make_room: MakeRoom | None = None) -> Version:
        """Stream ``batches`` into a new memory-tier version; publish it only if all arrived."""

    def extend(self, base: Version, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *,
               replace_key: str | None = None, replaced: pa.Array | None = None,
               progress: ProgressCallback | None = None,
               make_room: MakeRoom | None = None) -> Version:
        """A new version of ``base``'s dataset: ``base``'s rows, read from this store (never
        from the source again), followed by ``batches``. With ``replace_key``, rows of
        ``base`` whose value of that column appears in ``batches`` are left out (an upsert:
        the new rows replace them); ``replaced`` may give their positions in ``base``'s table
        when the caller found them already. ``base`` itself is untouched; readers keep it.

        This implementation copies ``base``'s rows into the new version (the Ray store's way:
        its objects are written once); the local store shares ``base``'s files instead."""
        import pyarrow.compute as pc

        old = self.open_table(base)
        increment: Iterable[pa.RecordBatch] = batches
        keys = None
        if replace_key is not None:  # the new keys first: old rows are filtered by them
            increment = list(batches)
        if replace_key is not None and increment:
            keys = pa.chunked_array([b.column(replace_key) for b in increment],
                                    type=increment[0].schema.field(replace_key).type
                                    ).combine_chunks().cast(old.schema.field(replace_key).type)

        def rows() -> Iterable[pa.RecordBatch]:
            for batch in old.to_batches():
                if keys is not None:  # filter: fresh buffers, replaced rows not kept inside
                    batch = _filter(batch, pc.invert(pc.is_in(batch.column(replace_key),
                                                              value_set=keys)))
                yield batch
            yield from increment

        return self.write(base.dataset, schema, rows(), progress=progress, make_room=make_room)

    def compact(self, version: Version, *, cancel: threading.Event | None = None
                ) -> Version | None:
        """The same version (same id, rows and order) in fewer files, written next to it, when
        it is made of many or holds rows left out; None when there is nothing to gain. The
        caller publishes it in place of ``version`` and deletes ``version``, whose files stay
        readable meanwhile. A store whose versions are never several files has nothing to do."""
        return None

    def write_partitions(self, dataset: str, connector: Any, plan: Any, snapshot: Any,
                         schema: pa.Schema, *, masks: Mapping[str, Mask],
                         mask_key: bytes | None,
                         progress: ProgressCallback | None = None,
                         make_room: MakeRoom | None = None,
                         cancel: threading.Event | None = None) -> Version:
        """Run every partition query of ``plan`` where the data lands, each on a connection of
        its own importing ``snapshot``, with the Arrow-side ``masks`` applied; only a
        ``distributed`` store can."""
        raise NotImplementedError(f"{type(self).__name__} reads partitions in the server; "
                                  "call write() (the store is not distributed)")

    @abc.abstractmethod
    def check_memory_only(self, dataset: str) -> None:
        """Refuse (``PolicyViolation``) a memory-only dataset this store would put on disk."""

    # -- tiers and lifecycle --------------------------------------------------------------------
    @abc.abstractmethod
    def spill(self, version: Version) -> Version:
        """Move a memory-tier version to the disk tier; open readers keep what they hold."""

    @abc.abstractmethod
    def adopt(self, version: Version) -> bool:
        """Count a version that survived a restart if its bytes are whole and ours."""

    @abc.abstractmethod
    def delete(self, version: Version) -> None:
        """Drop a version (readers holding it keep their copy or mapping)."""

    @abc.abstractmethod
    def forget(self, version: Version) -> None:
        """Drop a version whose bytes were lost (whatever is left of them)."""

    @abc.abstractmethod
    def files(self, tier: str) -> list[Path]:
        """Every version of a tier, published or not, by path (recovery decides what they are)."""

    @abc.abstractmethod
    def remove_orphan(self, path: Path) -> None:
        """Remove a version (from :meth:`files`) that no dataset points at."""

    @abc.abstractmethod
    def close(self) -> None:
        """Let go of the tiers; the versions stay for the next owner unless ephemeral."""

    # -- reading --------------------------------------------------------------------------------
    @abc.abstractmethod
    def open_table(self, version: Version) -> pa.Table:
        """The version as a table, without a copy where the store can."""

    @abc.abstractmethod
    def open_readonly(self, version: Version) -> Descriptors:
        """Read-only descriptors of the version's Arrow IPC files, for a local client to map
        (the caller closes them)."""

    def ticket(self, version: Version) -> dict[str, Any]:
        """A single-use ticket for a client at :attr:`address` to read ``version`` straight
        from the store (see :func:`ldw.storage.direct_reader`); only a store with an address."""
        raise InvalidMapping(f"this server's cache cannot hand out {version.dataset} directly; "
                             "attach it through the server")


class DirectReader(abc.ABC):
    """The client side of :meth:`VersionStore.ticket`: reads a version straight from the store
    when this process can (e.g. it is a driver of the cluster that holds it)."""

    @abc.abstractmethod
    def attach(self, ref: dict[str, Any], progress: ProgressCallback | None
               ) -> tuple[dict[str, Any], pa.Table] | None:
        """The attach info and the table, or None: read it through the server instead."""
