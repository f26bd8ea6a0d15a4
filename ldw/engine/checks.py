"""Names as clients send them: dataset, user and role names, checked before anything uses them."""

from __future__ import annotations

import os
import pwd

from ldw.errors import InvalidMapping

__all__ = ["check_name", "check_user", "server_os_user"]

_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_USER_OK = _NAME_OK | frozenset(".@$")  # OS user names may also carry these


def server_os_user() -> str:
    """The OS user this process runs as, named as local peers are (ldw.server.peer_user)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def check_name(name: object, what: str = "dataset name") -> str:
    if not isinstance(name, str) or not name or len(name) > 128 or not set(name) <= _NAME_OK:
        raise InvalidMapping(f"{what} {name!r} must be 1-128 letters, digits, '_' or '-'")
    return name


def check_user(name: object, what: str = "user name") -> str:
    """A user (owner) name as a client may send it: no '/', spaces or control characters."""
    if not isinstance(name, str) or not name or len(name) > 128 or not set(name) <= _USER_OK:
        raise InvalidMapping(f"{what} {name!r} must be 1-128 letters, digits, '_', '-', '.', "
                             "'@' or '$'")
    return name
