"""User and token management: what ``ldw user add | revoke | list`` do, on the server.

Run by the server (operations ``user_add``, ``user_revoke``, ``user_list`` in :mod:`ldw.ops`)
so every change goes through its access check and its audit log. A token is shown once, to the
caller; the catalog keeps only its hash, and no log or audit record ever holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from ldw.catalog import Catalog

__all__ = ["RevokeResult", "TokenUser", "add_user", "list_users", "revoke_user"]


class TokenUser(TypedDict):
    """A user holding a token, and the roles it carries."""

    user: str
    roles: list[str]


class RevokeResult(TypedDict):
    user: str
    had_token: bool
    dropped_shares: int


Check = Callable[[object, str], str]  # a name check: returns the name or raises


def add_user(catalog: Catalog, configured: Collection[str], name: str, roles: list[str], *,
             check: Check) -> str:
    """A new token for ``name`` with ``roles`` (replacing any old one), to be shown once.

    A user neither ``configured`` ([users.*] or the server's OS user) nor holding a token is
    new: shares left by an earlier user of that name are dropped first, so a new user inherits
    none."""
    check(name, "user name")
    for role in roles:
        check(role, "role name")
    if name not in configured and name not in catalog.token_users():
        catalog.drop_user_grants(name)
    return catalog.new_token(name, list(roles))


def revoke_user(catalog: Catalog, configured: Collection[str], name: str, *,
                check: Check) -> RevokeResult:
    """Refuse ``name`` everywhere from now on; a user not ``configured`` also loses every
    share with them."""
    check(name, "user name")
    had_token = catalog.revoke_user(name)
    dropped = 0 if name in configured else catalog.drop_user_grants(name)
    return {"user": name, "had_token": had_token, "dropped_shares": dropped}


def list_users(catalog: Catalog) -> list[TokenUser]:
    """Every user holding a token, sorted, with the roles their token carries."""
    return [{"user": user, "roles": catalog.user_roles(user)}
            for user in sorted(catalog.token_users())]
