"""Policies and identities: who may read which source table, and what they see of it.

A policy is keyed by a ``source.schema.table`` glob in ``[policies."..."]`` of ldw.toml::

    [policies."dwh.sales.customer"]
    allow_roles = ["analyst", "risk"]
    columns.c_phone = { mask = "hash" }            # keyed HMAC: joins still work
    columns.c_address = { mask = "redact" }        # '***' for text, NULL otherwise
    columns.c_name = { mask = "partial", keep = 4, exempt_roles = ["risk"] }
    row_filter.emea = "c_nationkey IN (6, 7, 19, 23)"   # per role; a user's roles are ORed
    memory_only = true
    export = "deny"
    max_rows = 1000000

With no policy at all ldw runs open (a single user's warehouse). Once any policy exists, a
table that no policy matches is denied, and every matching policy must allow one of the user's
roles. The *effective policy* of a user on a table is what the planner compiles into the source
SQL (row filters, limits, masks as SQL expressions) and, for masks the source cannot compute
(``hash``), applies to fresh Arrow buffers before anything is stored (:mod:`ldw.governance.masks`,
through :meth:`Governance.mask_batches`). Its fingerprint keys the cached versions: two users
see the same bytes only if their effective policies are equal.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ldw.errors import AccessDenied, ConfigError
from ldw.governance.masks import MASKS, Mask, make_mask, mask_batches

__all__ = ["ColumnMask", "EffectivePolicy", "Governance", "Mask", "Policy", "load_mask_key"]

ColumnMask = Mask  # the name policies used before masks had behaviour of their own
_POLICY_KEYS = {"allow_roles", "columns", "row_filter", "memory_only", "export", "max_rows"}


@dataclass(frozen=True)
class Policy:
    """One ``[policies."pattern"]`` table of the configuration, validated."""

    pattern: str
    allow_roles: frozenset[str] | None = None  # None: any user may read (masks still apply)
    masks: dict[str, Mask] = field(default_factory=dict)
    row_filters: dict[str, str] = field(default_factory=dict)
    memory_only: bool = False
    export: str = "allow"
    max_rows: int | None = None

    @classmethod
    def from_config(cls, pattern: str, table: Any) -> Policy:
        where = f'[policies."{pattern}"]'
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table of settings")
        if pattern.count(".") != 2:
            raise ConfigError(f"{where}: the key must be SOURCE.SCHEMA.TABLE (globs allowed)")
        unknown = set(table) - _POLICY_KEYS
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; "
                              f"known: {sorted(_POLICY_KEYS)}")
        roles = table.get("allow_roles")
        if roles is not None and (not isinstance(roles, list)
                                  or not all(isinstance(r, str) for r in roles)):
            raise ConfigError(f"{where}: allow_roles must be a list of role names")
        masks = {}
        for column, spec in (table.get("columns") or {}).items():
            if not isinstance(spec, dict) or spec.get("mask") not in MASKS:
                raise ConfigError(f"{where}: columns.{column} needs mask = one of {list(MASKS)}")
            extra = set(spec) - {"mask", "keep", "exempt_roles"}
            if extra:
                raise ConfigError(f"{where}: columns.{column} has unknown key(s) {sorted(extra)}")
            keep = spec.get("keep", 4)
            if not isinstance(keep, int) or keep < 0:
                raise ConfigError(f"{where}: columns.{column}.keep must be a whole number >= 0")
            masks[column] = make_mask(spec["mask"], keep=keep,
                                      exempt_roles=spec.get("exempt_roles") or ())
        filters = table.get("row_filter") or {}
        if not isinstance(filters, dict) or not all(isinstance(v, str) for v in filters.values()):
            raise ConfigError(f'{where}: row_filter.ROLE = "predicate" (text) per role')
        export = table.get("export", "allow")
        if export not in ("allow", "deny"):
            raise ConfigError(f'{where}: export must be "allow" or "deny"')
        max_rows = table.get("max_rows")
        if max_rows is not None and (not isinstance(max_rows, int) or max_rows < 0):
            raise ConfigError(f"{where}: max_rows must be a whole number >= 0")
        return cls(pattern, frozenset(roles) if roles is not None else None, masks,
                   dict(filters), bool(table.get("memory_only", False)), export, max_rows)


@dataclass(frozen=True)
class EffectivePolicy:
    """What one user may see of one table: compiled into SQL by the planner."""

    table: str  # source.schema.table
    masks: dict[str, Mask] = field(default_factory=dict)
    row_filters: tuple[str, ...] = ()  # ORed: the user sees rows any of their roles may see
    memory_only: bool = False
    export: str = "allow"
    max_rows: int | None = None

    @property
    def restricts_rows_or_values(self) -> bool:
        return bool(self.masks or self.row_filters or self.max_rows is not None)

    @property
    def fingerprint(self) -> str:
        data = {"table": self.table, "masks": {c: m.as_json() for c, m in
                                               sorted(self.masks.items())},
                "row_filters": sorted(self.row_filters), "memory_only": self.memory_only,
                "export": self.export, "max_rows": self.max_rows}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def tags(self, column: str) -> list[str]:
        tags = [f"mask:{self.masks[column].kind}"] if column in self.masks else []
        if self.row_filters:
            tags.append("row_filter")
        if self.memory_only:
            tags.append("memory_only")
        if self.export == "deny":
            tags.append("export:deny")
        return tags


def combine_fingerprints(policies: Iterable[EffectivePolicy]) -> str:
    joined = ",".join(sorted(p.fingerprint for p in policies))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def load_mask_key(path: Path) -> bytes:
    """The server's secret for hash masks, created once (0600) so hashes stay stable."""
    path = Path(path).expanduser()
    try:
        key = bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.hex())
    except ValueError:
        raise ConfigError(f"mask key file {str(path)!r} is not hex; delete it to make a new "
                          "one (hashes will change)") from None
    if len(key) < 16:
        raise ConfigError(f"mask key in {str(path)!r} is shorter than 16 bytes")
    return key


class Governance:
    """Owns the policies and user roles of one engine."""

    def __init__(self, policies: dict[str, Any], users: dict[str, Any], *,
                 mask_key_path: Path | None = None) -> None:
        self.policies = [Policy.from_config(p, t) for p, t in policies.items()]
        self._users: dict[str, frozenset[str]] = {}
        for name, table in users.items():
            roles = (table or {}).get("roles", [])
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise ConfigError(f"[users.{name}] roles must be a list of role names")
            self._users[name] = frozenset(roles)
        self.extra_roles: Any = None  # callable user -> roles from the catalog (ldw user add)
        self._mask_key_path = mask_key_path
        self._mask_key: bytes | None = None

    def adopt(self, other: Governance) -> None:
        """Take ``other``'s policies and configured users (a configuration reload); the mask
        key and the catalog's roles stay."""
        self.policies, self._users = other.policies, other._users

    @property
    def enforced(self) -> bool:
        return bool(self.policies)

    @property
    def mask_key(self) -> bytes:
        if self._mask_key is None:
            if self._mask_key_path is None:
                self._mask_key = secrets.token_bytes(32)  # in-process: stable for the session
            else:
                self._mask_key = load_mask_key(self._mask_key_path)
        return self._mask_key

    def mask_batches(self, batches: Iterable[pa.RecordBatch], masks: Mapping[str, Mask]
                     ) -> Iterator[pa.RecordBatch]:
        """``batches`` with ``masks`` applied in Arrow (see :mod:`ldw.governance.masks`); the
        mask key is only loaded (or created) when one of them needs it."""
        needs_key = any(mask.applied_in_arrow for mask in masks.values())
        return mask_batches(batches, masks, self.mask_key if needs_key else None)

    def known_user(self, user: str) -> bool:
        return user in self._users or bool(self.extra_roles and self.extra_roles(user))

    def roles(self, user: str) -> frozenset[str]:
        extra = frozenset(self.extra_roles(user)) if self.extra_roles else frozenset()
        return self._users.get(user, frozenset()) | extra

    def effective(self, user: str, table: str) -> EffectivePolicy:
        """The user's view of ``source.schema.table``; AccessDenied if they may not read it."""
        if not self.enforced:
            return EffectivePolicy(table)
        matching = [p for p in self.policies if fnmatch.fnmatchcase(table, p.pattern)]
        roles = self.roles(user)
        if not matching:
            raise AccessDenied(f"no policy allows reading {table}; ask the ldw administrator "
                               "to add one")
        for policy in matching:
            if policy.allow_roles is not None and not roles & policy.allow_roles:
                raise AccessDenied(
                    f"user {user!r} may not read {table} (allowed roles: "
                    f"{', '.join(sorted(policy.allow_roles)) or 'none'}; yours: "
                    f"{', '.join(sorted(roles)) or 'none'})")
        masks: dict[str, Mask] = {}
        filters: list[str] = []
        for policy in matching:
            for column, mask in policy.masks.items():
                if not roles & mask.exempt_roles and column not in masks:
                    masks[column] = mask
            if policy.row_filters:
                # a role without a row_filter entry sees every row of this policy
                mine = [policy.row_filters[r] for r in sorted(roles & set(policy.row_filters))]
                if mine:
                    filters.append(" OR ".join(f"({f})" for f in mine))
        limits = [p.max_rows for p in matching if p.max_rows is not None]
        return EffectivePolicy(
            table, masks, tuple(filters), any(p.memory_only for p in matching),
            "deny" if any(p.export == "deny" for p in matching) else "allow",
            min(limits) if limits else None)
