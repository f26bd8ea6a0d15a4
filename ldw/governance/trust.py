"""Local trust: the folders and files the server keeps are its own, and nobody else's.

Another OS user on the host must not be able to read cached versions, plant a folder, a pid
file or a socket where ldw will look, or swap a version file for a link to something else. So:

- :func:`private_dir` creates a folder 0700 (each missing level) and refuses one that is a
  symbolic link, belongs to another user, or is open to group/other, and one whose parent
  folders another user could rename it out of (owned by someone else, or writable by others
  without the sticky bit, as ``/tmp`` and ``/dev/shm`` have it).
- :func:`create_private` creates a file 0600 from its first byte, never following a link.
- :class:`DirLock` holds an exclusive ``flock`` on a folder for the server that owns it, so a
  second server pointed at the same folder refuses it instead of deleting the other's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

from ldw.errors import ConfigError

__all__ = ["DirLock", "check_dir", "create_private", "private_dir"]

PRIVATE = 0o077      # a data folder grants nothing to group/other
NOT_WRITABLE = 0o022  # a state or catalog folder may be entered by others, never changed


def _who(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _check_parents(path: Path, what: str, owner: int) -> None:
    """Nobody but root or ``path``'s owner may rename ``path`` away (or a folder above it)."""
    for parent in path.parents:
        info = os.stat(parent)
        owner_ok = info.st_uid in (0, owner)
        shared_ok = not info.st_mode & NOT_WRITABLE or info.st_mode & stat.S_ISVTX
        if not owner_ok or not shared_ok:
            raise ConfigError(
                f"{what} {str(path)!r} is inside {str(parent)!r}, which "
                + (f"belongs to {_who(info.st_uid)}" if not owner_ok
                   else "other users may write to (and it has no sticky bit)")
                + f"; choose a {what} under a folder only you (or root) can change")


def check_dir(path: Path, what: str, *, owner: int | None = None,
              forbidden: int = PRIVATE) -> os.stat_result:
    """Refuse ``path`` unless it is a real folder of ``owner`` (default: us) that grants
    none of the ``forbidden`` mode bits. Returns its ``lstat``."""
    path = Path(os.path.abspath(path))
    expected = os.geteuid() if owner is None else owner
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    fix = f"remove it (or choose another {what}) and ldw creates it privately"
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{what} {str(path)!r} is a symbolic link; ldw keeps its files only "
                          f"in a real folder: {fix}")
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{what} {str(path)!r} is not a folder; {fix}")
    if info.st_uid != expected:
        raise ConfigError(f"{what} {str(path)!r} belongs to {_who(info.st_uid)}, not to "
                          f"{_who(expected)} who runs ldw; someone else may have created it: "
                          f"{fix}")
    if info.st_mode & forbidden:
        mode = stat.S_IMODE(info.st_mode)
        raise ConfigError(f"{what} {str(path)!r} is open to other users (mode {mode:o}); "
                          f"run `chmod go-rwx {path}` (or choose another {what})")
    _check_parents(path, what, expected)
    return info


def private_dir(path: Path, what: str, *, forbidden: int = PRIVATE) -> Path:
    """Create ``path`` (and missing parents) mode 0700, then :func:`check_dir` it."""
    path = Path(os.path.abspath(path))
    missing = []
    for level in (path, *path.parents):
        if os.path.lexists(level):
            break
        missing.append(level)
    for level in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
            os.mkdir(level, 0o700)
    check_dir(path, what, forbidden=forbidden)
    return path


def create_private(path: Path) -> int:
    """Create (or open our own) ``path`` read-write, mode 0600, never through a link."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ConfigError(f"{str(path)!r} belongs to {_who(info.st_uid)} or is not a file; "
                          "remove it and retry")
    if stat.S_IMODE(info.st_mode) & PRIVATE:
        os.fchmod(fd, 0o600)
    return fd


class DirLock:
    """An exclusive lock on ``folder`` (a ``.ldw-lock`` file in it) while this object lives."""

    NAME = ".ldw-lock"

    def __init__(self, folder: Path, what: str) -> None:
        self.folder = folder
        fd = create_private(folder / self.NAME)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = "?"
            with contextlib.suppress(OSError):
                other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"{what} {str(folder)!r} is in use by another ldw server (pid {other}); two "
                f"servers sharing one {what} would delete each other's versions: give each "
                f"server its own {what} (or stop the other one with `ldw server stop`)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
