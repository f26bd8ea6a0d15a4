"""The server-wide operations of :class:`ldw.service.Service`: users and tokens, dropping the
cache, reloading the configuration. Only the server's owner (its OS user) and the ``admin`` role
may run them, and each is audited.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ldw.config import fingerprint, load_settings
from ldw.engine import server_os_user
from ldw.errors import AccessDenied, BadRequest

if TYPE_CHECKING:
    from ldw.engine import DatasetRecord, Engine

__all__ = ["ADMIN_ROLE", "AdminOps"]

ADMIN_ROLE = "admin"  # may read every user's audit records and status, and manage users;
# the server's owner (its OS user) holds it without being listed in [users.*]


def _arg(args: dict[str, Any], name: str, kind: type | tuple, *, required: bool = False) -> Any:
    value = args.get(name)
    if value is None:
        if required:
            raise BadRequest(f"missing argument {name!r}")
        return None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise BadRequest(f"argument {name!r} has the wrong type ({type(value).__name__})")
    return value


class AdminOps:
    """Operations on the whole server; mixed into :class:`ldw.service.Service`."""

    engine: Engine

    if TYPE_CHECKING:
        def audit(self, user: str, action: str, record: DatasetRecord | None = None, *,
                  detail: str | None = None, **fields: Any) -> None: ...

    def is_admin(self, user: str) -> bool:
        """Whether ``user`` holds the admin role: given in [users.*], or the server's owner."""
        return user == server_os_user() or ADMIN_ROLE in self.engine.roles(user)

    def _admin(self, user: str, what: str) -> None:
        if not self.is_admin(user):
            raise AccessDenied(f"only the ldw server's owner or the {ADMIN_ROLE!r} role may "
                               f"{what}")

    def config_status(self, user: str) -> dict[str, Any]:
        """For ``status``, to an admin: the configuration the server runs with (its file and a
        fingerprint of what a reload re-reads), so a client can tell it differs from its own."""
        if not self.is_admin(user):
            return {}
        settings = self.engine.settings
        return {"config": {"path": str(settings.config_path) if settings.config_path else None,
                           "fingerprint": fingerprint(settings)}}

    # -- users and tokens ---------------------------------------------------------------------
    def op_user_add(self, user: str, args: dict, progress: Callable | None) -> dict[str, str]:
        """A new token for a user, returned once (only its hash is stored, never audited)."""
        self._admin(user, "add users")
        name = _arg(args, "name", str, required=True)
        roles = _arg(args, "roles", list) or []
        if not all(isinstance(r, str) for r in roles):
            raise BadRequest("roles must be a list of role names")
        token = self.engine.admin.add_user(name, roles)
        self.audit(user, "user_add", detail=f"token for {name}" + (
            f" with roles {', '.join(roles)}" if roles else ""))
        return {"user": name, "token": token}

    def op_user_revoke(self, user: str, args: dict, progress: Callable | None
                       ) -> dict[str, Any]:
        self._admin(user, "revoke users")
        name = _arg(args, "name", str, required=True)
        result = self.engine.admin.revoke_user(name)
        self.audit(user, "user_revoke", detail=f"{name} revoked (token deleted: "
                   f"{result['had_token']}, shares dropped: {result['dropped_shares']})")
        return result

    def op_user_list(self, user: str, args: dict, progress: Callable | None) -> list[dict]:
        self._admin(user, "list users")
        return self.engine.admin.token_users()

    # -- the cache and the configuration --------------------------------------------------------
    def op_drop_cache(self, user: str, args: dict, progress: Callable | None
                      ) -> dict[str, Any]:
        """Drop every cached version of every user (``ldw server stop --drop-cache``)."""
        self._admin(user, "drop the cache")
        dropped = self.engine.drop_cache()
        self.audit(user, "drop_cache", detail=(
            f"{dropped['memory_versions']} version(s), {dropped['memory_bytes']} bytes in "
            f"memory; {dropped['disk_versions']} version(s), {dropped['disk_bytes']} bytes on "
            f"disk; {dropped['busy']} busy and kept"))
        return dropped

    def op_reload(self, user: str, args: dict, progress: Callable | None) -> dict[str, Any]:
        """Re-read sources, policies, users and [refresh] rules; the cache stays. ``config``
        (a file on the server's host, or a config table) replaces the server's own file: only
        its owner may name one, since the server reads it with the owner's rights."""
        self._admin(user, "reload the configuration")
        config = _arg(args, "config", (str, dict))
        if config is not None and user != server_os_user():
            raise AccessDenied("only the ldw server's owner may point it at another "
                               "configuration; reload without one to re-read its own file")
        if config is None:
            if self.engine.settings.config_path is None:
                raise BadRequest("this ldw server was started without a config file; name "
                                 "one: ldw server reload --config FILE (wh.reload(config=...))")
            config = str(self.engine.settings.config_path)
        if isinstance(config, str) and not os.path.isabs(config):
            raise BadRequest(f"config {config!r} must be an absolute path on the server's host")
        report = self.engine.reload(load_settings(config))  # a bad file changes nothing
        changes = ", ".join(f"{k} {', '.join(report[k])}" for k in ("added", "removed",
                                                                    "changed") if report[k])
        self.audit(user, "reload", detail=(
            f"config {report['config'] or '(given as a table)'}: {len(report['sources'])} "
            f"source(s){'; ' + changes if changes else ''}; {report['policies']} policies; "
            f"{len(report['users'])} [users]" + (
                f"; needs a restart: {', '.join(report['restart_needed'])}"
                if report["restart_needed"] else "")))
        return report
