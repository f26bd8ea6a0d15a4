"""Immutable dataset versions as Arrow IPC files in a shared-memory directory.

A version is written under a temporary name while batches stream in and published by rename, so
no reader ever sees half a version. Strings are stored as ``string_view``, the layout polars reads
without conversion; opening a version memory-maps it (no copy of the table's bytes).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from ldw.errors import CapacityExceeded

__all__ = ["Progress", "Store", "Version", "storage_schema"]


@dataclass(frozen=True)
class Progress:
    """What a running materialization reports after each batch."""

    dataset: str
    rows: int
    bytes: int
    seconds: float
    done: bool = False

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Version:
    """A published, immutable version of a dataset."""

    dataset: str
    version_id: str
    path: Path
    rows: int
    bytes: int
    created: float
    seconds: float


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


class Store:
    """Versions under ``root/<dataset>/<version>.arrow``, private to the owning user."""

    def __init__(self, root: Path, *, memory_limit: int) -> None:
        self.root = Path(root)
        self.memory_limit = memory_limit
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*/*.arrow"))

    def write(self, dataset: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *,
              progress: Callable[[Progress], None] | None = None,
              reserved: int = 0) -> Version:
        """Stream ``batches`` into a new version; publish it only if every batch arrived."""
        folder = self.root / dataset
        folder.mkdir(exist_ok=True, mode=0o700)
        version_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        temp = folder / f".tmp-{version_id}.arrow"
        final = folder / f"{version_id}.arrow"
        stored = storage_schema(schema)
        budget = self.memory_limit - self.used_bytes() - reserved
        started = time.perf_counter()
        rows = nbytes = 0
        try:
            with pa.OSFile(str(temp), "wb") as sink, ipc.new_file(sink, stored) as writer:
                for batch in batches:
                    if batch.schema != stored:
                        batch = batch.cast(stored)
                    nbytes += batch.nbytes
                    if nbytes > budget:
                        raise CapacityExceeded(
                            f"dataset {dataset!r} needs more than the {budget / 2**20:.0f} MiB "
                            f"left of memory_limit ({self.memory_limit / 2**30:.1f} GiB); "
                            "evict datasets, map fewer columns or rows, or raise memory_limit"
                        )
                    writer.write_batch(batch)
                    rows += batch.num_rows
                    if progress:
                        progress(Progress(dataset, rows, nbytes, time.perf_counter() - started))
            os.chmod(temp, 0o600)
            os.rename(temp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        seconds = time.perf_counter() - started
        if progress:
            progress(Progress(dataset, rows, nbytes, seconds, done=True))
        return Version(dataset, version_id, final, rows, final.stat().st_size, time.time(),
                       seconds)

    @staticmethod
    def open(version: Version) -> pa.Table:
        """Memory-map a version: the returned table's buffers are the file's pages."""
        source = pa.memory_map(str(version.path), "r")
        return ipc.open_file(source).read_all()

    @staticmethod
    def delete(version: Version) -> None:
        with contextlib.suppress(FileNotFoundError):
            version.path.unlink()
