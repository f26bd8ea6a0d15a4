"""The file system side of an export: private folders, locked temp directories, atomic publish.

An export is written into a hidden sibling ``.<name>.ldw-tmp-<random>``, ``flock``-ed by its
writer for its whole life, and published by one rename (``renameat2`` where available), so
nothing appears at the target until every file is on disk. Temp directories whose writer died
are removed by the next export to the same path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import secrets
import shutil
from pathlib import Path

from ldw.errors import AccessDenied, ConfigError, ExportError, LdwError
from ldw.export.manifest import MANIFEST_NAME, TABLE_MARKER, export_owner, read_marker
from ldw.export.table_types import LABELS

log = logging.getLogger("ldw.export")

_TMP_MARK = ".ldw-tmp-"


def _seal_tree(root: Path) -> None:
    """Files 0600, folders 0700 (nobody else could enter the 0700 temp folder meanwhile);
    every folder fsynced."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600, follow_symlinks=False)
        os.chmod(folder, 0o700)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _make_folders(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each ``0700``."""
    missing = []
    while not os.path.isdir(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)


def _out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` (or the OSError it wraps) is a full disk or an exhausted quota."""
    for error in (exc, exc.__cause__):
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
    return False


def _disk_full(target: Path) -> ExportError:
    free = ""
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(target.parent)
        free = (f" ({usage.free / 2**20:.1f} MiB free of {usage.total / 2**20:.1f} MiB once "
                "the partial files were removed)")
    return ExportError(f"the disk holding {target.parent} is full{free}; nothing was "
                       f"published at {target} and the partial files were removed. Free space, "
                       "export fewer columns or rows, or choose a path on another disk")


def _check_target(target: Path, *, overwrite: bool, owner: str | None = None) -> None:
    if not target.name or target.name in {".", ".."}:
        raise ConfigError(f"{target} cannot be an export path; name a directory to create")
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise ExportError(f"{target} already exists; choose another path or pass overwrite=True "
                          "to replace an earlier export")
    table = read_marker(target, TABLE_MARKER) if not target.is_symlink() else None
    if table is not None:
        fmt = table.get("format")
        raise ExportError(f"refusing to replace {target} with Parquet files: it is an ldw "
                          f"export in the {LABELS.get(fmt, '?')} table format; export with "
                          f"format={fmt!r} and mode='append' or 'overwrite' to add a commit "
                          "to it, or choose another path")
    if target.is_symlink() or not target.is_dir() or not (target / MANIFEST_NAME).is_file():
        raise ExportError(f"refusing to replace {target}: it is not an ldw export (no "
                          f"{MANIFEST_NAME}); remove it yourself or choose another path")
    if owner is not None:
        recorded = export_owner(target)
        if recorded != owner:
            whose = f"of {recorded!r}" if recorded else "with no recorded owner"
            raise AccessDenied(f"refusing to replace {target}: it holds an export {whose}, "
                               f"not one of {owner!r}; choose another path")



def _temp_prefix(target: Path) -> str:
    return f".{target.name}{_TMP_MARK}"


def _make_temp_dir(target: Path) -> tuple[Path, int]:
    """Create and lock ``.<name>.ldw-tmp-<random>`` next to ``target``; return it and the lock."""
    for _ in range(100):
        temp = target.parent / f"{_temp_prefix(target)}{secrets.token_hex(8)}"
        try:
            os.mkdir(temp, 0o700)  # private while written; published folders stay 0700
        except FileExistsError:
            continue
        except OSError as exc:
            raise ExportError(f"cannot create a directory next to {target}: {exc}") from exc
        try:
            fd = os.open(temp, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # a concurrent cleaner may have taken it between mkdir and flock: then it is gone
            if os.path.samestat(os.fstat(fd), os.stat(temp)):
                return temp, fd
        except OSError:
            pass
        os.close(fd)
    raise ExportError(f"cannot create a temporary directory next to {target}")


def _remove_stale_temps(target: Path) -> None:
    """Remove temp dirs of earlier exports to ``target`` whose writer is gone (lock free)."""
    prefix = _temp_prefix(target)
    try:
        names = [n for n in os.listdir(target.parent) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        stale = target.parent / name
        try:
            fd = os.open(stale, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live export is writing it
        try:
            log.info("removing %s, left by an interrupted export", stale)
            shutil.rmtree(stale, ignore_errors=True)
        finally:
            os.close(fd)


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2_fn = getattr(_libc, "renameat2", None)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux renameat2; False if the system or file system does not support ``flags``."""
    if _renameat2_fn is None:
        return False
    rc = _renameat2_fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                       ctypes.c_uint(flags))
    if rc == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(dst))


def _publish(temp: Path, target: Path, *, overwrite: bool, owner: str | None) -> None:
    """Move the finished ``temp`` to ``target`` in one step; swap out an old export last."""
    try:
        if overwrite and os.path.lexists(target):
            _check_target(target, overwrite=True, owner=owner)
            if not _renameat2(temp, target, _RENAME_EXCHANGE):
                trash = target.parent / f"{_temp_prefix(target)}{secrets.token_hex(8)}"
                os.rename(target, trash)
                try:
                    os.rename(temp, target)
                except OSError:
                    os.rename(trash, target)    # put the old export back
                    raise
                temp = trash
            # ``temp`` now holds the old export
            shutil.rmtree(temp, ignore_errors=True)
        elif not _renameat2(temp, target, _RENAME_NOREPLACE):
            if os.path.lexists(target):
                raise FileExistsError(errno.EEXIST, "exists", os.fspath(target))
            os.rename(temp, target)
    except FileExistsError as exc:
        raise ExportError(f"{target} appeared while exporting (another export?); choose another "
                          "path or pass overwrite=True") from exc
    except OSError as exc:
        if isinstance(exc, LdwError):
            raise
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise ExportError(f"{target} appeared while exporting (another export?); choose "
                              "another path or pass overwrite=True") from exc
        raise ExportError(f"cannot publish the export at {target}: {exc}") from exc
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _data_files(root: Path) -> list[str]:
    """Every regular file or link under ``root``, relative and '/'-separated."""
    found = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            found.append((Path(folder) / name).relative_to(root).as_posix())
    return found
