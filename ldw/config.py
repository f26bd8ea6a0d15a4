"""One typed settings object: explicit arguments beat ``LDW_*`` variables, which beat ``ldw.toml``.

Source passwords are never read from the file: a source names ``password_env`` (an environment
variable) or ``keyring`` (a keyring service); the URL must not carry a password.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from ldw.errors import ConfigError, UnknownSource
from ldw.secrets import Secret

__all__ = ["RELOADABLE", "Settings", "SourceConfig", "every_seconds", "fingerprint",
           "load_settings", "parse_bytes", "parse_duration", "refresh_policy"]

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_bytes(value: str | int) -> int:
    """``"8GiB"`` -> 8589934592; integers are bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ConfigError(f"cannot read {value!r} as a size; write e.g. '512MiB' or '8GiB'")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: str | int | float | None) -> float | None:
    """``"8h"`` -> 28800.0 seconds; ``None`` means no expiry."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
    if not match:
        raise ConfigError(f"cannot read {value!r} as a duration; write e.g. '90s', '30m' or '8h'")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def refresh_policy(value: Any, where: str = "refresh") -> str:
    """A refresh policy: ``"manual"``, ``"on_access"`` or ``"every <duration>"`` (normalized)."""
    text = " ".join(str(value).split()) if isinstance(value, str) else ""
    if text in ("manual", "on_access"):
        return text
    if text.startswith("every "):
        try:
            seconds = parse_duration(text.removeprefix("every "))
        except ConfigError:
            seconds = None
        if seconds:
            return f"every {text.removeprefix('every ')}"
    raise ConfigError(f"{where} must be \"manual\", \"on_access\" or \"every <duration>\" "
                      f"(e.g. \"every 10m\"), not {value!r}")


def every_seconds(policy: str) -> float | None:
    """The period of an ``"every <duration>"`` policy; None for the others."""
    return parse_duration(policy.removeprefix("every ")) if policy.startswith("every ") else None


DEFAULT_MAX_CONNECTIONS = 8  # per source; a partitioned read holds partitions + 2 at most
MAX_CONNECTIONS_RANGE = (2, 1000)


@dataclass(frozen=True)
class SourceConfig:
    """A configured source. ``url`` never holds a password; ``password()`` looks it up."""

    name: str
    url: URL
    password_env: str | None = None
    keyring: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @property
    def timeout(self) -> float | None:
        """Seconds ldw waits on the source without progress (a lock, a stalled server) before
        it gives up with ``SourceTimeout``; None waits as long as the source takes."""
        return self.options.get("timeout")

    @property
    def max_connections(self) -> int:
        """How many connections ldw opens to this source at once, shared by every read,
        partition, probe and user (``[sources.NAME] max_connections``)."""
        return self.options.get("max_connections", DEFAULT_MAX_CONNECTIONS)

    def password(self) -> Secret | None:
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"source {self.name!r} reads its password from ${self.password_env}, "
                    f"which is not set in the environment of the process that reads the "
                    f"source (pid {os.getpid()}; with an ldw server, that is the server, not "
                    "your notebook): export it where the server starts, then restart the "
                    "server (`ldw server stop`; the next connect starts it again), or set "
                    "keyring = \"SERVICE\" instead"
                )
            return Secret(value)
        if self.keyring:
            import keyring

            value = keyring.get_password(self.keyring, self.url.username or "")
            if value is None:
                raise ConfigError(
                    f"source {self.name!r}: keyring service {self.keyring!r} has no password for "
                    f"user {self.url.username!r}; store one with `keyring set`"
                )
            return Secret(value)
        return None

    def safe_url(self) -> str:
        """The URL as it may be shown: no password (there is none in it by construction)."""
        return self.url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"SourceConfig(name={self.name!r}, dialect={self.dialect!r})"


@dataclass(frozen=True)
class Settings:
    """Everything ldw reads from ``ldw.toml``, ``LDW_*`` variables and arguments."""

    shm_dir: Path
    spill_dir: Path
    state_dir: Path
    memory_limit: int
    catalog: str
    listen: str
    backend: str
    batch_rows: int
    sources: dict[str, SourceConfig]
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ttl_sweep_seconds: float = 30.0
    mask_key_file: Path = Path("~/.local/share/ldw/mask.key")
    audit_key_file: Path = Path("~/.local/share/ldw/audit.key")
    audit_anchor_file: Path = Path("~/.local/share/ldw/audit.anchor")
    policies: dict[str, Any] = field(default_factory=dict)
    users: dict[str, Any] = field(default_factory=dict)
    config_path: Path | None = None
    ray_address: str | None = None  # backend = "ray": the cluster ("auto", "host:6379"), or
    # None for a Ray that ldw starts itself (object store sized from memory_limit, no spilling)
    export_roots: tuple[str, ...] = ()  # where the server writes exports for remote users;
    # "{user}" stands for the caller's name; [users.NAME] export_roots replaces it per user
    max_tickets_per_user: int = 64  # unredeemed Flight tickets one user may hold
    max_streams_per_user: int = 16  # Flight streams one user may read at once
    sql_timeout: float = 600.0  # seconds a wh.sql query may run ([users.NAME] sql_timeout)
    sql_memory_limit: str = "25%"  # DuckDB's memory for wh.sql, shared by concurrent queries
    freshness_interval: float = 10.0  # seconds between two change checks of one dataset
    flight_sql_sources: bool = False  # Flight SQL listings include source tables
    caching: str = "manual"  # "auto": SQL's source reads are cached as slices when worth it
    refresh_globs: tuple[tuple[str, str], ...] = ()  # [refresh] "src.schema.table*" = policy

    def refresh_for(self, table: str) -> str:
        """The refresh policy ``[refresh]`` gives ``source.schema.table`` (first matching glob),
        else ``"manual"``."""
        import fnmatch

        for glob, policy in self.refresh_globs:
            if fnmatch.fnmatchcase(table, glob):
                return policy
        return "manual"

    def sql_timeout_for(self, user: str) -> tuple[float, str]:
        """A user's ``wh.sql`` time limit in seconds, and the setting it comes from."""
        table = self.users.get(user)
        if isinstance(table, dict) and table.get("sql_timeout") is not None:
            return table["sql_timeout"], f"[users.{user}] sql_timeout"
        return self.sql_timeout, "[server] sql_timeout"

    def source(self, name: str) -> SourceConfig:
        try:
            return self.sources[name]
        except KeyError:
            known = ", ".join(sorted(self.sources)) or "none configured"
            if self.config_path is not None:
                fix = (f"add [sources.{name}] to {self.config_path} (a running ldw server "
                       "reads it again on wh.reload())")
            else:
                fix = (f"this ldw runs without a config file: put [sources.{name}] in "
                       f'ldw.toml and pass it (ldw.connect(config="ldw.toml"); a running ldw '
                       f'server takes it on wh.reload(config="ldw.toml"))')
            raise UnknownSource(f"no source named {name!r} (known: {known}); {fix}") from None


# What ``ldw server reload`` re-reads; everything else is [server] and needs a restart.
RELOADABLE = ("sources", "policies", "users", "refresh_globs", "config_path")


def fingerprint(settings: Settings) -> str:
    """A digest of what a reload re-reads (sources, policies, users, [refresh]): a client
    compares its ``ldw.toml`` with the one a running server has loaded."""
    sources = {name: {"url": s.url.render_as_string(hide_password=True),
                      "password_env": s.password_env, "keyring": s.keyring,
                      "options": s.options} for name, s in settings.sources.items()}
    data = {"sources": sources, "policies": settings.policies, "users": settings.users,
            "refresh": settings.refresh_globs}
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _expand(path: str) -> Path:
    env = dict(os.environ)
    env.setdefault("USER", _user())
    if not env.get("XDG_RUNTIME_DIR"):
        env["XDG_RUNTIME_DIR"] = _runtime_dir()
    expanded = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), path)
    return Path(expanded).expanduser()


def _runtime_dir() -> str:
    """Stands in for an unset ``$XDG_RUNTIME_DIR``: the login's ``/run/user/UID`` if it is
    ours and private, else a folder in the home directory; never a predictable name in the
    shared temp folder, which another user could create first."""
    run = Path(f"/run/user/{os.geteuid()}")
    try:
        info = run.lstat()
    except OSError:
        info = None
    if info is not None and stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() \
            and not info.st_mode & 0o077:
        return str(run)
    return str(Path.home() / ".cache" / "ldw" / "run")


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return str(os.getuid())


def _default_shm_dir() -> str:
    return "/dev/shm/ldw-$USER" if Path("/dev/shm").is_dir() else str(
        Path(tempfile.gettempdir()) / "ldw-shm-$USER"
    )


BACKENDS = frozenset({"local", "ray"})

_SERVER_DEFAULTS: dict[str, Any] = {
    "listen": "grpc://127.0.0.1:8815",
    "state_dir": "$XDG_RUNTIME_DIR/ldw",
    "shm_dir": None,
    "memory_limit": "8GiB",
    "spill_dir": "~/.cache/ldw/spill",
    "catalog": "sqlite:///~/.local/share/ldw/catalog.db",
    "backend": "local",
    "ray_address": None,
    "batch_rows": 131072,
    "tls_cert": None,
    "tls_key": None,
    "ttl_sweep_seconds": 30,
    "mask_key_file": "~/.local/share/ldw/mask.key",
    "export_roots": (),
    "max_tickets_per_user": 64,
    "max_streams_per_user": 16,
    "audit_key_file": None,     # default: audit.key beside mask_key_file
    "audit_anchor_file": None,  # default: beside the audit key, one per catalog
    "sql_timeout": "10m",
    "sql_memory_limit": "25%",
    "freshness_interval": "10s",
    "flight_sql_sources": False,
    "caching": "manual",
}


# Every [server] key, each also read from LDW_<KEY> (how a client hands its overrides to the
# server it autostarts)
SERVER_KEYS = frozenset(_SERVER_DEFAULTS)


def server_env(overrides: dict[str, Any]) -> dict[str, str]:
    """``LDW_*`` variables carrying ``[server]`` overrides to another process; lists are
    joined with ``os.pathsep`` (as ``LDW_EXPORT_ROOTS`` holds them)."""
    env = {}
    for key, value in overrides.items():
        if key in SERVER_KEYS and value is not None:
            text = os.pathsep.join(map(str, value)) if isinstance(value, list | tuple) \
                else str(value)
            env[f"LDW_{key.upper()}"] = text
    return env


def _freshness_interval(value: Any) -> float:
    try:
        seconds = parse_duration(value)
    except ConfigError:
        seconds = None
    if seconds is None or seconds < 0:
        raise ConfigError(f"[server] freshness_interval must be a duration such as '10s' or "
                          f"'1m' (0 checks on every look), not {value!r}")
    return seconds


def _caching(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("manual", "auto"):
        raise ConfigError(f"[server] caching must be \"manual\" (cache() and pin() decide) or "
                          f"\"auto\" (SQL's source reads are cached by benefit), not {value!r}")
    return text


def _flag(server: dict[str, Any], key: str) -> bool:
    """A true/false ``[server]`` key (also ``LDW_<KEY>`` = true/false/1/0)."""
    value = server[key]
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "false", "0",
                                                            "no"):
        return value.strip().lower() in ("true", "1", "yes")
    if not isinstance(value, bool):
        raise ConfigError(f"[server] {key} must be true or false, not {value!r}")
    return value


def _positive_int(server: dict[str, Any], key: str) -> int:
    value = server[key]
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1:
        raise ConfigError(f"[server] {key} must be a positive integer, not {value!r}")
    return number


def _audit_files(server: dict[str, Any]) -> dict[str, Path]:
    """The audit MAC key and anchor: outside the catalog, in the server's private state."""
    key = _expand(server["audit_key_file"]) if server["audit_key_file"] else \
        _expand(server["mask_key_file"]).parent / "audit.key"
    if server["audit_anchor_file"]:
        return {"audit_key_file": key, "audit_anchor_file": _expand(server["audit_anchor_file"])}
    catalog = str(server["catalog"])
    if catalog.startswith("sqlite:///") and not catalog.startswith("sqlite:////"):
        catalog = "sqlite:///" + str(_expand(catalog.removeprefix("sqlite:///")).absolute())
    digest = hashlib.sha256(catalog.encode()).hexdigest()[:12]
    return {"audit_key_file": key, "audit_anchor_file": key.parent / f"audit-{digest}.anchor"}


def _sql_timeout(value: Any, where: str) -> float:
    try:
        seconds = parse_duration(value)
    except ConfigError:
        seconds = None
    if not seconds or seconds <= 0:
        raise ConfigError(f"{where} sql_timeout must be a positive duration, e.g. '10m', "
                          f"not {value!r}")
    return seconds


def _sql_memory_limit(value: Any) -> str:
    """DuckDB's memory limit: a share of RAM (``"25%"``) or a size (``"4GiB"``)."""
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text)
    if match and 0 < float(match.group(1)) <= 100:
        return f"{float(match.group(1)):g}%"
    try:
        size = parse_bytes(value)
    except ConfigError:
        size = 0
    if size < 2**20:
        raise ConfigError(f"[server] sql_memory_limit must be a share of RAM ('25%') or a size "
                          f"of at least 1MiB ('4GiB'), not {value!r}")
    return f"{size // 2**20}MiB"


def _users(users: Any) -> dict[str, Any]:
    """``[users.*]`` with per-user limits read (``sql_timeout``); roles are read by governance."""
    if not isinstance(users, dict):
        raise ConfigError("[users] must be a table of [users.NAME] tables")
    result = {}
    for name, table in users.items():
        if isinstance(table, dict) and table.get("sql_timeout") is not None:
            table = {**table, "sql_timeout": _sql_timeout(table["sql_timeout"],
                                                          f"[users.{name}]")}
        result[name] = table
    return result


def _source_from_table(name: str, table: dict[str, Any]) -> SourceConfig:
    if not isinstance(table, dict) or "url" not in table:
        raise ConfigError(f"[sources.{name}] needs a url, e.g. url = \"postgresql://user@host/db\"")
    try:
        url = make_url(str(table["url"]))
    except ArgumentError:
        raise ConfigError(
            f"[sources.{name}] url is not a database URL; write dialect://user@host:port/database"
        ) from None
    if url.password is not None:
        raise ConfigError(
            f"[sources.{name}] url carries a password; remove it and set password_env "
            "(an environment variable name) or keyring instead"
        )
    if url.drivername.startswith("sqlite") and url.database:
        url = url.set(database=str(_expand(url.database)))
    options = {k: v for k, v in table.items() if k not in {"url", "password_env", "keyring"}}
    if options.get("timeout") is not None:
        timeout = parse_duration(options["timeout"])
        if not timeout or timeout <= 0:
            raise ConfigError(f"[sources.{name}] timeout must be a positive duration, e.g. '30s'")
        options["timeout"] = timeout
    if "max_connections" in options:
        value, (low, high) = options["max_connections"], MAX_CONNECTIONS_RANGE
        if type(value) is not int or not low <= value <= high:
            raise ConfigError(f"[sources.{name}] max_connections must be an integer from {low} "
                              f"to {high} (a read holds one connection for its snapshot and one "
                              f"per partition), not {value!r}")
    return SourceConfig(
        name=name,
        url=url,
        password_env=table.get("password_env"),
        keyring=table.get("keyring"),
        options=options,
    )


def export_roots_setting(value: Any, where: str) -> tuple[str, ...]:
    """Export roots as given: a list of absolute directories, or one string of them separated
    by ``os.pathsep`` (as ``LDW_EXPORT_ROOTS`` holds them). ``{user}`` is expanded per caller."""
    if isinstance(value, str):
        value = [part for part in value.split(os.pathsep) if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of directories, e.g. "
                          '["/srv/ldw-exports/{user}"]')
    roots = []
    for raw in value:
        path = str(_expand(raw))
        if not Path(path).is_absolute() or ".." in Path(path).parts:
            raise ConfigError(f"{where}: {raw!r} must be an absolute directory without '..'")
        roots.append(path)
    return tuple(roots)


def load_settings(
    config: str | os.PathLike[str] | dict[str, Any] | None = None, **overrides: Any
) -> Settings:
    """Read settings from a ``ldw.toml`` path (or ``$LDW_CONFIG``) or a dict, env and overrides.

    >>> s = load_settings({"sources": {"lite": {"url": "sqlite:///:memory:"}}})
    >>> s.source("lite").dialect
    'sqlite'
    """
    path: Path | None = None
    if isinstance(config, dict):
        data = config
    else:
        raw = config if config is not None else os.environ.get("LDW_CONFIG")
        data = {}
        if raw:
            path = Path(raw).expanduser()
            try:
                data = tomllib.loads(path.read_text())
            except FileNotFoundError:
                raise ConfigError(f"config file {str(path)!r} does not exist") from None
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    unknown_top = set(data) - {"server", "sources", "policies", "users", "refresh"}
    if unknown_top:
        raise ConfigError(f"unknown section(s) in config: {sorted(unknown_top)}")

    server = dict(_SERVER_DEFAULTS)
    file_server = data.get("server", {})
    unknown = set(file_server) - set(_SERVER_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown [server] key(s): {sorted(unknown)}; known: {sorted(server)}")
    server.update(file_server)
    for key in _SERVER_DEFAULTS:
        env = os.environ.get(f"LDW_{key.upper()}")
        if env is not None:
            server[key] = env
    bad = set(overrides) - set(_SERVER_DEFAULTS)
    if bad:
        raise ConfigError(f"unknown setting(s) {sorted(bad)}; known: {sorted(_SERVER_DEFAULTS)}")
    server.update({k: v for k, v in overrides.items() if v is not None})

    sources = {
        name: _source_from_table(name, table) for name, table in data.get("sources", {}).items()
    }
    try:
        batch_rows = int(server["batch_rows"])
    except ValueError:
        raise ConfigError(f"batch_rows must be an integer, not {server['batch_rows']!r}") from None
    for name, table in data.get("users", {}).items():  # checked now, expanded per caller
        if isinstance(table, dict) and "export_roots" in table:
            export_roots_setting(table["export_roots"], f"[users.{name}] export_roots")
    backend = str(server["backend"])
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {sorted(BACKENDS)}, not {backend!r}; "
                          "\"ray\" also needs pip install 'ldw[ray]'")
    return Settings(
        shm_dir=_expand(server["shm_dir"] or _default_shm_dir()),
        spill_dir=_expand(server["spill_dir"]),
        state_dir=_expand(server["state_dir"]),
        memory_limit=parse_bytes(server["memory_limit"]),
        catalog=str(server["catalog"]),
        listen=str(server["listen"]),
        backend=backend,
        ray_address=str(server["ray_address"]) if server["ray_address"] else None,
        batch_rows=batch_rows,
        sources=sources,
        tls_cert=_expand(server["tls_cert"]) if server["tls_cert"] else None,
        tls_key=_expand(server["tls_key"]) if server["tls_key"] else None,
        ttl_sweep_seconds=float(server["ttl_sweep_seconds"]),
        mask_key_file=_expand(server["mask_key_file"]),
        export_roots=export_roots_setting(server["export_roots"], "[server] export_roots"),
        max_tickets_per_user=_positive_int(server, "max_tickets_per_user"),
        max_streams_per_user=_positive_int(server, "max_streams_per_user"),
        **_audit_files(server),
        sql_timeout=_sql_timeout(server["sql_timeout"], "[server]"),
        sql_memory_limit=_sql_memory_limit(server["sql_memory_limit"]),
        freshness_interval=_freshness_interval(server["freshness_interval"]),
        flight_sql_sources=_flag(server, "flight_sql_sources"),
        caching=_caching(server["caching"]),
        refresh_globs=tuple((str(glob), refresh_policy(policy, f"[refresh] {glob!r}"))
                            for glob, policy in data.get("refresh", {}).items()),
        policies=data.get("policies", {}),
        users=_users(data.get("users", {})),
        config_path=path,
    )
