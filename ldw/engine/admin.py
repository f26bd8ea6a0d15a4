"""Administration: users, their tokens and the audit log, as the server's owner manages them
(``ldw user add | revoke | list``, ``ldw audit``), through the server so each change is audited."""

from __future__ import annotations

from typing import Any

from ldw import users
from ldw.catalog import Catalog
from ldw.config import Settings
from ldw.engine.checks import check_name, server_os_user

__all__ = ["Admin"]


class Admin:
    """What the server's administrator manages: token users and the audit trail."""

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog

    def _configured_users(self) -> set[str]:
        return set(self.settings.users) | {server_os_user()}

    def add_user(self, name: str, roles: list[str]) -> str:
        """A new token for ``name`` (shown once; see :mod:`ldw.users`)."""
        return users.add_user(self.catalog, self._configured_users(), name, roles,
                              check=check_name)

    def revoke_user(self, name: str) -> dict[str, Any]:
        return dict(users.revoke_user(self.catalog, self._configured_users(), name,
                                      check=check_name))

    def token_users(self) -> list[dict[str, Any]]:
        return [dict(row) for row in users.list_users(self.catalog)]

    def user_for_token_hash(self, digest: str) -> str | None:
        return self.catalog.user_for_token_hash(digest)

    def append_audit(self, entry: dict[str, Any]) -> None:
        self.catalog.append_audit(entry)

    def audit_log(self, *, user: str | None, dataset: str | None,
                  limit: int) -> list[dict[str, Any]]:
        return self.catalog.audit(user=user, dataset=dataset, limit=limit)
