"""The audit log's seal: a keyed MAC chain over the catalog's records, anchored outside it.

Each record's ``hash`` is HMAC-SHA256(key, previous hash, sequence number, fields). The key is
a 0600 file outside the catalog (``[server] audit_key_file``, beside the mask key by default),
so whoever can edit the catalog cannot re-chain it. After a record is committed, its sequence
number and MAC are appended (and synced) to an anchor file outside the catalog
(``[server] audit_anchor_file``): a deleted tail, a deleted record or a replaced log no longer
matches the anchor. :func:`verify` checks MACs, links, sequence gaps and the anchor.

Catalogs from before the keyed chain: the anchor's first line (its genesis) records the head of
the log when the anchor was started; records up to it are checked as the old unkeyed SHA-256
chain (tamper-evident only up to its head, which the genesis pins) and reported as such.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldw.errors import ConfigError

__all__ = ["Anchor", "AuditReport", "AuditSeal", "load_audit_key", "printable", "verify"]

ZERO = "0" * 64
FIELDS = ("ts", "user", "action", "dataset", "outcome", "policy", "sql", "rows", "bytes",
          "detail")
_MAGIC = "ldw-audit-anchor"


def printable(text: object) -> str:
    """``text`` with every non-printable character (newlines, escapes, bidi controls) and the
    backslash written as an escape, so it can never forge or hide a line on a terminal."""
    value = str(text)
    if value.isprintable() and "\\" not in value:
        return value
    out = []
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
    return "".join(out)


def _canonical(values: dict[str, Any]) -> bytes:
    return json.dumps(values, sort_keys=True, default=str, separators=(",", ":")).encode()


def legacy_hash(prev: str, values: dict[str, Any]) -> str:
    """The unkeyed SHA-256 link of catalogs from before the keyed chain."""
    return hashlib.sha256(prev.encode() + _canonical(values)).hexdigest()


def load_audit_key(path: Path, *, create: bool = True) -> bytes | None:
    """The server's audit MAC key, created once (0600, directory 0700); None if absent and
    ``create`` is false. A key file open to group or others is refused."""
    path = Path(path).expanduser()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.hex())
            handle.flush()
            os.fsync(handle.fileno())
        return key
    except OSError as exc:
        raise ConfigError(f"audit key file {str(path)!r} cannot be opened ({exc.strerror}); "
                          "it must be a regular file private to the server's user") from None
    with os.fdopen(fd) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 or info.st_uid != os.getuid():
            raise ConfigError(f"audit key file {str(path)!r} must be a regular file owned by "
                              "the server's user with mode 0600 (chmod 600 it)")
        text = handle.read().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"audit key file {str(path)!r} is not hex") from None
    if len(key) < 16:
        raise ConfigError(f"audit key in {str(path)!r} is shorter than 16 bytes")
    return key


def mac(key: bytes, prev: str, seq: int, values: dict[str, Any]) -> str:
    """The keyed link of record ``seq``: covers the previous link, its number and its fields."""
    message = prev.encode() + b"|" + str(seq).encode() + b"|" + _canonical(values)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass
class AnchorState:
    """What an anchor file says: its genesis and the (seq -> MAC) of every anchored record."""

    genesis_seq: int = 0
    genesis_hash: str = ZERO
    created: float = 0.0
    reason: str = "new"
    entries: dict[int, str] = field(default_factory=dict)
    last: int | None = None
    damaged: list[str] = field(default_factory=list)
    repeated: list[int] = field(default_factory=list)  # numbers anchored more than once


class Anchor:
    """An append-only file of ``seq MAC`` lines outside the catalog (in memory if no path)."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path).expanduser() if path is not None else None
        self._fd: int | None = None
        self._memory: list[str] = []
        self._lock = threading.Lock()
        self._last: int | None = None

    def last_seq(self) -> int:
        """The highest record number anchored (or the genesis'), read from the file's end."""
        with self._lock:
            if self._last is None:
                self._last = self._read_last()
            return self._last

    def _read_last(self) -> int:
        if self.path is None:
            lines = self._memory
        else:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                return 0
            with os.fdopen(fd, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - 4096))
                lines = handle.read().decode(errors="replace").split("\n")
        for line in reversed(lines):
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit():
                return int(parts[0])
            if len(parts) == 6 and parts[0] == _MAGIC and parts[2].isdigit():
                return int(parts[2])
        return 0

    def exists(self) -> bool:
        """Whether the anchor was started; OSError if its path is not a regular file of ours."""
        if self.path is None:
            return bool(self._memory)
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise OSError(errno.EPERM, "not a regular file owned by the server's user")
        return True

    def _write(self, line: str) -> None:
        with self._lock:
            if self.path is None:
                self._memory.append(line)
                return
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                                   | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            data = (line + "\n").encode()
            if os.write(self._fd, data) != len(data):
                raise OSError(f"short write to the audit anchor {self.path}")
            os.fdatasync(self._fd)  # a few hundred microseconds; audit records are per call

    def start(self, seq: int, head: str, reason: str) -> None:
        """The genesis line: records up to ``seq`` (ending in ``head``) predate this anchor."""
        self._write(f"{_MAGIC} 1 {seq} {head} {time.time():.3f} {reason}")
        self._last = seq

    def append(self, seq: int, digest: str) -> None:
        self._write(f"{seq} {digest}")
        self._last = seq

    def read(self) -> AnchorState | None:
        """The anchor's contents, or None if there is no anchor."""
        if self.path is None:
            lines = list(self._memory)
        else:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                return None
            except OSError as exc:
                return AnchorState(damaged=[f"the anchor file {self.path} cannot be read "
                                            f"({exc.strerror})"])
            with os.fdopen(fd, "rb") as handle:
                lines = handle.read().decode(errors="replace").split("\n")
            if lines and lines[-1] == "":
                lines.pop()
        if not lines:
            return None
        state = AnchorState()
        head = lines[0].split()
        if len(head) != 6 or head[0] != _MAGIC or not head[2].isdigit():
            state.damaged.append("the anchor's first line is not an ldw audit anchor header")
        else:
            state.genesis_seq, state.genesis_hash = int(head[2]), head[3]
            state.created, state.reason = float(head[4]), head[5]
        for number, line in enumerate(lines[1:], start=2):
            parts = line.split()
            if len(parts) != 2 or not parts[0].isdigit() or len(parts[1]) != 64:
                state.damaged.append(f"anchor line {number} is damaged")
                continue
            seq = int(parts[0])
            if seq in state.entries or seq <= state.genesis_seq:
                state.repeated.append(seq)
            state.entries[seq] = parts[1]
            state.last = seq
        return state

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class AuditSeal:
    """The key and anchor the catalog seals its audit records with."""

    def __init__(self, key: bytes, anchor: Anchor, *, key_created: bool = False) -> None:
        self.key = key
        self.anchor = anchor
        self.key_created = key_created

    @classmethod
    def open(cls, key_path: Path, anchor_path: Path) -> AuditSeal:
        """The server's seal: its key file (created 0600 if absent) and anchor file."""
        existing = load_audit_key(key_path, create=False)
        key = existing if existing is not None else load_audit_key(key_path)
        assert key is not None
        return cls(key, Anchor(anchor_path), key_created=existing is None)

    @classmethod
    def ephemeral(cls) -> AuditSeal:
        """An in-memory seal for an in-memory catalog (in-process use)."""
        return cls(secrets.token_bytes(32), Anchor(None), key_created=True)

    def mac(self, prev: str, seq: int, values: dict[str, Any]) -> str:
        return mac(self.key, prev, seq, values)

    def close(self) -> None:
        self.anchor.close()


@dataclass
class AuditReport:
    """The result of :func:`verify`: ``ok`` and what was found wrong, in words."""

    records: int = 0
    legacy: int = 0           # records before the anchor's genesis (unkeyed chain)
    keyed_from: int | None = None
    head: int | None = None
    anchored: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _ranges(numbers: Iterable[int]) -> str:
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans[:10])
    return text + (f" and {len(spans) - 10} more ranges" if len(spans) > 10 else "")


def verify(rows: Iterable[dict[str, Any]], key: bytes | None, anchor: Anchor) -> AuditReport:
    """Check an audit log: every link and MAC, sequence gaps, and the anchor (head, count,
    truncation). ``rows`` are the catalog's records in ``seq`` order."""
    report = AuditReport()
    before = anchor.read()  # what was anchored before the catalog was read
    rows = list(rows)
    after = anchor.read()
    if rows and after is not None and rows[-1]["seq"] not in after.entries and \
            rows[-1]["seq"] > after.genesis_seq:
        time.sleep(0.2)  # a record committed a moment ago is anchored right after its commit
        after = anchor.read()
    state = after or before
    if state is None:
        if rows:
            report.problems.append(
                f"the anchor file {anchor.path} is missing: removed or replaced records cannot "
                "be detected (start the server once to anchor a log from an older ldw)")
        state = AnchorState(genesis_seq=rows[-1]["seq"] if rows else 0,
                            genesis_hash=rows[-1]["hash"] if rows else ZERO)
    report.problems += state.damaged
    if state.repeated:
        report.problems.append(
            f"record number(s) {_ranges(set(state.repeated))} were anchored more than once: "
            "records were removed from the catalog after they had been anchored")
    if key is None and any(r["seq"] > state.genesis_seq for r in rows):
        report.problems.append("the audit key file is missing: the keyed chain cannot be "
                               "checked")
    bad: dict[str, list[int]] = {}
    prev, expected = ZERO, 1
    seen: dict[int, str] = {}
    for row in rows:
        seq = row["seq"]
        values = {k: row[k] for k in FIELDS}
        if seq != expected:
            if seq > expected:
                bad.setdefault("missing (a gap in the sequence)", []).extend(
                    range(expected, min(seq, expected + 10_000)))
            else:
                bad.setdefault("out of sequence", []).append(seq)
        if row["prev_hash"] != prev:
            bad.setdefault("not linked to the record before it", []).append(seq)
        if seq <= state.genesis_seq:
            report.legacy += 1
            if row["hash"] != legacy_hash(prev, values) and not (
                    key is not None and row["hash"] == mac(key, prev, seq, values)):
                bad.setdefault("altered (its hash does not match)", []).append(seq)
            if seq == state.genesis_seq and row["hash"] != state.genesis_hash:
                bad.setdefault("not the head the anchor's genesis recorded", []).append(seq)
        else:
            if report.keyed_from is None:
                report.keyed_from = seq
            if key is not None and row["hash"] != mac(key, prev, seq, values):
                bad.setdefault("altered or re-chained (its MAC does not match)", []).append(seq)
            anchored = state.entries.get(seq)
            if anchored is None:
                bad.setdefault("not in the anchor", []).append(seq)
            elif anchored != row["hash"]:
                bad.setdefault("different from the anchored MAC", []).append(seq)
        seen[seq] = row["hash"]
        prev, expected = row["hash"], max(expected, seq + 1)
    report.records = len(rows)
    report.head = rows[-1]["seq"] if rows else None
    report.anchored = len(state.entries)
    if state.genesis_seq and state.genesis_seq not in seen:
        report.problems.append(f"record {state.genesis_seq}, the head the anchor's genesis "
                               "recorded, is missing")
    gone = [s for s in (before or state).entries if s not in seen]
    if gone:
        last = max((before or state).entries)
        if report.head is None or last > report.head:
            report.problems.append(
                f"the log was truncated: the anchor ends at record {last}, the catalog at "
                f"{report.head if report.head is not None else 'no record'}")
        report.problems.append(f"anchored records missing from the catalog: {_ranges(gone)}")
    for what, seqs in bad.items():
        report.problems.append(f"record(s) {_ranges(seqs)}: {what}")
    if state.reason != "new" and after is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.created))
        report.notes.append(
            f"records 1-{state.genesis_seq} predate the keyed chain (anchor started {when}, "
            f"{state.reason}): they are checked as the older unkeyed SHA-256 chain, pinned "
            "at their head by the anchor" if state.genesis_seq else
            f"the anchor was started {when} ({state.reason})")
    return report
