"""Where the server may write an export for a caller: inside the caller's export roots only.

The server writes exports as its own OS user, so a path a remote user names is confined:

- the roots of user ``U`` are ``[users.U] export_roots`` if set, else ``[server] export_roots``;
  ``{user}`` in a root stands for the caller's name (``"/srv/ldw-exports/{user}"`` gives each
  user a folder of their own). No roots: the server writes nothing for that user (fail closed).
- a relative path lands under the first root; an absolute one must lie inside one of the roots.
- ``..`` and hidden names (``.x``: the temp folders of running exports) are refused. Every
  folder from the root down is looked at with ``lstat``: it must be a real directory (no
  symlink), owned by the server's user (or root) and not writable by group or others, so
  nobody else can swap it for a symlink between this check and the writes; missing folders
  are created ``0700``. An export is never nested inside another export.

Local clients (Unix socket, in-process) write their exports themselves, as their own OS user
(:meth:`ldw.Dataset.export`), so the file system's permissions are theirs.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from ldw.config import Settings, export_roots_setting
from ldw.errors import AccessDenied
from ldw.export.manifest import EXPORT_MARKERS

__all__ = ["confine_export_path", "export_roots_for"]

_USER_IN_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def export_roots_for(settings: Settings, user: str) -> tuple[str, ...]:
    """The directories the server may write ``user``'s exports into, ``{user}`` expanded."""
    table = settings.users.get(user) or {}
    if isinstance(table, dict) and "export_roots" in table:
        raw = export_roots_setting(table["export_roots"], f"[users.{user}] export_roots")
    else:
        raw = settings.export_roots
    if any("{user}" in r for r in raw) and not _USER_IN_PATH.fullmatch(user):
        raise AccessDenied(f"the user name {user!r} cannot name a folder, so the export roots "
                           f"{', '.join(raw)} do not apply; ask the administrator for "
                           f"[users.<name>] export_roots")
    return tuple(r.replace("{user}", user) for r in raw)


def confine_export_path(path: str, roots: Sequence[str], *, user: str) -> Path:
    """The absolute target for ``path`` inside ``roots``, its parent folders made and checked;
    AccessDenied (naming the roots) for anything else."""
    if not roots:
        raise AccessDenied(
            f"this ldw server writes exports only into configured export roots, and none is "
            f"configured for {user!r}; the administrator sets [server] export_roots = "
            '["/srv/ldw-exports/{user}"] (or [users.' + user + "] export_roots) in ldw.toml. "
            "Or read the data (to_arrow()) and write it on your side")
    allowed = ", ".join(roots)

    def refuse(why: str) -> AccessDenied:
        return AccessDenied(f"export to {path!r} refused: {why}; exports of {user!r} go under "
                            f"{allowed} (a relative path lands under {roots[0]})")

    if not isinstance(path, str) or not path.strip() or "\0" in path:
        raise refuse("not a path")
    given = PurePosixPath(path)
    if ".." in given.parts:
        raise refuse("'..' is not allowed in an export path")
    if any(part.startswith(".") for part in given.parts):
        raise refuse("names starting with '.' are reserved (export temp folders)")
    if given.is_absolute():
        root, rel = _root_of(given, roots)
        if root is None:
            raise refuse("the path is outside the export roots")
    else:
        root, rel = roots[0], given
    if not rel.parts:
        raise refuse("an export root itself cannot be an export; name a folder inside it")
    folder = _open_root(root)
    for part in rel.parts[:-1]:
        folder = _step(folder, part, refuse)
    target = folder / rel.parts[-1]
    if os.path.islink(target):
        raise refuse(f"{target} is a symbolic link")
    return target


def _root_of(given: PurePosixPath, roots: Sequence[str]
             ) -> tuple[str | None, PurePosixPath]:
    """The root ``given`` lies in, as written in the config or as its real path."""
    for root in roots:
        for spelling in (root, os.path.realpath(root)):
            if given.is_relative_to(spelling):
                return root, given.relative_to(spelling)
    return None, given


def _trusted(st: os.stat_result) -> bool:
    """Only this server's user (or root) can change a directory like this."""
    return st.st_uid in (os.getuid(), 0) and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _open_root(root: str) -> Path:
    path = Path(root)
    missing = []
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise AccessDenied(f"cannot create the export root {root}: {exc.strerror}; ask the "
                               "administrator to create it for the ldw server's user") from exc
    real = Path(os.path.realpath(root))
    st = os.stat(real)
    if not stat.S_ISDIR(st.st_mode) or not _trusted(st):
        raise AccessDenied(f"the export root {root} is not a directory owned by the ldw server's "
                           "user and closed to writes by others (chmod go-w); the administrator "
                           "must fix it before exports can go there")
    return real


def _step(folder: Path, part: str, refuse: Callable[[str], AccessDenied]) -> Path:
    """``folder/part``, created 0700 if missing; refused if it is a link, not a directory,
    open to writes by others, or an export itself (Parquet, Delta or Iceberg)."""
    child = folder / part
    try:
        os.mkdir(child, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise refuse(f"cannot create {child}: {exc.strerror}") from exc
    st = os.lstat(child)
    if stat.S_ISLNK(st.st_mode):
        raise refuse(f"{child} is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise refuse(f"{child} is not a directory")
    if not _trusted(st):
        raise refuse(f"{child} is writable by others")
    if any(os.path.lexists(child / marker) for marker in EXPORT_MARKERS):
        raise refuse(f"{child} is an export; an export cannot hold another")
    return child
