"""Immutable dataset versions as Arrow IPC files: a memory tier (shared memory) and a disk tier.

A version is written under a temporary name while batches stream in and published by rename, so
no reader ever sees half a version. Folders are 0700 and files 0600 from their first byte; a
version is only ever opened without following links and served only if it is still the very
file (device and inode) that was published, so a swapped file is refused, never handed out.
Each tier's root is locked by the store that owns it: a second server refuses it.
Strings are stored as ``string_view``, the layout polars reads
without conversion; opening a version memory-maps it (no copy of the table's bytes), and a reader
keeps its mapping when the file is later spilled, replaced or deleted.

The memory tier's byte cap is enforced per batch while streaming: when a batch would cross it,
the store asks its owner to make room (spill or drop other versions) and fails with
``CapacityExceeded`` if it cannot.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import shutil
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from ldw.errors import LdwError
from ldw.governance.trust import DirLock, create_private, private_dir
from ldw.storage.align import DecimalAligner
from ldw.storage.base import (
    DISK,
    MEMORY,
    MakeRoom,
    MemoryBudget,
    ProgressCallback,
    Version,
    VersionStore,
    new_version_id,
    storage_schema,
)
from ldw.types import Progress

__all__ = ["Store", "open_fd"]

log = logging.getLogger("ldw.store")


def open_fd(fd: int) -> pa.Table:
    """Memory-map an open version file (e.g. a descriptor received from the server)."""
    mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    return ipc.open_file(pa.BufferReader(pa.py_buffer(mapped))).read_all()


class Store(VersionStore):
    """Versions under ``<tier root>/<owner>/<name>/<version>.arrow``, private to the server user.

    ``make_room(nbytes)`` is the owner's policy for a full memory tier: it frees at least
    ``nbytes`` (spilling or dropping versions other than the one being written) and returns
    how many bytes it freed.
    """

    def __init__(self, memory_root: Path, disk_root: Path, *, memory_limit: int) -> None:
        self.roots = {MEMORY: Path(memory_root), DISK: Path(disk_root)}
        self._locks: list[DirLock] = []
        try:
            for tier, what in ((MEMORY, "shm_dir"), (DISK, "spill_dir")):
                root = self.roots[tier] = private_dir(self.roots[tier], what)
                if all(lock.folder != root for lock in self._locks):
                    self._locks.append(DirLock(root, what))
        except BaseException:
            self._unlock()
            raise
        self._lock = threading.Lock()
        self.budget = MemoryBudget(memory_limit, sum(p.stat().st_size
                                                     for p in self.files(MEMORY)))
        self._mapped: dict[Path, pa.Table] = {}  # see open_table
        self._published: dict[Path, tuple[int, int]] = {}  # path -> (st_dev, st_ino)

    def _unlock(self) -> None:
        for lock in self._locks:
            lock.release()
        self._locks.clear()

    def _folder(self, tier: str, dataset: str) -> Path:
        """``<root>/<owner>/<name>``, each level created 0700 (never through a link)."""
        folder = self.roots[tier]
        for part in dataset.split("/"):
            folder = folder / part
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
            info = os.lstat(folder)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                raise LdwError(f"{folder} is not a folder of the ldw server's user; remove it")
        return folder

    def _create(self, path: Path) -> tuple[int, int]:
        """Create ``path`` 0600 before a byte is written; (device, inode) of the new file."""
        fd = create_private(path)
        try:
            info = os.fstat(fd)
        finally:
            os.close(fd)
        return info.st_dev, info.st_ino

    def files(self, tier: str) -> list[Path]:
        """Every file of a tier, published or not (recovery decides what they are)."""
        return [p for p in self.roots[tier].glob("*/*/*") if p.is_file()]

    def write(self, dataset: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *,
              progress: ProgressCallback | None = None,
              make_room: MakeRoom | None = None,
              version_id: str | None = None) -> Version:
        """Stream ``batches`` into a new memory-tier version; publish it only if all arrived."""
        folder = self._folder(MEMORY, dataset)
        version_id = version_id or new_version_id()
        temp = folder / f".tmp-{version_id}.arrow"
        final = folder / f"{version_id}.arrow"
        stored = storage_schema(schema)
        started = time.perf_counter()
        rows = reserved = 0
        try:
            identity = self._create(temp)
            with pa.OSFile(str(temp), "wb") as sink, ipc.new_file(sink, stored) as writer:
                aligner = DecimalAligner(sink, stored)  # decimals zero-copy into polars
                for batch in batches:
                    if batch.schema != stored:
                        batch = batch.cast(stored)
                    self.budget.reserve(batch.nbytes, make_room, dataset, written=reserved)
                    reserved += batch.nbytes
                    writer.write_batch(batch, custom_metadata=aligner.metadata(batch))
                    rows += batch.num_rows
                    if progress:
                        progress(Progress(dataset, rows, reserved, time.perf_counter() - started))
            os.rename(temp, final)
            with self._lock:
                self._published[final] = identity
        except BaseException:
            self.budget.release(reserved)
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        size = final.stat().st_size
        self.budget.add(size - reserved)  # IPC framing and padding beyond the batches
        seconds = time.perf_counter() - started
        if progress:
            progress(Progress(dataset, rows, reserved, seconds, done=True))
        return Version(dataset, version_id, final, rows, size, time.time(), seconds)

    def spill(self, version: Version) -> Version:
        """Move a memory-tier version to the disk tier; open readers keep their mapping."""
        folder = self._folder(DISK, version.dataset)
        target = folder / version.path.name
        temp = folder / f".tmp-{version.path.name}"
        identity = self._create(temp)
        try:
            source = self._open_checked(version)
            try:
                with open(source, "rb", closefd=False) as src, open(temp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            finally:
                os.close(source)
            os.rename(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        with self._lock:
            self._published[target] = identity
        self.delete(version)
        return replace(version, path=target, tier=DISK)

    def adopt(self, version: Version) -> bool:
        """Count a version that survived a restart, after checking its file is whole (and a
        file of ours, reached without a link)."""
        try:
            fd = os.open(version.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                return False
            mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            reader = ipc.open_file(pa.BufferReader(pa.py_buffer(mapped)))
            rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        except (OSError, ValueError, pa.ArrowInvalid):
            return False
        finally:
            os.close(fd)
        if rows != version.rows:
            return False
        with self._lock:
            self._published[version.path] = (info.st_dev, info.st_ino)
        return True

    def delete(self, version: Version) -> None:
        try:
            with self._lock:  # unmapped here once its last reader lets go, not kept by us
                self._mapped.pop(version.path, None)
                self._published.pop(version.path, None)
                size = version.path.lstat().st_size
                version.path.unlink()
        except FileNotFoundError:
            return
        if version.tier == MEMORY:
            self.budget.release(size)

    def forget(self, version: Version) -> None:
        """Drop a version whose bytes were lost (whatever is left of them)."""
        self.delete(version)

    def remove_orphan(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            size = path.lstat().st_size
            path.unlink()
            if path.is_relative_to(self.roots[MEMORY]):
                self.budget.release(size)

    def _open_checked(self, version: Version) -> int:
        """A read-only descriptor of the version's file, refused unless it is still the file
        this store published (same device and inode, ours, reached without a link)."""
        try:
            fd = os.open(version.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise  # replaced by a refresh or spill meanwhile: the caller looks again
            fd = -1
        if fd >= 0:
            info = os.fstat(fd)
            with self._lock:
                published = self._published.get(version.path)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and \
                    published == (info.st_dev, info.st_ino):
                return fd
            os.close(fd)
        log.error("refused to serve %s: not the file this server published", version.path)
        raise LdwError(f"the cached file of {version.dataset} was replaced by another file; "
                       "ldw refuses to serve it. Evict and refresh the dataset, and check who "
                       f"else can write to {version.path.parent}")

    def open(self, version: Version) -> pa.Table:
        """Memory-map a version: the returned table's buffers are the file's pages."""
        fd = self._open_checked(version)
        try:
            return open_fd(fd)
        finally:
            os.close(fd)

    def open_table(self, version: Version) -> pa.Table:
        """The version as a table (the interface both backends' stores offer the engine).

        The mapping is kept while the version lives, so serving it again (Flight, SQL, export)
        neither maps nor page-faults the same file twice."""
        with self._lock:
            table = self._mapped.get(version.path)
        if table is not None:
            return table
        table = self.open(version)
        with self._lock:
            if version.path.exists():  # else delete() ran meanwhile: keep nothing
                table = self._mapped.setdefault(version.path, table)
        return table

    def check_memory_only(self, dataset: str) -> None:
        """Memory-only data is fine here: the memory tier never spills it (see make_room)."""

    def close(self) -> None:
        """Forget the kept mappings and let go of the folders; files are removed by their
        owner."""
        with self._lock:
            self._mapped.clear()
        self._unlock()

    def open_readonly(self, version: Version) -> int:
        """A read-only descriptor of the version's file, for a local client to map."""
        return self._open_checked(version)
