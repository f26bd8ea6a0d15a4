"""Types shared by both ends of ldw: the client, the server, the engine and the transports.

One place for the vocabulary the wire carries (dataset states, storage tiers, progress), so no
module re-declares a result shape or spells a state as a bare string of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypedDict

from ldw import formatting as fmt

__all__ = ["AttachInfo", "AuditRow", "ColumnInfo", "ColumnRow", "DatasetInfo", "DatasetListing",
           "DatasetState", "ExportInfo", "Progress", "SchemaField", "ServerStatus", "SourceRow",
           "TableRow", "Tier"]


class DatasetState(StrEnum):
    """Where a dataset is in its life; the allowed moves are in :mod:`ldw.lifecycle`."""

    MAPPED = "mapped"              # defined, nothing read yet
    MATERIALIZING = "materializing"  # a source read is writing a new version
    CACHED = "cached"              # its current version is in the memory tier
    SPILLED = "spilled"            # its current version is in the disk tier
    EVICTED = "evicted"            # its version was dropped; the next read recomputes it
    LOST = "lost"                  # a memory-only version is gone; only refresh() brings it back
    FAILED = "failed"              # the first read failed; the next read tries again
    CANCELLED = "cancelled"        # the first read was interrupted; the next read tries again


class Tier(StrEnum):
    """The store tier a version lives in."""

    MEMORY = "memory"
    DISK = "disk"


@dataclass(frozen=True)
class Progress:
    """What a running materialization (or export) reports after each batch: rows and bytes so
    far, seconds since it started, and ``mb_per_s``, the rate (10^6 bytes a second).
    ``str(p)``: ``caching orders: 1,500,000 rows, 246.1 MiB, 107.3 MB/s, 2.3 s``."""

    dataset: str
    rows: int
    bytes: int
    seconds: float
    done: bool = False
    total_rows: int | None = None  # the rows expected, where the source or the last version says
    mb_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        rate = self.bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0
        object.__setattr__(self, "mb_per_s", rate)

    def __str__(self) -> str:
        return (f"{'cached' if self.done else 'caching'} {self.dataset}: "
                f"{fmt.count(self.rows)} rows, {fmt.size(self.bytes)}, "
                f"{fmt.rate(self.bytes, self.seconds)}, {fmt.duration(self.seconds)}")

    def as_json(self) -> dict[str, Any]:
        """Rows, bytes and seconds so far (``info()["progress"]`` while materializing)."""
        return {"rows": self.rows, "bytes": self.bytes, "seconds": round(self.seconds, 3)}


# -- payloads: the JSON results of the operations (ldw.ops), produced by ldw.service ----------
# Key order is column order where a client shows them as a table (ldw.client).

class SourceRow(TypedDict):
    """One configured source (``sources``); never a password."""

    name: str
    dialect: str
    host: str | None
    port: int | None
    database: str | None
    user: str | None
    transport: str


class TableRow(TypedDict):
    """One table or view of a source schema (``tables``); ``rows`` is an estimate."""

    schema: str
    table: str
    kind: str
    rows: int | None


class ColumnInfo(TypedDict):
    """One column of a dataset as ``info`` shows it."""

    name: str
    source_type: str
    arrow_type: str
    nullable: bool
    note: str


class ColumnRow(ColumnInfo):
    """One column of a source table (``describe``), with the policy tags that apply to it."""

    policy_tags: list[str]


class DatasetListing(TypedDict):
    """One row of ``datasets``: what a dataset is and how it is cached."""

    name: str
    owner: str
    mapping: str
    mapped_columns: list[str] | None  # the columns mapped (None: all of the table)
    where: str | None                 # the mapping's row filter
    state: str
    rows: int | None
    bytes: int | None
    version: str | None
    last_access: float | None
    hits: int
    pinned: bool
    memory_only: bool
    stale: bool  # the source changed since this version was read (see info()["freshness"])


class SchemaField(TypedDict):
    """One field of a dataset's Arrow schema as ``info()["schema"]`` shows it."""

    name: str
    type: str
    nullable: bool


class DatasetInfo(TypedDict):
    """Everything a viewer may know of one dataset (``info``, ``map``, ``cache`` ...)."""

    name: str
    owner: str
    state: str
    stale: bool
    source: str | None
    mapping: str
    mapped_columns: list[str] | None  # the columns mapped (None: all of the table)
    where: str | None                 # the mapping's row filter
    limit: int | None
    schema: list[SchemaField]  # readable: one {name, type, nullable} per column
    arrow_schema: str  # the exact Arrow schema as IPC, base64 (ldw.wire.decode_schema)
    columns: list[ColumnInfo]
    rows: int | None
    bytes: int | None
    version: str | None
    tier: str | None
    files: int | None  # files the cached version is made of (see README, incremental refresh)
    load_seconds: float | None
    source_sql: list[str]
    lossy: dict[str, str]
    ttl: float | None
    pinned: bool
    memory_only: bool
    export: str | None
    policy: str | None
    shared_with: list[str]
    hits: int
    bytes_served: int
    last_access: float | None
    error: str | None
    freshness: dict[str, Any]  # refresh policy, incremental mode, how staleness was decided
    progress: dict[str, Any] | None  # while materializing: rows, bytes, seconds so far


class AttachInfo(DatasetInfo, total=False):
    """``attach``'s answer: the info of the version handed over, plus how to read it over a
    transport that needs one (Flight: ``ticket`` or ``tickets``; Ray: ``ticket``)."""

    ticket: str
    tickets: list[str]
    layout: dict  # the Unix socket's: the files handed over and the rows of them it holds


class ExportInfo(TypedDict):
    """``export``'s answer: what the server wrote."""

    path: str
    files: list[dict]
    rows: int
    bytes: int
    seconds: float
    manifest_path: str


class ServerStatus(TypedDict, total=False):
    """``status``: who asks, the server's capacity and use, and per-dataset hits."""

    mode: str             # "server" | "in-process"
    pid: int
    started: float
    socket: str
    flight: str | None
    user: str
    roles: list[str]
    governed: bool
    backend: str
    ray_address: str | None
    memory_limit: int
    used_bytes: int
    spilled_bytes: int
    memory_versions: int  # cached versions in the memory tier (all users')
    spilled_versions: int  # ... and in the disk tier
    datasets: int
    cached: int
    hits: dict[str, int]
    bytes_served: dict[str, int]
    config: dict[str, Any]  # to the owner and admins: {path, fingerprint} of the configuration
    slices: list[dict[str, Any]]  # [server] caching = "auto": what is cached automatically
    sql_source_reads: dict[str, Any]  # reads, seconds, rows, bytes SQL took from sources


class CacheAdvice(TypedDict):
    """A slice of a source table worth caching (``cache_advice``), best first."""

    table: str                  # source.schema.table
    columns: list[str]
    conditions: list[str]       # AND-ed, as the queries wrote them
    bytes: int                  # Arrow size, as last read
    rows: int
    reads_served: int           # observed reads the slice answers
    source_seconds: float       # what those reads took at the source
    saved_seconds_aged: float   # the same, aged (an hour counts half)
    seconds_saved_per_mib: float


class AuditRow(TypedDict):
    """One audit record (``audit``), newest first."""

    seq: int
    ts: float
    user: str
    action: str
    dataset: str | None
    outcome: str
    policy: str | None
    sql: str | None
    rows: int | None
    bytes: int | None
    detail: str | None
    prev_hash: str | None
    hash: str | None
