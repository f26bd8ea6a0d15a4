"""Immutable dataset versions as Arrow IPC files: a memory tier (shared memory) and a disk tier.

A version is written under a temporary name while batches stream in and published by rename, so
no reader ever sees half a version. Folders are 0700 and files 0600 from their first byte; a
version is only ever opened without following links and served only if it is still the very
file (device and inode) that was published, so a swapped file is refused, never handed out.
Each tier's root is locked by the store that owns it: a second server refuses it.
Strings are stored as ``string_view``, the layout polars reads
without conversion; opening a version memory-maps it (no copy of the table's bytes), and a reader
keeps its mapping when the file is later spilled, replaced or deleted.

An incremental refresh (:meth:`Store.extend`) makes a version of several files: hard links, under
the new version's own names, to the files of the version it continues, and one new file with
the new rows (an upsert also leaves out the rows it replaces, see :mod:`ldw.storage.parts`).
Nothing is copied, and deleting a version unlinks only its own names: bytes another version
still links stay, and the memory tier counts a file's bytes once, until its last name goes.
:meth:`Store.compact` later writes such a version into fewer files, off the refresh's path.

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
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from ldw.errors import Cancelled, CapacityExceeded, LdwError
from ldw.governance.trust import DirLock, create_private, private_dir
from ldw.storage.align import DecimalAligner
from ldw.storage.base import (
    DISK,
    MAX_PARTS,
    MEMORY,
    Descriptors,
    MakeRoom,
    MemoryBudget,
    Part,
    ProgressCallback,
    Version,
    VersionStore,
    new_version_id,
    storage_schema,
)
from ldw.storage.parts import (
    MAX_RANGES,
    drop_rows,
    kept_rows,
    open_fd,
    open_fds,
    standalone,
    valid_keep,
)
from ldw.types import Progress

__all__ = ["COMPACT_PARTS", "Store", "open_fd", "open_fds"]

log = logging.getLogger("ldw.store")

COMPACT_PARTS = 4  # a version of more files than this is compacted (in the background)


def _part_name(version_id: str, index: int) -> str:
    return f"{version_id}.{index}.arrow"


def _next_index(version: Version) -> int:
    """The first part number none of the version's file names uses."""
    numbers = [int(n) for n in (p.path.name.split(".")[-2] for p in version.files)
               if n.isdigit()]
    return max(numbers, default=-1) + 1


class Store(VersionStore):
    """Versions under ``<tier root>/<owner>/<name>/<version>[.<part>].arrow``, private to the
    server user.

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
        inodes = {}  # a file linked by several versions counts once
        for path in self.files(MEMORY):
            with contextlib.suppress(FileNotFoundError):
                info = path.lstat()
                inodes[info.st_dev, info.st_ino] = info.st_size
        self.budget = MemoryBudget(memory_limit, sum(inodes.values()))
        self._mapped: dict[tuple[Path, ...], pa.Table] = {}  # see open_table
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

    def _write_file(self, path: Path, dataset: str, stored: pa.Schema,
                    batches: Iterable[pa.RecordBatch], *, account: bool,
                    progress: ProgressCallback | None = None,
                    make_room: MakeRoom | None = None,
                    cancel: threading.Event | None = None) -> tuple[int, int, int]:
        """Stream ``batches`` into a new file published at ``path`` only if all arrived;
        ``account``: count its bytes in the memory tier. Returns rows, reserved and file
        bytes."""
        temp = path.with_name(f".tmp-{path.name}")
        started = time.perf_counter()
        rows = reserved = 0
        try:
            identity = self._create(temp)
            with pa.OSFile(str(temp), "wb") as sink, ipc.new_file(sink, stored) as writer:
                aligner = DecimalAligner(sink, stored)  # decimals zero-copy into polars
                for batch in batches:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"writing {dataset} was cancelled")
                    if batch.schema != stored:
                        batch = batch.cast(stored)
                    batch = standalone(batch)  # a slice writes only its own strings
                    if account:
                        self.budget.reserve(batch.nbytes, make_room, dataset, written=reserved)
                    reserved += batch.nbytes
                    writer.write_batch(batch, custom_metadata=aligner.metadata(batch))
                    rows += batch.num_rows
                    if progress:
                        progress(Progress(dataset, rows, reserved, time.perf_counter() - started))
            os.rename(temp, path)
            with self._lock:
                self._published[path] = identity
        except BaseException:
            if account:
                self.budget.release(reserved)
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        size = path.stat().st_size
        if account:
            self.budget.add(size - reserved)  # IPC framing and padding beyond the batches
        return rows, reserved, size

    def write(self, dataset: str, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *,
              progress: ProgressCallback | None = None,
              make_room: MakeRoom | None = None,
              version_id: str | None = None) -> Version:
        """Stream ``batches`` into a new memory-tier version; publish it only if all arrived."""
        version_id = version_id or new_version_id()
        final = self._folder(MEMORY, dataset) / f"{version_id}.arrow"
        started = time.perf_counter()
        rows, reserved, size = self._write_file(final, dataset, storage_schema(schema), batches,
                                                account=True, progress=progress,
                                                make_room=make_room)
        seconds = time.perf_counter() - started
        if progress:
            progress(Progress(dataset, rows, reserved, seconds, done=True))
        return Version(dataset, version_id, final, rows, size, time.time(), seconds)

    def extend(self, base: Version, schema: pa.Schema, batches: Iterable[pa.RecordBatch], *,
               replace_key: str | None = None, replaced: pa.Array | None = None,
               progress: ProgressCallback | None = None,
               make_room: MakeRoom | None = None) -> Version:
        """A new version of ``base``'s files, shared by hard links (nothing is copied), and one
        new file with ``batches``; with ``replace_key`` the rows of ``base`` whose key comes
        again are left out by row ranges (see :mod:`ldw.storage.parts`). A base on disk, of
        :data:`MAX_PARTS` files or whose ranges would exceed ``MAX_RANGES`` is copied into one
        new file instead (:meth:`VersionStore.extend`)."""
        stored = storage_schema(schema)
        old = self.open_table(base) if base.tier == MEMORY else None
        if old is None or len(base.files) >= MAX_PARTS or old.schema != stored:
            return super().extend(base, schema, batches, replace_key=replace_key,
                                  progress=progress, make_room=make_room)
        total = sum(p.rows for p in base.files)
        keep = base.keep
        increment = list(batches)  # the new rows: few
        if replace_key is not None:
            if replaced is None:
                replaced = _replaced(old, increment, replace_key)
            if replaced is not None and len(replaced):
                keep = drop_rows(keep, total, replaced)
            if keep is not None and len(keep) >= MAX_RANGES:
                return super().extend(base, schema, increment, replace_key=replace_key,
                                      progress=progress, make_room=make_room)
        version_id = new_version_id()
        folder = base.path.parent
        started = time.perf_counter()
        added = folder / _part_name(version_id, len(base.files))
        rows, reserved, size = self._write_file(added, base.dataset, stored, increment,
                                                account=True, progress=progress,
                                                make_room=make_room)
        parts: list[Part] = []
        try:
            for index, part in enumerate(base.files):
                parts.append(Part(self._link(base, part, folder / _part_name(version_id,
                                                                              index)),
                                  part.rows))
        except BaseException as exc:
            self._unlink([added, *(p.path for p in parts)], MEMORY)
            if not isinstance(exc, OSError) or isinstance(exc, FileNotFoundError):
                raise
            log.warning("%s: cannot link its files (%s); copying them", base.dataset, exc)
            return super().extend(base, schema, increment, replace_key=replace_key,
                                  progress=progress, make_room=make_room)
        parts.append(Part(added, rows))
        if keep is not None and rows:
            keep = (*keep, (total, rows))
        seconds = time.perf_counter() - started
        if progress:
            progress(Progress(base.dataset, rows, reserved, seconds, done=True))
        return Version(base.dataset, version_id, parts[0].path, kept_rows(keep, total + rows),
                       base.bytes + size, time.time(), seconds, MEMORY, parts=tuple(parts),
                       keep=keep)

    def _link(self, version: Version, part: Part, target: Path) -> Path:
        """Hard-link a published file of ``version`` as ``target``; refused unless the link
        is the very file that was published."""
        fd = self._open_checked(version, part.path)
        try:
            info = os.fstat(fd)
            with self._lock:  # with _unlink's count of a file's names
                os.link(part.path, target, follow_symlinks=False)
                linked = os.lstat(target)
                same = (linked.st_dev, linked.st_ino) == (info.st_dev, info.st_ino)
                if same:
                    self._published[target] = (info.st_dev, info.st_ino)
                else:
                    target.unlink()
        finally:
            os.close(fd)
        if not same:
            raise LdwError(f"the cached file of {version.dataset} was replaced while it was "
                           "being extended; ldw refuses it. Evict and refresh the dataset, "
                           f"and check who else can write to {target.parent}")
        return target

    def compact(self, version: Version, *, cancel: threading.Event | None = None
                ) -> Version | None:
        """``version`` in fewer files: the small files after the first merged into one (the
        first linked again), or, when it leaves rows out or its later files are not small,
        all its rows in one file. None if it is one file or a few without rows left out.
        The memory tier must have room: nothing else is spilled for it."""
        if version.tier != MEMORY or (version.keep is None
                                      and len(version.files) <= COMPACT_PARTS):
            return None
        files = version.files
        sizes = [p.path.lstat().st_size for p in files]
        index = _next_index(version)
        folder = version.path.parent
        stored = self.open_table(version).schema
        tail = version.keep is None and sum(sizes[1:]) <= sizes[0]
        if self.budget.used() + (sum(sizes[1:]) if tail else sum(sizes)) > self.budget.limit:
            raise CapacityExceeded(f"no room in memory_limit to compact {version.dataset}")
        if tail:
            head = self._link(version, files[0], folder / _part_name(version.version_id, index))
            tail = [self._open_part(version, p) for p in files[1:]]
            merged = folder / _part_name(version.version_id, index + 1)
            try:
                rows, _, size = self._write_file(
                    merged, version.dataset, stored,
                    (b for table in tail for b in table.to_batches()),
                    account=True, cancel=cancel)
            except BaseException:
                self._unlink([head], MEMORY)
                raise
            parts = (Part(head, files[0].rows), Part(merged, rows))
            return replace(version, path=head, parts=parts, keep=None,
                           bytes=sizes[0] + size)
        whole = folder / _part_name(version.version_id, index)
        _, _, size = self._write_file(whole, version.dataset, stored,
                                      self.open_table(version).to_batches(), account=True,
                                      cancel=cancel)
        return replace(version, path=whole, parts=(), keep=None, bytes=size)

    def spill(self, version: Version) -> Version:
        """Move a memory-tier version to the disk tier, as one file; open readers keep their
        mapping."""
        folder = self._folder(DISK, version.dataset)
        target = folder / f"{version.version_id}.arrow"
        if version.parts or version.keep is not None:  # its rows into one file
            table = self.open_table(version)
            _, _, size = self._write_file(target, version.dataset, table.schema,
                                          table.to_batches(), account=False)
        else:
            target = folder / version.path.name
            temp = folder / f".tmp-{version.path.name}"
            identity = self._create(temp)
            try:
                source = self._open_checked(version, version.path)
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
            size = version.bytes
        self.delete(version)
        return replace(version, path=target, tier=DISK, parts=(), keep=None, bytes=size)

    def adopt(self, version: Version) -> bool:
        """Count a version that survived a restart, after checking its files are whole (and
        files of ours, reached without a link)."""
        identities: dict[Path, tuple[int, int]] = {}
        for part in version.files:
            identity = _whole(part)
            if identity is None:
                return False
            identities[part.path] = identity
        total = sum(p.rows for p in version.files)
        if version.keep is not None and not valid_keep(version.keep, total):
            return False
        if kept_rows(version.keep, total) != version.rows:
            return False
        with self._lock:
            self._published.update(identities)
        return True

    def _unlink(self, paths: Iterable[Path], tier: str) -> None:
        """Remove names; the memory tier gives back the bytes of files whose last name went."""
        freed = 0
        with self._lock:
            for path in paths:
                self._published.pop(path, None)
                try:
                    info = path.lstat()
                    path.unlink()
                except FileNotFoundError:
                    continue
                if info.st_nlink <= 1:
                    freed += info.st_size
        if tier == MEMORY:
            self.budget.release(freed)

    def delete(self, version: Version) -> None:
        """Remove the version's names (unmapped here once its last reader lets go, not kept
        by us); bytes still linked by another version stay."""
        with self._lock:
            self._mapped.pop(_key(version), None)
        self._unlink((p.path for p in version.files), version.tier)

    def forget(self, version: Version) -> None:
        """Drop a version whose bytes were lost (whatever is left of them)."""
        self.delete(version)

    def remove_orphan(self, path: Path) -> None:
        self._unlink([path], MEMORY if path.is_relative_to(self.roots[MEMORY]) else DISK)

    def _open_checked(self, version: Version, path: Path) -> int:
        """A read-only descriptor of the version's file ``path``, refused unless it is still
        the file this store published (same device and inode, ours, reached without a link)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError):
                raise  # replaced by a refresh or spill meanwhile: the caller looks again
            fd = -1
        if fd >= 0:
            info = os.fstat(fd)
            with self._lock:
                published = self._published.get(path)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and \
                    published == (info.st_dev, info.st_ino):
                return fd
            os.close(fd)
        log.error("refused to serve %s: not the file this server published", path)
        raise LdwError(f"the cached file of {version.dataset} was replaced by another file; "
                       "ldw refuses to serve it. Evict and refresh the dataset, and check who "
                       f"else can write to {path.parent}")

    def _open_all(self, version: Version) -> Descriptors:
        fds = Descriptors([], version.keep)
        try:
            for part in version.files:
                fds.fds.append(self._open_checked(version, part.path))
        except BaseException:
            fds.close()
            raise
        return fds

    def _open_part(self, version: Version, part: Part) -> pa.Table:
        fd = self._open_checked(version, part.path)
        try:
            return open_fd(fd)
        finally:
            os.close(fd)

    def open(self, version: Version) -> pa.Table:
        """Memory-map a version: the returned table's buffers are the files' pages."""
        fds = self._open_all(version)
        try:
            return open_fds(fds.fds, version.keep)
        finally:
            fds.close()

    def open_table(self, version: Version) -> pa.Table:
        """The version as a table (the interface both backends' stores offer the engine).

        The mapping is kept while the version lives, so serving it again (Flight, SQL, export)
        neither maps nor page-faults the same files twice."""
        key = _key(version)
        with self._lock:
            table = self._mapped.get(key)
        if table is not None:
            return table
        table = self.open(version)
        with self._lock:
            if all(path.exists() for path in key):  # else delete() ran meanwhile: keep nothing
                table = self._mapped.setdefault(key, table)
        return table

    def check_memory_only(self, dataset: str) -> None:
        """Memory-only data is fine here: the memory tier never spills it (see make_room)."""

    def close(self) -> None:
        """Forget the kept mappings and let go of the folders; files are removed by their
        owner."""
        with self._lock:
            self._mapped.clear()
        self._unlock()

    def open_readonly(self, version: Version) -> Descriptors:
        """Read-only descriptors of the version's files, for a local client to map."""
        return self._open_all(version)


def _key(version: Version) -> tuple[Path, ...]:
    return tuple(p.path for p in version.files)


def _whole(part: Part) -> tuple[int, int] | None:
    """(device, inode) of a version file of ours holding ``part.rows`` rows, else None."""
    try:
        fd = os.open(part.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            return None
        mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        reader = ipc.open_file(pa.BufferReader(pa.py_buffer(mapped)))
        rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except (OSError, ValueError, pa.ArrowInvalid):
        return None
    finally:
        os.close(fd)
    return (info.st_dev, info.st_ino) if rows == part.rows else None


def _replaced(old: pa.Table, increment: list[pa.RecordBatch], key: str) -> pa.Array | None:
    """Positions of ``old``'s rows whose ``key`` is one of ``increment``'s (ascending)."""
    if not increment:
        return None
    keys = pa.chunked_array([b.column(key) for b in increment]).combine_chunks()
    column = old.column(key)
    mask = pc.is_in(column, value_set=keys.cast(column.type))
    return pc.indices_nonzero(mask.combine_chunks() if isinstance(mask, pa.ChunkedArray)
                              else mask)
